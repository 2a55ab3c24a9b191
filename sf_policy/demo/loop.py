"""The whole loop on one machine: record → teacher cache → train SF and baseline → closed-loop
evaluation → replay report. What ``sf demo`` runs (README's main command).

Every stage is the tool a user runs by hand, called with the same arguments:

1. record: the twin's scripted operator through the ROS graph into a LeRobot v3 dataset
   (``sf demo --until record`` / ``ros2 launch sf_bringup record.launch.py sim:=true``), then
   ``extra_demos`` more demonstrations recorded in-process into the same dataset
   (``sf_policy.sim.record_without_ros.record_expert``: the recorder's frames without the ROS round trip,
   tagged with their twin seeds), because a policy needs tens of them to generalise;
2. train: ``sf train cache-teacher small`` then ``sf train run small``: the π0 baseline
   (α = 0) and, with ``sf=True``, Spatial Forcing (α = 0.5) with the same seed, data and steps;
3. evaluate: ``sf eval sim`` on seeded scenes that were never recorded, with the scripted
   expert and its plan through the runtime (the oracle) as reference rows, then the baseline
   again on scenes it was trained on (``seen_episodes``; the consistency check, labelled
   "seen scenes");
4. replay: ``sf eval replay`` of the first checkpoint over one of the episodes recorded
   through ROS, from the dataset and from that episode's raw MCAP bag (the recorder writes both).

Sizes are for a 2-core CPU (the ``small`` preset's π0 from scratch at the ``micro`` size, docs/results/learn.md);
README "What the demo shows" says what its figures can and cannot mean.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

STAGES = ("record", "train", "eval", "replay")


@dataclass
class LoopSettings:
    task: str = "lift_pot"
    episodes: int = 8            # demonstrations recorded through ROS
    seed: int = 0                # first recorded scene
    extra_demos: int = 42        # more demonstrations recorded in-process (0: none)
    extra_seed: int = 100        # their first scene
    preset: str = "small"
    size: str = "micro"          # policy.size: micro (56 px cameras) steps 3× faster than small (112 px) on 2 cores
    train_steps: int = 12000
    sf: bool = False             # also train Spatial Forcing (α = 0.5) beside the baseline
    eval_episodes: int = 10
    eval_seed: int = 1000        # first evaluation scene: never among the recorded ones
    seen_episodes: int = 4       # the baseline again on this many of its training scenes (0: skip)
    latency_ticks: int = 3
    replay_every: int = 5        # one replayed chunk every this many frames
    bags: bool = True            # also record each episode's raw topics (MCAP) and replay one of them
    until: str = "replay"

    def __post_init__(self) -> None:
        if self.until not in STAGES:
            raise ValueError(f"until must be one of {', '.join(STAGES)}, got {self.until!r}")
        if min(self.episodes, self.train_steps, self.eval_episodes, self.replay_every) < 1:
            raise ValueError("episodes, train_steps, eval_episodes and replay_every must be at least 1")
        from ..model.policy import SCRATCH_SIZES  # before minutes of recording, not at training

        if self.size not in SCRATCH_SIZES:
            raise ValueError(f"size must be one of {', '.join(SCRATCH_SIZES)}, got {self.size!r}")
        if min(self.extra_demos, self.seen_episodes) < 0:
            raise ValueError("extra_demos and seen_episodes must be >= 0")
        recorded = [(self.seed, self.seed + 3 * self.episodes)]  # record_nodes may try up to 3x the seeds
        if self.extra_demos:
            recorded.append((self.extra_seed, self.extra_seed + 3 * self.extra_demos))
            if self.extra_seed < self.seed + 3 * self.episodes and self.seed < self.extra_seed + 3 * self.extra_demos:
                raise ValueError(f"extra_seed {self.extra_seed} overlaps the scenes recorded through ROS from "
                                 f"{self.seed}")
        for low, high in recorded:
            if self.eval_seed < high and low < self.eval_seed + self.eval_episodes:
                raise ValueError(f"eval_seed {self.eval_seed} overlaps the recorded seeds {low}–{high - 1}")


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
                _replay(out, settings, dataset, runs["sf" if "sf" in runs else "baseline"], summary)
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
    from .ros_graphs import run_record

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
    from ..sim.record_without_ros import record_expert
    from ..train.config import load_config
    from ..train.loop import train
    from ..train.targets import build_cache, vla_grid

    if s.extra_demos:
        seeds = record_expert(dataset, s.task, episodes=s.extra_demos, seed=s.extra_seed)
        summary["record"]["extra_demos"] = {"episodes": len(seeds), "seeds": seeds, "how": "in-process (record_expert)"}
    runs = {}
    models = (("baseline", f"{s.size}_baseline", 0.0),) + ((("sf", f"{s.size}_sf", 0.5),) if s.sf else ())
    for key, name, alpha in models:
        cfg = load_config(s.preset, [f"data.root={dataset}", f"output_dir={out / 'train'}", f"name={name}",
                                     f"policy.size={s.size}", f"optim.steps={s.train_steps}",
                                     f"align.alpha={alpha}",
                                     f"log.save_every={s.train_steps}", "log.eval_every=0"])
        if cfg.aligned and cfg.teacher.mode == "cache":
            cache = build_cache(cfg.data.root, cfg.teacher, grid=vla_grid(cfg.policy), dim=cfg.align.teacher_dim)
            summary["artifacts"]["teacher_cache"] = str(cache.path)
        shutil.rmtree(out / "train" / name, ignore_errors=True)  # this loop's own run from before: retrained
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
    from ..eval.sim import evaluate_checkpoints, write_results

    keys = [k for k in ("baseline", "sf") if k in runs]
    labels = {"baseline": f"π0 baseline ({s.size}, α=0)", "sf": f"SF ({s.size}, α=0.5)"}
    results = evaluate_checkpoints([runs[k] for k in keys], s.task, s.eval_episodes, s.eval_seed, out=out / "eval",
                                   labels=[labels[k] for k in keys], latency_ticks=s.latency_ticks)
    seen_seeds = summary["record"].get("extra_demos", {}).get("seeds", [])[:s.seen_episodes]
    if seen_seeds:  # the consistency check: the same policy on scenes it learnt from
        seen = evaluate_checkpoints([runs["baseline"]], s.task, len(seen_seeds), seen_seeds[0], out=out / "eval_seen",
                                    labels=[f"{labels['baseline']} on its training scenes"], expert=False,
                                    seen_scenes=True, latency_ticks=s.latency_ticks, plots=1)
        results.extend(seen)
        write_results(results, out / "eval")
    summary["eval"] = [r.summary() | {"label": r.label} for r in results]
    # The headline, not a check: a scaled-down run (tests, --train-steps 3) learns nothing and is still a pass.
    summary["headline"] = {r.label: f"{r.successes}/{len(r.episodes)}" for r in results}
    summary["artifacts"]["eval_table"] = str(out / "eval" / "results.md")
    summary["artifacts"]["eval_plot"] = str(out / "eval" / "success.png")
    summary["artifacts"]["eval_traces"] = str(out / "eval" / "traces")


def _replay(out: Path, s: LoopSettings, dataset: Path, checkpoint: Path, summary: dict) -> None:
    from ..data.reader import DatasetReader
    from ..eval.replay import replay
    from ..train.checkpoint import TRAIN_CONFIG_FILE
    from ..train.config import load_config
    from ..train.data import heldout_positions

    cfg = load_config(str(Path(checkpoint) / TRAIN_CONFIG_FILE))  # the split training actually held out
    reader = DatasetReader(dataset)
    try:
        ids = [e.index for e in reader.episodes]
    finally:
        reader.close()
    held = sorted(heldout_positions(len(ids), cfg.data.heldout_episodes, cfg.seed))
    recorded = summary["record"]["dataset"]["episodes"]  # the first ones: through ROS, with bags
    episodes = [ids[i] for i in held if i < recorded] or ids[recorded - 1:recorded]
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
