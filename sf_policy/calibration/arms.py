"""Arm zero and gripper range checks, through our piper_sdk wrapper (``PiperArm``).

*Zero*: with the arm resting in its zero pose (every joint at 0 rad: the folded rest
position the Piper is homed to), the encoders must read 0. An offset means the joint's zero
was set elsewhere (or slipped); every recorded state and every policy command would then be
off by it, on this arm only. The check reports each joint's offset; re-zeroing is AgileX's
procedure (their joint-zero tool), not something this tool does behind the operator's back.

*Gripper*: the contract is a total opening of 0 (closed) to 0.07 m. The tool measures the
reading when fully closed and fully open, either commanded (the arm's motors are enabled at
the rest pose, the joints held where they are, and only the gripper moves, slowly) or moved
by the operator by hand. The measured range can be written to robot.yaml ``limits.gripper``,
which the arm driver clamps every command to: a gripper that opens only to 68 mm is then
never driven against its end stop by a 70 mm command.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..drivers.piper import PiperArm
from ..embodiment import ARM_JOINTS, PIPER_LIMITS

#: The declared zero pose: all six joints at 0 rad (the Piper's homed, folded rest pose).
ZERO_POSE = np.zeros(len(ARM_JOINTS))
REST_TOLERANCE_RAD = math.radians(5.0)  # commanded gripper checks only from (near) the rest pose
GRIPPER_RANGE = (PIPER_LIMITS["gripper"].lower, PIPER_LIMITS["gripper"].upper)


class ArmCheckError(RuntimeError):
    """The check cannot run (no feedback, arm moving, not at rest); the message says which arm."""


@dataclass(frozen=True)
class Tolerances:
    joint_rad: float = math.radians(1.0)  # zero offset allowed per joint
    gripper_closed_m: float = 0.002       # fully closed must read within this of 0
    gripper_open_m: float = 0.005         # fully open must read within this of 0.07
    still_rad: float = math.radians(0.2)  # joint spread while sampling: more means it is moving


@dataclass
class JointResult:
    name: str
    measured: float
    expected: float
    ok: bool

    @property
    def offset(self) -> float:
        return self.measured - self.expected


@dataclass
class GripperResult:
    closed_m: float
    open_m: float
    closed_ok: bool
    open_ok: bool

    @property
    def ok(self) -> bool:
        return self.closed_ok and self.open_ok


@dataclass
class ArmReport:
    side: str
    can_port: str
    joints: list[JointResult] = field(default_factory=list)
    gripper: GripperResult | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(j.ok for j in self.joints) and (self.gripper is None or self.gripper.ok)

    def as_dict(self) -> dict:
        out = {"side": self.side, "can_port": self.can_port, "result": "PASS" if self.ok else "FAIL",
               "joints": {j.name: {"measured_rad": round(j.measured, 6), "offset_rad": round(j.offset, 6),
                                   "offset_deg": round(math.degrees(j.offset), 3),
                                   "result": "PASS" if j.ok else "FAIL"} for j in self.joints}}
        if self.gripper is not None:
            g = self.gripper
            out["gripper"] = {"closed_m": round(g.closed_m, 6), "open_m": round(g.open_m, 6),
                              "closed": "PASS" if g.closed_ok else "FAIL", "open": "PASS" if g.open_ok else "FAIL"}
        if self.notes:
            out["notes"] = list(self.notes)
        return out


# --- measuring -----------------------------------------------------------------------
def sample(arm: PiperArm, seconds: float = 0.5, period: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """(mean, peak-to-peak) of the arm's 7 readings over ``seconds``."""
    if not arm.wait_for_feedback(timeout=2.0):
        raise ArmCheckError(f"arm on {arm.can_port!r}: no feedback on the CAN bus (powered? right port?)")
    readings = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or not readings:
        readings.append(arm.read_state().position)
        time.sleep(period)
    values = np.array(readings)
    return values.mean(axis=0), np.ptp(values, axis=0)


def check_zero(measured7: np.ndarray, tolerances: Tolerances = Tolerances(),
               zero: np.ndarray = ZERO_POSE) -> list[JointResult]:
    return [JointResult(name, float(measured7[i]), float(zero[i]), abs(measured7[i] - zero[i]) <= tolerances.joint_rad)
            for i, name in enumerate(ARM_JOINTS)]


def check_gripper(closed_m: float, open_m: float, tolerances: Tolerances = Tolerances()) -> GripperResult:
    low, high = GRIPPER_RANGE
    return GripperResult(closed_m, open_m, abs(closed_m - low) <= tolerances.gripper_closed_m,
                         abs(open_m - high) <= tolerances.gripper_open_m)


def wait_settled(arm: PiperArm, timeout: float = 6.0, window: float = 0.3, eps_m: float = 2e-4) -> float:
    """The gripper reading once it stops changing (or at the timeout)."""
    history: list[tuple[float, float]] = []
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        now = time.monotonic()
        history.append((now, float(arm.read_state().position[6])))
        recent = [g for t, g in history if t >= now - window]
        if now - start >= window and max(recent) - min(recent) < eps_m:
            return recent[-1]
        time.sleep(0.02)
    return history[-1][1]


def measure_gripper_commanded(arm: PiperArm, joints_now: np.ndarray) -> tuple[float, float]:
    """Closes then opens the gripper by command, holding the joints at ``joints_now``."""
    low, high = GRIPPER_RANGE
    arm.enable()
    try:
        readings = []
        for target in (low, high):
            result = arm.command(np.append(joints_now, target))
            if not result.sent:
                raise ArmCheckError(f"arm on {arm.can_port!r}: gripper command refused: {result.reason}")
            readings.append(wait_settled(arm))
        return readings[0], readings[1]
    finally:
        arm.disable()  # safe at the rest pose, which is where this is allowed to run


def measure_gripper_manual(arm: PiperArm, prompt: Callable[[str], object]) -> tuple[float, float]:
    readings = []
    for state in ("closed", "open"):
        prompt(f"{arm.can_port}: move the gripper by hand fully {state} and hold it; press Enter")
        wait_settled(arm, timeout=3.0)  # the hand may still be closing in on the end stop
        mean, _ = sample(arm, 0.3)
        readings.append(float(mean[6]))
    return readings[0], readings[1]


def check_arm(arm: PiperArm, side: str, gripper: str = "command", tolerances: Tolerances = Tolerances(),
              prompt: Callable[[str], object] = input) -> ArmReport:
    """Zero check, then the gripper check (``command``, ``manual`` or ``skip``)."""
    if gripper not in ("command", "manual", "skip"):
        raise ArmCheckError(f"gripper check must be command, manual or skip, got {gripper!r}")
    report = ArmReport(side, arm.can_port)
    mean, spread = sample(arm)
    moving = [ARM_JOINTS[i] for i in range(6) if spread[i] > tolerances.still_rad]
    if moving:
        raise ArmCheckError(f"{side} arm: {', '.join(moving)} moved during the zero reading; rest it in the zero "
                            "pose and keep it still")
    report.joints = check_zero(mean, tolerances)
    if gripper == "skip":
        return report
    if gripper == "command":
        far = [j.name for j in report.joints if abs(j.offset) > REST_TOLERANCE_RAD]
        if far:
            raise ArmCheckError(f"{side} arm: {', '.join(far)} more than {math.degrees(REST_TOLERANCE_RAD):.0f} deg "
                                "from zero; the commanded gripper check enables the motors and then releases them, "
                                "which is only safe in the rest pose (or use --gripper manual)")
        closed, opened = measure_gripper_commanded(arm, mean[:6])
    else:
        closed, opened = measure_gripper_manual(arm, prompt)
    report.gripper = check_gripper(closed, opened, tolerances)
    return report


# --- what the driver reads -------------------------------------------------------------
def gripper_limits(reports: list[ArmReport]) -> list[float] | None:
    """The range every arm reaches (robot.yaml has one ``limits`` for both arms), rounded to
    0.1 mm and kept inside the factory range; None when no gripper was measured."""
    measured = [r.gripper for r in reports if r.gripper is not None]
    if not measured:
        return None
    low, high = GRIPPER_RANGE
    lower = min(max(max(g.closed_m for g in measured), low), high)
    upper = max(min(min(g.open_m for g in measured), high), low)
    # round() first: 0.0012 * 1e4 is 12.000000000000002 in floating point, not a reason to round up
    lower, upper = math.ceil(round(lower * 1e4, 6)) / 1e4, math.floor(round(upper * 1e4, 6)) / 1e4
    if upper <= lower:
        return None
    return [lower, upper]


def connect_arm(robot_config, side: str, speed_percent: int = 30) -> PiperArm:
    """A connected PiperArm for ``side`` of a loaded RobotConfig (slow moves: this is a check)."""
    if side not in robot_config.arms:
        raise ArmCheckError(f"{robot_config.path}: arms.{side}: no entry for this arm side "
                            f"(file has: {', '.join(robot_config.arms) or 'none'})")
    cfg = robot_config.arms[side]
    arm = PiperArm(cfg.can_port, cfg.bustype, robot_config.limits, speed_percent=speed_percent)
    try:
        arm.connect()
    except Exception as exc:  # the SDK raises ConnectionError, OSError, can.CanError...
        raise ArmCheckError(f"{robot_config.path}: arms.{side}: cannot open CAN port {cfg.can_port!r} "
                            f"({cfg.bustype}): {exc}") from exc
    return arm


def write_gripper_limits(robot_path, limits: list[float]) -> bool:
    """Sets robot.yaml ``limits.gripper`` (comments kept) and checks the file still loads."""
    from ..config import load_robot_config
    from .yaml_edit import update_checked

    return update_checked(robot_path, [(["limits", "gripper"], limits)], load_robot_config)
