"""The safety filter between the chunk scheduler and the arms.

Each control tick the node asks ``filter(command, state, obs_age_s, now)`` and publishes the
decision's ``action``, or nothing when it is ``None`` (the arm drivers hold the arm where it
was last commanded). Rules, in this order (the first that refuses wins; see docs/runtime.md):

1. e-stop latched (``estop()``, from any thread) → hold until ``reset()``; it takes effect on
   the very next call, whatever the command. With a ``TrackingWatchdog`` the filter latches it
   itself when the measured arm has stayed too far from the last command it sent
   (sf_policy/runtime/watchdog.py), the reason naming the joint;
2. no command (the scheduler has nothing valid) → hold;
3. a command that is not 14 real numbers (a flat sequence, or an array of shape (14,) of
   integers or floats: no strings, booleans, complex numbers or other shapes), or has a NaN/inf
   anywhere (an integer too large for a float counts as inf) → the whole command is refused
   (hold), never a partial one;
4. no usable measured state (missing, wrong size, non-finite) → hold;
5. observation age unknown (None, or not a real number), older than ``max_obs_age`` or
   stamped in the future (clocks disagree) → hold, the reason names the age; a time ``now``
   that is not a finite real number → hold;
6. position limits: each joint and gripper target is clamped into its range (counted);
7. velocity: each entry moves at most ``max_speed * dt`` from the previous command, where
   ``max_speed`` is the embodiment's max velocity × ``velocity_scale`` (the gripper:
   ``gripper_speed``) and ``dt`` the time since that command, at most two periods;
8. acceleration: the speed may grow by at most ``max_accel * dt`` per tick; slowing down is
   never limited (a safety filter must not delay a stop, and an unlimited brake cannot
   overshoot the target);
9. workspace (with a ``WorkspaceGuard``, sf_policy/runtime/workspace.py): a command that would
   put a link into the table, a keep-out box or the other arm, deeper than the arm already is,
   → hold, the reason naming the link and the zone.

The first command after start, an e-stop reset, a clock jump or a pause longer than five
periods starts from the measured state at zero speed, so the arm ramps to the plan instead
of jumping. Like the teleop link (``sf_policy.teleop.link``), whose timing constants it
shares. ``dry_run`` is the node's business: the filter only decides.

No input makes ``filter`` raise: whatever it cannot use holds, and an error of its own (a bug)
holds too, with code ``error`` and the exception named in the reason.
"""

from __future__ import annotations

import math
import numbers
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..embodiment import ARM_JOINTS, ARM_STATE_NAMES, GRIPPER, JOINT_NAMES, PIPER_LIMITS, STATE_DIM, JointLimit
from ..teleop.link import MAX_DT_PERIODS, RESYNC_PERIODS

#: Defaults (see docs/runtime.md, "Safety").
DEFAULT_VELOCITY_SCALE = 0.5      # × the joints' max velocity (π rad/s) → 1.57 rad/s
DEFAULT_MAX_ACCEL = 10.0          # rad/s²: 1.57 rad/s reached in 0.16 s (5 ticks)
DEFAULT_GRIPPER_ACCEL = 1.0       # m/s²: the gripper's 0.1 m/s in 0.1 s
DEFAULT_MAX_OBS_AGE = 0.2         # s, like the arm driver's max_command_age (6 camera frames)
DEFAULT_MAX_OBS_FUTURE = 0.05     # s a stamp may lie ahead of `now` before the clocks count as disagreeing

#: Why a command entry was changed: clamped into its range, or rate-limited by speed or acceleration.
POSITION, SPEED, ACCEL = "position", "speed", "accel"
LIMIT_CAUSES = (POSITION, SPEED, ACCEL)

#: Reason codes of a decision (``SafetyDecision.code``).
OK, ESTOP, NO_COMMAND, MALFORMED, NON_FINITE, NO_STATE, STALE, CLOCK, ERROR, WORKSPACE = (
    "ok", "estop", "no_command", "malformed", "non_finite", "no_state", "stale_observation", "clock", "error",
    "workspace")


@dataclass(frozen=True)
class SafetyDecision:
    """What to send this tick: ``action`` [14] (rad / m), or ``None`` = hold (send nothing)."""

    action: np.ndarray | None
    reason: str = ""
    clamped: bool = False
    limited: bool = False
    code: str = OK
    clamped_joints: tuple[str, ...] = ()
    limited_joints: tuple[str, ...] = ()
    #: Why each limited entry was limited, in ``limited_joints`` order: ``"speed"`` (the step hit
    #: the velocity cap) or ``"accel"`` (the speed could not grow that fast).
    limit_causes: tuple[str, ...] = ()

    @property
    def hold(self) -> bool:
        return self.action is None


def _per_entry(arm7: list[float]) -> np.ndarray:
    return np.array(arm7 + arm7, dtype=np.float64)  # both arms share the per-arm limits


class SafetyFilter:
    """Decides, per control tick, what may reach the arms. Thread-safe (``estop`` may come
    from a service callback while ``filter`` runs in the control timer)."""

    def __init__(self, limits: dict[str, JointLimit] | None = None, *, period: float = 1.0 / 30.0,
                 velocity_scale: float = DEFAULT_VELOCITY_SCALE, gripper_speed: float | None = None,
                 max_accel: float = DEFAULT_MAX_ACCEL, gripper_accel: float = DEFAULT_GRIPPER_ACCEL,
                 max_obs_age: float = DEFAULT_MAX_OBS_AGE, max_obs_future: float = DEFAULT_MAX_OBS_FUTURE,
                 workspace=None, watchdog=None):
        """``workspace``: a ``WorkspaceGuard`` (rule 9), or None for joint limits only.
        ``watchdog``: a ``TrackingWatchdog`` (rule 1), or None."""
        limits = dict(limits or PIPER_LIMITS)
        missing = [n for n in ARM_STATE_NAMES if n not in limits]
        if missing:
            raise ValueError(f"limits lack {', '.join(missing)}")
        if not (math.isfinite(period) and period > 0.0):
            raise ValueError(f"period must be a positive number of seconds, got {period}")
        if not 0.0 < velocity_scale <= 1.0:
            raise ValueError(f"velocity_scale must be in (0, 1] (a fraction of each joint's max speed), "
                             f"got {velocity_scale}")
        gripper_limit = limits[GRIPPER].max_velocity
        gripper_speed = gripper_limit if gripper_speed is None else gripper_speed
        if not 0.0 < gripper_speed <= gripper_limit:
            raise ValueError(f"gripper_speed must be in (0, {gripper_limit}] m/s, got {gripper_speed}")
        for name, value in (("max_accel", max_accel), ("gripper_accel", gripper_accel),
                            ("max_obs_age", max_obs_age)):
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"{name} must be positive, got {value}")
        if not (math.isfinite(max_obs_future) and max_obs_future >= 0.0):
            raise ValueError(f"max_obs_future must be >= 0, got {max_obs_future}")
        self.period = float(period)
        self.workspace, self.watchdog = workspace, watchdog
        self.max_obs_age, self.max_obs_future = float(max_obs_age), float(max_obs_future)
        self.lower = _per_entry([limits[n].lower for n in ARM_STATE_NAMES])
        self.upper = _per_entry([limits[n].upper for n in ARM_STATE_NAMES])
        #: Speed cap per entry (rad/s; grippers m/s) and acceleration cap (rad/s²; m/s²).
        self.max_speed = _per_entry([limits[n].max_velocity * velocity_scale for n in ARM_JOINTS] + [gripper_speed])
        self.max_accel = _per_entry([float(max_accel)] * len(ARM_JOINTS) + [float(gripper_accel)])
        self._lock = threading.Lock()
        self._estop_reason: str | None = None
        self._last: np.ndarray | None = None      # the last command sent
        self._last_time = -math.inf
        self._velocity = np.zeros(STATE_DIM)      # of the last command (per second)
        self._counts: Counter[str] = Counter()
        self._by_joint: Counter[tuple[str, str]] = Counter()  # (joint, cause) -> commands changed

    # --- e-stop --------------------------------------------------------------------------
    def estop(self, reason: str = "e-stop requested") -> None:
        """Latch: every following ``filter`` holds until ``reset()``."""
        with self._lock:
            self._estop_reason = reason or "e-stop requested"
            self._forget()
            self._counts["estops"] += 1

    def reset(self) -> None:
        """Clear the e-stop latch and start over from the measured state (also on activate)."""
        with self._lock:
            self._estop_reason = None
            self._forget()

    @property
    def estopped(self) -> bool:
        return self._estop_reason is not None

    @property
    def estop_reason(self) -> str:
        """Why the e-stop is latched ("" when it is not)."""
        return self._estop_reason or ""

    def _forget(self) -> None:
        if self.watchdog is not None:
            self.watchdog.reset()
        self._last, self._last_time = None, -math.inf
        self._velocity = np.zeros(STATE_DIM)

    # --- the decision --------------------------------------------------------------------
    def filter(self, command, state, obs_age_s: float | None, now: float) -> SafetyDecision:
        with self._lock:
            try:
                decision = self._decide(command, state, _real(obs_age_s), _real(now))
            except Exception as exc:  # noqa: BLE001 - the safety path never raises: what it did not foresee holds
                decision = SafetyDecision(None, f"safety filter error, holding: {type(exc).__name__}: {exc}",
                                          code=ERROR)
            self._counts["commands" if decision.action is not None else "holds"] += 1
            self._counts[decision.code] += 1
            if decision.clamped:
                self._counts["clamped"] += 1
            if decision.limited:
                self._counts["limited"] += 1
            for joint in decision.clamped_joints:
                self._by_joint[(joint, POSITION)] += 1
            for joint, cause in zip(decision.limited_joints, decision.limit_causes):
                self._by_joint[(joint, cause)] += 1
            if decision.action is None:
                self._velocity = np.zeros(STATE_DIM)  # the arm holds still
            return decision

    def _decide(self, command, state, obs_age_s, now) -> SafetyDecision:
        if self.watchdog is not None and self._estop_reason is None:
            # the last command sent is what the drivers execute, on a hold too
            tripped = self.watchdog.update(self._last, state, now)
            if tripped:
                self._estop_reason = tripped
                self._forget()
                self._counts["estops"] += 1
        if self._estop_reason is not None:
            return SafetyDecision(None, f"e-stop latched ({self._estop_reason}); reset() to resume", code=ESTOP)
        if command is None:
            return SafetyDecision(None, "no command to execute", code=NO_COMMAND)
        target = _vector(command)
        if target is None:
            return SafetyDecision(None, f"malformed command (expected {STATE_DIM} numbers)", code=MALFORMED)
        bad = ~np.isfinite(target)
        if bad.any():
            return SafetyDecision(None, f"non-finite command for {_names(bad)}: whole command refused",
                                  code=NON_FINITE)
        measured = None if state is None else _vector(state)
        if measured is None or not np.isfinite(measured).all():
            return SafetyDecision(None, "no usable measured state (missing, malformed or non-finite)",
                                  code=NO_STATE)
        if obs_age_s is None or math.isnan(obs_age_s):
            return SafetyDecision(None, "observation age unknown", code=STALE)
        if obs_age_s > self.max_obs_age:
            return SafetyDecision(None, f"stale observation: {obs_age_s * 1000:.0f} ms old "
                                        f"(max_obs_age {self.max_obs_age * 1000:.0f} ms)", code=STALE)
        if obs_age_s < -self.max_obs_future:
            return SafetyDecision(None, f"observation stamped {-obs_age_s * 1000:.0f} ms in the future "
                                        "(clocks disagree)", code=CLOCK)
        if now is None or not math.isfinite(now):
            return SafetyDecision(None, "no usable time (now must be a finite number of seconds)", code=CLOCK)

        clamped_target = np.clip(target, self.lower, self.upper)
        clamped = clamped_target != target
        since = now - self._last_time
        if self._last is not None and 0.0 <= since <= RESYNC_PERIODS * self.period + 1e-9:
            reference, velocity = self._last, self._velocity
            dt = min(since, MAX_DT_PERIODS * self.period)
        else:  # start, reset, a long pause or the clock went back: from the arm, at rest
            reference, velocity, dt = np.clip(measured, self.lower, self.upper), np.zeros(STATE_DIM), self.period
        wanted = clamped_target - reference
        speed_step = self.max_speed * dt
        accel_step = self.max_accel * dt * dt
        # Allowed steps: |step| <= speed_step, and speeding up by at most accel_step per tick
        # (in either direction); every step between 0 and the current velocity's is allowed, so
        # 0 (stop) always is.
        lo = np.maximum(-speed_step, np.minimum(velocity, 0.0) * dt - accel_step)
        hi = np.minimum(speed_step, np.maximum(velocity, 0.0) * dt + accel_step)
        step = np.clip(wanted, lo, hi)
        limited = np.abs(step - wanted) > 1e-12
        # A limited entry stopped at a bound: the speed cap's, or the tighter acceleration one.
        at_speed_cap = np.abs(np.abs(step) - speed_step) <= 1e-12
        causes = tuple(SPEED if at_speed_cap[i] else ACCEL for i in np.flatnonzero(limited))
        # reference and target are inside the limits and the step goes part of the way from one
        # to the other, so the result is too; the clip only guards against rounding.
        action = np.clip(reference + step, self.lower, self.upper)
        if self.workspace is not None:
            refusal = self._workspace_refusal(action, measured)
            if refusal:  # the last command stands: the arm holds outside the zone
                return SafetyDecision(None, refusal, code=WORKSPACE)
        if dt > 0.0:
            self._velocity = step / dt
        self._last, self._last_time = action, now
        reasons = []
        if clamped.any():
            reasons.append(f"clamped to limits: {_names(clamped)}")
        if limited.any():
            reasons.append(f"rate-limited: {_names(limited)}")
        return SafetyDecision(action.copy(), "; ".join(reasons), bool(clamped.any()), bool(limited.any()), OK,
                              _name_tuple(clamped), _name_tuple(limited), causes)

    def _workspace_refusal(self, action: np.ndarray, measured: np.ndarray) -> str:
        depth, what = self.workspace.penetration(action)
        if depth <= 0.0:
            return ""
        already, _ = self.workspace.penetration(measured)
        if depth <= already + 1e-4:  # the arm is in there already: moving out (or staying) is allowed
            return ""
        return f"workspace: the command would put the {what}, {depth * 100:.1f} cm in; holding"

    # --- reporting -----------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Counters: commands, holds, clamped, limited, estops, and one per reason code."""
        with self._lock:
            return dict(self._counts)

    def limit_counts(self) -> dict[str, dict[str, int]]:
        """Commands changed per joint and cause: ``{joint: {"position"|"speed"|"accel": n}}``
        (only joints that were ever changed). Which joint the filter fights, and why."""
        with self._lock:
            out: dict[str, dict[str, int]] = {}
            for (joint, cause), n in self._by_joint.items():
                out.setdefault(joint, {})[cause] = n
            return {j: out[j] for j in JOINT_NAMES if j in out}


def _real(value) -> float | None:
    """A real number as a float (±inf for an integer too large for one); None for anything else:
    None, strings, booleans, complex numbers, arrays."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _vector(values) -> np.ndarray | None:
    """14 real numbers as float64, or None: a 1-D array of shape (14,) with an integer or float
    dtype, or a flat sequence of 14 real numbers (``_real``). Other shapes ((2, 7), (14, 1)),
    strings, booleans and complex numbers are not a command or a state: no guessing."""
    if isinstance(values, np.ndarray):
        if values.shape != (STATE_DIM,) or values.dtype.kind not in "iuf":
            return None
        return values.astype(np.float64)
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != STATE_DIM:
        return None
    numbers_ = [_real(v) for v in values]
    return None if any(v is None for v in numbers_) else np.array(numbers_, dtype=np.float64)


def _name_tuple(mask: np.ndarray) -> tuple[str, ...]:
    return tuple(JOINT_NAMES[i] for i in np.flatnonzero(mask))


def _names(mask: np.ndarray) -> str:
    return ", ".join(_name_tuple(mask))
