"""Offline replay: a policy run open-loop over recorded episodes (docs/eval_replay.md).

For every evaluated frame t of an episode (one in ``every``), the policy predicts a chunk of
H absolute joint targets from frame t's cameras, puppet state and prompt, as it would on the
robot. Step h of that chunk is meant for the time of frame t + h (training pairs frame t with
the master targets t .. t+H-1, sf_policy/train/data.py), so it is compared with the recorded
action at t + h, where t + h is still inside the episode.

Reported (metrics.json, report.html, report.md):

* **error per horizon step**: mean absolute error per joint and step h (rad, grippers m),
  pooled over every (t, h) pair, with h = 0 and all-steps summaries;
* **hold baseline**: the same error for "stay where you are" (the state at t as every step),
  the score of a policy that learned nothing, so the numbers above have a reference;
* **chunk-to-chunk consistency**: two consecutive chunks (frames t and t + every) both
  predict the times they share; their mean absolute disagreement there, per joint. A large
  value means the robot would jerk at every chunk switch;
* **latency**: wall time of each single-frame prediction (p50, p99, max; the first, warm-up
  call reported apart).

Episodes come from a LeRobot dataset or from raw bags; bags go through
``record.from_bag.bag_frames``, the recorder's own frame synchronization. The noise of every
chunk is seeded from (seed, episode, frame), so a rerun, or a run with another ``every``,
predicts the same chunk for the same frame.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..embodiment import ARM_INDICES, GRIPPER_INDICES, JOINT_NAMES, STATE_DIM
from ..topics import CAMERA_ROLES

METRICS_FILE = "metrics.json"
ARRAYS_FILE = "replay.npz"


class ReplayError(ValueError):
    """A dataset, bag or checkpoint that cannot be replayed; the message names it."""


# -- episodes --------------------------------------------------------------------------------

@dataclass
class ReplayFrame:
    images: dict[str, np.ndarray | None]
    state: np.ndarray    # [14] puppet joints
    action: np.ndarray   # [14] master targets (what the operator commanded)


@dataclass
class EpisodeSource:
    """One recorded episode, read lazily (``frames()`` streams it: images are never all in memory)."""

    name: str
    prompt: str
    fps: float
    length: int | None                      # frames, when known beforehand (progress bars)
    frames: Callable[[], Iterator[ReplayFrame]]


def dataset_sources(root: str | Path, episodes: Sequence[int] | None = None,
                    cameras: Sequence[str] = CAMERA_ROLES) -> list[EpisodeSource]:
    """The dataset's episodes (``episodes``: episode indices, all when None)."""
    from ..data.features import ACTION, STATE, DatasetError
    from ..data.reader import DatasetReader

    root = Path(root)
    if not root.exists():
        raise ReplayError(f"dataset {root}: no such directory")
    try:
        reader = DatasetReader(root)
    except DatasetError as error:
        raise ReplayError(f"dataset {root}: {error}") from error
    by_index = {ep.index: k for k, ep in enumerate(reader.episodes)}
    chosen = list(by_index) if episodes is None else list(episodes)
    unknown = [e for e in chosen if e not in by_index]
    if unknown:
        raise ReplayError(f"dataset {root}: no episode {', '.join(map(str, unknown))} "
                          f"(it has {', '.join(map(str, by_index)) or 'none'})")
    if not chosen:
        raise ReplayError(f"dataset {root}: no episodes to replay")

    def source(k: int) -> EpisodeSource:
        ep = reader.episodes[k]
        roles = [r for r in cameras if r in reader.camera_roles]

        def frames() -> Iterator[ReplayFrame]:
            states, actions = reader.episode_column(k, STATE), reader.episode_column(k, ACTION)
            streams = {role: reader.episode_frames(k, role) for role in roles}
            for t in range(ep.length):
                images = {role: (next(streams[role]) if role in streams else None) for role in cameras}
                yield ReplayFrame(images, states[t].astype(np.float32), actions[t].astype(np.float32))

        return EpisodeSource(f"episode {ep.index}", ep.task, float(reader.fps), ep.length, frames)

    return [source(by_index[e]) for e in chosen]


def bag_sources(bags: Sequence[str | Path], episodes: Sequence[int] | None = None,
                cameras: Sequence[str] = CAMERA_ROLES, fps: float = 30.0) -> list[EpisodeSource]:
    """One episode per bag (``episodes``: positions in ``bags``), synchronized as the recorder does."""
    from ..record.bag import BagError
    from ..record.from_bag import bag_cameras, bag_prompt

    paths = [Path(b) for b in bags]
    if not paths:
        raise ReplayError("no bag given")
    chosen = range(len(paths)) if episodes is None else list(episodes)
    bad = [e for e in chosen if not 0 <= e < len(paths)]
    if bad:
        raise ReplayError(f"episodes {bad}: for bags, an episode is a position in the list of {len(paths)} bags")
    sources = []
    for k in chosen:
        bag = paths[k]
        if not bag.exists():
            raise ReplayError(f"bag {bag}: no such file or directory")
        try:
            prompt = bag_prompt(bag)
            recorded = bag_cameras(bag)
        except BagError as error:
            raise ReplayError(str(error)) from error
        if "cam_high" not in recorded:
            raise ReplayError(f"bag {bag}: no cam_high images; the recorder's frames are timed by that camera")
        sources.append(_bag_source(bag, prompt, recorded, cameras, fps))
    return sources


def _bag_source(bag: Path, prompt: str, recorded: tuple[str, ...], cameras: Sequence[str],
                fps: float) -> EpisodeSource:
    from ..record.bag import BagError
    from ..record.from_bag import bag_frames

    def frames() -> Iterator[ReplayFrame]:
        try:
            # Synchronize every recorded camera, as the recorder did, then hand the policy its own.
            for frame in bag_frames(bag, recorded, fps):
                # A copy: the bag's images are read-only views of the message bytes, which torch warns about.
                images = {role: None if frame.images.get(role) is None else np.array(frame.images[role])
                          for role in cameras}
                yield ReplayFrame(images, frame.state, frame.action)
        except BagError as error:
            raise ReplayError(str(error)) from error

    return EpisodeSource(bag.name, prompt, fps, _bag_length(bag), frames)


def _bag_length(bag: Path) -> int | None:
    """Frames in a bag, about: its cam_high images (exact unless some arrived before the start)."""
    from rosbags.rosbag2 import Reader

    from ..topics import camera_image

    try:
        with Reader(bag) as reader:
            return sum(c.msgcount for c in reader.connections if c.topic == camera_image("cam_high"))
    except Exception:  # only a progress bar's total: the real read reports errors properly
        return None


# -- the predictor ---------------------------------------------------------------------------

#: ``predict(sample, seed) -> [H, 14]``. A sample is the policy's: ``{"images", "state",
#: "prompt"}``, plus ``"episode"`` (its name) and ``"frame"`` (index in the episode), which a
#: real policy ignores and a test's stand-in may use.
Predictor = Callable[[dict, int], np.ndarray]


class PolicyPredictor:
    """A checkpoint's policy, one frame at a time (the deployed batch size, so latency is honest)."""

    def __init__(self, checkpoint: str | Path, device: str = "auto", num_steps: int = 10):
        from ..runtime.inference import load_for_inference
        from ..train.checkpoint import resolve_checkpoint

        try:
            self.checkpoint = resolve_checkpoint(checkpoint)
            self.policy = load_for_inference(self.checkpoint, device=device)
        except FileNotFoundError as error:
            raise ReplayError(f"checkpoint {checkpoint}: {error}") from error
        except (OSError, ValueError, KeyError) as error:
            raise ReplayError(f"checkpoint {checkpoint}: cannot be loaded: {error}") from error
        self.num_steps = num_steps
        self.camera_roles = tuple(self.policy.processor.config.camera_roles)
        self.chunk_size = int(self.policy.processor.config.chunk_size)

    def __call__(self, sample: dict, seed: int) -> np.ndarray:
        import torch

        generator = torch.Generator(device=self.policy.device).manual_seed(seed)
        policy_sample = {key: sample[key] for key in ("images", "state", "prompt")}
        return self.policy.predict([policy_sample], num_steps=self.num_steps, generator=generator)[0]


def frame_seed(seed: int, episode: int, frame: int) -> int:
    """The noise seed of one chunk: depends on nothing but (seed, episode, frame)."""
    return int(np.random.SeedSequence([seed, episode, frame]).generate_state(1)[0])


# -- running ---------------------------------------------------------------------------------

@dataclass
class EpisodeRun:
    """What one episode's replay produced: the recorded trajectories and every predicted chunk."""

    name: str
    prompt: str
    fps: float
    states: np.ndarray                  # [T, 14]
    actions: np.ndarray                 # [T, 14]
    frames: np.ndarray                  # [N] evaluated frame indices
    chunks: np.ndarray                  # [N, H, 14]
    latency_ms: np.ndarray              # [N]
    warmup_ms: float | None = None      # the run's first prediction (not in latency_ms)


def run_episode(source: EpisodeSource, predictor: Predictor, ordinal: int, *, every: int = 1,
                max_frames: int | None = None, seed: int = 0, chunk_size: int | None = None,
                on_frame: Callable[[], None] | None = None, warmup: bool = False) -> EpisodeRun:
    """Predict at frames 0, every, 2·every, ... (at most ``max_frames``), reading the episode only
    as far as the last chunk's horizon reaches."""
    states, actions, frames, chunks, latency = [], [], [], [], []
    warmup_ms = None
    horizon = chunk_size
    for t, frame in enumerate(source.frames()):
        full = max_frames is not None and len(frames) >= max_frames
        if full and horizon is not None and t > frames[-1] + horizon - 1:
            break  # every recorded action a chunk can be compared with has been read
        states.append(frame.state)
        actions.append(frame.action)
        if on_frame is not None:
            on_frame()
        if full or t % every:
            continue
        sample = {"images": frame.images, "state": frame.state, "prompt": source.prompt,
                  "episode": source.name, "frame": t}
        if warmup and warmup_ms is None:
            warmup_ms = _timed(predictor, sample, frame_seed(seed, ordinal, t))[1]
        chunk, ms = _timed(predictor, sample, frame_seed(seed, ordinal, t))
        chunk = _check_chunk(chunk, source.name, t)
        horizon = horizon or len(chunk)
        frames.append(t)
        chunks.append(chunk)
        latency.append(ms)
    if not states:
        raise ReplayError(f"{source.name}: no frames")
    H = horizon or 1
    return EpisodeRun(source.name, source.prompt, source.fps, np.asarray(states, np.float64),
                      np.asarray(actions, np.float64), np.asarray(frames, np.int64),
                      np.asarray(chunks, np.float64).reshape(len(chunks), H, STATE_DIM),
                      np.asarray(latency, np.float64), warmup_ms)


def _timed(predictor: Predictor, sample: dict, seed: int) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    chunk = predictor(sample, seed)
    return np.asarray(chunk), (time.perf_counter() - start) * 1e3


def _check_chunk(chunk: np.ndarray, name: str, t: int) -> np.ndarray:
    if chunk.ndim != 2 or chunk.shape[1] != STATE_DIM:
        raise ReplayError(f"{name} frame {t}: the policy returned shape {chunk.shape}, expected [H, {STATE_DIM}]")
    return chunk.astype(np.float64)


# -- metrics ---------------------------------------------------------------------------------

@dataclass
class ErrorSums:
    """Sums and counts, so episodes pool exactly (every (t, h) pair weighs the same)."""

    horizon: int
    abs_err: np.ndarray = None       # [H, 14] sum |chunk[t, h] - action[t + h]|
    hold_err: np.ndarray = None      # [H, 14] sum |state[t] - action[t + h]|
    pairs: np.ndarray = None         # [H] pairs counted at each step
    disagree: np.ndarray = None      # [14] sum over overlapping steps of consecutive chunks
    overlaps: int = 0

    def __post_init__(self):
        H = self.horizon
        self.abs_err = np.zeros((H, STATE_DIM)) if self.abs_err is None else self.abs_err
        self.hold_err = np.zeros((H, STATE_DIM)) if self.hold_err is None else self.hold_err
        self.pairs = np.zeros(H, np.int64) if self.pairs is None else self.pairs
        self.disagree = np.zeros(STATE_DIM) if self.disagree is None else self.disagree

    def add(self, other: ErrorSums) -> None:
        self.abs_err += other.abs_err
        self.hold_err += other.hold_err
        self.pairs += other.pairs
        self.disagree += other.disagree
        self.overlaps += other.overlaps


def episode_sums(run: EpisodeRun, horizon: int) -> ErrorSums:
    sums = ErrorSums(horizon)
    T = len(run.actions)
    for t, chunk in zip(run.frames, run.chunks):
        steps = min(horizon, T - t)          # step h is for frame t + h: only inside the episode
        target = run.actions[t:t + steps]
        sums.abs_err[:steps] += np.abs(chunk[:steps] - target)
        sums.hold_err[:steps] += np.abs(run.states[t] - target)
        sums.pairs[:steps] += 1
    for k in range(1, len(run.frames)):
        diff = chunk_disagreement(run.chunks[k - 1], run.chunks[k], int(run.frames[k] - run.frames[k - 1]))
        if diff is not None:
            sums.disagree += diff.sum(axis=0)
            sums.overlaps += len(diff)
    return sums


def chunk_disagreement(earlier: np.ndarray, later: np.ndarray, shift: int) -> np.ndarray | None:
    """|earlier[h] - later[h - shift]| over the steps both chunks predict ([overlap, 14]; None if none)."""
    H = min(len(earlier), len(later) + shift)
    if shift >= H or shift < 1:
        return None
    return np.abs(earlier[shift:H] - later[:H - shift])


def consistency_series(run: EpisodeRun) -> np.ndarray:
    """[N-1, 14]: each chunk switch's mean disagreement (NaN where chunks do not overlap)."""
    rows = []
    for k in range(1, len(run.frames)):
        diff = chunk_disagreement(run.chunks[k - 1], run.chunks[k], int(run.frames[k] - run.frames[k - 1]))
        rows.append(np.full(STATE_DIM, np.nan) if diff is None else diff.mean(axis=0))
    return np.asarray(rows).reshape(-1, STATE_DIM)


def _ratio(total: np.ndarray, count) -> np.ndarray:
    count = np.asarray(count, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.where(count > 0, count, 1), np.nan)


def _jsonable(values: np.ndarray):
    """Lists with None for NaN (JSON has no NaN)."""
    if np.ndim(values) == 0:
        return None if not np.isfinite(values) else float(values)
    return [_jsonable(v) for v in values]


def summarize(sums: ErrorSums, latency_ms: np.ndarray) -> dict:
    """The headline numbers: arms in degrees, grippers in millimetres (per-joint means)."""
    mae = _ratio(sums.abs_err, sums.pairs[:, None])
    hold = _ratio(sums.hold_err, sums.pairs[:, None])
    all_steps = _ratio(sums.abs_err.sum(0), sums.pairs.sum())
    hold_all = _ratio(sums.hold_err.sum(0), sums.pairs.sum())
    consistency = _ratio(sums.disagree, sums.overlaps)
    arm, grip = list(ARM_INDICES), list(GRIPPER_INDICES)
    deg, mm = np.degrees, (lambda v: v * 1e3)
    summary = {
        "arm_mae_h0_deg": deg(np.nanmean(mae[0, arm])) if sums.pairs[0] else np.nan,
        "arm_mae_deg": deg(np.mean(all_steps[arm])),
        "arm_mae_last_deg": deg(np.mean(mae[_last(sums.pairs), arm])),
        "hold_arm_mae_h0_deg": deg(np.mean(hold[0, arm])) if sums.pairs[0] else np.nan,
        "hold_arm_mae_deg": deg(np.mean(hold_all[arm])),
        "gripper_mae_h0_mm": mm(np.nanmean(mae[0, grip])) if sums.pairs[0] else np.nan,
        "gripper_mae_mm": mm(np.mean(all_steps[grip])),
        "hold_gripper_mae_mm": mm(np.mean(hold_all[grip])),
        "arm_consistency_deg": deg(np.mean(consistency[arm])),
        "gripper_consistency_mm": mm(np.mean(consistency[grip])),
        "latency_p50_ms": np.percentile(latency_ms, 50) if len(latency_ms) else np.nan,
        "latency_p99_ms": np.percentile(latency_ms, 99) if len(latency_ms) else np.nan,
        "latency_max_ms": np.max(latency_ms) if len(latency_ms) else np.nan,
    }
    return {k: _jsonable(np.float64(v)) for k, v in summary.items()}


def _last(pairs: np.ndarray) -> int:
    """The last horizon step that has any pair."""
    filled = np.flatnonzero(pairs)
    return int(filled[-1]) if len(filled) else 0


def error_metrics(sums: ErrorSums) -> dict:
    """Per-joint arrays (rad, grippers m) for metrics.json."""
    return {
        "mae_per_step": _jsonable(_ratio(sums.abs_err, sums.pairs[:, None])),
        "hold_mae_per_step": _jsonable(_ratio(sums.hold_err, sums.pairs[:, None])),
        "pairs_per_step": sums.pairs.tolist(),
        "mae_h0": _jsonable(_ratio(sums.abs_err[0], sums.pairs[0])),
        "mae_all": _jsonable(_ratio(sums.abs_err.sum(0), sums.pairs.sum())),
        "hold_mae_all": _jsonable(_ratio(sums.hold_err.sum(0), sums.pairs.sum())),
        "consistency": _jsonable(_ratio(sums.disagree, sums.overlaps)),
        "consistency_pairs": int(sums.overlaps),
    }


# -- the whole replay ------------------------------------------------------------------------

@dataclass
class ReplayResult:
    out: Path
    report_path: Path        # report.html (self-contained)
    markdown_path: Path      # report.md (+ PNGs beside it)
    metrics_path: Path       # metrics.json
    metrics: dict
    runs: list[EpisodeRun] = field(default_factory=list)


def replay(checkpoint: str | Path | None, *, dataset: str | Path | None = None,
           bags: Sequence[str | Path] | None = None, out: Path, episodes: Sequence[int] | None = None,
           every: int = 1, num_steps: int = 10, max_frames: int | None = None, device: str = "auto",
           seed: int = 0, progress: bool = True, predictor: Predictor | None = None) -> ReplayResult:
    """Replay ``checkpoint`` open-loop over a dataset or bags; write the report into ``out``.

    ``predictor`` replaces the checkpoint's policy (tests; ``checkpoint`` is then only a label).
    ``max_frames``: at most this many predictions per episode."""
    _check_args(dataset, bags, every, num_steps, max_frames)
    if predictor is None:
        if checkpoint is None:
            raise ReplayError("no checkpoint given")
        predictor = PolicyPredictor(checkpoint, device=device, num_steps=num_steps)
    cameras = tuple(getattr(predictor, "camera_roles", CAMERA_ROLES))
    sources = (dataset_sources(dataset, episodes, cameras) if dataset is not None
               else bag_sources(list(bags), episodes, cameras))
    started = time.perf_counter()
    runs = _run_all(sources, predictor, every, max_frames, seed, getattr(predictor, "chunk_size", None), progress)
    elapsed = time.perf_counter() - started
    metrics = build_metrics(runs, checkpoint=checkpoint, source=_source_info(dataset, bags), elapsed_s=elapsed,
                            settings={"every": every, "num_steps": num_steps, "max_frames": max_frames, "seed": seed,
                                      "device": device, "cameras": list(cameras)})
    return write_outputs(Path(out), metrics, runs)


def _check_args(dataset, bags, every: int, num_steps: int, max_frames: int | None) -> None:
    if (dataset is None) == (not bags):
        raise ReplayError("give exactly one of a dataset or bags")
    if every < 1:
        raise ReplayError(f"every must be >= 1, got {every}")
    if num_steps < 1:
        raise ReplayError(f"num_steps must be >= 1, got {num_steps}")
    if max_frames is not None and max_frames < 1:
        raise ReplayError(f"max_frames must be >= 1 (or None for no cap), got {max_frames}")


def _source_info(dataset, bags) -> dict:
    if dataset is not None:
        return {"kind": "dataset", "paths": [str(dataset)]}
    return {"kind": "bags", "paths": [str(b) for b in bags]}


def _run_all(sources: list[EpisodeSource], predictor: Predictor, every: int, max_frames: int | None, seed: int,
             chunk_size: int | None, progress: bool) -> list[EpisodeRun]:
    with _Progress(progress) as bar:
        runs = []
        for ordinal, source in enumerate(sources):
            total = source.length if max_frames is None or source.length is None else \
                min(source.length, (max_frames - 1) * every + (chunk_size or 50))
            tick = bar.episode(f"{source.name} ({ordinal + 1}/{len(sources)})", total)
            runs.append(run_episode(source, predictor, ordinal, every=every, max_frames=max_frames, seed=seed,
                                    chunk_size=chunk_size, on_frame=tick, warmup=ordinal == 0))
            chunk_size = chunk_size or runs[-1].chunks.shape[1]
    return runs


class _Progress:
    """A rich progress bar per episode (nothing when disabled)."""

    def __init__(self, enabled: bool):
        self.enabled, self.progress = enabled, None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("replay {task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("frames"), TimeRemainingColumn(), transient=True)
            self.progress.start()
        return self

    def episode(self, name: str, total: int | None) -> Callable[[], None] | None:
        if self.progress is None:
            return None
        task = self.progress.add_task(name, total=total)
        return lambda: self.progress.advance(task)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()


def build_metrics(runs: list[EpisodeRun], *, checkpoint, source: dict, elapsed_s: float, settings: dict) -> dict:
    horizon = max(run.chunks.shape[1] for run in runs)
    total = ErrorSums(horizon)
    episodes = []
    for run in runs:
        sums = episode_sums(run, horizon)
        total.add(sums)
        episodes.append({"name": run.name, "prompt": run.prompt, "frames": len(run.actions),
                         "evaluated": len(run.frames), "summary": summarize(sums, run.latency_ms)})
    latency = np.concatenate([run.latency_ms for run in runs])
    warmup = next((run.warmup_ms for run in runs if run.warmup_ms is not None), None)
    evaluated = int(sum(len(run.frames) for run in runs))
    return {
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "source": source,
        "joint_names": list(JOINT_NAMES),
        "units": {"arm joints": "rad", "grippers": "m", "summary": "arm joints in degrees, grippers in mm"},
        "settings": settings | {"chunk_size": horizon, "fps": runs[0].fps},
        "frames_evaluated": evaluated,
        "frames_read": int(sum(len(run.actions) for run in runs)),
        "elapsed_s": elapsed_s,
        "predictions_per_s": evaluated / elapsed_s if elapsed_s > 0 else None,
        "summary": summarize(total, latency),
        **error_metrics(total),
        "latency_ms": _jsonable(latency.astype(np.float64)) if len(latency) <= 20_000 else None,
        "warmup_ms": warmup,
        "episodes": episodes,
    }


def write_outputs(out: Path, metrics: dict, runs: list[EpisodeRun]) -> ReplayResult:
    from .report import write_report

    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / METRICS_FILE
    metrics_path.write_text(json.dumps(metrics, indent=1))
    save_runs(out / ARRAYS_FILE, runs)
    html, markdown = write_report(out, metrics, runs)
    return ReplayResult(out, html, markdown, metrics_path, metrics, runs)


def save_runs(path: Path, runs: list[EpisodeRun]) -> None:
    """Every chunk and recorded trajectory, for a closer look than the report's."""
    arrays = {}
    for k, run in enumerate(runs):
        for key in ("states", "actions", "frames", "chunks", "latency_ms"):
            arrays[f"ep{k}_{key}"] = getattr(run, key)
    np.savez_compressed(path, names=np.array([run.name for run in runs]), **arrays)
