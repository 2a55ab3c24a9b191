"""The bimanual AgileX Piper: joint names and order, limits, and unit conversions.

This module is the single source of truth for the robot's contract. Everything else
(drivers, recorder, datasets, policy, twin) imports from here.

Conventions (ARCHITECTURE.md, "Contracts"):
  * 14-d state/action vector: left j1..j6, left gripper, right j1..j6, right gripper.
  * Joints in radians (with the true pi, unlike AgileX's 3.14), gripper as the total
    opening between the fingers in metres (0 = closed), efforts in N*m.
  * piper_sdk speaks integers: joints in 0.001 degree, gripper opening in 0.001 mm,
    gripper effort in 0.001 N*m. Conversions to and from those live here and nowhere else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SIDES: tuple[str, ...] = ("left", "right")
ARM_JOINTS: tuple[str, ...] = ("joint1", "joint2", "joint3", "joint4", "joint5", "joint6")
GRIPPER = "gripper"
#: Names of one arm's JointState entries, in order: six joints then the gripper.
ARM_STATE_NAMES: tuple[str, ...] = ARM_JOINTS + (GRIPPER,)
DOF_PER_ARM = len(ARM_STATE_NAMES)  # 7
#: The 14 names of the state/action vector, in order.
JOINT_NAMES: tuple[str, ...] = tuple(f"{side}_{name}" for side in SIDES for name in ARM_STATE_NAMES)
STATE_DIM = len(JOINT_NAMES)  # 14
#: Index of each gripper in the 14-d vector (grippers are handled apart from joints).
GRIPPER_INDICES: tuple[int, ...] = tuple(i for i, n in enumerate(JOINT_NAMES) if n.endswith(GRIPPER))
#: Index of each arm joint (everything but the grippers).
ARM_INDICES: tuple[int, ...] = tuple(i for i in range(STATE_DIM) if i not in GRIPPER_INDICES)


@dataclass(frozen=True)
class JointLimit:
    """Position range [lower, upper] and speed limit of one joint (rad, rad/s or m, m/s)."""

    lower: float
    upper: float
    max_velocity: float

    def clamp(self, value: float) -> float:
        return min(max(value, self.lower), self.upper)

    def contains(self, value: float) -> bool:
        return self.lower <= value <= self.upper


# Factory limits of the Piper (AgileX manual / piper_sdk; FACTS.md). Speeds are the
# motors' rated maxima; they bound what a command may ask for, not what is comfortable.
PIPER_LIMITS: dict[str, JointLimit] = {
    "joint1": JointLimit(-2.6179, 2.6179, math.pi),
    "joint2": JointLimit(0.0, 3.14, math.pi),
    "joint3": JointLimit(-2.967, 0.0, math.pi),
    "joint4": JointLimit(-1.745, 1.745, math.pi),
    "joint5": JointLimit(-1.22, 1.22, math.pi),
    "joint6": JointLimit(-2.0944, 2.0944, math.pi),
    "gripper": JointLimit(0.0, 0.07, 0.1),
}
GRIPPER_MAX_EFFORT = 5.0  # N*m, the SDK's GripperCtrl accepts 0..5000 (0.001 N*m)


def arm_limits_arrays(limits: dict[str, JointLimit] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of one arm's 7 entries, in ARM_STATE_NAMES order."""
    limits = limits or PIPER_LIMITS
    lower = np.array([limits[n].lower for n in ARM_STATE_NAMES])
    upper = np.array([limits[n].upper for n in ARM_STATE_NAMES])
    return lower, upper


def split_arms(vector14: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(left 7, right 7) views of a 14-d (or [..., 14]) vector."""
    v = np.asarray(vector14)
    if v.shape[-1] != STATE_DIM:
        raise ValueError(f"expected a last dimension of {STATE_DIM} ({', '.join(JOINT_NAMES)}), got {v.shape}")
    return v[..., :DOF_PER_ARM], v[..., DOF_PER_ARM:]


def join_arms(left7: np.ndarray, right7: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(left7, dtype=np.float64), np.asarray(right7, dtype=np.float64)], axis=-1)


# --- SDK units -----------------------------------------------------------------------
# Integers in the CAN frames. Rounding (not truncation) keeps the round trip
# SI -> SDK -> SI within half a unit: 0.0005 degree (8.7 urad) and 0.0005 mm.
MILLIDEG_PER_RAD = 180_000.0 / math.pi
MICROMETRE_PER_METRE = 1_000_000.0  # the SDK's "0.001 mm"
MILLI_NM_PER_NM = 1000.0


def rad_to_sdk(rad: float) -> int:
    """Joint angle in radians -> SDK integer (0.001 degree)."""
    return int(round(rad * MILLIDEG_PER_RAD))


def sdk_to_rad(millideg: int) -> float:
    return millideg / MILLIDEG_PER_RAD


def gripper_m_to_sdk(metres: float) -> int:
    """Gripper opening in metres -> SDK integer (0.001 mm)."""
    return int(round(metres * MICROMETRE_PER_METRE))


def gripper_sdk_to_m(micrometres: int) -> float:
    return micrometres / MICROMETRE_PER_METRE


def effort_nm_to_sdk(newton_metres: float) -> int:
    return int(round(newton_metres * MILLI_NM_PER_NM))


def effort_sdk_to_nm(milli_nm: int) -> float:
    return milli_nm / MILLI_NM_PER_NM


def arm_to_sdk(arm7: np.ndarray | list[float]) -> tuple[list[int], int]:
    """One arm's 7 SI values -> (six joint integers, gripper integer)."""
    values = [float(v) for v in arm7]
    if len(values) != DOF_PER_ARM:
        raise ValueError(f"an arm command has {DOF_PER_ARM} entries ({', '.join(ARM_STATE_NAMES)}), got {len(values)}")
    return [rad_to_sdk(v) for v in values[:6]], gripper_m_to_sdk(values[6])


def arm_from_sdk(joints_millideg: list[int], gripper_um: int) -> np.ndarray:
    """Six joint integers and the gripper integer -> one arm's 7 SI values."""
    return np.array([sdk_to_rad(j) for j in joints_millideg] + [gripper_sdk_to_m(gripper_um)])


def arm_positions(names, positions) -> np.ndarray:
    """One arm's 7 values in ARM_STATE_NAMES order, from a JointState's names and positions.

    By name when names are given (drivers may order them differently), else by position.
    Works for rclpy messages and bag messages alike; errors say what was received.
    """
    names, positions = list(names), list(positions)
    if not names:
        if len(positions) != len(ARM_STATE_NAMES):
            raise ValueError(f"expected {len(ARM_STATE_NAMES)} positions ({', '.join(ARM_STATE_NAMES)}), "
                             f"got {len(positions)}")
        return np.asarray(positions, dtype=float)
    if len(names) != len(positions):
        raise ValueError(f"{len(names)} names but {len(positions)} positions")
    by_name = dict(zip(names, positions))
    missing = [n for n in ARM_STATE_NAMES if n not in by_name]
    if missing:
        raise ValueError(f"missing joints {', '.join(missing)} (names given: {', '.join(names)})")
    return np.array([by_name[n] for n in ARM_STATE_NAMES], dtype=float)


# Modified DH of the Piper (piper_sdk, dh_is_offset=1, the firmware default), SI units: link
# i+1's frame is RotX(alpha) TransX(a) RotZ(theta + q) TransZ(d) in link i's. The twin's MJCF
# (sim/piper_mjcf.py) and the workspace guard's kinematics (runtime/workspace.py) use it.
DH_A = (0.0, 0.0, 0.28503, -0.02198, 0.0, 0.0)
DH_ALPHA = (0.0, -math.pi / 2, 0.0, math.pi / 2, -math.pi / 2, math.pi / 2)
DH_THETA = (0.0, math.radians(-172.22), math.radians(-102.78), 0.0, 0.0, 0.0)
DH_D = (0.123, 0.0, 0.0, 0.25075, 0.0, 0.091)
