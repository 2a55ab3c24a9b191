"""The tracking watchdog: an arm that does not follow its commands is stopped.

A collision, an arm blocked by an object or a person, a dead or overheated motor all look the
same from the controller: the measured joint stays away from the command. The safety filter
cannot see it (it limits commands, not outcomes), but it runs this check: each tick it hands
the last command it sent and the measured state to ``update``; when an arm joint has stayed
more than ``max_error`` from the last command for longer than ``max_duration``, ``update``
returns a reason naming the joint and the filter latches its e-stop with it (the policy node:
resume with ``~/resume``).

Why against the last command and not a delayed one: the safety filter caps the command's
speed (1.57 rad/s by default), so a following servo lags it by about speed × servo delay
(< 0.2 rad), and the duration filter absorbs the transients of a start or a stop. Grippers
are not watched: a gripper closed on an object stays away from its command by design.
"""

from __future__ import annotations

import math

import numpy as np

from ..embodiment import GRIPPER_INDICES, JOINT_NAMES, STATE_DIM

DEFAULT_MAX_ERROR = 0.35     # rad (20 degrees): well above the lag of a servo following the filtered command
DEFAULT_MAX_DURATION = 0.5   # s: 15 ticks at 30 Hz


class TrackingWatchdog:
    def __init__(self, max_error: float = DEFAULT_MAX_ERROR, max_duration: float = DEFAULT_MAX_DURATION):
        if not (math.isfinite(max_error) and max_error > 0 and math.isfinite(max_duration) and max_duration >= 0):
            raise ValueError(f"tracking watchdog: max_error must be > 0 and max_duration >= 0, got "
                             f"{max_error}, {max_duration}")
        self.max_error, self.max_duration = float(max_error), float(max_duration)
        self.joints = np.array([i for i in range(STATE_DIM) if i not in GRIPPER_INDICES])
        self.reset()

    def reset(self) -> None:
        """Forget the command and the timers (after a resume: the arm starts from where it is)."""
        self._command: np.ndarray | None = None
        self._since = np.full(STATE_DIM, np.nan)  # when each joint's error went above max_error

    def update(self, command, measured, now: float) -> str | None:
        """``command``: the last command sent (None: none yet, or the one kept stands); ``measured``:
        the puppet state [14] (None or unusable: nothing to check). A reason when it trips."""
        if command is not None:
            command = np.asarray(command, dtype=np.float64)
            if command.shape == (STATE_DIM,) and np.isfinite(command).all():
                self._command = command
        try:
            measured = np.asarray(measured, dtype=np.float64)
        except (TypeError, ValueError):
            return None
        if self._command is None or measured.shape != (STATE_DIM,) or not np.isfinite(measured).all() \
                or not isinstance(now, (int, float)) or not math.isfinite(now):
            return None
        error = np.abs(measured - self._command)
        off = np.zeros(STATE_DIM, dtype=bool)
        off[self.joints] = error[self.joints] > self.max_error
        self._since[~off] = np.nan
        self._since[off & np.isnan(self._since)] = now
        overdue = np.flatnonzero(off & (now - self._since > self.max_duration))
        if not len(overdue):
            return None
        worst = int(overdue[np.argmax(error[overdue])])
        return (f"tracking: {JOINT_NAMES[worst]} stayed {error[worst]:.2f} rad from its command for "
                f"{now - self._since[worst]:.2f} s (limit {self.max_error} rad for {self.max_duration} s): "
                "a collision, a blocked arm or a dead motor?")
