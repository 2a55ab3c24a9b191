"""MJCF of the bimanual Piper, written from the SDK's modified-DH table (no meshes).

Each link frame follows Craig's convention, T_i = RotX(alpha_i) TransX(a_i) RotZ(theta_i)
TransZ(d_i). In MJCF that is a child body at (a, -sin(alpha) d, cos(alpha) d), rotated by
RotX(alpha) RotZ(theta_offset), with a hinge about its local z: TransZ(d) runs along that
axis, so the hinge may sit at the body origin. The joint angle then adds to theta_offset
exactly as in piper_sdk's forward kinematics, which a test checks to 1e-5 m.

Geometry is primitive (capsules and boxes) with masses close to the real arm's (about
4.2 kg in all); the gripper is two slide fingers whose gap is the SDK's gripper opening.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..embodiment import ARM_JOINTS, DH_A, DH_ALPHA, DH_D, DH_THETA, PIPER_LIMITS  # noqa: F401 (ik.py reads DH here)


LINK_MASS = (0.71, 1.17, 0.50, 0.38, 0.38, 0.31)  # kg, link1..link6
FINGER_MASS = 0.05
JOINT_DAMPING = (2.0, 2.0, 1.5, 0.5, 0.5, 0.3)
JOINT_KP = (300.0, 400.0, 300.0, 80.0, 60.0, 40.0)  # position servo gains (N*m/rad)
JOINT_FORCE = (60.0, 60.0, 60.0, 20.0, 20.0, 10.0)  # N*m, actuator force limits
FINGER_KP, FINGER_FORCE = 500.0, 40.0               # N/m, N (one finger)
GRIPPER_HALF_MAX = PIPER_LIMITS["gripper"].upper / 2  # each finger travels half the opening
# Arm geoms touch the world and objects (contype 1) but not each other: the primitive links
# overlap near the joints where the real covers nest.
ARM = 'contype="2" conaffinity="1"'


@dataclass(frozen=True)
class ArmMount:
    """Where an arm's base stands: position (m) and yaw about z (rad)."""

    prefix: str
    pos: tuple[float, float, float]
    yaw: float


def _quat(mat: np.ndarray) -> str:
    """MuJoCo quaternion (w x y z) of a rotation matrix."""
    q = np.empty(4)
    tr = np.trace(mat)
    if tr > 0:
        s = math.sqrt(tr + 1.0) * 2
        q[:] = (0.25 * s, (mat[2, 1] - mat[1, 2]) / s, (mat[0, 2] - mat[2, 0]) / s, (mat[1, 0] - mat[0, 1]) / s)
    else:
        i = int(np.argmax(np.diag(mat)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = math.sqrt(1.0 + mat[i, i] - mat[j, j] - mat[k, k]) * 2
        q[0] = (mat[k, j] - mat[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (mat[j, i] + mat[i, j]) / s
        q[1 + k] = (mat[k, i] + mat[i, k]) / s
    return " ".join(f"{v:.12g}" for v in q)


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def dh_link_frame(i: int) -> tuple[np.ndarray, np.ndarray]:
    """Position and rotation of link i+1's frame in link i's, at joint angle 0."""
    alpha, a, d = DH_ALPHA[i], DH_A[i], DH_D[i]
    pos = np.array([a, -math.sin(alpha) * d, math.cos(alpha) * d])
    return pos, _rot_x(alpha) @ _rot_z(DH_THETA[i])


def _link_geom(i: int, prefix: str) -> str:
    """A capsule from this link's origin back toward the previous one (for looks and contact)."""
    pos, rot = dh_link_frame(i)
    back = -(rot.T @ pos)  # the parent's origin, in this link's frame
    length = float(np.linalg.norm(back))
    if length < 1e-6:
        return f'<geom name="{prefix}link{i + 1}_geom" {ARM} type="sphere" size="0.04" mass="{LINK_MASS[i]}" rgba="0.75 0.75 0.78 1"/>'
    end = " ".join(f"{v:.6g}" for v in back)
    return (f'<geom name="{prefix}link{i + 1}_geom" {ARM} type="capsule" fromto="0 0 0 {end}" size="0.035" '
            f'mass="{LINK_MASS[i]}" rgba="0.75 0.75 0.78 1"/>')


def arm_xml(mount: ArmMount) -> str:
    """The <body> tree of one arm, its gripper and its wrist camera."""
    p = mount.prefix
    x, y, z = mount.pos
    closers = []
    xml = [f'<body name="{p}base" pos="{x} {y} {z}" euler="0 0 {mount.yaw}">',
           f'<geom name="{p}base_geom" {ARM} type="cylinder" size="0.05 0.03" pos="0 0 0.03" mass="1.0" rgba="0.2 0.2 0.22 1"/>']
    for i, joint in enumerate(ARM_JOINTS):
        pos, rot = dh_link_frame(i)
        lim = PIPER_LIMITS[joint]
        # gravcomp: the Piper's controller compensates gravity, so its servos only track.
        xml.append(f'<body name="{p}link{i + 1}" pos="{" ".join(f"{v:.12g}" for v in pos)}" quat="{_quat(rot)}" '
                   'gravcomp="1">')
        xml.append(f'<joint name="{p}{joint}" type="hinge" axis="0 0 1" range="{lim.lower} {lim.upper}" '
                   f'damping="{JOINT_DAMPING[i]}" armature="0.01"/>')
        xml.append(_link_geom(i, p))
        closers.append("</body>")
    # Gripper on link6: the flange frame's z points out of the wrist.
    half = GRIPPER_HALF_MAX
    xml += [
        f'<site name="{p}flange" pos="0 0 0" size="0.005"/>',
        f'<site name="{p}tcp" pos="0 0 0.13" size="0.005"/>',
        f'<geom name="{p}palm" {ARM} type="box" size="0.045 0.02 0.02" pos="0 0 0.02" mass="0.15" rgba="0.2 0.2 0.22 1"/>',
        # Wrist camera above the gripper, looking along the fingers (they show at the image's bottom).
        f'<camera name="{p}wrist_cam" pos="0 -0.07 0.0" xyaxes="1 0 0 0 -0.98 0.196" fovy="75"/>',
        f'<body name="{p}finger_a" pos="0 0 0.045" gravcomp="1">',
        f'<joint name="{p}finger_a" type="slide" axis="1 0 0" range="0 {half}" damping="5"/>',
        f'<geom name="{p}finger_a_geom" {ARM} type="box" size="0.006 0.012 0.045" pos="0.006 0 0.045" mass="{FINGER_MASS}" '
        f'friction="1.5 0.02 0.002" rgba="0.1 0.1 0.1 1"/>',
        '</body>',
        f'<body name="{p}finger_b" pos="0 0 0.045" gravcomp="1">',
        f'<joint name="{p}finger_b" type="slide" axis="-1 0 0" range="0 {half}" damping="5"/>',
        f'<geom name="{p}finger_b_geom" {ARM} type="box" size="0.006 0.012 0.045" pos="-0.006 0 0.045" mass="{FINGER_MASS}" '
        f'friction="1.5 0.02 0.002" rgba="0.1 0.1 0.1 1"/>',
        '</body>',
    ]
    xml += closers
    xml.append("</body>")
    return "\n".join(xml)


def actuators_xml(prefix: str) -> str:
    rows = []
    for i, joint in enumerate(ARM_JOINTS):
        lim = PIPER_LIMITS[joint]
        rows.append(f'<position name="{prefix}{joint}" joint="{prefix}{joint}" kp="{JOINT_KP[i]}" '
                    f'kv="{JOINT_DAMPING[i] * 5}" ctrlrange="{lim.lower} {lim.upper}" '
                    f'forcerange="{-JOINT_FORCE[i]} {JOINT_FORCE[i]}"/>')
    for finger in ("finger_a", "finger_b"):
        rows.append(f'<position name="{prefix}{finger}" joint="{prefix}{finger}" kp="{FINGER_KP}" kv="20" '
                    f'ctrlrange="0 {GRIPPER_HALF_MAX}" forcerange="{-FINGER_FORCE} {FINGER_FORCE}"/>')
    return "\n".join(rows)


#: RoboTwin's AgileX layout: both bases behind the table's near edge, facing +y.
MOUNTS = (ArmMount("left_", (-0.3, -0.45, 0.765), math.pi / 2),
          ArmMount("right_", (0.3, -0.45, 0.765), math.pi / 2))
TABLE_TOP_Z = 0.74
PHYSICS_HZ = 500


def scene_xml(objects_xml: str = "", mounts: tuple[ArmMount, ...] = MOUNTS, width: int = 640, height: int = 480) -> str:
    """The whole scene: floor, table, lights, the top camera, both arms, and task objects."""
    arms = "\n".join(arm_xml(m) for m in mounts)
    actuators = "\n".join(actuators_xml(m.prefix) for m in mounts)
    return f"""<mujoco model="bimanual_piper">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{1.0 / PHYSICS_HZ}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual><global offwidth="{max(width, 640)}" offheight="{max(height, 480)}"/><quality shadowsize="0"/></visual>
  <default><geom condim="4" solref="0.004 1" friction="1 0.01 0.001"/></default>
  <worldbody>
    <light pos="0 -0.3 2.2" dir="0 0.2 -1" diffuse="0.8 0.8 0.8"/>
    <light pos="0.8 0.4 1.8" dir="-0.4 -0.2 -1" diffuse="0.4 0.4 0.4"/>
    <geom name="floor" type="plane" size="3 3 0.1" rgba="0.35 0.35 0.38 1"/>
    <body name="table" pos="0 0 {TABLE_TOP_Z / 2}">
      <geom name="table_top" type="box" size="0.6 0.4 {TABLE_TOP_Z / 2}" rgba="0.55 0.42 0.3 1"/>
    </body>
    <camera name="cam_high" pos="0 -0.62 1.35" xyaxes="1 0 0 0 0.66 0.75" fovy="62"/>
    {arms}
    {objects_xml}
  </worldbody>
  <actuator>
    {actuators}
  </actuator>
</mujoco>"""
