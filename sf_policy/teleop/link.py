"""The software master-puppet link of one arm: master samples in, safe puppet commands out.

On the hardware link the puppet follows the master's CAN frames directly. In software the
master sits on a bus of its own, its driver publishes what it reads, and this link turns
those samples into the puppet driver's commands. It is the place to refuse what the
operator's arm cannot mean:

* a sample with NaN or inf is refused and drops the current master sample, so the link
  holds at once instead of carrying on with an older one;
* a sample older than ``max_master_age`` (or that far in the future: the clocks disagree)
  gives no command, and the driver holds the puppet where it is;
* targets are clamped to the joint limits;
* each command moves each joint at most ``max_velocity * velocity_scale * dt`` from the
  previous command, and the gripper at most ``gripper_speed * dt``, where ``dt`` is the time
  since that command (at most two periods, so a late tick cannot buy a jump);
* at most one command per ``1 / rate_hz`` slot, and none closer than half a period.

The first command after start or after a pause starts from the puppet's measured position,
never from an old command or from the master's: an operator whose master is far from the
puppet sees the puppet ramp to it at the capped speed. Without a fresh puppet
measurement there is no command. Times are seconds on one clock (the ROS clock in the node).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..embodiment import ARM_JOINTS, ARM_STATE_NAMES, DOF_PER_ARM, GRIPPER, PIPER_LIMITS, JointLimit

#: A pause longer than this many periods without a command restarts from the puppet's state.
RESYNC_PERIODS = 5
#: dt is capped at this many periods when limiting a step (see the module docstring).
MAX_DT_PERIODS = 2.0


@dataclass(frozen=True)
class LinkOutput:
    """One tick's outcome: a command (7 SI values) or the reason there is none."""

    command: np.ndarray | None
    reason: str = ""
    clamped: tuple[str, ...] = ()   # entries the master asked beyond the limits
    limited: tuple[str, ...] = ()   # entries held back by the speed limit this tick


@dataclass(frozen=True)
class _Sample:
    position: np.ndarray
    stamp_s: float


class SoftwareLink:
    """One arm's link. Feed it samples (``observe_master``, ``observe_puppet``) as they come,
    and call ``tick(now_s)`` at the link's rate; it returns the command to publish, if any."""

    def __init__(self, limits: dict[str, JointLimit] | None = None, *, rate_hz: float = 50.0,
                 max_master_age: float = 0.1, velocity_scale: float = 0.5, gripper_speed: float | None = None,
                 max_puppet_age: float = 0.5):
        limits = limits or dict(PIPER_LIMITS)
        if not 0.0 < rate_hz <= 1000.0:
            raise ValueError(f"rate_hz must be in (0, 1000], got {rate_hz}")
        if not 0.0 < velocity_scale <= 1.0:
            raise ValueError(f"velocity_scale must be in (0, 1] (a fraction of each joint's max speed), "
                             f"got {velocity_scale}")
        if not max_master_age > 0.0 or not max_puppet_age > 0.0:
            raise ValueError("max_master_age and max_puppet_age must be positive")
        gripper_limit = limits[GRIPPER].max_velocity
        gripper_speed = gripper_limit if gripper_speed is None else gripper_speed
        if not 0.0 < gripper_speed <= gripper_limit:
            raise ValueError(f"gripper_speed must be in (0, {gripper_limit}] m/s, got {gripper_speed}")
        self.period = 1.0 / rate_hz
        self.max_master_age, self.max_puppet_age = max_master_age, max_puppet_age
        self.lower = np.array([limits[n].lower for n in ARM_STATE_NAMES])
        self.upper = np.array([limits[n].upper for n in ARM_STATE_NAMES])
        #: Speed cap per entry (rad/s, gripper m/s): what one command may move per second.
        self.max_speed = np.array([limits[n].max_velocity * velocity_scale for n in ARM_JOINTS] + [gripper_speed])
        self._master: _Sample | None = None
        self._puppet: _Sample | None = None
        self._last_command: np.ndarray | None = None
        self._last_time = -math.inf
        self._grid_origin: float | None = None
        self._last_slot = -1

    # --- inputs --------------------------------------------------------------------------
    def observe_master(self, position, stamp_s: float) -> str:
        """A master sample; returns "" if accepted, else why it was refused."""
        values = _seven(position)
        if values is None:
            self._master = None
            return f"expected {DOF_PER_ARM} values ({', '.join(ARM_STATE_NAMES)})"
        bad = [ARM_STATE_NAMES[i] for i in np.flatnonzero(~np.isfinite(values))]
        if bad or not math.isfinite(stamp_s):
            self._master = None  # hold now rather than keep following an older sample
            return f"non-finite master value for {', '.join(bad) or 'stamp'}"
        self._master = _Sample(values, float(stamp_s))
        return ""

    def forget_master(self) -> None:
        """The master's stream cannot be trusted (e.g. a malformed message): hold until the next good sample."""
        self._master = None

    def observe_puppet(self, position, stamp_s: float) -> None:
        """The puppet's measured position: where a (re)started link begins."""
        values = _seven(position)
        if values is not None and np.all(np.isfinite(values)) and math.isfinite(stamp_s):
            self._puppet = _Sample(values, float(stamp_s))

    # --- the tick ------------------------------------------------------------------------
    def tick(self, now_s: float) -> LinkOutput:
        if self._master is None:
            return LinkOutput(None, "no master sample")
        age = now_s - self._master.stamp_s
        if abs(age) > self.max_master_age:
            what = "old" if age > 0 else "in the future (clocks disagree)"
            return LinkOutput(None, f"stale master sample: {abs(age) * 1000:.0f} ms {what} "
                                    f"(max_master_age {self.max_master_age * 1000:.0f} ms)")
        if now_s < self._last_time:  # the clock went back: forget the schedule and resync
            self._last_command, self._grid_origin, self._last_time = None, None, -math.inf
        if not self._slot_free(now_s):
            return LinkOutput(None, "rate")
        reference, dt = self._reference(now_s)
        if reference is None:
            return LinkOutput(None, "no fresh puppet state to start from")
        target = np.clip(self._master.position, self.lower, self.upper)
        clamped = _names(target != self._master.position)
        max_step = self.max_speed * dt
        wanted = target - reference
        step = np.clip(wanted, -max_step, max_step)
        limited = _names(np.abs(wanted) > max_step)
        # reference and target are inside the limits, so is every point between them; the
        # clip only guards against rounding.
        command = np.clip(reference + step, self.lower, self.upper)
        self._take_slot(now_s)
        self._last_command, self._last_time = command, now_s
        return LinkOutput(command, "", clamped, limited)

    def _reference(self, now_s: float) -> tuple[np.ndarray | None, float]:
        """Where this command starts from, and the time it may take to move."""
        since = now_s - self._last_time
        if self._last_command is not None and since <= RESYNC_PERIODS * self.period:
            return self._last_command, min(since, MAX_DT_PERIODS * self.period)
        puppet = self._puppet
        if puppet is None or abs(now_s - puppet.stamp_s) > self.max_puppet_age:
            return None, 0.0
        return np.clip(puppet.position, self.lower, self.upper), self.period

    # One command per slot of a grid laid from the first command, and never two within half a
    # period. Slots are centred on the grid points, so a timer at the link's rate keeps one
    # tick per slot even with jitter of up to half a period, while a burst of late ticks (a
    # busy executor catching up) cannot raise the rate.
    def _slot_free(self, now_s: float) -> bool:
        if self._grid_origin is None:
            return True
        return self._slot(now_s) > self._last_slot and now_s - self._last_time >= self.period / 2

    def _take_slot(self, now_s: float) -> None:
        if self._grid_origin is None:
            self._grid_origin, self._last_slot = now_s, 0
        else:
            self._last_slot = self._slot(now_s)

    def _slot(self, now_s: float) -> int:
        return math.floor((now_s - self._grid_origin) / self.period + 0.5)


def _seven(position) -> np.ndarray | None:
    try:
        values = np.asarray(position, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        return None
    return values if values.shape == (DOF_PER_ARM,) else None


def _names(mask: np.ndarray) -> tuple[str, ...]:
    return tuple(ARM_STATE_NAMES[i] for i in np.flatnonzero(mask))
