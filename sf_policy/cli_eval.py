"""``sf eval``: evaluate trained checkpoints (docs/eval_depth_probe.md).

  sf eval depth-probe outputs/train/pi0_sf outputs/train/pi0_baseline --task lift_pot --episodes 6
  sf eval depth-probe CKPT --layer 12 --steps 300 --out outputs/depth_probe --device cuda

A checkpoint is a checkpoint directory (``.../checkpoints/step_N``) or a run directory (its
latest checkpoint).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Evaluate trained checkpoints.", no_args_is_help=True)
console = Console()


@app.callback()
def _group() -> None:
    """Evaluate trained checkpoints."""  # a callback keeps `depth-probe` a subcommand even while it is the only one


@app.command("depth-probe")
def depth_probe_cmd(
    checkpoints: List[Path] = typer.Argument(..., metavar="CHECKPOINT...",
                                             help="Checkpoint or run directories; several are compared."),
    task: str = typer.Option("lift_pot", help="Twin task whose scripted expert provides the frames."),
    episodes: int = typer.Option(6, help="Episodes (seeds seed, seed+1, ...)."),
    test_episodes: int = typer.Option(0, help="Held-out episodes, the last ones (0: a third, at least 1)."),
    seed: int = typer.Option(0, help="First episode's seed."),
    every: int = typer.Option(5, help="Keep one frame every this many control ticks (30 Hz)."),
    max_frames: int = typer.Option(0, help="At most this many frames per episode (0: no cap)."),
    width: int = typer.Option(320, help="Rendered camera width (px)."),
    height: int = typer.Option(240, help="Rendered camera height (px)."),
    layer: Optional[int] = typer.Option(None, help="hidden_states index to probe (default: the SF checkpoint's "
                                                   "aligned layer, else two thirds deep: 12 of 18)."),
    steps: int = typer.Option(300, help="Probe training steps."),
    batch_size: int = typer.Option(16, help="Depth maps per probe step."),
    lr: float = typer.Option(1e-3, help="Probe learning rate (AdamW, cosine decay)."),
    channels: int = typer.Option(128, help="Probe width after reassembling the tokens."),
    out_size: int = typer.Option(64, help="Depth resolution on the 224² letterbox canvas (16 × 2^n)."),
    probe_seed: int = typer.Option(0, help="Seed of the probe's initialisation and batches."),
    out: Path = typer.Option(Path("outputs/depth_probe"), help="Report directory (JSON and figures)."),
    frames_cache: Optional[Path] = typer.Option(None, "--frames", help="Frame cache .npz (default OUT/frames.npz); "
                                                "reused when made with the same task/episodes/size/every."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1 ..."),
    dtype: Optional[str] = typer.Option(None, help="Policy dtype (default bfloat16 on GPU, float32 on CPU)."),
):
    """Train a small DPT-style depth head on frozen layer-k visual tokens; report AbsRel, RMSE, δ<1.25."""
    from .eval.depth_probe import ProbeConfig, load_or_collect, run_depth_probe

    test = test_episodes or max(1, episodes // 3)
    if not 1 <= test < episodes:
        raise typer.BadParameter(f"need 1 <= test episodes < episodes, got {test} of {episodes}")
    frames = load_or_collect(frames_cache or out / "frames.npz", log=console.print, task=task, episodes=episodes,
                             seed=seed, width=width, height=height, every=every, max_frames=max_frames)
    config = ProbeConfig(steps=steps, batch_size=batch_size, lr=lr, channels=channels, out_size=out_size,
                         seed=probe_seed)
    report = run_depth_probe([str(c) for c in checkpoints], frames, out, layer, config, test, device, dtype,
                             log=console.print)
    _print_report(report)
    console.print(f"report: {out / 'depth_probe.json'}   figures: {out / 'depth_probe_examples.png'}, "
                  f"{out / 'depth_probe_metrics.png'}")


def _print_report(report: dict) -> None:
    """One block per camera (and overall), one row per checkpoint: the comparison reads down a column."""
    split = report["split"]
    table = Table(title=f"depth probe on hidden_states[{report['layer']}]: {split['test_frames']} held-out frames "
                        f"(episodes {split['test_episodes']}), probe trained on {split['train_frames']}")
    for column in ("camera", "checkpoint", "AbsRel ↓", "RMSE m ↓", "δ<1.25 ↑"):
        table.add_column(column, justify="left" if column in ("camera", "checkpoint") else "right")
    rows = [(r["label"], r["metrics"]) for r in report["checkpoints"]]
    rows.append(("constant (no features)", report["constant_baseline"]))
    for group in ("overall", *report["frames"]["roles"]):
        for k, (label, metrics) in enumerate(rows):
            m = metrics[group]
            table.add_row(group if k == 0 else "", label, *(_num(m[key]) for key in ("abs_rel", "rmse", "delta1")),
                          end_section=k == len(rows) - 1)
    console.print(table)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main() -> None:
    app()


if __name__ == "__main__":
    main()
