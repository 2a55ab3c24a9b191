"""A simulated Piper arm that speaks the arm's real CAN frames on a python-can bus.

It stands where the hardware stands: piper_sdk talks to it over a bus (python-can's
in-process ``virtual`` interface here; the same code would answer on a SocketCAN bus), so
the driver under test runs unchanged. The frames are written from the protocol tables with
``struct`` (big-endian, as the arm sends them), independently of the SDK's own encoder, so
the SDK's decoding is checked rather than mirrored.

What it models: feedback at a fixed rate (status 0x2A1, joints 0x2A5-0x2A7, gripper 0x2A8,
per-motor speed/current 0x251-0x256, and enable bits 0x261-0x266 at a tenth of the rate);
enable/disable (0x471), CAN control mode (0x151), joint targets (0x155-0x157), gripper
targets (0x159) and the emergency stop (0x150). The motors move toward the target with a
speed limit; an e-stopped or disabled arm does not move. A master arm, when given a
trajectory, sends its joint targets (0x155-0x157, 0x159) on the same bus, and the puppet
follows them, as the hardware master-puppet link does during teleoperation. With
``puppet=False`` the master is alone on its bus (the software link's setup): only its
target frames are sent, as a Piper set as master sends no joint feedback.
"""

from __future__ import annotations

import math
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import can
import numpy as np

from ..embodiment import PIPER_LIMITS, ARM_STATE_NAMES, arm_from_sdk, arm_to_sdk, effort_nm_to_sdk

# CAN identifiers (piper protocol V2).
STATUS, JOINT_12, JOINT_34, JOINT_56, GRIPPER = 0x2A1, 0x2A5, 0x2A6, 0x2A7, 0x2A8
HIGH_SPD = tuple(range(0x251, 0x257))
LOW_SPD = tuple(range(0x261, 0x267))
MOTION_CTRL_1, MOTION_CTRL_2 = 0x150, 0x151
JOINT_CTRL = (0x155, 0x156, 0x157)
GRIPPER_CTRL = 0x159
MOTOR_ENABLE = 0x471

CTRL_STANDBY, CTRL_CAN = 0x00, 0x01
STATUS_NORMAL, STATUS_ESTOP = 0x00, 0x01
# SDK's current -> torque coefficients (0.001 A -> 0.001 N*m) for motors 1-3 and 4-6.
TORQUE_PER_AMP = (1.18125, 1.18125, 1.18125, 0.95844, 0.95844, 0.95844)
FOC_ENABLED_BIT = 1 << 6

#: Trajectory of the master arm: time since start (s) -> 7 SI targets.
MasterTrajectory = Callable[[float], np.ndarray]


@dataclass
class SimArmState:
    position: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.5, -0.5, 0.0, 0.3, 0.0, 0.02]))
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(7))
    target: np.ndarray | None = None
    motors_enabled: bool = False
    gripper_enabled: bool = False
    ctrl_mode: int = CTRL_STANDBY
    arm_status: int = STATUS_NORMAL
    speed_percent: int = 50


class SimulatedPiper:
    """One Piper (puppet) arm, optionally with its master arm, on ``channel`` of ``interface``."""

    def __init__(self, channel: str, interface: str = "virtual", rate_hz: float = 200.0,
                 master: MasterTrajectory | None = None, initial: np.ndarray | None = None,
                 stiffness: float = 20.0, puppet: bool = True):
        self.channel, self.interface, self.rate_hz = channel, interface, rate_hz
        self.master = master
        self.puppet = puppet
        if not puppet and master is None:
            raise ValueError("a bus without a puppet needs a master trajectory")
        self.state = SimArmState()
        if initial is not None:
            self.state.position = np.asarray(initial, dtype=float).copy()
        if master is not None:  # a teleop pair: the master keeps its puppet enabled
            self.state.motors_enabled = True
        self.stiffness = stiffness  # 1/s: how fast the motor closes the gap (before the speed cap)
        self.max_speed = np.array([PIPER_LIMITS[n].max_velocity for n in ARM_STATE_NAMES])
        #: Set to True to stop sending any frame (models a cut cable or a powered-off arm).
        self.silent = False
        self.frames_sent = 0
        self.received: list[can.Message] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bus: can.BusABC | None = None
        self._tick = 0
        self._t0 = 0.0

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> "SimulatedPiper":
        self._bus = can.Bus(interface=self.interface, channel=self.channel, receive_own_messages=False)
        self._stop.clear()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"sim-piper-{self.channel}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._bus is not None:
            self._bus.shutdown()
            self._bus = None

    def __enter__(self) -> "SimulatedPiper":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- observation for tests -----------------------------------------------------------
    def snapshot(self) -> SimArmState:
        with self._lock:
            s = self.state
            return SimArmState(s.position.copy(), s.velocity.copy(), None if s.target is None else s.target.copy(),
                               s.motors_enabled, s.gripper_enabled, s.ctrl_mode, s.arm_status, s.speed_percent)

    def received_ids(self) -> list[int]:
        with self._lock:
            return [m.arbitration_id for m in self.received]

    # --- the loop ------------------------------------------------------------------------
    def _run(self) -> None:
        period = 1.0 / self.rate_hz
        next_tick = time.monotonic()
        while not self._stop.is_set():
            self._drain_commands()
            if self.master is not None and not self.silent:
                self._send_master(self.master(time.monotonic() - self._t0))
            self._step(period)
            if self.puppet and not self.silent:
                self._send_feedback()
            self._tick += 1
            next_tick += period
            delay = next_tick - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:  # fell behind (a loaded machine): do not burst to catch up
                next_tick = time.monotonic()

    def _drain_commands(self) -> None:
        while (msg := self._bus.recv(timeout=0.0)) is not None:
            with self._lock:
                self.received.append(msg)
                self._apply(msg.arbitration_id, bytes(msg.data))

    def _apply(self, can_id: int, data: bytes) -> None:
        s = self.state
        if can_id == MOTION_CTRL_1 and data[0] == 0x01:
            s.arm_status, s.target = STATUS_ESTOP, None
        elif can_id == MOTION_CTRL_1 and data[0] == 0x02:
            s.arm_status = STATUS_NORMAL
        elif can_id == MOTION_CTRL_2:
            s.ctrl_mode, s.speed_percent = data[0], max(1, min(100, data[2]))
        elif can_id == MOTOR_ENABLE and data[0] in (7, 0xFF):
            s.motors_enabled = data[1] == 0x02
            if not s.motors_enabled:
                s.target = None
        elif can_id in JOINT_CTRL:
            a, b = struct.unpack(">ii", data[:8])
            k = JOINT_CTRL.index(can_id) * 2
            self._ensure_target()
            s.target[k] = a / 180_000.0 * math.pi
            s.target[k + 1] = b / 180_000.0 * math.pi
        elif can_id == GRIPPER_CTRL:
            (angle,) = struct.unpack(">i", data[:4])
            s.gripper_enabled = data[6] in (0x01, 0x03)
            self._ensure_target()
            s.target[6] = angle / 1e6

    def _ensure_target(self) -> None:
        if self.state.target is None:
            self.state.target = self.state.position.copy()

    def _step(self, dt: float) -> None:
        with self._lock:
            s = self.state
            movable = s.motors_enabled and s.arm_status == STATUS_NORMAL and s.target is not None
            if not movable:
                s.velocity[:] = 0.0
                return
            cap = self.max_speed * (s.speed_percent / 100.0)
            v = np.clip((s.target - s.position) * self.stiffness, -cap, cap)
            if not s.gripper_enabled:
                v[6] = 0.0
            s.position = s.position + v * dt
            s.velocity = v

    # --- frames --------------------------------------------------------------------------
    def _send(self, can_id: int, data: bytes) -> None:
        self._bus.send(can.Message(arbitration_id=can_id, data=data, is_extended_id=False))
        self.frames_sent += 1

    def _send_feedback(self) -> None:
        with self._lock:
            s = self.state
            joints, gripper = arm_to_sdk(s.position)
            velocity, error = s.velocity.copy(), (0 if s.target is None else 1)
            status = (s.ctrl_mode, s.arm_status, 0x01, 0x00, error, 0x00)
            enabled = s.motors_enabled
            torque = np.zeros(7) if s.target is None else (s.target - s.position) * 2.0
        self._send(STATUS, struct.pack(">6BH", *status, 0))
        self._send(JOINT_12, struct.pack(">ii", joints[0], joints[1]))
        self._send(JOINT_34, struct.pack(">ii", joints[2], joints[3]))
        self._send(JOINT_56, struct.pack(">ii", joints[4], joints[5]))
        gripper_effort = effort_nm_to_sdk(min(abs(torque[6]), 5.0))
        self._send(GRIPPER, struct.pack(">ihBB", gripper, gripper_effort, 0x40 if enabled else 0x00, 0))
        for i, can_id in enumerate(HIGH_SPD):
            current = int(round(effort_nm_to_sdk(torque[i]) / TORQUE_PER_AMP[i]))
            current = max(-32768, min(32767, current))
            speed = max(-32768, min(32767, int(round(velocity[i] * 1000))))
            self._send(can_id, struct.pack(">hhi", speed, current, joints[i]))
        if self._tick % 10 == 0:
            foc = FOC_ENABLED_BIT if enabled else 0
            for can_id in LOW_SPD:
                self._send(can_id, struct.pack(">HhbBH", 240, 350, 35, foc, 500))

    def _send_master(self, targets: np.ndarray) -> None:
        """The master arm's frames; on hardware the puppet follows them directly."""
        joints, gripper = arm_to_sdk(targets)
        for k, can_id in enumerate(JOINT_CTRL):
            self._send(can_id, struct.pack(">ii", joints[2 * k], joints[2 * k + 1]))
        self._send(GRIPPER_CTRL, struct.pack(">ihBB", gripper, 1000, 0x01, 0))
        if not self.puppet:
            return
        with self._lock:  # the hardware link: the puppet tracks the master while enabled
            self.state.target = arm_from_sdk(joints, gripper)
            self.state.ctrl_mode = CTRL_CAN
            self.state.gripper_enabled = True


def teleop_wave(side: str, hz: float = 0.25) -> MasterTrajectory:
    """A slow, in-limits motion of a simulated master arm: stands in for an operator."""
    sign = 1.0 if side == "left" else -1.0
    rest = np.array([0.0, 0.5, -0.5, 0.0, 0.3, 0.0, 0.02])
    amplitude = np.array([0.3 * sign, 0.2, 0.2, 0.3, 0.2, 0.5, 0.02])
    return lambda t: rest + amplitude * np.sin(2 * np.pi * hz * t)
