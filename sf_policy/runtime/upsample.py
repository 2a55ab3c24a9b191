"""Commands at the driver's rate, smooth: a uniform cubic B-spline over the 30 Hz targets.

The policy node sends one target per 1/30 s. A driver that forwards each at once has the arm's
position servo chase a staircase: a velocity step every tick, a bigger one where a new chunk
takes over. ``BSplineUpsampler`` turns the targets into a curve the driver samples at its own
rate (``command_rate``, e.g. 200 Hz): the uniform cubic B-spline whose control points are the
targets, which is C² everywhere — across chunk switches too — whatever the targets are.

What it costs and guarantees:

* **lag**: the curve uses only targets already received and runs on its own clock (a target
  waits up to one period for its segment, then the curve approaches it over the next ones):
  in the twin the arm follows the 30 Hz targets 45 ms later (bench/upsample.py), where a
  forwarded target is followed at once; it passes near, not through, each target (within
  |P[k−1] − 2 P[k] + P[k+1]| / 6);
* **never outside the targets**: every sample is a convex combination of four consecutive
  targets, so it stays within the joint limits and the rate limits the safety filter applied
  to them (per joint, between their minimum and maximum);
* **stops where it was told**: when targets stop arriving the last one is repeated, so the
  curve settles exactly on it within three periods, continuously (no jump, no extrapolation);
  after ``stale_s`` without a target ``sample`` returns None (send nothing, the arm holds);
  the next target then starts a new curve on itself.

This is JointTrajectoryController's upsampling idea (ros2_controllers: splines between
waypoints at the controller rate) for a stream of position targets without velocities.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np


def bspline_point(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, p3: np.ndarray, u: float) -> np.ndarray:
    """The uniform cubic B-spline segment of control points p0..p3 at u in [0, 1]."""
    u2, u3 = u * u, u * u * u
    w0 = (1 - u) ** 3 / 6
    w1 = (3 * u3 - 6 * u2 + 4) / 6
    w2 = (-3 * u3 + 3 * u2 + 3 * u + 1) / 6
    w3 = u3 / 6
    return w0 * p0 + w1 * p1 + w2 * p2 + w3 * p3


class BSplineUpsampler:
    """``push(t, target)`` at the control rate; ``sample(t)`` at the driver's rate.

    The curve runs on its own clock: one segment per ``period``, started at the first target.
    At each segment boundary the next received target (or, if none came, the last one again)
    becomes the newest control point, so the curve is C² at every instant however the targets'
    arrival jitters; a target waits at most one period for its boundary."""

    MAX_PENDING = 2  # targets arriving faster than the period: keep the newest, bound the lag

    def __init__(self, period: float = 1.0 / 30.0, stale_s: float = 0.2):
        if not (math.isfinite(period) and period > 0 and math.isfinite(stale_s) and stale_s > 0):
            raise ValueError(f"period and stale_s must be positive seconds, got {period}, {stale_s}")
        self.period, self.stale_s = float(period), float(stale_s)
        self.reset()

    def reset(self) -> None:
        """Forget every target (after an e-stop or a deactivation: start again from the next one)."""
        self._points: deque[np.ndarray] = deque(maxlen=4)   # the current segment's control points
        self._pending: deque[np.ndarray] = deque(maxlen=self.MAX_PENDING)
        self._segment_start = 0.0
        self._last_push = -math.inf

    def push(self, t: float, target) -> None:
        target = np.asarray(target, dtype=np.float64).copy()
        if not self._points or t - self._last_push > self.stale_s:  # (re)start on it, at rest
            self._points.clear()
            self._pending.clear()
            self._points.extend([target] * 4)
            self._segment_start = t
        else:
            self._pending.append(target)
        self._last_push = t

    def sample(self, t: float) -> np.ndarray | None:
        """The command at time ``t``, or None: nothing received, or nothing for ``stale_s``."""
        if not self._points or t - self._last_push > self.stale_s:
            return None
        while t - self._segment_start >= self.period:
            self._segment_start += self.period
            self._points.append(self._pending.popleft() if self._pending else self._points[-1])
        u = min(max((t - self._segment_start) / self.period, 0.0), 1.0)
        return bspline_point(*self._points, u)
