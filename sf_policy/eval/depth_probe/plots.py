"""The depth probe's figures (matplotlib's object API: no pyplot, no display backend): held-out
examples per checkpoint, and the metrics per camera as bars."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .frames import DepthFrames
from .probe import ProbeRun
from .targets import letterbox_nearest


def plot_examples(path: Path, frames: DepthFrames, depth: torch.Tensor, valid: torch.Tensor,
                  examples: Sequence[tuple[int, int]], runs: Sequence[ProbeRun]) -> None:
    """Rows: held-out (frame, camera) examples; columns: the letterboxed image, true depth, each probe."""
    from matplotlib.figure import Figure

    if not examples:
        return
    cols = 2 + len(runs)
    fig = Figure(figsize=(2.4 * cols, 2.4 * len(examples)), layout="constrained")
    axes = fig.subplots(len(examples), cols, squeeze=False)
    for row, (f, c) in enumerate(examples):
        rgb, _ = letterbox_nearest(frames.images[f, c], 4 * depth.shape[-1])
        true = depth[f, c].numpy()
        mask = valid[f, c].numpy()
        lo, hi = (np.percentile(true[mask], [2, 98]) if mask.any() else (0.0, 1.0))
        panels = [("image", None), ("true depth", true)] + [(r.report["label"], r.examples[row].numpy()) for r in runs]
        for col, (title, value) in enumerate(panels):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if value is None:
                ax.imshow(rgb)
                ax.set_ylabel(f"{frames.roles[c]}\nepisode {frames.episode[f]}", fontsize=8)
            else:
                shown = np.ma.masked_where(~mask, value)
                image = ax.imshow(shown, cmap="turbo", vmin=lo, vmax=hi, interpolation="nearest")
                if col == cols - 1:
                    fig.colorbar(image, ax=ax, shrink=0.8, label="m")
            if row == 0:
                ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=100)


def plot_metrics(path: Path, report: dict) -> None:
    """Grouped bars per camera (and overall): AbsRel (lower is better) and δ<1.25 (higher is better)."""
    from matplotlib.figure import Figure

    groups = ["overall", *report["frames"]["roles"]]
    series = [(r["label"], r["metrics"]) for r in report["checkpoints"]] + [("constant", report["constant_baseline"])]
    fig = Figure(figsize=(4 + 1.2 * len(groups) * len(series) / 2, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    width = 0.8 / len(series)
    x = np.arange(len(groups))
    for ax, key, title in ((axes[0], "abs_rel", "AbsRel ↓"), (axes[1], "delta1", "δ < 1.25 ↑")):
        for k, (label, metrics) in enumerate(series):
            values = [metrics[g][key] if metrics[g][key] is not None else np.nan for g in groups]
            ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, label=label,
                   hatch="//" if label == "constant" else None, alpha=0.6 if label == "constant" else 1.0)
        ax.set_xticks(x, groups, fontsize=8)
        ax.set_title(f"{title}  (layer {report['layer']})", fontsize=10)
    axes[1].set_ylim(0, 1)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.savefig(path, dpi=100)
