"""Clocks and the control-tick grid shared by the scheduler, the safety filter and the node.

Everything in the runtime takes time as seconds on one clock passed in by the caller (the
ROS clock in the node, ``time.monotonic`` in benches, a ``ManualClock`` in tests), so the
logic never reads a wall clock on its own and tests never sleep.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

#: A clock: seconds, monotonic within a run.
Clock = Callable[[], float]

monotonic: Clock = time.monotonic


class ManualClock:
    """A clock that moves only when told to (tests, replay). Thread-safe."""

    def __init__(self, start: float = 0.0):
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def set(self, now: float) -> float:
        with self._lock:
            self._now = float(now)
            return self._now

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._now += float(seconds)
            return self._now


class TickGrid:
    """Control ticks: tick ``k`` is at ``origin + k * period``.

    ``tick_of(t)`` rounds to the nearest grid point, so a timer firing with up to half a
    period of jitter still lands on its own tick, and a stamp taken just before a tick
    counts as that tick.
    """

    def __init__(self, period: float, origin: float = 0.0):
        if not (math.isfinite(period) and period > 0.0):
            raise ValueError(f"period must be a positive number of seconds, got {period}")
        if not math.isfinite(origin):
            raise ValueError(f"origin must be finite, got {origin}")
        self.period = float(period)
        self.origin = float(origin)

    def tick_of(self, t: float) -> int:
        return math.floor((t - self.origin) / self.period + 0.5)

    def time_of(self, tick: int) -> float:
        return self.origin + tick * self.period
