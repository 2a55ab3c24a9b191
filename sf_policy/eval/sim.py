"""Closed-loop evaluation in the MuJoCo twin: success rate with a confidence interval.

Each episode runs the deployed runtime itself — config/policy.yaml's ``RuntimeConfig``, its
``ChunkScheduler`` (asynchronous chunks, elapsed steps skipped, blending) and ``SafetyFilter``
(limits, rate limits, workspace guard, tracking watchdog) — on the twin's
rendered cameras and puppet state, exactly as the policy node wires them, but on a simulated
clock: the twin does not advance while the model thinks. The model's latency is instead a
fixed number of control ticks (``latency_ticks``, default 3 = 100 ms, a GPU's π0), enforced by
holding the model's answer until that tick. So an episode's outcome depends on the seed and
the checkpoint only, not on how busy this machine is, and a CPU evaluates what a GPU robot
would do.

Episodes use seeds ``seed … seed + n − 1``, the same scenes for every checkpoint compared,
so two checkpoints' results are paired. The interval is Wilson's score interval (95 %),
which stays inside [0, 1] and is sensible at 0 / n and n / n, unlike the normal one.
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..data.episode_ranges import format_episodes
from ..runtime.clock import ManualClock
from ..runtime.config import RuntimeConfig
from ..runtime.safety import LIMIT_CAUSES, POSITION
from ..runtime.scheduler import policy_infer
from ..sim.twin import CONTROL_HZ, Twin
from .trace import EpisodeTrace, limit_shares, plot_trace

PERIOD = 1.0 / CONTROL_HZ
WAIT_S = 600.0  # a model that has not answered in 10 minutes is broken, not slow


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95 % by default)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class EpisodeOutcome:
    seed: int
    success: bool
    ticks: int                  # control ticks run (until success or the task's step limit)
    chunks: int                 # chunks merged into the plan
    held_ticks: int             # ticks the safety filter or an empty plan held the arms
    limited_ticks: int          # ticks the filter clamped or rate-limited the command
    max_step_rad: float         # largest per-tick change of an arm joint command (smoothness)
    video: str | None = None
    limited_by_cause: dict[str, int] = field(default_factory=dict)  # ticks with a speed/accel/position change
    estop: str = ""             # why the tracking watchdog stopped the arms, if it did
    disagreement_rad: float | None = None  # mean |new chunk − plan| where they overlap, per merge
    trace: str | None = None    # the per-tick trace (.npz) and its plot (.png), when kept


@dataclass
class SimEvalResult:
    label: str
    checkpoint: str
    task: str
    latency_ticks: int
    episodes: list[EpisodeOutcome] = field(default_factory=list)
    traces: list[EpisodeTrace] = field(default_factory=list, repr=False)  # per episode, when traced
    seen_seeds: list[int] = field(default_factory=list)  # evaluation scenes the checkpoint trained on

    @property
    def successes(self) -> int:
        return sum(e.success for e in self.episodes)

    @property
    def success_rate(self) -> float:
        return self.successes / len(self.episodes) if self.episodes else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.successes, len(self.episodes))

    def summary(self) -> dict:
        low, high = self.interval
        successful = [e.ticks for e in self.episodes if e.success]
        return {"label": self.label, "checkpoint": self.checkpoint, "task": self.task, "episodes": len(self.episodes),
                "seeds": [e.seed for e in self.episodes], "successes": self.successes,
                "success_rate": self.success_rate, "ci95": [low, high],
                "mean_success_seconds": float(np.mean(successful)) / CONTROL_HZ if successful else None,
                "held_fraction": _fraction(self.episodes, "held_ticks"),
                "limited_fraction": _fraction(self.episodes, "limited_ticks"),
                "max_step_rad": max((e.max_step_rad for e in self.episodes), default=0.0),
                "latency_ticks": self.latency_ticks, "seen_scenes": len(self.seen_seeds),
                "limits": limit_shares(self.traces) if self.traces else None}


def _fraction(episodes: Sequence[EpisodeOutcome], key: str) -> float:
    ticks = sum(e.ticks for e in episodes)
    return sum(getattr(e, key) for e in episodes) / ticks if ticks else 0.0


class _PacedModel:
    """The model boundary, answering only when the simulation says its latency has passed.

    The scheduler calls it from its worker thread; the episode loop sees the request
    (``ChunkScheduler.in_flight``), lets ``latency_ticks`` ticks pass and then releases it."""

    def __init__(self, infer: Callable):
        self.infer = infer
        self._gate = threading.Semaphore(0)

    def __call__(self, observation):
        if not self._gate.acquire(timeout=WAIT_S):
            raise TimeoutError("the evaluation loop never released the model")
        return self.infer(observation)

    def release(self) -> None:
        self._gate.release()


def _twin_runtime(runtime: RuntimeConfig | None) -> RuntimeConfig:
    """The deployed settings (config/policy.yaml) unless given; the twin only runs at its own rate."""
    runtime = runtime or RuntimeConfig.deployed()
    if abs(runtime.rate - CONTROL_HZ) > 1e-9:
        raise ValueError(f"runtime rate: the twin runs at {CONTROL_HZ} Hz, got {runtime.rate:g}")
    return runtime


def run_episode(twin: Twin, infer: Callable, seed: int, *, latency_ticks: int = 3,
                runtime: RuntimeConfig | None = None, video: Path | None = None,
                max_ticks: int | None = None, trace: EpisodeTrace | None = None) -> EpisodeOutcome:
    """One seeded episode of the policy behind ``infer`` driving the twin until success or the
    task's step limit (or ``max_ticks``, if shorter: quick checks). ``trace``: filled tick by
    tick (``sf_policy.eval.trace``).

    The observation handed to ``infer`` also carries ``"tick"`` (the control tick it was taken
    at), which only privileged policies (``ExpertPlan``) read; ``policy_infer`` drops it."""
    runtime = _twin_runtime(runtime)
    obs = twin.reset(seed)
    prompt = twin.info["prompt"]
    clock = ManualClock()
    model = _PacedModel(infer)
    scheduler = runtime.scheduler(model, clock=clock, name=f"sim-eval-{seed}")
    safety = runtime.safety_filter()  # the Piper's limits and the twin's layout, as the policy node in the twin
    frames: list[np.ndarray] = []
    held = limited = 0
    by_cause: Counter[str] = Counter()
    max_step, previous = 0.0, None
    requested_at: int | None = None
    success = False
    scheduler.start(0.0)
    try:
        for k in range(min(twin.task.step_limit, max_ticks or twin.task.step_limit)):
            now = k * PERIOD
            clock.set(now)
            if requested_at is not None and k - requested_at >= latency_ticks:
                model.release()
                if not scheduler.wait_idle(WAIT_S):
                    raise TimeoutError(f"seed {seed}: the model did not answer within {WAIT_S:.0f} s")
                requested_at = None
            scheduler.observe({"images": obs.images, "state": obs.state.astype(np.float32), "prompt": prompt,
                               "tick": k}, now)
            raw = scheduler.tick(now)
            decision = safety.filter(raw, obs.state, 0.0, now)
            if trace is not None:
                trace.add(scheduler.last_tick_info, raw, decision, obs.state)
            if requested_at is None and scheduler.in_flight:  # the tick asked for a chunk: latency starts now
                requested_at = k
            if decision.action is None:
                held += 1
                target = twin.master  # nothing sent: the arms keep their last target
            else:
                target = decision.action
                limited += bool(decision.clamped or decision.limited)
                for cause in set(decision.limit_causes) | ({POSITION} if decision.clamped else set()):
                    by_cause[cause] += 1
                if previous is not None:
                    max_step = max(max_step, float(np.abs(_arm_joints(target - previous)).max()))
                previous = target
            if video is not None:
                frames.append(obs.images.get("cam_high"))
            twin.step(target)
            obs = twin.observe()
            if twin.success():
                success = True
                break
    finally:
        if requested_at is not None:
            model.release()
        scheduler.stop()
    stats = scheduler.stats()
    if video is not None and frames:
        write_video(video, [f for f in frames if f is not None])
    return EpisodeOutcome(seed=seed, success=bool(success), ticks=twin.tick, chunks=stats.chunks, held_ticks=held,
                          limited_ticks=limited, max_step_rad=max_step, video=str(video) if video else None,
                          limited_by_cause={c: by_cause[c] for c in LIMIT_CAUSES}, estop=safety.estop_reason,
                          disagreement_rad=stats.disagreement_mean)


def _arm_joints(q14: np.ndarray) -> np.ndarray:
    from ..embodiment import GRIPPER_INDICES

    return np.delete(np.asarray(q14), list(GRIPPER_INDICES))


def write_video(path: Path, frames: Sequence[np.ndarray], fps: int = CONTROL_HZ) -> None:
    """H.264 mp4 of RGB frames (PyAV), for a person to watch an episode."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width - width % 2, height - height % 2, "yuv420p"
        for frame in frames:
            image = np.ascontiguousarray(frame[: stream.height, : stream.width])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def evaluate(infer: Callable, task: str, episodes: int, seed: int = 0, *, label: str = "policy",
             checkpoint: str = "", latency_ticks: int = 3, runtime: RuntimeConfig | None = None,
             width: int = 224, height: int = 224, video_dir: Path | None = None, max_ticks: int | None = None,
             trace_dir: Path | None = None, plots: int = 3, progress: bool = True,
             cameras: tuple[str, ...] | None = None) -> SimEvalResult:
    """``episodes`` seeded episodes (seeds ``seed …``) of ``infer`` on ``task``.

    Every episode is traced (``sf_policy.eval.trace``): the result's ``limits`` says which joint
    the safety filter limited, why, and how often. With ``trace_dir`` each trace is saved there
    (``<label>_seed<s>.npz``) and the first ``plots`` episodes are drawn (``.png``).
    ``infer`` may have ``begin_episode(twin, seed)``, called before each episode (``ExpertPlan``)."""
    from tqdm import tqdm

    result = SimEvalResult(label=label, checkpoint=checkpoint, task=task, latency_ticks=latency_ticks)
    twin = Twin(task, width=width, height=height, **({} if cameras is None else {"cameras": cameras}))
    try:
        bar = tqdm(range(seed, seed + episodes), desc=f"{label} on {task}", unit="ep", disable=not progress)
        for n, s in enumerate(bar):
            if hasattr(infer, "begin_episode"):
                infer.begin_episode(twin, s)
            video = video_dir / f"{_slug(label)}_seed{s}.mp4" if video_dir is not None else None
            trace = EpisodeTrace(seed=s)
            outcome = run_episode(twin, infer, s, latency_ticks=latency_ticks, runtime=runtime, video=video,
                                  max_ticks=max_ticks, trace=trace)
            if trace_dir is not None:
                stem = trace_dir / f"{_slug(label)}_seed{s}"
                outcome.trace = str(trace.save(stem.with_suffix(".npz")))
                if n < plots:
                    verdict = "success" if outcome.success else "failure"
                    plot_trace(trace, stem.with_suffix(".png"), title=f"{label}, {task} seed {s}: {verdict}")
            result.episodes.append(outcome)
            result.traces.append(trace)
            bar.set_postfix(success=f"{result.successes}/{len(result.episodes)}")
    finally:
        twin.close()
    return result


def _slug(label: str) -> str:
    return "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in label).strip("_") or "policy"


class ExpertPlan:
    """The oracle policy: the scripted expert's own targets for the seed, served as chunks.

    ``begin_episode`` runs the expert once on the seed's scene and keeps its master targets;
    each request then returns the targets from the observation's tick on (the last one held
    past the end). A perfect policy, so what it loses through the scheduler and the safety
    filter (latency, merging, rate limits) is what the runtime costs any policy."""

    def __init__(self, chunk_size: int = 50):
        self.chunk_size = chunk_size
        self.targets: np.ndarray | None = None

    def begin_episode(self, twin: Twin, seed: int) -> None:
        from ..sim.experts import run_episode as run_expert

        self.targets = run_expert(twin.task.name, seed, twin=twin, keep_targets=True)["targets"]

    def __call__(self, observation) -> np.ndarray:
        if self.targets is None:
            raise RuntimeError("ExpertPlan: begin_episode() was not called")
        steps = np.minimum(int(observation["tick"]) + np.arange(self.chunk_size), len(self.targets) - 1)
        return self.targets[steps]


EXPERT_LABEL = "scripted expert (direct)"
ORACLE_LABEL = "expert plan via runtime (oracle)"


def expert_reference(task: str, episodes: int, seed: int = 0, progress: bool = True) -> SimEvalResult:
    """The scripted operator on the same seeds, driving the twin directly: the ceiling the
    demonstrations set (it reads the true object poses, so it is a reference, not a competitor)."""
    from tqdm import tqdm

    from ..sim.experts import run_episode as run_expert

    result = SimEvalResult(label=EXPERT_LABEL, checkpoint="", task=task, latency_ticks=0)
    twin = Twin(task, cameras=())
    try:
        for s in tqdm(range(seed, seed + episodes), desc=f"expert on {task}", unit="ep", disable=not progress):
            run = run_expert(task, s, twin=twin)
            result.episodes.append(EpisodeOutcome(seed=s, success=run["success"], ticks=run["ticks"], chunks=0,
                                                  held_ticks=0, limited_ticks=0, max_step_rad=0.0))
    finally:
        twin.close()
    return result


def oracle_reference(task: str, episodes: int, seed: int = 0, *, latency_ticks: int = 3,
                     runtime: RuntimeConfig | None = None, trace_dir: Path | None = None, plots: int = 1,
                     progress: bool = True) -> SimEvalResult:
    """The expert's plan as a policy through the same scheduler and safety filter as a
    checkpoint (``ExpertPlan``): 100 % here and near-zero limiting means the runtime chain is
    sound, and a learned policy's failures are the policy's."""
    return evaluate(ExpertPlan(), task, episodes, seed, label=ORACLE_LABEL, latency_ticks=latency_ticks,
                    runtime=runtime, trace_dir=trace_dir, plots=plots, progress=progress, cameras=())


def evaluate_checkpoints(checkpoints: Sequence[str | Path], task: str, episodes: int, seed: int = 0, *,
                         out: Path, labels: Sequence[str] | None = None, latency_ticks: int = 3,
                         runtime: RuntimeConfig | None = None, width: int = 224, height: int = 224,
                         videos: bool = False, expert: bool = True, max_ticks: int | None = None, plots: int = 3,
                         seen_scenes: bool = False, progress: bool = True) -> list[SimEvalResult]:
    """Each checkpoint on the same seeds, and with ``expert`` two reference rows: the scripted
    expert driving the twin directly, and its plan through the runtime (``oracle_reference``).
    Writes ``results.json``, ``results.md``, ``success.png`` and ``traces/`` (every episode's
    per-tick trace, the first ``plots`` of each row drawn) to ``out``.

    Scenes a checkpoint was trained on are refused (``SeenScenesError``) unless ``seen_scenes``:
    then they are scored and the report says how many of them were seen."""
    import torch

    from ..runtime.inference import load_for_inference

    runtime = _twin_runtime(runtime)  # the model's settings (steps, noise, sampler, device) too
    labels = list(labels) if labels else [_label(c) for c in checkpoints]
    if len(labels) != len(checkpoints):
        raise ValueError(f"{len(labels)} labels for {len(checkpoints)} checkpoints")
    seen = {str(c): seen_seeds(c, range(seed, seed + episodes), allow=seen_scenes) for c in checkpoints}
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for checkpoint, label in zip(checkpoints, labels, strict=True):
        policy = load_for_inference(checkpoint, **runtime.model_options())
        torch.manual_seed(seed)  # the flow-matching noise: reruns give the same episodes
        results.append(evaluate(policy_infer(policy, runtime.num_steps), task, episodes, seed, label=label,
                                checkpoint=str(checkpoint), latency_ticks=latency_ticks, runtime=runtime,
                                width=width, height=height, video_dir=out / "videos" if videos else None,
                                max_ticks=max_ticks, trace_dir=out / "traces", plots=plots, progress=progress))
        results[-1].seen_seeds = seen[str(checkpoint)]
        del policy
    if expert:
        results.append(expert_reference(task, episodes, seed, progress))
        results.append(oracle_reference(task, episodes, seed, latency_ticks=latency_ticks, runtime=runtime,
                                        trace_dir=out / "traces", plots=min(plots, 1), progress=progress))
    write_results(results, out)
    return results


class SeenScenesError(ValueError):
    """The evaluation seeds include scenes the checkpoint was trained on."""


def seen_seeds(checkpoint: str | Path, seeds: Sequence[int], allow: bool = False) -> list[int]:
    """The evaluation seeds among the twin scenes ``checkpoint`` was trained on; raises
    ``SeenScenesError`` naming them unless ``allow``."""
    from ..train.checkpoint import trained_scenes

    trained = trained_scenes(checkpoint)
    if not trained:
        return []
    seen = sorted(set(seeds) & trained)
    if seen and not allow:
        raise SeenScenesError(
            f"{checkpoint} was trained on {len(seen)} of the {len(seeds)} evaluation scenes (seeds {format_episodes(seen, dash='–')}): "
            f"success there is memory, not generalisation. Evaluate from --seed {max(trained) + 1} on (past every "
            f"training scene), or pass --seen-scenes to score seen scenes on purpose (the report then says so).")
    return seen


def _label(checkpoint: str | Path) -> str:
    path = Path(checkpoint)
    parts = [p for p in path.parts if p not in ("checkpoints", "policy")]
    return "/".join(parts[-2:]) if len(parts) >= 2 else path.name


def results_table(results: Sequence[SimEvalResult]) -> str:
    """A Markdown table: one row per checkpoint."""
    lines = ["| checkpoint | task | success | rate | 95 % CI (Wilson) | time to success | held | rate-limited |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r.summary()
        t = f"{s['mean_success_seconds']:.1f} s" if s["mean_success_seconds"] is not None else "–"
        label = f"{r.label} (seen scenes: {len(r.seen_seeds)}/{len(r.episodes)})" if r.seen_seeds else r.label
        lines.append(f"| {label} | {r.task} | {r.successes}/{len(r.episodes)} | {r.success_rate:.0%} | "
                     f"{s['ci95'][0]:.0%} – {s['ci95'][1]:.0%} | {t} | {s['held_fraction']:.0%} | "
                     f"{s['limited_fraction']:.0%} |")
    return "\n".join(lines)


def limits_table(results: Sequence[SimEvalResult], top: int = 4) -> str:
    """Where the safety filter changed the commands: per row, the share of commanded ticks
    limited by each cause, and the joints it limited most."""
    rows = [(r, r.summary()["limits"]) for r in results if r.traces]
    if not rows:
        return ""
    lines = ["| checkpoint | commanded ticks | any | speed | accel | position | most limited joints |",
             "|---|---|---|---|---|---|---|"]
    for r, lim in rows:
        per_joint = sorted(lim["by_joint"].items(), key=lambda kv: -sum(kv[1].values()))[:top]
        joints = ", ".join(f"{j} {sum(c.values()):.0%} ({'/'.join(k for k, v in c.items() if v)})"
                           for j, c in per_joint) or "–"
        cause = lim["by_cause"]
        lines.append(f"| {r.label} | {lim['commanded_ticks']} | {lim['any']:.0%} | {cause['speed']:.0%} | "
                     f"{cause['accel']:.0%} | {cause['position']:.0%} | {joints} |")
    return "\n".join(lines)


def write_results(results: Sequence[SimEvalResult], out: Path) -> None:
    data = [{"summary": r.summary(), "episodes": [asdict(e) for e in r.episodes]} for r in results]
    (out / "results.json").write_text(json.dumps(data, indent=2))
    first = results[0].episodes[0].seed if results and results[0].episodes else 0
    latency = results[0].latency_ticks if results else 0
    header = (f"# Closed-loop evaluation in the twin\n\nSeeds from {first}, the same scenes for every checkpoint; "
              f"the model answers {latency} control ticks after it is asked (simulated clock).\n\n")
    seen = [r for r in results if r.seen_seeds]
    if seen:
        header += ("**Seen scenes**: " + "; ".join(f"{r.label} was trained on seeds {format_episodes(r.seen_seeds, dash='–')}"
                                                   for r in seen) + " (evaluated on purpose with --seen-scenes: "
                   "success there is memory, not generalisation).\n\n")
    limits = limits_table(results)
    if limits:
        limits = ("\n## Where the safety filter limited the commands\n\nShare of commanded ticks on which the "
                  "filter changed a command, by cause (speed cap, acceleration cap, position clamp); per-tick "
                  "traces and plots of target, command and state in `traces/`.\n\n" + limits + "\n")
    (out / "results.md").write_text(header + results_table(results) + "\n" + paired_text(results) + limits)
    _plot(results, out / "success.png")


def paired(a: SimEvalResult, b: SimEvalResult) -> dict[str, int | float]:
    """Outcomes of two checkpoints on the same seeds: scenes only one solved decide between
    them. ``p_value``: exact two-sided McNemar (binomial) test on those discordant scenes."""
    b_by_seed = {e.seed: e.success for e in b.episodes}
    return mcnemar([(e.success, b_by_seed[e.seed]) for e in a.episodes if e.seed in b_by_seed])


def mcnemar(pairs: Sequence[tuple[bool, bool]]) -> dict[str, int | float]:
    """Paired outcomes (a, b) per scene → counts and the exact two-sided McNemar p-value."""
    only_a = sum(x and not y for x, y in pairs)
    only_b = sum(y and not x for x, y in pairs)
    n = only_a + only_b
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n if n else 1.0
    return {"scenes": len(pairs), "only_a": only_a, "only_b": only_b, "both": sum(x and y for x, y in pairs),
            "neither": sum(not x and not y for x, y in pairs), "p_value": min(1.0, 2 * tail)}


def paired_text(results: Sequence[SimEvalResult]) -> str:
    """The paired comparison of the first two checkpoints (reference rows and seen-scene rows excluded)."""
    policies = [r for r in results if r.checkpoint and not r.seen_seeds]
    if len(policies) < 2:
        return ""
    a, b = policies[:2]
    p = paired(a, b)
    return (f"\nPaired on the same {p['scenes']} scenes: only {a.label} {p['only_a']}, only {b.label} {p['only_b']}, "
            f"both {p['both']}, neither {p['neither']} (exact McNemar p = {p['p_value']:.2f}).\n")


def _plot(results: Sequence[SimEvalResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(results), 3.2))
    rates = [r.success_rate for r in results]
    # max(0, ...): at 0/n or n/n the Wilson bound equals the rate up to rounding, just past it
    low = [max(0.0, r.success_rate - r.interval[0]) for r in results]
    high = [max(0.0, r.interval[1] - r.success_rate) for r in results]
    ax.bar(range(len(results)), rates, yerr=[low, high], capsize=6, color="#4c72b0")
    ax.set_xticks(range(len(results)), [r.label for r in results], rotation=15)
    ax.set_ylim(0, 1)
    ax.set_ylabel("success rate (95 % CI)")
    ax.set_title(f"{results[0].task if results else ''}: {len(results[0].episodes) if results else 0} seeded episodes")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
