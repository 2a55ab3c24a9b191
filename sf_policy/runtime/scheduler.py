"""Asynchronous action-chunk execution at the control rate.

The policy returns a chunk of H absolute targets (H = 50 at 30 Hz: 1.67 s) for the control
tick of the observation it saw. Executing a chunk and only then asking for the next one
(openpi's robot loop, lerobot's synchronous mode) stops the arm for the whole inference at
every replan, the jerky motion users complain about. Here:

* ``infer(observation) -> chunk [H, 14]`` runs in a worker thread on the latest observation
  while the current plan keeps executing;
* a chunk is tagged with the tick of its observation; when it arrives at tick ``now``, its
  first ``now - obs_tick`` steps are in the past and are skipped;
* only the first ``execute_steps`` of a chunk are ever executed (open loop beyond that is
  too stale), and the next chunk is requested as soon as fewer than ``refill_at`` steps are
  left after the current tick, so a model that answers in fewer than ``refill_at`` ticks
  never lets the plan run dry;
* the new chunk is merged into what is left of the plan: ``"blend"`` cross-fades linearly
  from the old plan to the new one over ``blend_steps`` ticks (continuous: the first merged
  step moves only 1/(blend_steps+1) of the way), ``"replace"`` switches at once, ``"rtc"``
  (real-time chunking, sf_policy/model/rtc.py) asks the model for a chunk that already agrees
  with the plan: each request carries the plan from the observation's tick on
  (``prefix_actions``) and the expected delay until the chunk can take over
  (``inference_delay``: ticks already elapsed since the observation + the p90 latency), and
  the chunk then replaces the plan where it arrives;
* ``adaptive=True`` sizes both to the measured latency instead: the next chunk is requested
  when fewer than ``latency_p90 / period + 2`` steps are left (at least ``refill_at``), and a
  chunk that arrives later than ``execute_steps`` ticks is still executed from its first
  un-elapsed step for that many steps (up to its full length) instead of being dropped, so a
  slow model (a CPU, a remote GPU over Wi-Fi) moves the arm in time-correct steps rather
  than not at all;
* a failed inference (an exception, a wrong shape, a NaN/inf anywhere in the chunk) makes
  the plan stop at once when ``on_error="hold"`` (default: a model that produced garbage
  once is not trusted with the rest of its previous plan either) or lets the previous plan
  run out (``"continue"``); either way the next observation is inferred again;
* ``tick(now)`` returns the command of this tick, or ``None`` when there is none (before the
  first chunk, or the plan ran out): the node then publishes nothing and the arm holds.

The plan is only touched by ``tick`` (the control thread); the worker only runs ``infer``
and hands its result back under a lock. Times are seconds on the caller's clock; the
injected ``clock`` only times the inference. See ``docs/runtime.md``.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..embodiment import STATE_DIM
from .clock import Clock, TickGrid, monotonic

log = logging.getLogger(__name__)

MODES = ("blend", "replace", "rtc")
ON_ERROR = ("hold", "continue")
#: adaptive refill: ask when fewer than latency_p90 / period + this many steps are left
ADAPTIVE_MARGIN_TICKS = 2
#: Inference latencies kept for the p50/p99 statistics.
LATENCY_WINDOW = 1000

Infer = Callable[[Any], Any]


@dataclass(frozen=True)
class SchedulerStats:
    """A snapshot of the scheduler's counters (for ``/diagnostics`` and benches)."""

    ticks: int = 0               # tick() calls while running
    actions: int = 0             # ticks that returned a command
    waiting: int = 0             # ticks without a command before the first chunk (start-up)
    starved: int = 0             # ticks without a command after a chunk had run out
    requests: int = 0            # inference requests handed to the worker
    chunks: int = 0              # chunks merged into the plan
    late_chunks: int = 0         # chunks whose whole horizon had elapsed on arrival (dropped)
    errors: int = 0              # infer() raised or returned something unusable
    last_error: str = ""
    skipped_steps: int = 0       # steps skipped in total (elapsed between observation and merge)
    last_skip: int = 0
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None
    latency_max_s: float | None = None
    chunk_age_ticks: int | None = None  # ticks since the observation of the newest merged chunk
    remaining: int = 0           # planned steps after the last tick
    in_flight: bool = False
    refill_at: int = 0           # the refill threshold in use (adapts to latency when adaptive)
    guided: int = 0              # rtc: requests that carried the plan as a prefix
    inference_delay: int | None = None  # rtc: the delay (ticks) the last guided request expected
    #: Largest |new chunk − plan| over the steps both cover, at each merge (mean and max so far):
    #: how much consecutive chunks disagree where they overlap (what blending hides and RTC aims
    #: to remove).
    disagreement_mean: float | None = None
    disagreement_max: float | None = None


@dataclass(frozen=True)
class TickInfo:
    """Where one tick's command came from (``ChunkScheduler.last_tick_info``), for traces.

    ``chunk``: the number of the merged chunk it belongs to (1, 2, ... since ``start``;
    ``None`` when the tick had no command); ``step``: its index in that chunk (0 = the
    observation's own tick); ``blend``: the new chunk's weight in the cross-fade (1.0 outside
    it); ``merged``: a chunk was merged at this tick, ``skip`` steps of it already elapsed."""

    tick: int
    chunk: int | None = None
    step: int | None = None
    blend: float = 1.0
    merged: bool = False
    skip: int = 0


@dataclass(frozen=True)
class _Request:
    observation: Any
    obs_tick: int
    generation: int


@dataclass(frozen=True)
class _Result:
    chunk: np.ndarray | None
    obs_tick: int
    latency_s: float
    error: str
    generation: int


def interpolate(prev: np.ndarray, nxt: np.ndarray, alpha: float) -> np.ndarray:
    """The point ``alpha`` of the way from ``prev`` to ``nxt`` (0 → prev, 1 → nxt)."""
    prev, nxt = np.asarray(prev, dtype=np.float64), np.asarray(nxt, dtype=np.float64)
    return prev + float(alpha) * (nxt - prev)


def substeps(prev: np.ndarray | None, nxt: np.ndarray, n: int) -> Iterator[np.ndarray]:
    """``n`` evenly spaced targets from just after ``prev`` up to ``nxt`` (the last is ``nxt``).

    For a driver running ``n`` times the control rate: publish one per driver period. With no
    previous command (``None``) every sub-step is ``nxt``.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    nxt = np.asarray(nxt, dtype=np.float64)
    for i in range(1, n + 1):
        yield nxt.copy() if prev is None else interpolate(prev, nxt, i / n)


#: What a policy sees of an observation (the last two: real-time chunking's, added by the
#: scheduler in "rtc" mode); anything else in it (the evaluation's "tick") is the runtime's.
POLICY_INPUTS = ("images", "state", "prompt", "prefix_actions", "inference_delay")


def policy_infer(policy, num_steps: int = 10) -> Infer:
    """``infer`` for a ``sf_policy.model.policy.Policy``: one observation (a robot sample
    ``{images: {role: uint8 HWC}, state: [14], prompt}``) → its chunk [H, 14]."""

    def infer(observation) -> np.ndarray:
        sample = {k: observation[k] for k in POLICY_INPUTS if k in observation}
        return np.asarray(policy.predict([sample], num_steps=num_steps))[0]

    return infer


def check_chunk(chunk) -> np.ndarray:
    """A chunk as float64 [H, 14]; raises ValueError naming what is wrong (shape, non-finite)."""
    try:
        array = np.asarray(chunk, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"chunk is not numeric: {err}") from None
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or array.shape[1] != STATE_DIM or array.shape[0] < 1:
        raise ValueError(f"chunk must be [H, {STATE_DIM}], got shape {array.shape}")
    bad = ~np.isfinite(array)
    if bad.any():
        steps = np.flatnonzero(bad.any(axis=1))
        raise ValueError(f"chunk has non-finite values at {bad.sum()} entries (first at step {steps[0]})")
    return array


class ChunkScheduler:
    """Executes action chunks at the control rate while the next one is inferred.

    Use: ``start(now)``; on each control tick ``observe(obs, stamp)`` then ``tick(now)``;
    ``stop()`` at the end. ``infer`` is called in a worker thread, one request at a time.
    """

    def __init__(self, infer: Infer, *, period: float = 1.0 / 30.0, execute_steps: int = 25,
                 refill_at: int = 15, mode: str = "blend", blend_steps: int = 10, adaptive: bool = False,
                 on_error: str = "hold", clock: Clock = monotonic, name: str = "chunk-scheduler"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
        if execute_steps < 1:
            raise ValueError(f"execute_steps must be at least 1, got {execute_steps}")
        if not 1 <= refill_at <= execute_steps:
            raise ValueError(f"refill_at must be in [1, execute_steps={execute_steps}], got {refill_at}")
        if blend_steps < 0:
            raise ValueError(f"blend_steps must be >= 0, got {blend_steps}")
        self.infer = infer
        self.period = float(period)
        TickGrid(self.period)  # validates the period
        self.execute_steps, self.refill_at = int(execute_steps), int(refill_at)
        self.mode, self.blend_steps = mode, int(blend_steps)
        self.adaptive, self.on_error = bool(adaptive), on_error
        self._refill = self.refill_at  # request the next chunk below this many steps (adapts: _update_refill)
        self.clock = clock
        self.name = name
        self.grid: TickGrid | None = None

        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._generation = 0
        # shared with the worker (under _cond)
        self._observation: tuple[Any, float | None, int] | None = None  # (obs, stamp, seq)
        self._obs_seq = 0
        self._request: _Request | None = None
        self._result: _Result | None = None
        self._busy = False
        self._latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self._counts = collections.Counter()
        self._last_error = ""
        self._chunk_age: int | None = None
        self._last_skip = 0
        self._last_delay: int | None = None
        self._disagreements: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self._remaining = 0
        # the control thread's own
        self._plan: np.ndarray | None = None   # [n, 14], row 0 at tick _plan_start
        self._plan_start = 0
        self._plan_origin: np.ndarray | None = None  # [n, 2] (chunk number, step in it) per row
        self._plan_blend: np.ndarray | None = None   # [n] the newest chunk's weight per row
        self.last_tick_info: TickInfo | None = None
        self._newest_obs_tick: int | None = None
        self._last_action: np.ndarray | None = None
        self._last_tick: int | None = None
        self._used_seq = 0

    # --- lifecycle -----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self, now: float) -> None:
        """Lay the tick grid at ``now`` (tick 0), clear any plan and start the worker."""
        if self._thread is not None:
            raise RuntimeError("the scheduler is already running; stop() it first")
        self.grid = TickGrid(self.period, now)
        self._clear_plan()
        self._stop_event = threading.Event()  # each worker has its own: one stuck in infer() past
        with self._cond:                      # stop()'s timeout exits when it returns
            self._generation += 1
            self._observation, self._request, self._result = None, None, None
            self._busy = False
        self._thread = threading.Thread(target=self._work, args=(self._stop_event,), name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> bool:
        """Stop the worker and join it; drop the plan. Returns False if the worker is still
        inside ``infer`` after ``timeout`` (it is a daemon thread and its result is dropped)."""
        thread = self._thread
        with self._cond:
            self._stop_event.set()
            self._generation += 1
            self._request, self._result, self._busy = None, None, False
            self._cond.notify_all()
        self._thread = None
        self._clear_plan()
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def reset(self) -> None:
        """Forget the plan and any result in flight (after an e-stop, a pause, a new prompt):
        the next tick starts over from a fresh observation. Call it from the thread that
        calls ``tick`` (the plan is that thread's); ``SafetyFilter.estop`` is the one to call
        from anywhere."""
        with self._cond:
            self._generation += 1
            self._request, self._result, self._observation = None, None, None
        self._clear_plan()

    def _clear_plan(self) -> None:
        self._plan, self._plan_start, self._newest_obs_tick = None, 0, None
        self._plan_origin, self._plan_blend = None, None
        self._last_action, self._last_tick = None, None
        with self._cond:
            self._chunk_age, self._remaining = None, 0
            self._counts["since_reset_chunks"] = 0

    # --- inputs --------------------------------------------------------------------------
    def observe(self, observation: Any, stamp: float | None = None) -> None:
        """The latest observation, stamped with its capture time (seconds, same clock as
        ``tick``); without a stamp it counts as taken at the tick that requests inference.
        Thread-safe; only the newest one is kept."""
        with self._cond:
            self._obs_seq += 1
            self._observation = (observation, stamp, self._obs_seq)

    # --- the control tick ----------------------------------------------------------------
    def tick(self, now: float) -> np.ndarray | None:
        """The command [14] for the control tick at ``now``, or None (hold)."""
        if self.grid is None or self._thread is None:
            raise RuntimeError("start() the scheduler before calling tick()")
        k = self.grid.tick_of(now)
        if self._last_tick is not None and k < self._last_tick:
            log.warning("%s: the clock went back (tick %d after %d); dropping the plan", self.name, k,
                        self._last_tick)
            self.reset()
        with self._cond:
            result = self._result
            self._result = None
        merged_before = self._counts["chunks"]
        if result is not None:
            self._merge(result, k)
        action = self._action_at(k)
        self.last_tick_info = self._tick_info(k, action is not None, self._counts["chunks"] != merged_before)
        self._maybe_request(k)
        self._last_tick = k
        with self._cond:
            self._counts["ticks"] += 1
            if action is not None:
                self._counts["actions"] += 1
            elif self._counts["since_reset_chunks"]:
                self._counts["starved"] += 1
            else:
                self._counts["waiting"] += 1
            self._remaining = self._plan_end() - (k + 1) if self._plan is not None else 0
            self._remaining = max(self._remaining, 0)
            self._chunk_age = None if self._newest_obs_tick is None else k - self._newest_obs_tick
        if action is None:
            return None
        self._last_action = action
        return action.copy()

    def _update_refill(self) -> None:
        """Adaptive: the refill threshold from the latencies so far (called with ``_cond`` held,
        once per result, so the 30 Hz tick only reads an int)."""
        if not self.adaptive or not self._latencies:
            return
        p90 = float(np.percentile(np.asarray(self._latencies, dtype=np.float64), 90))
        need = int(np.ceil(p90 / self.period - 1e-6)) + ADAPTIVE_MARGIN_TICKS
        self._refill = min(max(self.refill_at, need), self.execute_steps)

    def _tick_info(self, k: int, commanded: bool, merged: bool) -> TickInfo:
        if not commanded or self._plan_origin is None:
            return TickInfo(k, merged=merged, skip=self._last_skip if merged else 0)
        row = k - self._plan_start
        chunk, step = (int(v) for v in self._plan_origin[row])
        return TickInfo(k, chunk, step, float(self._plan_blend[row]), merged, self._last_skip if merged else 0)

    def _plan_end(self) -> int:
        return self._plan_start + (0 if self._plan is None else len(self._plan))

    def _action_at(self, k: int) -> np.ndarray | None:
        if self._plan is None or not self._plan_start <= k < self._plan_end():
            return None
        return self._plan[k - self._plan_start]

    def _remaining_from(self, k: int) -> np.ndarray:
        """The plan's rows for ticks k, k+1, ... (possibly none)."""
        if self._plan is None or k >= self._plan_end():
            return np.empty((0, STATE_DIM))
        return self._plan[max(k - self._plan_start, 0):]

    def _merge(self, result: _Result, k: int) -> None:
        with self._cond:
            self._latencies.append(result.latency_s)
            self._update_refill()
            if result.error:
                self._counts["errors"] += 1
                self._last_error = result.error
        if result.error:
            if self.on_error == "hold":  # the arm holds its last command; the fade restarts from it
                self._plan, self._plan_start, self._plan_origin, self._plan_blend = None, 0, None, None
            return
        chunk = result.chunk
        skip = max(k - result.obs_tick, 0)
        horizon = min(self.execute_steps, len(chunk))
        if self.adaptive and skip >= horizon:  # late: still run time-correct steps, as many as execute_steps
            # (only then: an on-time chunk extended by its skip would replan `skip` ticks later
            # and run deeper into every chunk than the fixed horizon allows)
            horizon = min(len(chunk), skip + self.execute_steps)
        if skip >= horizon:
            with self._cond:
                self._counts["late_chunks"] += 1
            log.warning("%s: a chunk arrived %d ticks after its observation, past its %d-step horizon; dropped",
                        self.name, skip, horizon)
            return
        new = chunk[skip:horizon]
        overlap = self._remaining_from(k)[:len(new)]
        if len(overlap):  # how far the new chunk is from the plan it replaces, where both have a step
            with self._cond:
                self._disagreements.append(float(np.abs(new[:len(overlap)] - overlap).max()))
        merged = new.copy()
        weight = np.ones(len(new))
        width = min(self.blend_steps, len(new)) if self.mode == "blend" else 0  # rtc: the model did the joining
        if width:
            old = self._continuation(k, new[:width])
            if old is not None:
                weight[:width] = np.arange(1, width + 1, dtype=np.float64) / (width + 1)
                w = weight[:width, None]
                merged[:width] = (1.0 - w) * old + w * new[:width]
        number = self._counts["chunks"] + 1
        self._plan, self._plan_start, self._plan_blend = merged, k, weight
        self._plan_origin = np.stack([np.full(len(new), number), np.arange(skip, horizon)], axis=1)
        self._newest_obs_tick = result.obs_tick
        with self._cond:
            self._counts["chunks"] += 1
            self._counts["since_reset_chunks"] += 1
            self._counts["skipped_steps"] += skip
            self._last_skip = skip

    def _continuation(self, k: int, new: np.ndarray) -> np.ndarray | None:
        """The old side of the cross-fade over the blend window: the rest of the plan; past the
        plan's end, its last step moved along with the new chunk; with no plan left (it ran
        out and the arm held), the last command moved along with the new chunk. So the fade
        removes only the offset between the two, and a chunk that agrees with the plan passes
        unchanged. None: no command was ever issued (nothing to fade from)."""
        old = self._remaining_from(k)[:len(new)]
        n = len(old)
        if n == len(new):
            return old
        if n:
            tail = old[-1] + (new[n:] - new[n - 1])
        elif self._last_action is not None:  # the plan ran out: the arm holds the last command
            tail = self._last_action + (new - new[0])
        else:
            return None
        return np.concatenate([old, tail])

    def _maybe_request(self, k: int) -> None:
        remaining = self._plan_end() - (k + 1) if self._plan is not None else 0
        if remaining >= self._refill:
            return
        with self._cond:
            if self._busy or self._result is not None or self._observation is None:
                return
            observation, stamp, seq = self._observation
            if seq <= self._used_seq:
                return  # nothing new to look at (a stalled camera): no point inferring again
            obs_tick = k if stamp is None else min(self.grid.tick_of(stamp), k)
            self._used_seq = seq
            if self.mode == "rtc":
                observation = self._with_prefix(observation, obs_tick, k)
            self._request = _Request(observation, obs_tick, self._generation)
            self._busy = True
            self._counts["requests"] += 1
            self._cond.notify_all()

    def _with_prefix(self, observation, obs_tick: int, k: int):
        """The observation plus real-time chunking's inputs (called with ``_cond`` held): the
        plan's steps from the observation's tick on, and the ticks until the chunk can be
        merged. No plan covering the observation's tick (the first chunk, after a hold): none."""
        if self._plan is None or not self._plan_start <= obs_tick < self._plan_end():
            return observation
        latency = float(np.percentile(np.asarray(self._latencies), 90)) if self._latencies else 0.0
        delay = (k - obs_tick) + max(int(np.ceil(latency / self.period - 1e-6)), 1)
        self._counts["guided"] += 1
        self._last_delay = delay
        prefix = self._plan[obs_tick - self._plan_start:].copy()
        return {**observation, "prefix_actions": prefix, "inference_delay": int(delay)}

    # --- the worker ----------------------------------------------------------------------
    def _work(self, stop: threading.Event) -> None:
        while True:
            with self._cond:
                while self._request is None and not stop.is_set():
                    self._cond.wait()
                if stop.is_set():
                    return
                request, self._request = self._request, None
            started = self.clock()
            chunk, error = None, ""
            try:
                chunk = check_chunk(self.infer(request.observation))
            except Exception as err:  # noqa: BLE001 - the model boundary: report, never die
                error = f"{type(err).__name__}: {err}"
            latency = self.clock() - started
            if error:
                log.warning("%s: inference failed: %s", self.name, error)
            with self._cond:
                if stop.is_set():
                    return  # stopped meanwhile: the result and the busy flag are no longer ours
                if request.generation == self._generation:
                    self._result = _Result(chunk, request.obs_tick, latency, error, request.generation)
                self._busy = False
                self._cond.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no request is queued or running (its result, if any, waits for the next
        tick). For tests and benches; returns False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._busy and self._request is None, timeout)

    # --- reporting -----------------------------------------------------------------------
    @property
    def in_flight(self) -> bool:
        with self._cond:
            return self._busy

    def planned(self) -> tuple[float, np.ndarray] | None:
        """(time of the next planned step, the steps from it on [n, 14]) — what the node
        publishes as the planned trajectory; None when nothing is planned."""
        if self.grid is None or self._plan is None or self._last_tick is None:
            return None
        start = self._last_tick + 1
        rows = self._remaining_from(start)
        if not len(rows):
            return None
        return self.grid.time_of(start), rows.copy()

    def stats(self) -> SchedulerStats:
        with self._cond:
            c = self._counts
            lat = np.asarray(self._latencies, dtype=np.float64)
            p50, p99, worst = (None, None, None) if not len(lat) else (
                float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), float(lat.max()))
            return SchedulerStats(
                ticks=c["ticks"], actions=c["actions"], waiting=c["waiting"], starved=c["starved"],
                requests=c["requests"], chunks=c["chunks"], late_chunks=c["late_chunks"], errors=c["errors"],
                last_error=self._last_error, skipped_steps=c["skipped_steps"], last_skip=self._last_skip,
                latency_p50_s=p50, latency_p99_s=p99, latency_max_s=worst, chunk_age_ticks=self._chunk_age,
                remaining=self._remaining, in_flight=self._busy, refill_at=self._refill, guided=c["guided"],
                inference_delay=self._last_delay,
                disagreement_mean=float(np.mean(self._disagreements)) if self._disagreements else None,
                disagreement_max=max(self._disagreements, default=None))
