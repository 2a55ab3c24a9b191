"""The whole loop on one machine: record → teacher cache → train SF and baseline → closed-loop
evaluation → replay report. What ``sf demo`` runs (README's main command).

Every stage is the tool a user runs by hand, called with the same arguments:

1. record: the twin's scripted operator through the ROS graph into a LeRobot v3 dataset
   (``sf demo --until record`` / ``ros2 launch sf_bringup record.launch.py sim:=true``);
2. train: ``sf train cache-teacher tiny`` then ``sf train run tiny`` twice, α = 0.5 (Spatial
   Forcing) and α = 0 (the π0 baseline), same seed, data and steps;
3. evaluate: ``sf eval sim`` with both checkpoints on seeded scenes that were never recorded,
   plus the scripted expert as the reference;
4. replay: ``sf eval replay`` of the SF checkpoint over the episode training held out, from
   the dataset and from that episode's raw MCAP bag (the recorder writes both).

Sizes are for a 2-core CPU (the tiny presets): the point is that every artifact is real and
every stage connects, not that a 4-layer model trained for minutes on a handful of
demonstrations solves the task (README: "What the demo can and cannot show").
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

STAGES = ("record", "train", "eval", "replay")


@dataclass
class LoopSettings:
    task: str = "grasp_vegetable"
    episodes: int = 8            # recorded demonstrations
    seed: int = 0                # first recorded scene
    train_steps: int = 600
    eval_episodes: int = 5
    eval_seed: int = 1000        # first evaluation scene: never among the recorded ones
    latency_ticks: int = 3
    replay_every: int = 5        # one replayed chunk every this many frames
    bags: bool = True            # also record each episode's raw topics (MCAP) and replay one of them
    until: str = "replay"

    def __post_init__(self) -> None:
        if self.until not in STAGES:
            raise ValueError(f"until must be one of {', '.join(STAGES)}, got {self.until!r}")
        if min(self.episodes, self.train_steps, self.eval_episodes, self.replay_every) < 1:
            raise ValueError("episodes, train_steps, eval_episodes and replay_every must be at least 1")
        if self.eval_seed < self.seed + 3 * self.episodes:  # record_nodes may try up to 3x the seeds
            raise ValueError(f"eval_seed {self.eval_seed} overlaps the recorded seeds from {self.seed}")


def run_loop(out: Path, settings: LoopSettings, *, verbose: bool = False, echo: Callable = print) -> dict:
    """Run the stages up to ``settings.until``; writes and returns ``out/loop.json``."""
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"settings": asdict(settings), "stages": {}, "artifacts": {}, "checks": {}}
    last = STAGES.index(settings.until)
    with _Stage(summary, "record", echo):
        dataset = _record(out, settings, verbose, echo, summary)
    if last >= 1 and summary["checks"].get("dataset recorded and valid"):
        with _Stage(summary, "train", echo):
            runs = _train(out, settings, dataset, summary)
        if last >= 2:
            with _Stage(summary, "eval", echo):
                _evaluate(out, settings, runs, summary)
        if last >= 3:
            with _Stage(summary, "replay", echo):
                _replay(out, settings, dataset, runs["sf"], summary)
    (out / "loop.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


class _Stage:
    """Times a stage and records a failure without hiding it."""

    def __init__(self, summary: dict, name: str, echo: Callable):
        self.summary, self.name, self.echo = summary, name, echo

    def __enter__(self):
        self.started = time.perf_counter()
        self.echo(f"[bold]── {self.name}[/bold]")
        return self

    def __exit__(self, kind, error, tb):
        seconds = round(time.perf_counter() - self.started, 1)
        self.summary["stages"][self.name] = {"seconds": seconds, "ok": error is None}
        if error is not None:
            self.summary["stages"][self.name]["error"] = f"{kind.__name__}: {error}"
            self.summary["checks"][f"{self.name} ran"] = False
            return False
        self.summary["checks"][f"{self.name} ran"] = True
        self.echo(f"   {self.name} done in {seconds:.0f} s")
        return False


def _record(out: Path, s: LoopSettings, verbose: bool, echo: Callable, summary: dict) -> Path:
    from .demo import run_record

    report = run_record(out / "record", s.task, s.episodes, s.seed, measure_s=2.0, verbose=verbose, echo=echo,
                        bags=s.bags)
    dataset = Path(report["dataset"]["root"])
    summary["record"] = report
    summary["artifacts"]["dataset"] = str(dataset)
    if s.bags:
        summary["artifacts"]["bags"] = str(out / "record" / "bags")
    summary["checks"]["dataset recorded and valid"] = bool(report.get("checks")) and all(report["checks"].values())
    return dataset


def _train(out: Path, s: LoopSettings, dataset: Path, summary: dict) -> dict[str, Path]:
    from .train.config import load_config
    from .train.loop import train
    from .train.targets import build_cache

    runs = {}
    for key, name, alpha in (("sf", "tiny_sf", 0.5), ("baseline", "tiny_baseline", 0.0)):
        cfg = load_config("tiny", [f"data.root={dataset}", f"output_dir={out / 'train'}", f"name={name}",
                                   f"optim.steps={s.train_steps}", f"align.alpha={alpha}",
                                   f"log.save_every={s.train_steps}", f"log.eval_every={max(s.train_steps // 3, 1)}"])
        if cfg.aligned and cfg.teacher.mode == "cache":
            summary["artifacts"]["teacher_cache"] = str(build_cache(cfg.data.root, cfg.teacher).path)
        runs[key] = train(cfg, progress=True)
        summary["artifacts"][f"checkpoint_{key}"] = str(runs[key])
        summary.setdefault("train", {})[key] = _last_metrics(out / "train" / name / "metrics.jsonl")
    return runs


def _last_metrics(path: Path) -> dict:
    """The final training and held-out figures of a run (metrics.jsonl)."""
    last: dict = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            last.update(json.loads(line))
    return {k: v for k, v in last.items() if k in ("step", "action", "align", "eval/action", "eval/joint_mae_rad",
                                                   "eval/gripper_mae_m")}


def _evaluate(out: Path, s: LoopSettings, runs: dict[str, Path], summary: dict) -> None:
    from .eval.sim import evaluate_checkpoints

    results = evaluate_checkpoints([runs["sf"], runs["baseline"]], s.task, s.eval_episodes, s.eval_seed,
                                   out=out / "eval", labels=["SF (tiny, α=0.5)", "baseline (tiny, α=0)"],
                                   latency_ticks=s.latency_ticks)
    summary["eval"] = [r.summary() for r in results]
    summary["artifacts"]["eval_table"] = str(out / "eval" / "results.md")
    summary["artifacts"]["eval_plot"] = str(out / "eval" / "success.png")


def _replay(out: Path, s: LoopSettings, dataset: Path, checkpoint: Path, summary: dict) -> None:
    from .data.reader import DatasetReader
    from .eval.replay import replay
    from .train.checkpoint import TRAIN_CONFIG_FILE
    from .train.config import load_config
    from .train.data import heldout_positions

    cfg = load_config(str(Path(checkpoint) / TRAIN_CONFIG_FILE))  # the split training actually held out
    reader = DatasetReader(dataset)
    try:
        ids = [e.index for e in reader.episodes]
    finally:
        reader.close()
    held = sorted(heldout_positions(len(ids), cfg.data.heldout_episodes, cfg.seed))
    episodes = [ids[i] for i in held] or ids[-1:]
    result = replay(checkpoint, dataset=dataset, out=out / "replay", episodes=episodes, every=s.replay_every)
    summary["replay"] = {"episodes": episodes, "metrics": _headline(result.metrics)}
    summary["artifacts"]["replay_report"] = str(result.report_path)
    summary["artifacts"]["replay_markdown"] = str(result.markdown_path)
    bags = [b for b in summary["record"].get("bags", []) if f"_episode_{episodes[0]}_" in Path(b).name]
    if bags:  # the same episode from its raw bag, through the recorder's synchronisation again
        from_bag = replay(checkpoint, bags=bags, out=out / "replay_bag", every=s.replay_every)
        summary["replay_bag"] = {"bag": bags[0], "metrics": _headline(from_bag.metrics)}
        summary["artifacts"]["replay_bag_report"] = str(from_bag.report_path)
        summary["checks"]["bag replays the dataset's frames"] = (
            from_bag.metrics["frames_read"] == result.metrics["frames_read"])


def _headline(metrics: dict) -> dict:
    """The scalar figures of the replay metrics (the arrays stay in its JSON)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
