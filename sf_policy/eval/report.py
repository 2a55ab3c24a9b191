"""The replay report: PNG figures, report.md beside them, and a self-contained report.html.

Both documents are built from one list of blocks (headings, paragraphs, tables, figures), so
they always say the same. Arms are shown in degrees and grippers in millimetres, the units a
person reads a robot in; metrics.json keeps radians and metres.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..embodiment import ARM_INDICES, GRIPPER_INDICES, JOINT_NAMES, STATE_DIM

ARM = list(ARM_INDICES)
GRIP = list(GRIPPER_INDICES)
MAX_EPISODE_FIGURES = 6   # the report stays a few MB; metrics cover every episode
FANS = 8                  # chunks drawn whole in each trajectory plot
COLORS = {"recorded": "#222222", "state": "#9a9a9a", "h0": "#1f77b4", "fan": "#ff7f0e", "hold": "#8c8c8c",
          "all": "#2ca02c"}


def display(values: np.ndarray, joint: int) -> np.ndarray:
    """rad -> degrees for arm joints, m -> mm for grippers."""
    return np.asarray(values) * 1e3 if joint in GRIP else np.degrees(values)


def unit(joint: int) -> str:
    return "mm" if joint in GRIP else "deg"


# -- figures (matplotlib's object API: no pyplot state, no display) ---------------------------

def _figure(width: float, height: float, layout: str | None = "constrained"):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout=layout)


def plot_trajectories(path: Path, run) -> Path:
    """14 panels (left arm | right arm): recorded targets, state, the h=0 prediction and a few whole chunks."""
    # Fixed margins: the constrained layout took 3 of the figure's 4 s for 14 panels.
    fig = _figure(13, 15, layout=None)
    fig.subplots_adjust(left=0.06, right=0.99, top=0.95, bottom=0.07, hspace=0.3, wspace=0.12)
    axes = fig.subplots(7, 2, sharex=True)
    T, fps = len(run.actions), run.fps
    time = np.arange(T) / fps
    fans = _fan_indices(len(run.frames))
    for j in range(STATE_DIM):
        ax = axes[j % 7, j // 7]
        ax.plot(time, display(run.actions[:, j], j), color=COLORS["recorded"], lw=1.4, label="recorded action")
        ax.plot(time, display(run.states[:, j], j), color=COLORS["state"], lw=1.0, ls="--", label="recorded state")
        for k in fans:
            t = int(run.frames[k])
            steps = min(run.chunks.shape[1], T - t)
            ax.plot(time[t:t + steps], display(run.chunks[k, :steps, j], j), color=COLORS["fan"], lw=0.9,
                    alpha=0.75, marker="o", markevery=[0], ms=3, label="predicted chunk" if k == fans[0] else None)
        if len(run.frames):
            ax.plot(run.frames / fps, display(run.chunks[:, 0, j], j), color=COLORS["h0"], lw=1.2, marker=".",
                    ms=3, label="predicted h=0")
        ax.set_title(JOINT_NAMES[j], fontsize=9, loc="left")
        ax.set_ylabel(unit(j), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("time (s)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncols=4, fontsize=9)
    fig.suptitle(f"{run.name}: predicted vs recorded joints", fontsize=12)
    fig.savefig(path, dpi=80)
    return path


def _fan_indices(n: int) -> list[int]:
    if n == 0:
        return []
    return sorted(set(np.linspace(0, n - 1, min(FANS, n)).round().astype(int).tolist()))


def plot_horizon(path: Path, metrics: dict) -> Path:
    """Mean error against how far ahead the step is: arms (deg) and grippers (mm), with the hold baseline."""
    reached = int(np.flatnonzero(metrics["pairs_per_step"])[-1]) + 1  # steps past every episode's end: no data
    mae = _array(metrics["mae_per_step"])[:reached]
    hold = _array(metrics["hold_mae_per_step"])[:reached]
    fps = metrics["settings"]["fps"]
    steps = np.arange(len(mae))
    fig = _figure(11, 3.8)
    for ax, joints, name, scale in zip(fig.subplots(1, 2), (ARM, GRIP), ("arm joints", "grippers"),
                                       (np.degrees, lambda v: v * 1e3)):
        ax.plot(steps, scale(np.nanmean(mae[:, joints], axis=1)), color=COLORS["h0"], lw=2, label="policy")
        ax.plot(steps, scale(np.nanmean(hold[:, joints], axis=1)), color=COLORS["hold"], lw=1.5, ls="--",
                label="hold position (baseline)")
        ax.set_title(f"{name}: mean absolute error", loc="left")
        ax.set_xlabel(f"horizon step h (1 step = {1000 / fps:.0f} ms)")
        ax.set_ylabel("deg" if joints is ARM else "mm")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=90)
    return path


def plot_joints(path: Path, metrics: dict) -> Path:
    """Per-joint error: at h=0, over all steps, and the hold baseline."""
    series = [("h = 0", _array(metrics["mae_h0"]), COLORS["h0"]), ("all steps", _array(metrics["mae_all"]),
                                                                    COLORS["all"]),
              ("hold baseline", _array(metrics["hold_mae_all"]), COLORS["hold"])]
    fig = _figure(12, 3.8)
    axes = fig.subplots(1, 2, width_ratios=[6, 1.3])
    for ax, joints in zip(axes, (ARM, GRIP)):
        x = np.arange(len(joints))
        width = 0.27
        for k, (label, values, color) in enumerate(series):
            ax.bar(x + (k - 1) * width, [display(values[j], j) for j in joints], width, label=label, color=color)
        ax.set_xticks(x, [JOINT_NAMES[j].replace("_", "\n", 1) for j in joints], fontsize=8)
        ax.set_ylabel("deg" if joints is ARM else "mm")
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_title("per-joint mean absolute error", loc="left")
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=90)
    return path


def plot_consistency(path: Path, metrics: dict, runs: Sequence) -> Path:
    """Per-joint disagreement of consecutive chunks, and how it evolves along each episode."""
    from .replay import consistency_series

    fig = _figure(13, 3.8)
    arms, grippers, series = fig.subplots(1, 3, width_ratios=[3, 0.8, 2.4])
    consistency = _array(metrics["consistency"])
    for ax, joints, color in ((arms, ARM, COLORS["fan"]), (grippers, GRIP, COLORS["h0"])):
        ax.bar(np.arange(len(joints)), [display(consistency[j], j) for j in joints], color=color)
        ax.set_xticks(np.arange(len(joints)), [_short(JOINT_NAMES[j]) for j in joints], fontsize=7, rotation=60)
        ax.set_ylabel(unit(joints[0]))
        ax.grid(alpha=0.3, axis="y")
    arms.set_title("consecutive chunks' disagreement on shared steps", loc="left")
    for run in runs[:MAX_EPISODE_FIGURES]:
        per_switch = consistency_series(run)
        if len(per_switch):
            series.plot(run.frames[1:] / run.fps, np.degrees(per_switch[:, ARM].mean(axis=1)), lw=1, label=run.name)
    series.set_title("arm joints, at each chunk switch", loc="left")
    series.set_xlabel("time (s)")
    series.set_ylabel("deg")
    series.grid(alpha=0.3)
    if series.get_legend_handles_labels()[0]:
        series.legend(fontsize=7)
    fig.savefig(path, dpi=90)
    return path


def _short(name: str) -> str:
    return name.replace("left_", "L ").replace("right_", "R ").replace("joint", "j")


def plot_latency(path: Path, runs: Sequence) -> Path:
    latency = np.concatenate([run.latency_ms for run in runs])
    fig = _figure(6, 3.2)
    ax = fig.subplots()
    ax.hist(latency, bins=min(40, max(5, len(latency) // 3)), color=COLORS["h0"], alpha=0.8)
    for q, style in ((50, "-"), (99, "--")):
        value = np.percentile(latency, q)
        ax.axvline(value, color="k", ls=style, lw=1, label=f"p{q} {value:.1f} ms")
    ax.set_xlabel("time per chunk (ms)")
    ax.set_ylabel("chunks")
    ax.set_title("inference latency (one frame per call)", loc="left")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=90)
    return path


def _array(values) -> np.ndarray:
    """JSON lists (None for NaN) back to float arrays."""
    return np.array(values, dtype=np.float64) if values is not None else np.full(STATE_DIM, np.nan)


# -- documents -------------------------------------------------------------------------------

@dataclass
class Block:
    kind: str          # "h1", "h2", "p", "table", "figure"
    content: object    # text, (header, rows), or (path, caption)


def _fmt(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def summary_rows(summary: dict) -> list[list[str]]:
    s = summary
    return [
        ["arm joints, MAE at h = 0", f"{_fmt(s['arm_mae_h0_deg'])} deg", f"{_fmt(s['hold_arm_mae_h0_deg'])} deg"],
        ["arm joints, MAE over the chunk", f"{_fmt(s['arm_mae_deg'])} deg", f"{_fmt(s['hold_arm_mae_deg'])} deg"],
        ["arm joints, MAE at the last step", f"{_fmt(s['arm_mae_last_deg'])} deg", ""],
        ["grippers, MAE at h = 0", f"{_fmt(s['gripper_mae_h0_mm'])} mm", ""],
        ["grippers, MAE over the chunk", f"{_fmt(s['gripper_mae_mm'])} mm", f"{_fmt(s['hold_gripper_mae_mm'])} mm"],
        ["chunk-to-chunk disagreement, arms", f"{_fmt(s['arm_consistency_deg'])} deg", ""],
        ["chunk-to-chunk disagreement, grippers", f"{_fmt(s['gripper_consistency_mm'])} mm", ""],
        ["latency p50 / p99 / max", f"{_fmt(s['latency_p50_ms'], 1)} / {_fmt(s['latency_p99_ms'], 1)} / "
                                    f"{_fmt(s['latency_max_ms'], 1)} ms", ""],
    ]


def episode_rows(metrics: dict) -> list[list[str]]:
    rows = []
    for ep in metrics["episodes"]:
        s = ep["summary"]
        rows.append([ep["name"], str(ep["frames"]), str(ep["evaluated"]), _fmt(s["arm_mae_h0_deg"]),
                     _fmt(s["arm_mae_deg"]), _fmt(s["hold_arm_mae_deg"]), _fmt(s["gripper_mae_mm"]),
                     _fmt(s["arm_consistency_deg"])])
    return rows


def build_blocks(metrics: dict, figures: dict[str, Path | list[Path]]) -> list[Block]:
    settings, source = metrics["settings"], metrics["source"]
    fps = settings["fps"]
    prompts = sorted({ep["prompt"] for ep in metrics["episodes"]})
    blocks = [
        Block("h1", "Open-loop replay report"),
        Block("p", f"Checkpoint `{metrics['checkpoint']}` on {source['kind']} "
                   f"{', '.join(f'`{p}`' for p in source['paths'])}: {len(metrics['episodes'])} episodes, "
                   f"{metrics['frames_evaluated']} chunks predicted (every {settings['every']} frame"
                   f"{'s' if settings['every'] > 1 else ''}, {settings['num_steps']} denoising steps, "
                   f"chunks of {settings['chunk_size']} steps = {settings['chunk_size'] / fps:.2f} s at {fps:g} fps, "
                   f"device {settings['device']}, seed {settings['seed']}). "
                   f"Prompt{'s' if len(prompts) > 1 else ''}: {'; '.join(repr(p) for p in prompts)}."),
        Block("table", (["metric", "policy", "hold-position baseline"], summary_rows(metrics["summary"]))),
        Block("p", "MAE: mean absolute error between chunk step h predicted at frame t and the action recorded "
                   "at frame t + h (steps past the episode's end are not counted). The hold-position baseline "
                   "predicts the current state for every step: a policy should beat it. Disagreement: where two "
                   "consecutive chunks predict the same instant, how far apart they are."),
        Block("h2", "Error along the chunk"),
        Block("figure", (figures["horizon"], "Mean absolute error per horizon step, pooled over all frames.")),
        Block("figure", (figures["joints"], "Per-joint error at h = 0 and over all steps, against the baseline.")),
        Block("h2", "Episodes"),
        Block("table", (["episode", "frames", "chunks", "arm MAE h=0 (deg)", "arm MAE (deg)", "hold (deg)",
                         "gripper MAE (mm)", "disagreement (deg)"], episode_rows(metrics))),
    ]
    for path in figures["trajectories"]:
        blocks.append(Block("figure", (path, "Black: recorded action (master arms); grey dashed: recorded state "
                                             "(puppet arms); blue: each chunk's first step; orange: whole chunks.")))
    left = len(metrics["episodes"]) - len(figures["trajectories"])
    if left > 0:
        blocks.append(Block("p", f"({left} more episodes are in metrics.json and replay.npz, not plotted.)"))
    blocks += [Block("h2", "Consistency and latency"),
               Block("figure", (figures["consistency"], "Disagreement of consecutive chunks on the steps they share.")),
               Block("figure", (figures["latency"], f"Warm-up call: {_fmt(metrics['warmup_ms'], 1)} ms (excluded). "
                                                   f"Replay throughput: {_fmt(metrics['predictions_per_s'], 2)} "
                                                   "chunks/s including decoding."))]
    return blocks


def render_markdown(blocks: list[Block], base: Path) -> str:
    lines = []
    for block in blocks:
        if block.kind == "h1":
            lines += [f"# {block.content}", ""]
        elif block.kind == "h2":
            lines += [f"## {block.content}", ""]
        elif block.kind == "p":
            lines += [block.content, ""]
        elif block.kind == "table":
            header, rows = block.content
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in rows] + [""]
        elif block.kind == "figure":
            path, caption = block.content
            lines += [f"![{caption}]({path.relative_to(base).as_posix()})", "", f"*{caption}*", ""]
    return "\n".join(lines)


CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; max-width: 1180px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #1f77b4; padding-bottom: .2em; }
h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1em 0; font-size: .95em; }
th, td { border: 1px solid #ddd; padding: .35em .8em; text-align: right; }
th { background: #f3f6fa; } td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; }
code { background: #f3f3f3; padding: 0 .25em; border-radius: 3px; }
"""


def _inline(text: str) -> str:
    """Escaped text with `code` spans."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if k % 2 else p for k, p in enumerate(parts))


def render_html(blocks: list[Block]) -> str:
    body = []
    for block in blocks:
        if block.kind in ("h1", "h2"):
            body.append(f"<{block.kind}>{_inline(block.content)}</{block.kind}>")
        elif block.kind == "p":
            body.append(f"<p>{_inline(block.content)}</p>")
        elif block.kind == "table":
            header, rows = block.content
            head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
            cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
        elif block.kind == "figure":
            path, caption = block.content
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{_inline(caption)}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Replay report</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(out: Path, metrics: dict, runs: Sequence) -> tuple[Path, Path]:
    """Figures under out/figures, then report.md and report.html; returns (html, markdown)."""
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    figures = {
        "horizon": plot_horizon(figures_dir / "error_vs_horizon.png", metrics),
        "joints": plot_joints(figures_dir / "error_per_joint.png", metrics),
        "consistency": plot_consistency(figures_dir / "consistency.png", metrics, runs),
        "latency": plot_latency(figures_dir / "latency.png", runs),
        "trajectories": [plot_trajectories(figures_dir / f"trajectories_{k:02d}.png", run)
                         for k, run in enumerate(runs[:MAX_EPISODE_FIGURES])],
    }
    blocks = build_blocks(metrics, figures)
    markdown = out / "report.md"
    markdown.write_text(render_markdown(blocks, out))
    page = out / "report.html"
    page.write_text(render_html(blocks))
    return page, markdown
