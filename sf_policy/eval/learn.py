"""Does learning work? Record scripted demonstrations in the twin, train π0 on them, run the
result closed loop: the whole chain a user relies on, measured by what they would see.

Two questions, one procedure (``bench/learn.py``, ``sf demo``, tests/test_learn.py):

* **consistency** (``seen=True``): a policy trained until it fits a few demonstrations must
  reproduce them closed loop from the same scenes. The twin is deterministic per seed, so a
  failure here is a bug in the chain (recording alignment, normalisation, delta actions,
  latency compensation, chunk merging, filtering) or a model that has not fit yet, never
  an unseen scene.
* **generalisation** (``seen=False``): success on scenes no demonstration showed, with its
  Wilson interval and the seeds, next to the scripted expert and its plan through the runtime.

Demonstrations are recorded in-process (``record_expert``: the recorder's frames without the
ROS round trip, each episode tagged with its twin seed); training is ``sf train run`` with
the given preset; evaluation is ``sf eval sim``'s ``evaluate_checkpoints``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

TRAIN_TIME_FILE = "learn_train_time.json"  # written beside a run's checkpoints by run_learn
HELD_OUT = 2  # demonstrations kept out of training for the open-loop error (held-out mode)
#: The consistency check's recipe (tests/test_learn.py, ``bench/learn.py --quick``): the chain,
#: not the sampler or the data, is under test, so sampling is deterministic (noise_scale 0), the
#: state goes in as it is (no dropout or noise), frames are drawn evenly, and there is no EMA:
#: over a run of a thousand steps an EMA still averages in weights from before the fit, and its
#: targets land a few centidegrees off, enough to miss a grasp.
#: The patch positions start at transformers' default: with sine-cosine codes the micro model had
#: not fit its one scene after 1,200 steps (they help a policy find objects across scenes).
CONSISTENCY_OVERRIDES = ("align.alpha=0", "policy.size=micro", "policy.patch_positions=random", "data.workers=0",
                         "data.state_dropout=0", "data.state_noise=0", "data.start_weight=1",
                         "optim.warmup_steps=100", "optim.ema_decay=0")


@dataclass
class LearnSettings:
    task: str = "grasp_vegetable"
    demos: int = 50              # successful scripted demonstrations, seeds demo_seed, demo_seed + 1, ...
    demo_seed: int = 0
    preset: str = "small"        # sf_policy/train/configs/<preset>.yaml
    steps: int = 12_000
    overrides: Sequence[str] = ()  # extra section.field=value for the training config
    eval_episodes: int = 20
    eval_seed: int = 5000        # first evaluation scene; seen=True evaluates the demonstrations' seeds instead
    seen: bool = False           # the consistency check: evaluate on the scenes trained on
    latency_ticks: int = 3       # simulated inference latency (100 ms: a GPU's π0)
    noise_scale: float = 1.0     # the evaluation's sampling temperature (Policy.configure_inference)
    checkpoint_every: int = 0    # also evaluate every this many steps (success vs training steps); 0: the final only
    label: str = "learned π0"

    def __post_init__(self) -> None:
        if self.demos < 1 or self.steps < 1 or self.eval_episodes < 1:
            raise ValueError("demos, steps and eval_episodes must be at least 1")


@dataclass
class LearnResult:
    task: str
    mode: str                    # "seen" (consistency) or "held-out"
    demos: int
    demo_seeds: list[int]
    steps: int
    train_minutes: float
    record_minutes: float
    eval_seeds: list[int]
    success: float
    successes: int
    episodes: int
    ci95: list[float]
    limited_fraction: float
    limits: dict | None
    expert_success: float
    oracle_success: float
    oracle_limited_fraction: float
    final_loss: float | None
    heldout_joint_mae_rad: float | None
    checkpoint: str
    noise_scale: float = 1.0
    latency_ticks: int = 3
    by_step: list[dict] = field(default_factory=list)  # success at intermediate checkpoints
    trained_on: int | None = None  # demonstrations trained on: all but HELD_OUT in held-out mode
    scene_reading: dict | None = None  # the final policy on its training demonstrations' first frame

    def to_dict(self) -> dict:
        return asdict(self)


def run_learn(settings: LearnSettings, work: Path, *, progress: bool = True, log: Callable = print) -> LearnResult:
    """Record (or reuse) the demonstrations under ``work``, train, evaluate; ``work/result.json``."""
    from ..runtime.config import RuntimeConfig
    from ..sim.record_without_ros import record_expert
    from ..train.checkpoint import step_dir
    from ..train.config import load_config
    from ..train.loop import train
    from .sim import evaluate_checkpoints

    s = settings
    work.mkdir(parents=True, exist_ok=True)
    dataset = work / "dataset"
    started = time.perf_counter()
    seeds = _recorded_seeds(dataset)
    if len(seeds) != s.demos:
        import shutil

        shutil.rmtree(dataset, ignore_errors=True)
        log(f"recording {s.demos} scripted {s.task} demonstrations (seeds from {s.demo_seed}) into {dataset}")
        seeds = record_expert(dataset, task=s.task, episodes=s.demos, seed=s.demo_seed)
    record_minutes = (time.perf_counter() - started) / 60

    name = f"{s.task}_{'seen' if s.seen else 'heldout'}"
    heldout = 0 if s.seen else HELD_OUT
    cfg = load_config(s.preset, [f"data.root={dataset}", f"output_dir={work / 'train'}", f"name={name}",
                                 f"optim.steps={s.steps}", f"data.heldout_episodes={heldout}", *s.overrides])
    every = s.checkpoint_every if 0 < s.checkpoint_every < s.steps else 0
    cfg.log.save_every, cfg.log.keep_last = every, (s.steps // every + 1 if every else 1)
    if not s.seen:  # the two held-out demonstrations give the open-loop error beside closed-loop success
        cfg.log.eval_every = every or s.steps
    run = work / "train" / name
    reused = finished_run(run, cfg)
    if reused:  # a rerun (another --report, an evaluation change) keeps the trained policy
        final, minutes = step_dir(run, s.steps), train_minutes(run)
        log(f"reusing {final}: trained with this config ({minutes:.1f} min)")
    else:
        if run.exists():  # trained with another config: kept beside, never mixed with the new run
            _replace(run, run.with_name(run.name + ".previous"), log)
        started = time.perf_counter()
        log(f"training {s.preset} for {s.steps} steps on {s.demos} demonstrations")
        final = train(cfg, progress=progress)
        minutes = (time.perf_counter() - started) / 60
        (run / TRAIN_TIME_FILE).write_text(json.dumps({"train_minutes": minutes}))
    intermediate = list(range(every, s.steps, every)) if every else []

    eval_seed = seeds[0] if s.seen else s.eval_seed
    episodes = len(seeds) if s.seen else s.eval_episodes
    if s.seen and len(seeds) != seeds[-1] - seeds[0] + 1:
        raise RuntimeError(f"the expert skipped scenes among seeds {seeds}: the consistency check needs a "
                           "contiguous range")
    previous = reused and _previous_result(work, final, s, list(range(eval_seed, eval_seed + episodes)), intermediate)
    if previous:
        log(f"reusing {work / 'result.json'}: this checkpoint, evaluated on the same scenes")
        if previous.scene_reading is None:  # a result from before the probe existed
            previous.scene_reading = _scene_reading(final, dataset, cfg, log)
            (work / "result.json").write_text(json.dumps(previous.to_dict(), indent=2))
        return previous
    out = work / "eval"
    runtime = RuntimeConfig.deployed(noise_scale=s.noise_scale)
    results = evaluate_checkpoints([final], s.task, episodes, eval_seed, out=out, labels=[s.label],
                                   latency_ticks=s.latency_ticks, seen_scenes=s.seen, progress=progress,
                                   runtime=runtime)
    policy, expert, oracle = results
    by_step = []
    for step in intermediate:
        early = evaluate_checkpoints([step_dir(run, step)], s.task, episodes, eval_seed,
                                     out=out / f"step_{step}", labels=[f"{s.label} @ {step}"], expert=False,
                                     latency_ticks=s.latency_ticks, seen_scenes=s.seen, plots=0,
                                     progress=progress, runtime=runtime)[0]
        by_step.append({"step": step, "success": early.success_rate, "ci95": list(early.interval)})
    by_step.append({"step": s.steps, "success": policy.success_rate, "ci95": list(policy.interval)})
    metrics = _last_metrics(run / "metrics.jsonl")
    summary = policy.summary()
    result = LearnResult(
        task=s.task, mode="seen" if s.seen else "held-out", demos=len(seeds), demo_seeds=list(seeds), steps=s.steps,
        train_minutes=round(minutes, 2), record_minutes=round(record_minutes, 2),
        eval_seeds=[e.seed for e in policy.episodes], success=policy.success_rate, successes=policy.successes,
        episodes=len(policy.episodes), ci95=[round(v, 4) for v in policy.interval],
        limited_fraction=round(summary["limited_fraction"], 4), limits=summary["limits"],
        expert_success=expert.success_rate, oracle_success=oracle.success_rate,
        oracle_limited_fraction=round(oracle.summary()["limited_fraction"], 4),
        final_loss=metrics.get("action"), heldout_joint_mae_rad=metrics.get("eval/joint_mae_rad"),
        checkpoint=str(final), noise_scale=s.noise_scale, latency_ticks=s.latency_ticks, by_step=by_step,
        trained_on=len(seeds) - heldout, scene_reading=_scene_reading(final, dataset, cfg, log))
    (work / "result.json").write_text(json.dumps(result.to_dict(), indent=2))
    return result


def _scene_reading(checkpoint: Path, dataset: Path, cfg, log: Callable) -> dict | None:
    """Does the policy read the scene where only the scene decides: frame 0 of the episodes it
    was trained on (sf_policy/eval/scene_reading.py). None with fewer than two of them."""
    from ..data.reader import DatasetReader
    from ..runtime.inference import load_for_inference
    from ..train.data import heldout_positions
    from .scene_reading import scene_reading

    with DatasetReader(dataset) as reader:
        count = len(reader.episodes)
    held = heldout_positions(count, cfg.data.heldout_episodes, cfg.seed)
    trained = [e for e in range(count) if e not in held]
    if len(trained) < 2:
        return None
    reading = scene_reading(load_for_inference(checkpoint, device="cpu"), dataset, frame=0, episodes=trained)
    log(reading.summary())
    return reading.to_dict()


def _recorded_seeds(dataset: Path) -> list[int]:
    """The twin seeds of the episodes already recorded at ``dataset`` (none if there is none)."""
    from ..data.reader import DatasetReader

    if not (dataset / "meta" / "info.json").is_file():
        return []
    with DatasetReader(dataset) as reader:
        return [ep.sim_seed for ep in reader.episodes if ep.sim_seed is not None]


def _previous_result(work: Path, final: Path, s: LearnSettings, eval_seeds: list[int],
                     intermediate: list[int]) -> LearnResult | None:
    """``work/result.json`` if it evaluated this checkpoint the way ``s`` asks (same scenes,
    sampling, latency and intermediate steps)."""
    path = work / "result.json"
    if not path.is_file():
        return None
    old = json.loads(path.read_text())
    same = (old.get("checkpoint") == str(final) and old.get("eval_seeds") == eval_seeds
            and old.get("mode") == ("seen" if s.seen else "held-out") and old.get("steps") == s.steps
            and old.get("noise_scale") == s.noise_scale and old.get("latency_ticks") == s.latency_ticks
            and [p["step"] for p in old.get("by_step", [])] == [*intermediate, s.steps])
    return LearnResult(**old) if same else None


def finished_run(run: Path, cfg) -> bool:
    """``run`` already holds the final checkpoint of this very config (logging aside)."""
    import yaml

    from ..train.checkpoint import TRAIN_CONFIG_FILE, step_dir

    saved = run / TRAIN_CONFIG_FILE
    if not (step_dir(run, cfg.optim.steps) / "policy").is_dir() or not saved.is_file():
        return False
    old, new = yaml.safe_load(saved.read_text()), cfg.to_dict()
    for config in (old, new):
        config.pop("log", None)
        config["policy"].pop("tokenizer", None)  # filled in by training
    return old == new


def _replace(run: Path, aside: Path, log: Callable) -> None:
    import shutil

    shutil.rmtree(aside, ignore_errors=True)
    run.rename(aside)
    log(f"{run} was trained with another config: moved to {aside}")


def train_minutes(run: Path) -> float:
    """Wall-clock training time of a finished run; for runs from before it was written down,
    the mean logged step time times the steps (checkpointing not counted)."""
    timing = run / TRAIN_TIME_FILE
    if timing.is_file():
        return json.loads(timing.read_text())["train_minutes"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step_s"] for r in rows if "step_s" in r]
    return sum(steps) / len(steps) * max(r["step"] for r in rows) / 60


def _last_metrics(path: Path) -> dict:
    last: dict = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            last.update(json.loads(line))
    return last
