"""The workspace guard: a command that would put an arm into the table, a keep-out box or the
other arm is held, naming the link and the zone.

Joint limits (the safety filter's rule 6) keep each joint in its range; they say nothing about
where the arm is. Here each command is run through the forward kinematics of both arms (the
Piper's modified-DH table, the same as the twin's, sf_policy/sim/piper_mjcf.py) and each link
is a capsule: the segment between consecutive joint origins with a radius. Checked:

* the table: no link may dip below the table top by its radius (the column standing on the
  base is exempt, the gripper's tip may come within ``tip_clearance`` of the top: grasping
  flat objects takes it there);
* keep-out boxes (a camera mast, a fixture, where a person stands): no link within its radius;
* the other arm: the two arms' links must stay ``min_arm_distance`` apart (surface to surface).

``penetration(q)`` returns the deepest violation (m, > 0: inside) and what it is; the filter
holds a command whose penetration is above zero and above the measured state's, so an arm that
is already inside a zone (pushed there, or started there) may still move out of it.

Geometry in the table frame (the twin's world: z up, table top at ``table_z``); each base's
pose comes from robot.yaml's ``workspace.bases`` (default: AgileX's layout, as the twin).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..embodiment import DH_A, DH_ALPHA, DH_D, DH_THETA, DOF_PER_ARM, SIDES
from ..sim.piper_mjcf import MOUNTS, TABLE_TOP_Z  # AgileX's layout, as the twin stands it

TIP = 0.13                 # m from the flange to the fingertips' centre (the twin's tcp)
#: Where a link is checked against a keep-out box: 9 points along it (exact at those points; the
#: spacing, at most 3.6 cm on the 28.5 cm upper arm, is below the links' radius).
BOX_SAMPLES = np.linspace(0.0, 1.0, 9)
LINK_NAMES = ("base-link1", "link1-link2", "link2-link3", "link3-link4", "link4-link5", "link5-link6",
              "gripper")


@dataclass(frozen=True)
class Box:
    name: str
    low: tuple[float, float, float]
    high: tuple[float, float, float]


@dataclass(frozen=True)
class Workspace:
    """Where the arms stand and what they must not touch (robot.yaml ``workspace``)."""

    bases: dict[str, tuple[tuple[float, float, float], float]] = field(default_factory=lambda: {
        m.prefix.rstrip("_"): (m.pos, m.yaw) for m in MOUNTS})
    table_z: float | None = TABLE_TOP_Z
    keep_out: tuple[Box, ...] = ()
    min_arm_distance: float = 0.05
    link_radius: float = 0.045      # m: the links' capsules (the twin's are 0.035) plus a margin
    tip_clearance: float = 0.005    # m the fingertips may come to the table top


def _transform(alpha: float, a: float, theta: float, d: float) -> np.ndarray:
    ca, sa, ct, st = math.cos(alpha), math.sin(alpha), math.cos(theta), math.sin(theta)
    return np.array([[ct, -st, 0.0, a],
                     [st * ca, ct * ca, -sa, -sa * d],
                     [st * sa, ct * sa, ca, ca * d],
                     [0.0, 0.0, 0.0, 1.0]])


def arm_points(q6: np.ndarray, base: tuple[tuple[float, float, float], float]) -> np.ndarray:
    """[8, 3]: the base, the six link origins and the fingertips, in the table frame."""
    (x, y, z), yaw = base
    frame = _transform(0.0, 0.0, yaw, 0.0)
    frame[:3, 3] = (x, y, z)
    points = [frame[:3, 3].copy()]
    for i in range(6):
        frame = frame @ _transform(DH_ALPHA[i], DH_A[i], DH_THETA[i] + float(q6[i]), DH_D[i])
        points.append(frame[:3, 3].copy())
    points.append(frame[:3, 3] + TIP * frame[:3, 2])
    return np.array(points)


def segment_distances(p0: np.ndarray, p1: np.ndarray, q0: np.ndarray, q1: np.ndarray) -> np.ndarray:
    """[n, m] shortest distances between segments p0[i]-p1[i] and q0[j]-q1[j] (closest points
    clamped to the segments; zero-length segments are points)."""
    eps = 1e-12
    d1, d2 = (p1 - p0)[:, None], (q1 - q0)[None]
    r = p0[:, None] - q0[None]
    a, e = (d1 * d1).sum(-1), (d2 * d2).sum(-1)
    b, c, f = (d1 * d2).sum(-1), (d1 * r).sum(-1), (d2 * r).sum(-1)
    a_safe, e_safe = np.maximum(a, eps), np.maximum(e, eps)
    denom = a * e - b * b
    s = np.where(denom > eps, np.clip((b * f - c * e) / np.maximum(denom, eps), 0.0, 1.0), 0.0)
    t = (b * s + f) / e_safe
    s = np.where(t < 0.0, np.clip(-c / a_safe, 0.0, 1.0), np.where(t > 1.0, np.clip((b - c) / a_safe, 0.0, 1.0), s))
    t = np.clip(t, 0.0, 1.0)
    s = np.where(a <= eps, 0.0, s)                                   # p is a point
    t = np.where(a <= eps, np.clip(f / e_safe, 0.0, 1.0), t)
    s = np.where(e <= eps, np.clip(-c / a_safe, 0.0, 1.0), s)        # q is a point
    t = np.where(e <= eps, 0.0, t)
    s = np.where((a <= eps) & (e <= eps), 0.0, s)
    return np.linalg.norm(r + s[..., None] * d1 - t[..., None] * d2, axis=-1)


class WorkspaceGuard:
    def __init__(self, workspace: Workspace | None = None):
        self.workspace = workspace or Workspace()

    def points(self, q14: np.ndarray) -> dict[str, np.ndarray]:
        q14 = np.asarray(q14, dtype=np.float64)
        return {side: arm_points(q14[k * DOF_PER_ARM:k * DOF_PER_ARM + 6], self.workspace.bases[side])
                for k, side in enumerate(SIDES)}

    def penetration(self, q14) -> tuple[float, str]:
        """(deepest violation in m, > 0 inside; what and where) for the pose ``q14``."""
        ws, r = self.workspace, self.workspace.link_radius
        arms = self.points(q14)
        pts = np.stack([arms[side] for side in SIDES])      # [2 arms, 8 points, 3]
        p0, p1 = pts[:, :-1], pts[:, 1:]                    # [2, 7 links, 3]
        candidates: list[tuple[float, str]] = []
        if ws.table_z is not None:
            depth = ws.table_z + r - np.minimum(p0[..., 2], p1[..., 2])
            depth[:, 0] = -np.inf  # the column standing on the base
            depth[:, -1] = np.maximum(ws.table_z + ws.tip_clearance - p1[:, -1, 2], ws.table_z + r - p0[:, -1, 2])
            a, i = np.unravel_index(int(np.argmax(depth)), depth.shape)
            candidates.append((float(depth[a, i]), f"{SIDES[a]} {LINK_NAMES[i]} into the table (top at {ws.table_z} m)"))
        if ws.keep_out:
            samples = p0[..., None, :] + BOX_SAMPLES[:, None] * (p1 - p0)[..., None, :]  # [2, 7, S, 3]
            for box in ws.keep_out:
                outside = np.maximum(np.maximum(np.asarray(box.low) - samples, samples - np.asarray(box.high)), 0.0)
                depth = r - np.linalg.norm(outside, axis=-1).min(axis=-1)  # [2, 7]
                a, i = np.unravel_index(int(np.argmax(depth)), depth.shape)
                candidates.append((float(depth[a, i]), f"{SIDES[a]} {LINK_NAMES[i]} into keep-out box {box.name!r}"))
        gaps = segment_distances(p0[0], p1[0], p0[1], p1[1]) - 2 * r
        i, j = np.unravel_index(int(np.argmin(gaps)), gaps.shape)
        candidates.append((ws.min_arm_distance - float(gaps[i, j]),
                           f"{SIDES[0]} {LINK_NAMES[i]} within {ws.min_arm_distance} m of {SIDES[1]} {LINK_NAMES[j]}"))
        return max(candidates, key=lambda c: c[0])
