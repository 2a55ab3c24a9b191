"""A whole depth-probe run: every checkpoint probed on the same frames, split, layer and settings,
next to the constant reference; the report (depth_probe.json) and its figures."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .features import checkpoint_align_layer
from .frames import DepthFrames
from .metrics import constant_prediction, metrics_by_camera
from .plots import plot_examples, plot_metrics
from .probe import probe_checkpoint
from .targets import depth_targets
from .train import ProbeConfig

REPORT_FILE = "depth_probe.json"
EXAMPLES_FIGURE = "depth_probe_examples.png"
METRICS_FIGURE = "depth_probe_metrics.png"


def pick_examples(test_idx: np.ndarray, n_cams: int, count: int = 3) -> list[tuple[int, int]]:
    """``count`` (frame, camera) pairs spread over the test frames, cycling through the cameras."""
    if len(test_idx) == 0 or count <= 0:
        return []
    spots = np.linspace(0, len(test_idx) - 1, count).round().astype(int)
    return [(int(test_idx[s]), k % n_cams) for k, s in enumerate(spots)]


def run_depth_probe(checkpoints: Sequence[str | Path], frames: DepthFrames, out: str | Path | None = None,
                    layer: int | None = None, config: ProbeConfig | None = None, test_episodes: int = 1,
                    device: str = "auto", dtype: str | None = None, n_examples: int = 3,
                    log: Callable[[str], None] | None = None) -> dict:
    """Probe each checkpoint on the same frames, split, layer and probe settings; write the report.

    The layer is resolved once for all (``layer``, else the first checkpoint that has an
    align.json, else ``default_layer``) so that an SF checkpoint and its baseline are compared
    at the same depth. Writes ``depth_probe.json`` and two figures under ``out`` when given.
    """
    if not checkpoints:
        raise ValueError("give at least one checkpoint")
    config = config or ProbeConfig()
    train_idx, test_idx = frames.split(test_episodes)
    depth, valid = depth_targets(frames, config.out_size, config.max_depth)
    if layer is None:
        from ...train.checkpoint import resolve_checkpoint

        layer = next((k for k in (checkpoint_align_layer(resolve_checkpoint(c)) for c in checkpoints)
                      if k is not None), None)
    examples = pick_examples(test_idx, len(frames.roles), n_examples)
    runs = []
    for checkpoint in checkpoints:
        run = probe_checkpoint(checkpoint, frames, depth, valid, train_idx, test_idx, layer, config, examples,
                               device, dtype, log)
        layer = run.report["layer"]  # a default resolved on the first model holds for the rest
        runs.append(run)
        if log is not None:
            m = run.report["metrics"]["overall"]
            log(f"{run.report['label']}: AbsRel {_fmt(m['abs_rel'])}  RMSE {_fmt(m['rmse'])} m  "
                f"δ<1.25 {_fmt(m['delta1'])}")
    _dedupe_labels([r.report for r in runs])
    constant = constant_prediction(depth, valid, train_idx, test_idx)
    seeds = lambda idx: sorted(set(frames.episode[idx].tolist()))  # noqa: E731
    report = {
        "frames": frames.meta | {"roles": list(frames.roles), "count": len(frames)},
        "split": {"train_episodes": seeds(train_idx), "test_episodes": seeds(test_idx),
                  "train_frames": int(len(train_idx)), "test_frames": int(len(test_idx))},
        "layer": layer,
        "probe": config.to_dict(),
        "metrics_pixels": "pooled over the valid pixels of the held-out episodes' frames",
        "constant_baseline": metrics_by_camera(constant, depth[test_idx], valid[test_idx], frames.roles),
        "checkpoints": [r.report for r in runs],
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / REPORT_FILE).write_text(json.dumps(report, indent=1, allow_nan=False))
        plot_examples(out / EXAMPLES_FIGURE, frames, depth, valid, examples, runs)
        plot_metrics(out / METRICS_FIGURE, report)
    return report


def _dedupe_labels(reports: list[dict]) -> None:
    seen: dict[str, int] = {}
    for r in reports:
        n = seen.get(r["label"], 0)
        seen[r["label"]] = n + 1
        if n:
            r["label"] = f"{r['label']} ({n + 1})"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
