"""The probed features: a frozen policy's visual tokens at hidden_states[layer], the forward cut
right after that layer; and which layer to probe (the checkpoint's aligned one, else a default)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ...align.capture import LayerCapture
from ...train.checkpoint import ALIGN_CONFIG_FILE  # checkpoint.py does not import the trainer
from .frames import DepthFrames


class _StopForward(Exception):
    """Raised by a hook once layer k is captured: nothing after it is needed."""


def default_layer(num_layers: int) -> int:
    """SF's choice scaled to the model: π0 aligns hidden_states[12] of 18, i.e. two thirds deep."""
    return max(1, round(2 * num_layers / 3))


def checkpoint_align_layer(checkpoint: str | Path) -> int | None:
    """The layer an SF checkpoint aligned (``align.json``), or None (a baseline, or a bare policy dir)."""
    path = Path(checkpoint) / ALIGN_CONFIG_FILE
    if not path.is_file():
        return None
    return int(json.loads(path.read_text())["layer"])


def _stop_after(language_model: nn.Module, layer: int) -> torch.utils.hooks.RemovableHandle:
    """A hook that ends the forward once hidden_states[layer] exists; register it AFTER the capture's
    hooks (hooks run in registration order) so the capture sees the tokens first."""
    def stop(*_args) -> None:
        raise _StopForward

    layers = language_model.layers
    if layer == 0:
        return layers[0].register_forward_pre_hook(stop)
    if layer < len(layers):
        return layers[layer - 1].register_forward_hook(stop)
    return language_model.norm.register_forward_hook(stop)


def _prefix_forward(pi0: nn.Module, batch: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> None:
    """The VLM pass over π0's prefix, as ``sample_actions`` runs it (bidirectional prefix attention)."""
    ids = batch["input_ids"].to(device)
    mask = batch["attention_mask"].to(device)
    embeds = pi0.model.embed_prefix(ids, batch["pixel_values"].to(device, dtype),
                                    batch["pixel_attention_mask"].to(device))
    pi0.model.vlm(inputs_embeds=embeds, attention_mask=mask, position_ids=mask.cumsum(-1) - 1,
                  token_type_ids=torch.zeros_like(ids), use_cache=False)


@torch.no_grad()
def extract_features(policy, frames: DepthFrames, layer: int, batch_size: int = 8,
                     storage_dtype: torch.dtype = torch.bfloat16, stop_early: bool = True) -> torch.Tensor:
    """hidden_states[layer] of the visual tokens for every frame: [N, 768, D] on the CPU.

    ``layer`` follows transformers' ``output_hidden_states`` indexing (0 = embeddings).
    """
    config = policy.processor.config
    if tuple(config.camera_roles) != tuple(frames.roles):
        raise ValueError(f"the policy's cameras {config.camera_roles} are not the frames' {frames.roles}")
    pi0 = policy.pi0
    lm = pi0.model.vlm.language_model
    if not 0 <= layer <= len(lm.layers):
        raise ValueError(f"layer {layer} out of range: the VLM has hidden_states 0..{len(lm.layers)}")
    policy.eval()
    device, dtype = policy.device, policy.dtype
    capture = LayerCapture(lm.layers, [layer], n_visual=config.num_visual_tokens, final_norm=lm.norm, root=lm)
    stop = _stop_after(lm, layer) if stop_early else None
    out = []
    try:
        for start in range(0, len(frames), batch_size):
            batch = policy.processor(frames.samples(range(start, min(start + batch_size, len(frames)))))
            try:
                _prefix_forward(pi0, batch, device, dtype)
            except _StopForward:
                pass
            out.append(capture.pop()[layer].to("cpu", storage_dtype))
    finally:
        capture.remove()
        if stop is not None:
            stop.remove()
    return torch.cat(out)
