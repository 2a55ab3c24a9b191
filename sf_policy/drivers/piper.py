"""The Piper arm over CAN through the real piper_sdk, in SI units, with the driver's safety rules.

``PiperArm`` is what the ROS driver node wraps; it has no ROS imports so it is tested and
benchmarked directly. It adds to the SDK:

* SI units in and out (through ``sf_policy.embodiment``, the only place units are converted);
* a callback per complete feedback cycle (joints 0x2A5-0x2A7), so state is published at the
  arm's own rate with one frame of latency, instead of polling;
* the driver's safety rules: a command is refused when it holds NaN/inf, when the arm is
  silent (no feedback for ``silence_timeout``), e-stopped or not enabled; positions are
  clamped to the configured limits and the clamped joints are reported.

``master_only=True`` is for a master arm alone on its bus (unplugged from its puppet, for
the software master-puppet link). Set as a master, the Piper sends its joint and gripper
targets (0x155-0x157, 0x159) and no joint feedback, so those frames are what tells that the
bus is alive; nothing is ever sent on such a bus, not even the SDK's start-up queries.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..embodiment import (ARM_STATE_NAMES, DOF_PER_ARM, GRIPPER_MAX_EFFORT, PIPER_LIMITS, JointLimit,
                          arm_from_sdk, arm_to_sdk, effort_nm_to_sdk, effort_sdk_to_nm)

_LOG = logging.getLogger(__name__)

FEEDBACK_IDS = frozenset(range(0x2A1, 0x2A9)) | frozenset(range(0x251, 0x257)) | frozenset(range(0x261, 0x267))
JOINT_FEEDBACK_IDS = (0x2A5, 0x2A6, 0x2A7)
MASTER_JOINT_IDS = (0x155, 0x156, 0x157)
MASTER_FRAME_IDS = frozenset(MASTER_JOINT_IDS) | {0x159}  # joint and gripper targets
CTRL_MODE_CAN = 0x01
MOVE_J = 0x01
ARM_STATUS_ESTOP = 0x01
ARM_STATUS_NAMES = {
    0x00: "normal", 0x01: "emergency stop", 0x02: "no solution", 0x03: "singularity",
    0x04: "target angle over limit", 0x05: "joint communication error", 0x06: "joint brake not released",
    0x07: "collision", 0x08: "overspeed in teach mode", 0x09: "joint status error", 0x0A: "other error",
    0x0B: "teach record", 0x0C: "teach execute", 0x0D: "teach pause", 0x0E: "controller over temperature",
    0x0F: "resistor over temperature",
}


@dataclass(frozen=True)
class ArmReading:
    """One arm's 7 values (six joints in rad, gripper opening in m) with their CAN time."""

    stamp_ns: int
    position: np.ndarray
    velocity: np.ndarray
    effort: np.ndarray


@dataclass(frozen=True)
class ArmStatus:
    ctrl_mode: int
    arm_status: int
    err_code: int
    motors_enabled: bool
    can_rx_hz: float
    feedback_age_s: float
    silent: bool

    @property
    def arm_status_text(self) -> str:
        return ARM_STATUS_NAMES.get(self.arm_status, f"unknown (0x{self.arm_status:02X})")


@dataclass
class CommandResult:
    sent: bool
    reason: str = ""
    clamped: list[str] = field(default_factory=list)


class ArmSilentError(RuntimeError):
    pass


def _sdk_class():
    # Imported lazily so that sf_policy imports without piper_sdk (e.g. on a training box).
    from piper_sdk import C_PiperInterface_V2

    class _NotifyingPiperInterface(C_PiperInterface_V2):
        """The SDK's interface, telling us about each frame after the SDK has parsed it."""

        frame_hook: Callable[[int, float], None] | None = None

        def ParseCANFrame(self, rx_message):  # noqa: N802 - the SDK's name
            super().ParseCANFrame(rx_message)
            hook = self.frame_hook
            if hook is not None and rx_message is not None:
                hook(rx_message.arbitration_id, rx_message.timestamp)

    return _NotifyingPiperInterface


class PiperArm:
    """One CAN bus: a puppet arm (and, in teleop, its master arm's targets), or a master arm alone."""

    def __init__(self, can_port: str, bustype: str = "socketcan", limits: dict[str, JointLimit] | None = None,
                 speed_percent: int = 50, gripper_effort: float = 1.0, silence_timeout: float = 0.25,
                 on_state: Callable[[ArmReading], None] | None = None,
                 on_master: Callable[[ArmReading], None] | None = None, master_only: bool = False):
        if not 1 <= speed_percent <= 100:
            raise ValueError(f"speed_percent must be in [1, 100], got {speed_percent}")
        if not 0.0 <= gripper_effort <= GRIPPER_MAX_EFFORT:
            raise ValueError(f"gripper_effort must be in [0, {GRIPPER_MAX_EFFORT}] N*m, got {gripper_effort}")
        self.can_port, self.bustype = can_port, bustype
        self.limits = limits or dict(PIPER_LIMITS)
        self._lower = np.array([self.limits[n].lower for n in ARM_STATE_NAMES])
        self._upper = np.array([self.limits[n].upper for n in ARM_STATE_NAMES])
        self.speed_percent, self.gripper_effort = speed_percent, gripper_effort
        self.silence_timeout = silence_timeout
        self.on_state, self.on_master = on_state, on_master
        self.master_only = master_only
        self._sdk = None
        self._last_frame = -math.inf  # monotonic time of the last feedback frame
        self._seen_joints: set[int] = set()
        self._seen_master: set[int] = set()
        self._lock = threading.Lock()
        self._got_state = threading.Event()  # a complete feedback cycle has arrived
        self._callback_failing = False

    # --- connection ----------------------------------------------------------------------
    def connect(self) -> None:
        cls = _sdk_class()
        sdk = cls(self.can_port, judge_flag=False, can_auto_init=False)
        if not isinstance(sdk, cls):
            raise RuntimeError(f"CAN port {self.can_port!r} is already held by another piper_sdk interface "
                               "in this process; each arm needs its own CAN bus")
        sdk.CreateCanBus(self.can_port, bustype=self.bustype, judge_flag=False)
        # Set before the reader thread starts: its first frames already call back into read_state().
        self._sdk = sdk
        sdk.frame_hook = self._on_frame
        try:
            sdk.ConnectPort(can_init=True, piper_init=not self.master_only)  # piper_init sends queries
        except Exception:
            sdk.frame_hook, self._sdk = None, None
            raise

    def close(self) -> None:
        if self._sdk is not None:
            self._sdk.frame_hook = None
            self._sdk.DisconnectPort()
            self._sdk = None

    @property
    def connected(self) -> bool:
        return self._sdk is not None

    # --- feedback ------------------------------------------------------------------------
    def _on_frame(self, can_id: int, can_time: float) -> None:
        """Runs on the SDK's CAN thread. An exception escaping here would end that thread
        (and with it all feedback), so a failing consumer is logged and the frames go on."""
        try:
            self._dispatch(can_id, can_time)
        except Exception:  # noqa: BLE001
            if not self._callback_failing:
                _LOG.exception("arm on %r: state callback failed (further failures are not logged)", self.can_port)
            self._callback_failing = True

    def _dispatch(self, can_id: int, can_time: float) -> None:
        if can_id in (MASTER_FRAME_IDS if self.master_only else FEEDBACK_IDS):
            self._last_frame = time.monotonic()
        if can_id in JOINT_FEEDBACK_IDS:
            self._seen_joints.add(can_id)
            if len(self._seen_joints) == 3:  # a complete cycle: publish once per cycle
                self._seen_joints.clear()
                self._got_state.set()
                if self.on_state is not None:
                    self.on_state(self.read_state(int(can_time * 1e9)))
        elif can_id in MASTER_JOINT_IDS:
            self._seen_master.add(can_id)
            if len(self._seen_master) == 3:
                self._seen_master.clear()
                if self.master_only:
                    self._got_state.set()
                if self.on_master is not None:
                    self.on_master(self.read_master(int(can_time * 1e9)))

    def read_state(self, stamp_ns: int | None = None) -> ArmReading:
        sdk = self._require_sdk()
        j = sdk.GetArmJointMsgs().joint_state
        g = sdk.GetArmGripperMsgs().gripper_state
        motors = sdk.GetArmHighSpdInfoMsgs()
        ms = [getattr(motors, f"motor_{i}") for i in range(1, 7)]
        position = arm_from_sdk([j.joint_1, j.joint_2, j.joint_3, j.joint_4, j.joint_5, j.joint_6],
                                g.grippers_angle)
        velocity = np.array([m.motor_speed / 1000.0 for m in ms] + [0.0])  # 0.001 rad/s; gripper speed not reported
        effort = np.array([effort_sdk_to_nm(m.effort) for m in ms] + [effort_sdk_to_nm(g.grippers_effort)])
        return ArmReading(stamp_ns if stamp_ns is not None else time.time_ns(), position, velocity, effort)

    def read_master(self, stamp_ns: int | None = None) -> ArmReading:
        sdk = self._require_sdk()
        j = sdk.GetArmJointCtrl().joint_ctrl
        g = sdk.GetArmGripperCtrl().gripper_ctrl
        position = arm_from_sdk([j.joint_1, j.joint_2, j.joint_3, j.joint_4, j.joint_5, j.joint_6],
                                g.grippers_angle)
        zeros = np.zeros(DOF_PER_ARM)
        return ArmReading(stamp_ns if stamp_ns is not None else time.time_ns(), position, zeros, zeros.copy())

    def wait_for_feedback(self, timeout: float) -> bool:
        """True once a complete feedback cycle has arrived and the bus is not silent."""
        return self._got_state.wait(timeout) and not self.is_silent()

    def feedback_age(self) -> float:
        return time.monotonic() - self._last_frame

    def is_silent(self) -> bool:
        return self.feedback_age() > self.silence_timeout

    def status(self) -> ArmStatus:
        sdk = self._require_sdk()
        st = sdk.GetArmStatus().arm_status
        low = sdk.GetArmLowSpdInfoMsgs()
        enabled = all(getattr(low, f"motor_{i}").foc_status.driver_enable_status for i in range(1, 7))
        age = self.feedback_age()
        return ArmStatus(int(st.ctrl_mode), int(st.arm_status), int(st.err_code), bool(enabled),
                         float(sdk.GetCanFps()), age, age > self.silence_timeout)

    # --- commands ------------------------------------------------------------------------
    def enable(self) -> None:
        """Enable motors and gripper. Needs live feedback: the gripper's target is its present opening."""
        self._refuse_on_master_bus("enable")
        if not self.wait_for_feedback(timeout=1.0):
            raise ArmSilentError(f"no feedback from the arm on {self.can_port!r}; not enabling it")
        sdk = self._require_sdk()
        sdk.EnableArm(7, 0x02)
        # Enabling the gripper needs a target: its present opening, so it holds what it holds.
        sdk.GripperCtrl(self._present_gripper(), effort_nm_to_sdk(self.gripper_effort), 0x01, 0)

    def disable(self) -> None:
        self._refuse_on_master_bus("disable")
        sdk = self._require_sdk()
        sdk.GripperCtrl(self._present_gripper(), 0, 0x00, 0)
        sdk.DisableArm(7, 0x01)

    def _present_gripper(self) -> int:
        return int(self._require_sdk().GetArmGripperMsgs().gripper_state.grippers_angle)

    def emergency_stop(self) -> None:
        self._refuse_on_master_bus("emergency stop")  # stop the puppet: it is on its own bus
        self._require_sdk().EmergencyStop(0x01)

    def resume(self) -> None:
        """Leave the e-stop state (the arm stays where it stopped until a new command)."""
        self._refuse_on_master_bus("resume")
        self._require_sdk().EmergencyStop(0x02)

    def check_command(self, target: np.ndarray | list[float]) -> tuple[np.ndarray | None, CommandResult]:
        """Validate and clamp one arm's 7 targets; returns (safe target or None, result)."""
        values = np.asarray(target, dtype=float).reshape(-1)
        if values.shape != (DOF_PER_ARM,):
            return None, CommandResult(False, f"expected {DOF_PER_ARM} positions ({', '.join(ARM_STATE_NAMES)}), "
                                              f"got {values.size}")
        bad = [ARM_STATE_NAMES[i] for i in np.flatnonzero(~np.isfinite(values))]
        if bad:
            return None, CommandResult(False, f"non-finite value for {', '.join(bad)}")
        clamped_values = np.clip(values, self._lower, self._upper)
        clamped = [ARM_STATE_NAMES[i] for i in np.flatnonzero(clamped_values != values)]
        return clamped_values, CommandResult(True, "", clamped)

    def command(self, target: np.ndarray | list[float]) -> CommandResult:
        """Send joint and gripper targets (SI) to the puppet, if it is safe to do so."""
        if self.master_only:
            return CommandResult(False, "this bus carries a master arm only; commands go to its puppet's bus")
        safe, result = self.check_command(target)
        if safe is None:
            return result
        if self.is_silent():
            return CommandResult(False, f"no CAN feedback for {self.feedback_age():.3f} s", result.clamped)
        status = self.status()
        if status.arm_status == ARM_STATUS_ESTOP:
            return CommandResult(False, "arm is in emergency stop", result.clamped)
        joints, gripper = arm_to_sdk(safe)
        sdk = self._require_sdk()
        with self._lock:  # the four frames of one command must not interleave with another's
            sdk.MotionCtrl_2(CTRL_MODE_CAN, MOVE_J, self.speed_percent, 0x00)
            sdk.JointCtrl(*joints)
            sdk.GripperCtrl(gripper, effort_nm_to_sdk(self.gripper_effort), 0x01, 0)
        return result

    def _refuse_on_master_bus(self, what: str) -> None:
        if self.master_only:
            raise RuntimeError(f"{what} on {self.can_port!r}: this bus carries a master arm only (read-only)")

    def _require_sdk(self):
        if self._sdk is None:
            raise RuntimeError(f"arm on {self.can_port!r} is not connected; call connect() first")
        return self._sdk
