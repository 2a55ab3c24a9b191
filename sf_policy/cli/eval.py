"""``sf eval``: evaluate trained checkpoints (docs/eval_depth_probe.md, docs/eval_sim.md).

  sf eval sim -c outputs/train/tiny_sf -c outputs/train/tiny_baseline --task lift_pot --episodes 20

  sf eval depth-probe outputs/train/pi0_sf outputs/train/pi0_baseline --task lift_pot --episodes 6
  sf eval depth-probe CKPT --layer 12 --steps 300 --out outputs/depth_probe --device cuda
  sf eval replay --checkpoint outputs/train/pi0_sf --dataset data/lift_pot --every 5   (docs/eval_replay.md)
  sf eval replay --checkpoint CKPT --bag bags/ep_0 --bag bags/ep_1 --max-frames 40

A checkpoint is a checkpoint directory (``.../checkpoints/step_N``) or a run directory (its
latest checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape  # messages name fields like [lower, upper]: not markup
from rich.table import Table

app = typer.Typer(help="Evaluate trained checkpoints.", no_args_is_help=True)
console = Console()


@app.callback()
def _group() -> None:
    """Evaluate trained checkpoints."""  # a callback: every command stays a subcommand (sf eval sim, replay, ...)


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
    from ..eval.depth_probe.frames import load_or_collect
    from ..eval.depth_probe.run import run_depth_probe
    from ..eval.depth_probe.train import ProbeConfig

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


def _runtime(path: Path | None, **options):
    """The runtime settings the twin runs: a parameter file (default: the deployed one) with
    the command line's options over it; a bad value names the option or the file's setting."""
    from ..config import ConfigError
    from ..runtime.config import RuntimeConfig

    try:
        runtime = RuntimeConfig.from_yaml(path) if path else RuntimeConfig.deployed()
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--runtime-config") from None
    try:
        return runtime.with_overrides(**options)
    except ValueError as exc:  # SettingError: "<setting>: <why>"; the option has the setting's name
        name = getattr(exc, "name", "")
        raise typer.BadParameter(getattr(exc, "message", str(exc)), param_hint=f"--{name.replace('_', '-')}") from None


@app.command("sim")
def sim_cmd(
    checkpoints: List[Path] = typer.Option(..., "--checkpoint", "-c", help="Checkpoint or run directory; repeat "
                                           "to compare (e.g. SF and baseline) on the same seeds."),
    task: str = typer.Option("lift_pot", help="Twin task: lift_pot, place_block, grasp_vegetable, stack_cups."),
    episodes: int = typer.Option(20, help="Seeded episodes per checkpoint (seeds seed, seed+1, ...)."),
    seed: int = typer.Option(0, help="First episode's seed."),
    label: Optional[List[str]] = typer.Option(None, help="A name per checkpoint for the table (default: its path)."),
    out: Path = typer.Option(Path("outputs/eval/sim"), help="Where results.json/.md, success.png and videos go."),
    video: bool = typer.Option(False, "--video/--no-video", help="Write an mp4 of the top camera per episode."),
    latency_ticks: int = typer.Option(3, help="Control ticks (1/30 s) the model takes to answer, simulated."),
    runtime_config: Optional[Path] = typer.Option(None, help="The policy node's parameter file whose runtime "
                                                  "settings the twin runs (default: sf_bringup's config/policy.yaml, "
                                                  "what policy.launch.py deploys)."),
    num_steps: Optional[int] = typer.Option(None, help="Flow-matching steps per chunk (default: the runtime config's)."),
    size: int = typer.Option(224, help="Rendered camera width and height (px)."),
    expert: bool = typer.Option(True, "--expert/--no-expert", help="Add the scripted expert (directly, and its "
                                "plan through the runtime as an oracle policy) as reference rows."),
    seen_scenes: bool = typer.Option(False, "--seen-scenes", help="Allow seeds the checkpoints were trained on "
                                     "(refused by default; the report then says 'seen scenes')."),
    plots: int = typer.Option(3, help="Episodes per checkpoint whose trace (target, command, state) is plotted."),
    noise_scale: Optional[float] = typer.Option(None, help="Initial flow noise scale (sampling temperature; "
                                                           "1 = π0's; default: the runtime config's)."),
    mode: Optional[str] = typer.Option(None, help="How chunks join: blend, replace or rtc (real-time chunking; "
                                                  "default: the runtime config's)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda ... (default: the runtime config's)."),
):
    """Closed-loop success rate in the twin (95 % Wilson interval), checkpoints side by side, with
    per-tick traces of what the safety filter limited and why (OUT/traces, OUT/results.md)."""
    from ..eval.sim import SeenScenesError, evaluate_checkpoints, limits_table, results_table
    from ..sim.tasks import get_task

    try:
        get_task(task)
    except (KeyError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--task")
    if episodes < 1 or latency_ticks < 0:
        raise typer.BadParameter("--episodes must be at least 1 and --latency-ticks at least 0")
    if label and len(label) != len(checkpoints):
        raise typer.BadParameter(f"{len(label)} --label for {len(checkpoints)} --checkpoint", param_hint="--label")
    for checkpoint in checkpoints:
        if not checkpoint.exists():
            raise typer.BadParameter(f"{checkpoint} does not exist", param_hint="--checkpoint")
    runtime = _runtime(runtime_config, num_steps=num_steps, noise_scale=noise_scale, mode=mode, device=device)
    try:
        results = evaluate_checkpoints(checkpoints, task, episodes, seed, out=out, labels=label,
                                       latency_ticks=latency_ticks, width=size, height=size, videos=video,
                                       expert=expert, plots=plots, seen_scenes=seen_scenes, runtime=runtime)
    except SeenScenesError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    from rich.markdown import Markdown

    console.print(Markdown(results_table(results)))
    console.print(Markdown(limits_table(results)))
    console.print(f"results: {out / 'results.md'}  {out / 'results.json'}  {out / 'success.png'}")


@app.command("scene-reading")
def scene_reading_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Checkpoint or run directory."),
    dataset: Path = typer.Option(..., help="LeRobot v3 dataset whose episodes start at rest (e.g. the training "
                                 "data: does the policy even fit what the scene decides?)."),
    frame: int = typer.Option(0, help="Control tick into each episode to probe."),
    episodes: Optional[List[int]] = typer.Option(None, help="Episode index (repeat; default all)."),
    runtime_config: Optional[Path] = typer.Option(None, help="The policy node's parameter file whose runtime "
                                                  "settings the twin runs (default: sf_bringup's config/policy.yaml, "
                                                  "what policy.launch.py deploys)."),
    num_steps: Optional[int] = typer.Option(None, help="Flow-matching steps per chunk (default: the runtime config's)."),
    out: Optional[Path] = typer.Option(None, help="Also write the figures to this JSON file."),
    device: str = typer.Option("auto", help="auto, cpu, cuda ..."),
):
    """Does the policy read the scene or only its own motion? At a frame where every episode is
    at rest in the same pose, compare its chunk to the demonstration's, to a scene-blind
    policy's, and to its own chunk with another episode's cameras (sf_policy/eval/scene_reading.py)."""
    from ..eval.scene_reading import scene_reading
    from ..runtime.inference import load_for_inference

    for path, hint in ((checkpoint, "--checkpoint"), (dataset, "--dataset")):
        if not path.exists():
            raise typer.BadParameter(f"{path} does not exist", param_hint=hint)
    policy = load_for_inference(checkpoint, device=device)
    try:
        reading = scene_reading(policy, dataset, frame=frame, episodes=episodes, num_steps=num_steps)
    except (ValueError, IndexError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    console.print(reading.summary())
    for name, *values in zip(reading.joints, reading.spread, reading.error, reading.blind_error, reading.swap,
                             reading.correlation):
        console.print(f"  {name:14s} spread {values[0]:.3f}  error {values[1]:.3f}  blind {values[2]:.3f}  "
                      f"swap {values[3]:.3f}  corr {values[4]:+.2f}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(reading.to_dict(), indent=2))
        console.print(f"written: {out}")


@app.command("replay")
def replay_cmd(
    checkpoint: Path = typer.Option(..., help="Checkpoint or run directory (its latest checkpoint)."),
    dataset: Optional[Path] = typer.Option(None, help="LeRobot v3 dataset directory to replay."),
    bag: Optional[List[Path]] = typer.Option(None, help="Raw bag directory (repeat for several; one episode each)."),
    out: Optional[Path] = typer.Option(None, help="Report directory (default outputs/eval/replay/<checkpoint>_on_"
                                                  "<dataset or bag>)."),
    episodes: Optional[List[int]] = typer.Option(None, help="Episode index to replay (repeat; default all). For "
                                                           "bags: the position in the --bag list."),
    every: int = typer.Option(1, help="Predict a chunk at one frame in this many."),
    num_steps: int = typer.Option(10, help="Flow-matching denoising steps per chunk."),
    max_frames: int = typer.Option(0, help="At most this many chunks per episode (0: no cap)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1 ..."),
    seed: int = typer.Option(0, help="Noise seed (each chunk's noise depends on seed, episode and frame)."),
):
    """Run a policy open-loop over recorded episodes: per-joint error per horizon step, chunk-to-chunk
    consistency, latency, and plots of predicted against recorded joints (report.html)."""
    from ..eval.replay import ReplayError, replay
    from ..model.policy import CheckpointError

    if (dataset is None) == (not bag):
        raise typer.BadParameter("give --dataset or --bag (not both)")
    target = out or default_replay_dir(checkpoint, dataset, bag)
    try:
        result = replay(checkpoint, dataset=dataset, bags=bag, out=target, episodes=episodes or None, every=every,
                        num_steps=num_steps, max_frames=max_frames or None, device=device, seed=seed)
    except (ReplayError, CheckpointError) as error:
        console.print(f"[red]error:[/red] {escape(str(error))}")
        raise typer.Exit(1) from None
    _print_replay(result.metrics)
    console.print(f"report: [bold]{result.report_path}[/bold]   (markdown {result.markdown_path}, "
                  f"metrics {result.metrics_path})")


def default_replay_dir(checkpoint: Path, dataset: Path | None, bags: list[Path] | None) -> Path:
    """outputs/eval/replay/<checkpoint>_on_<data>: the run's name rather than "step_N" when it is one."""
    ckpt = checkpoint.resolve()
    name = ckpt.parents[1].name if ckpt.parent.name == "checkpoints" else ckpt.name
    data = dataset.resolve().name if dataset is not None else bags[0].resolve().name
    return Path("outputs/eval/replay") / f"{name}_on_{data}"


def _print_replay(metrics: dict) -> None:
    from ..eval.report import summary_rows

    table = Table(title=f"open-loop replay: {metrics['frames_evaluated']} chunks over {len(metrics['episodes'])} "
                        f"episodes")
    for column in ("metric", "policy", "hold-position baseline"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in summary_rows(metrics["summary"]):
        table.add_row(*row)
    console.print(table)


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
