"""Probing one checkpoint: load its policy frozen, extract the layer's tokens, fit the head on the
train frames and measure it on the held-out ones (`probe_checkpoint` → `ProbeRun`)."""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .features import checkpoint_align_layer, default_layer, extract_features
from .frames import DepthFrames
from .metrics import _finite, metrics_by_camera
from .train import ProbeConfig, predict_depth, train_probe


def checkpoint_label(checkpoint: str | Path) -> str:
    """A short name: ``run/step_N`` for a training checkpoint, else the directory's name."""
    path = Path(checkpoint).resolve()
    if path.parent.name == "checkpoints":
        return f"{path.parent.parent.name}/{path.name}"
    return path.name


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class ProbeRun:
    """One checkpoint's probe: what goes into the report, plus the example maps for the figure."""

    report: dict
    examples: torch.Tensor  # [n_examples, S, S] predicted depth (m)
    losses: list[float]


def probe_checkpoint(checkpoint: str | Path, frames: DepthFrames, depth: torch.Tensor, valid: torch.Tensor,
                     train_idx: np.ndarray, test_idx: np.ndarray, layer: int | None, config: ProbeConfig,
                     examples: Sequence[tuple[int, int]] = (), device: str = "auto", dtype: str | None = None,
                     log: Callable[[str], None] | None = None) -> ProbeRun:
    """Freeze ``checkpoint``'s policy, extract layer-``layer`` tokens, fit and test the probe.

    ``layer`` None: the checkpoint's aligned layer, else ``default_layer``. ``examples`` are
    (frame, camera) pairs whose predicted maps are returned for the figure.
    """
    from ...train.checkpoint import load_policy, resolve_checkpoint

    torch_device = _resolve_device(device)
    dtype = dtype or ("bfloat16" if torch_device.type == "cuda" else "float32")
    resolved = resolve_checkpoint(checkpoint)
    policy = load_policy(resolved, dtype=dtype).to(torch_device)
    policy.requires_grad_(False)
    num_layers = len(policy.pi0.model.vlm.language_model.layers)
    hidden = policy.pi0.config.vlm_config.text_config.hidden_size
    if layer is None:
        layer = checkpoint_align_layer(resolved)
        layer = default_layer(num_layers) if layer is None else layer
    if log is not None:
        log(f"{checkpoint_label(resolved)}: features of hidden_states[{layer}] of {num_layers} "
            f"(width {hidden}) for {len(frames)} frames on {torch_device}")
    features = extract_features(policy, frames, layer, config.feature_batch)
    del policy
    gc.collect()
    if torch_device.type == "cuda":
        torch.cuda.empty_cache()
    head, losses = train_probe(features, depth, valid, train_idx, config, torch_device)
    n_cams = depth.shape[1]
    frame_ids = np.repeat(test_idx, n_cams)
    camera_ids = np.tile(np.arange(n_cams), len(test_idx))
    pred = predict_depth(head, features, frame_ids, camera_ids, n_cams).view(len(test_idx), n_cams, *depth.shape[2:])
    metrics = metrics_by_camera(pred, depth[test_idx], valid[test_idx], frames.roles)
    shown = predict_depth(head, features, [f for f, _ in examples], [c for _, c in examples], n_cams)
    window = max(config.log_every, 1)
    curve = [_finite(np.mean(losses[s:s + window])) for s in range(0, len(losses), window)]
    report = {"checkpoint": str(resolved), "label": checkpoint_label(resolved), "layer": layer,
              "num_layers": num_layers, "hidden_size": hidden, "dtype": dtype, "metrics": metrics,
              "loss_curve": curve, "loss_curve_every": window}
    return ProbeRun(report, shown, losses)
