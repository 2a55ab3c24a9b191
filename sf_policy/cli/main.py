"""``sf``: the command-line entry point outside ``ros2 launch``.

Subcommands grow with the stack (``sf dataset``, ``sf train``, ``sf serve``, ``sf eval``...).
No ROS import happens here: ROS graphs run as node processes (see ``sf_policy.bringup.launcher``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape  # messages name fields like [lower, upper]: not markup
from rich.table import Table

from ..demo.loop import LoopSettings
from .calibrate import app as calibrate_app
from .dataset import app as dataset_app
from .eval import app as eval_app
from .serve import serve_cmd
from .train import app as train_app

app = typer.Typer(help="Spatial Forcing on the AgileX bimanual Piper.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
launch_app = typer.Typer(help="Start a ROS 2 graph without the ROS launch system (same plan as ros2 launch).",
                         no_args_is_help=True)
config_app = typer.Typer(help="Check configuration files.", no_args_is_help=True)
app.add_typer(launch_app, name="launch")
app.add_typer(config_app, name="config")
app.add_typer(dataset_app, name="dataset")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.add_typer(calibrate_app, name="calibrate")
app.command("serve")(serve_cmd)
console = Console()


@launch_app.command("drivers")
def launch_drivers(
    sim: bool = typer.Option(False, help="Simulated arms on virtual CAN buses instead of hardware."),
    mode: str = typer.Option("follow", help="follow: execute joint commands; teleop: read only."),
    robot_config: Optional[Path] = typer.Option(None, help="Robot YAML (default: sf_bringup config)."),
    camera_config: Optional[Path] = typer.Option(None, help="Cameras YAML (default: sf_bringup config; none in sim)."),
    duration: Optional[float] = typer.Option(None, help="Stop after this many seconds (default: until Ctrl-C)."),
):
    """Arm and camera drivers: what ``ros2 launch sf_bringup drivers.launch.py`` starts."""
    from ..bringup.plan import driver_nodes

    specs = driver_nodes(sim=sim, mode=mode, robot_config=str(robot_config) if robot_config else None,
                         camera_config=str(camera_config) if camera_config else None)
    console.print(f"starting {len(specs)} nodes: {', '.join(s.name for s in specs)}  (Ctrl-C stops)")
    _run_graph(specs, local=sim, duration=duration)  # simulated graphs stay on loopback


def _run_graph(specs, local: bool = True, duration: float | None = None) -> None:
    """Run the plan's nodes as processes until Ctrl-C, ``duration`` or a node exits; exit with its code."""
    from ..bringup.launcher import Launch
    from ..bringup.env import ros_env

    with Launch(specs, env=ros_env(local=local)) as graph:
        code = graph.wait(duration)
    raise typer.Exit(code)


@config_app.command("check")
def config_check(robot: Optional[Path] = typer.Option(None), cameras: Optional[Path] = typer.Option(None)):
    """Validate the robot and camera files (default: the shipped ones)."""
    from ..bringup.plan import bringup_share
    from ..config import ConfigError, load_camera_config, load_robot_config

    share = bringup_share() / "config"
    try:
        r = load_robot_config(robot or share / "robot.yaml")
        c = load_camera_config(cameras or share / "cameras.yaml")
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2)
    console.print(f"[green]ok[/green]: arms {', '.join(f'{a.side}@{a.can_port}' for a in r.arms.values())}; "
                  f"cameras {', '.join(f'{k}={v.serial or v.device}' for k, v in c.items())}")


@app.command()
def demo(
    out: Path = typer.Option(Path("outputs/demo"), help="Where every artifact, report and log goes."),
    task: str = typer.Option(LoopSettings.task, help="Twin task: grasp_vegetable, lift_pot, place_block, stack_cups."),
    episodes: int = typer.Option(LoopSettings.episodes, help="Demonstrations the scripted operator records "
                                 "through ROS (seeds seed, seed+1, ...)."),
    seed: int = typer.Option(0, help="First recorded episode's seed."),
    extra_demos: int = typer.Option(LoopSettings.extra_demos, help="More demonstrations recorded in-process into "
                                    "the same dataset (seeds from 100) before training."),
    until: str = typer.Option("replay", help="Last stage: record, train, eval or replay (the whole loop)."),
    preset: str = typer.Option(LoopSettings.preset, help="Training preset (sf_policy/train/configs)."),
    size: str = typer.Option(LoopSettings.size, help="The π0's size (policy.size): micro (56 px cameras, ~0.065 s a "
                             "step here) or small (112 px, ~0.2 s; docs/results/learn.md)."),
    train_steps: int = typer.Option(LoopSettings.train_steps, help="Training steps of each policy."),
    sf: bool = typer.Option(LoopSettings.sf, "--sf/--no-sf", help="Also train Spatial Forcing (α = 0.5) beside the "
                            "baseline (twice the training time)."),
    eval_episodes: int = typer.Option(LoopSettings.eval_episodes, help="Closed-loop episodes per checkpoint, on "
                                      "scenes never recorded."),
    eval_seed: int = typer.Option(1000, help="First evaluation scene's seed."),
    seen_episodes: int = typer.Option(LoopSettings.seen_episodes, help="Also run the baseline on this many of its "
                                      "training scenes (the consistency check; 0: skip)."),
    bags: bool = typer.Option(True, "--bags/--no-bags", help="Also record raw MCAP bags (~70 MB per episode) and "
                                                            "replay the held-out one from its bag."),
    drivers: bool = typer.Option(False, "--drivers", help="Instead: the driver graph on CAN-level simulated arms."),
    record: bool = typer.Option(True, "--record/--no-record",
                                help="--no-record: only the twin and its scripted operator over ROS (no dataset)."),
    measure_s: float = typer.Option(3.0, help="Seconds of rate measurement."),
    motion_s: float = typer.Option(4.0, help="--drivers: seconds of commanded motion."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the nodes' logs live."),
):
    """The whole loop on this machine: record the twin over ROS 2 → train a π0 from scratch (and SF
    with --sf) → evaluate it closed-loop in the twin on new scenes → replay report."""
    from ..demo import ros_graphs as demo_mod

    if drivers:
        console.print("[bold]sf demo --drivers[/bold]: arm drivers on simulated Pipers (CAN level) + camera drivers "
                      "on test videos, checked over ROS 2")
        report = demo_mod.run_drivers(out, measure_s, motion_s, verbose, echo=console.print)
    elif not record:
        console.print(f"[bold]sf demo --no-record[/bold]: the MuJoCo twin ({task}) with its scripted operator "
                      f"through the ROS graph, {episodes} episodes from seed {seed}")
        report = demo_mod.run_twin(out, task, episodes, seed, measure_s, verbose, echo=console.print)
    else:
        _demo_loop(out, verbose, task=task, episodes=episodes, seed=seed, extra_demos=extra_demos, until=until,
                   preset=preset, size=size, train_steps=train_steps, sf=sf, eval_episodes=eval_episodes,
                   eval_seed=eval_seed, seen_episodes=seen_episodes, bags=bags)
        return
    _print_report(report)
    console.print(f"report: {out / 'report.json'}   logs: {out / 'launch.log'}")
    checks = report.get("checks", {})
    raise typer.Exit(0 if checks and all(checks.values()) else 1)


def _demo_loop(out: Path, verbose: bool, **settings) -> None:
    from ..demo.loop import STAGES, run_loop

    try:
        settings = LoopSettings(**settings)
    except ValueError as exc:
        raise typer.BadParameter(str(exc))
    s = settings
    stages = " → ".join(STAGES[:STAGES.index(s.until) + 1])
    console.print(f"[bold]sf demo[/bold]: {s.task}, {s.episodes} demonstrations through ROS from seed {s.seed} "
                  f"(+{s.extra_demos} in-process): {stages}, into {out}")
    summary = run_loop(out, settings, verbose=verbose, echo=console.print)
    if "record" in summary:
        _print_report(summary["record"])
        _print_dataset(summary["record"]["dataset"])
    if "eval" in summary:
        from rich.markdown import Markdown

        console.print(Markdown((out / "eval" / "results.md").read_text()))
    table = Table(title="stages")
    for column in ("stage", "seconds", "result"):
        table.add_column(column)
    for name, stage in summary["stages"].items():
        table.add_row(name, f"{stage['seconds']:.0f}", "ok" if stage["ok"] else f"[red]{stage.get('error', '')}[/red]")
    console.print(table)
    for name, path in summary["artifacts"].items():
        console.print(f"  {name:16s} {path}")
    console.print(f"summary: {out / 'loop.json'}   logs: {out / 'record' / 'launch.log'}")
    checks = summary["checks"]
    raise typer.Exit(0 if checks and all(checks.values()) else 1)


@launch_app.command("record")
def launch_record(
    task: str = typer.Option("lift_pot", help="config/tasks/<task>.yaml; its prompt is the default."),
    sim: bool = typer.Option(False, help="The MuJoCo twin with the task's scripted operator instead of the robot."),
    episodes: int = typer.Option(0, help="Stop after this many saved episodes (0: until Ctrl-C)."),
    dataset_root: Optional[Path] = typer.Option(None, help="Dataset to create or append to (default ~/sf_data/<task>)."),
    max_duration_s: Optional[float] = typer.Option(None, help="Save an episode at this length."),
    bag_root: str = typer.Option("", help="Also write each episode's raw topics as an MCAP bag here."),
    link: str = typer.Option("hardware", help="Master-puppet link: hardware or software."),
    seed: int = typer.Option(0, help="sim: first episode's seed."),
    keys: str = typer.Option("auto", help="Key/pedal helper's terminal: auto, none, or a command ('xterm -e')."),
    keymap: str = typer.Option("", help="Key map YAML for the helper (teleop/pedal.yaml for a pedal)."),
    robot_config: Optional[str] = typer.Option(None, help="Robot YAML (default: config/robot.yaml)."),
    camera_config: Optional[str] = typer.Option(None, help="Cameras YAML (default: the task's, else "
                                                           "config/cameras.yaml)."),
):
    """What ``ros2 launch sf_bringup record.launch.py`` starts; episodes from /recorder/command (record_keys)."""
    from ..bringup.plan import record_nodes

    specs = record_nodes(task, dataset_root=dataset_root, sim=sim, episodes=episodes, seed=seed,
                         max_duration_s=max_duration_s, bag_root=bag_root, link=link, robot_config=robot_config,
                         camera_config=camera_config, keys=keys, keymap=keymap)
    recorder = next(s for s in specs if s.executable == "recorder")
    helper = "the key helper's window" if any(s.executable == "record_keys" for s in specs) else "`record_keys`"
    console.print(f"recording {task} into {recorder.parameters['dataset_root']}; start/stop with {helper} "
                  "(or /recorder/command); Ctrl-C stops")
    _run_graph(specs)


@launch_app.command("policy")
def launch_policy(
    task: str = typer.Option("lift_pot", help="config/tasks/<task>.yaml: prompt, checkpoint, cameras."),
    sim: bool = typer.Option(False, help="The MuJoCo twin (the policy drives it) instead of the robot."),
    checkpoint: Optional[str] = typer.Option(None, help="Checkpoint or run directory (default: the task's)."),
    remote: str = typer.Option("", help="A policy server URL (sf serve) instead of a local model."),
    dry_run: bool = typer.Option(False, help="Commands on /policy/dry_run/... only."),
    seed: int = typer.Option(0, help="sim: the scene's seed."),
    robot_config: Optional[str] = typer.Option(None, help="Robot YAML: the drivers' and the safety filter's "
                                                          "limits (default: config/robot.yaml)."),
    camera_config: Optional[str] = typer.Option(None, help="Cameras YAML (default: the task's, else "
                                                           "config/cameras.yaml)."),
):
    """What ``ros2 launch sf_bringup policy.launch.py`` starts; Ctrl-C stops."""
    from ..bringup.plan import policy_nodes

    specs = policy_nodes(task, sim=sim, checkpoint=checkpoint, remote=remote, dry_run=dry_run, seed=seed,
                         robot_config=robot_config, camera_config=camera_config)
    console.print(f"running the {task} policy{' on the twin' if sim else ''}; /policy/estop holds the arms; "
                  "Ctrl-C stops")
    _run_graph(specs)


@launch_app.command("twin")
def launch_twin(
    task: str = typer.Option("lift_pot"),
    operator: str = typer.Option("scripted", help="scripted: the task's expert teleoperates; none: commands only."),
    seed: int = typer.Option(0),
    episodes: int = typer.Option(0, help="Stop running episodes after this many (0: keep going)."),
    width: int = typer.Option(224),
    height: int = typer.Option(224),
    duration: Optional[float] = typer.Option(None, help="Stop after this many seconds (default: until Ctrl-C)."),
):
    """The MuJoCo twin on the drivers' topics: what ``ros2 launch ... sim:=true`` starts."""
    from ..bringup.plan import twin_nodes

    specs = twin_nodes(task, operator=operator, seed=seed, episodes=episodes, width=width, height=height)
    console.print(f"starting the twin ({task}, operator {operator}); Ctrl-C stops")
    _run_graph(specs, duration=duration)


def _print_report(report: dict) -> None:
    streams = Table(title="streams")
    for col in ("topic", "rate (Hz)", "age p50 (ms)", "age p99 (ms)"):
        streams.add_column(col)
    for topic, s in report.get("streams", {}).items():
        streams.add_row(topic, f"{s['hz']:.1f}", f"{s['age_p50_ms']:.2f}", f"{s['age_p99_ms']:.2f}")
    console.print(streams)
    for side, m in report.get("motion", {}).items():
        console.print(f"{side} arm: max tracking error {m['max_tracking_error_rad']:.3f} rad during a 0.5 Hz wave, "
                      f"returned to start within {m['return_error_rad']:.4f} rad")
    episodes = report.get("episodes", [])
    if episodes:
        table = Table(title="episodes")
        for col in ("#", "task", "seed", "result", "ticks", "sim time (s)"):
            table.add_column(col)
        for e in episodes:
            table.add_row(str(e["episode"]), e["task"], str(e["seed"]),
                          "[green]success[/green]" if e["success"] else "[red]failure[/red]", str(e["ticks"]),
                          f"{e['sim_time_s']:.1f}")
        console.print(table)
        console.print(f"success: {sum(e['success'] for e in episodes)}/{len(episodes)}")
    for name, ok in report.get("checks", {}).items():
        console.print(f"  {'[green]PASS[/green]' if ok else '[red]FAIL[/red]'}  {name}")
    if report.get("missing"):
        console.print(f"[red]missing streams:[/red] {', '.join(report['missing'])}")


def _print_dataset(dataset: dict) -> None:
    from .dataset import info_cmd

    root = Path(dataset["root"])
    if root.exists() and not dataset["problems"]:
        info_cmd(root)  # what `sf dataset info` prints
    for problem in dataset["problems"]:
        console.print(f"[red]invalid:[/red] {problem}")


def main() -> None:
    app(prog_name="sf")


if __name__ == "__main__":
    sys.exit(main())
