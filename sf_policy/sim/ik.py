"""Inverse kinematics of one Piper arm's tool point (the ``<side>_tcp`` site).

Damped least squares on MuJoCo's site Jacobian, run on a private ``MjData`` so that the
twin's own state is never touched. Joint limits come from the embodiment and are enforced by
clamping after every iteration.

DLS alone finds the Piper's narrow feasible set unreliably (its wrist bends only +-70 deg,
so clamped iterations stall far from a solution that exists). The arm has a spherical wrist
(joints 4-6 meet in a point), so the closed-form branches of the DH chain give exact
starting points: elbow and shoulder from the wrist centre, joints 4-6 as a ZYZ Euler
decomposition. DLS then polishes the start nearest the caller's posture and confirms it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..embodiment import ARM_JOINTS, PIPER_LIMITS
from .piper_mjcf import DH_A, DH_D, DH_THETA

_LOWER = np.array([PIPER_LIMITS[j].lower for j in ARM_JOINTS])
_UPPER = np.array([PIPER_LIMITS[j].upper for j in ARM_JOINTS])
#: A comfortable mid-range posture; a restart seed when the caller's seed stalls.
_COMFORT = np.array([0.0, 1.2, -1.2, 0.0, 0.6, 0.0])
_ROT_X_HALF_PI = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
_ROT_WEIGHT = 0.2  # metres per radian when position and rotation errors are mixed


class IKError(ValueError):
    """The target cannot be reached within the joint limits (names the side and target)."""


@dataclass(frozen=True)
class IKResult:
    q: np.ndarray          # six joint values (rad), within the limits
    pos_err: float         # metres, |target - reached|
    rot_err: float         # radians, angle of the remaining rotation (0 without a target)

    @property
    def residual(self) -> float:
        """One number for "how far off": metres plus radians at _ROT_WEIGHT m per rad."""
        return self.pos_err + _ROT_WEIGHT * self.rot_err


def grasp_frame(yaw: float, tilt: float = 0.0) -> np.ndarray:
    """Tool rotation for a grasp: fingers close along (cos yaw, sin yaw, 0) and the tool
    points down, tilted by `tilt` (rad) about the closing axis so both fingertips stay level.

    Columns are the tcp frame's x (the fingers' sliding axis), y and z (out of the wrist).
    """
    c = np.array([math.cos(yaw), math.sin(yaw), 0.0])
    h = np.array([-math.sin(yaw), math.cos(yaw), 0.0])
    z = np.array([0.0, 0.0, -math.cos(tilt)]) + math.sin(tilt) * h
    return np.column_stack([c, np.cross(z, c), z])


def rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """World-frame axis * angle that turns `current` into `target`."""
    import mujoco

    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, (target @ current.T).reshape(-1))
    if quat[0] < 0:  # the short way round
        quat = -quat
    vel = np.empty(3)
    mujoco.mju_quat2Vel(vel, quat, 1.0)
    return vel


class ArmIK:
    """IK for one side's tcp on a given model (the twin's), using a private MjData."""

    def __init__(self, model, side: str):
        import mujoco

        self._mj = mujoco
        self.model, self.side = model, side
        self.data = mujoco.MjData(model)  # private: FK here never moves the twin
        joints = [model.joint(f"{side}_{j}").id for j in ARM_JOINTS]
        self._qadr = np.array([model.jnt_qposadr[j] for j in joints])
        self._dadr = np.array([model.jnt_dofadr[j] for j in joints])
        self._site = model.site(f"{side}_tcp").id
        self._base = model.body(f"{side}_base").id
        self._link3 = model.body(f"{side}_link3").id
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    def fk(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World position and rotation matrix of the tcp at joint values q (6)."""
        self.data.qpos[self._qadr] = q
        self._mj.mj_kinematics(self.model, self.data)
        site = self.data.site(self._site)
        return site.xpos.copy(), site.xmat.reshape(3, 3).copy()

    def _jacobian(self) -> np.ndarray:
        self._mj.mj_comPos(self.model, self.data)  # cdof, needed by mj_jac after mj_kinematics
        self._mj.mj_jacSite(self.model, self.data, self._jacp, self._jacr, self._site)
        return np.vstack([self._jacp[:, self._dadr], self._jacr[:, self._dadr]])

    def _errors(self, q, pos, mat) -> tuple[np.ndarray, np.ndarray]:
        """Position and rotation errors (world frame) at q; leaves the kinematics at q."""
        cur_p, cur_m = self.fk(q)
        return pos - cur_p, (rotation_error(mat, cur_m) if mat is not None else np.zeros(3))

    def _iterate(self, q, pos, mat, iters: int, tol: float) -> tuple[np.ndarray, float, float]:
        """Levenberg-Marquardt style DLS from q; returns the best (q, pos_err, rot_err) seen."""
        best_q, best_cost, best_pe, best_re = q.copy(), math.inf, math.inf, math.inf
        damping, stalled = 1e-2, 0
        # Rotation weighted so 1 rad counts like _ROT_WEIGHT metres: both converge together.
        weights = np.array([1.0, 1.0, 1.0] + [_ROT_WEIGHT] * 3)
        for _ in range(iters):
            e_pos, e_rot = self._errors(q, pos, mat)
            pe, re = float(np.linalg.norm(e_pos)), float(np.linalg.norm(e_rot))
            if pe + _ROT_WEIGHT * re < best_cost - 1e-9:
                best_q, best_cost, best_pe, best_re, stalled = q.copy(), pe + _ROT_WEIGHT * re, pe, re, 0
                damping = max(damping * 0.5, 1e-3)
            else:  # no better: step back, damp harder, and give up on a start that has stalled
                damping, stalled = min(damping * 3.0, 1.0), stalled + 1
                if stalled > 12:
                    break
                q = best_q.copy()
                e_pos, e_rot = self._errors(q, pos, mat)
            if best_pe < tol and best_re < 10 * tol:
                break
            jac = self._jacobian()
            if mat is None:
                jac, err = jac[:3], e_pos
            else:
                jac, err = jac * weights[:, None], np.concatenate([e_pos, e_rot]) * weights
            dq = jac.T @ np.linalg.solve(jac @ jac.T + damping**2 * np.eye(len(err)), err)
            step = float(np.max(np.abs(dq)))
            if step > 0.4:  # big linearised jumps overshoot; keep each update modest
                dq *= 0.4 / step
            q = np.clip(q + dq, _LOWER, _UPPER)
        return best_q, best_pe, best_re

    def _wrist_offset(self) -> float:
        """Distance from the wrist centre to the tcp along the tool axis."""
        return DH_D[5] + float(self.model.site_pos[self._site][2])

    def _arm_branches(self, wrist: np.ndarray) -> list[tuple[float, float, float]]:
        """(q1, q2, q3) placing the wrist centre (base frame) at `wrist`: up to 4 branches.

        In the DH chain the wrist centre sits in the plane of joint 1 at (v_x, d1 - v_z)
        with v = RotZ(theta2) (a2 + RotZ(theta3) (a3, -d4)); the law of cosines gives theta3.
        """
        a2, a3, d1, d4 = DH_A[2], DH_A[3], DH_D[0], DH_D[3]
        r, height = math.hypot(wrist[0], wrist[1]), d1 - wrist[2]
        k = (r * r + height * height - a2 * a2 - a3 * a3 - d4 * d4) / (2 * a2)
        reach = math.hypot(a3, d4)
        if abs(k) > reach:
            return []
        out = []
        azimuth = math.atan2(wrist[1], wrist[0])
        for q1, vx in ((azimuth, r), (azimuth + math.pi, -r)):
            for sign in (1.0, -1.0):
                theta3 = math.atan2(d4, a3) + sign * math.acos(k / reach)
                ux = a2 + a3 * math.cos(theta3) + d4 * math.sin(theta3)
                uy = a3 * math.sin(theta3) - d4 * math.cos(theta3)
                theta2 = math.atan2(height, vx) - math.atan2(uy, ux)
                out.append((q1, theta2 - DH_THETA[1], theta3 - DH_THETA[2]))
        return out

    def _wrist_branches(self, arm: tuple[float, float, float], mat: np.ndarray, hint: float) -> list[np.ndarray]:
        """Full solutions for one arm branch: joints 4-6 are ZYZ Euler angles of the wrist.

        With alphas (pi/2, -pi/2, pi/2), RotX(pi/2)^T R3^T R6 = RotZ(q4) RotY(q5) RotZ(q6).
        `hint` picks q4 at the wrist singularity (q5 = 0), where only q4 + q6 is fixed.
        """
        self.fk(np.array([*arm, 0.0, 0.0, 0.0]))
        r3 = self.data.body(self._link3).xmat.reshape(3, 3)
        m = (r3 @ _ROT_X_HALF_PI).T @ mat
        out = []
        cos_b = float(np.clip(m[2, 2], -1.0, 1.0))
        if 1.0 - abs(cos_b) < 1e-9:
            total = math.atan2(m[1, 0], m[0, 0])
            out.append(np.array([*arm, hint, 0.0, total - hint]))
        else:
            for b in (math.acos(cos_b), -math.acos(cos_b)):
                sb = math.sin(b)
                a = math.atan2(m[1, 2] / sb, m[0, 2] / sb)
                c = math.atan2(m[2, 1] / sb, -m[2, 0] / sb)
                out.append(np.array([*arm, a, b, c]))
        return out

    def analytic(self, pos, mat: np.ndarray, q0: np.ndarray | None = None) -> list[np.ndarray]:
        """Every closed-form solution within the joint limits, nearest to q0 first."""
        base = self.data.body(self._base)
        rot = base.xmat.reshape(3, 3)
        wrist = rot.T @ (np.asarray(pos, float) - mat[:, 2] * self._wrist_offset() - base.xpos)
        hint = float(q0[3]) if q0 is not None else 0.0
        found = []
        for arm in self._arm_branches(wrist):
            for q in self._wrist_branches(arm, mat, hint):
                q = _wrap_into_limits(q)
                if q is not None:
                    found.append(q)
        ref = np.asarray(q0, float) if q0 is not None else _COMFORT
        return sorted(found, key=lambda q: float(np.sum(np.abs(q - ref))))

    def _starts(self, pos, q0) -> list[np.ndarray]:
        """Starting postures: the caller's, then one per wrist branch aimed at the target.

        Joint 1 is aimed at the target's azimuth from the base (the arm is planar up to the
        wrist), which puts every start in the right basin; the wrist seeds cover the
        branches that clamping alone cannot move between.
        """
        starts = [np.clip(np.asarray(q0, float), _LOWER, _UPPER)] if q0 is not None else []
        base = self.data.body(self._base).xpos
        rel = self.data.body(self._base).xmat.reshape(3, 3).T @ (np.asarray(pos) - base)
        j1 = float(np.clip(math.atan2(rel[1], rel[0]), _LOWER[0], _UPPER[0]))
        for j2, j3 in ((1.6, -1.3), (0.6, -0.6), (2.6, -2.4)):  # mid, stretched, folded elbow
            for j5 in (0.7, -0.7):
                for j4 in (0.0, 1.2, -1.2):
                    starts.append(np.array([j1, j2, j3, j4, j5, 0.0]))
        return starts

    def _any_rotation(self, pos, q0) -> list[np.ndarray]:
        """Exact solutions for a fixed spread of tool rotations (starts for position-only IK)."""
        rng = np.random.default_rng(1)  # a fixed spread: same target -> same answer
        found = []
        for _ in range(48):
            quat = rng.normal(size=4)
            mat = np.empty(9)
            self._mj.mju_quat2Mat(mat, quat / np.linalg.norm(quat))
            found += self.analytic(pos, mat.reshape(3, 3), q0)[:1]
        ref = np.asarray(q0, float) if q0 is not None else _COMFORT
        return sorted(found, key=lambda q: float(np.sum(np.abs(q - ref))))

    def solve(self, pos, mat: np.ndarray | None = None, q0: np.ndarray | None = None, tol: float = 1e-5,
              accept: float = 1e-3, iters: int = 100) -> IKResult:
        """Joint values that put the tcp at `pos` (and rotation `mat` if given).

        With a rotation, the closed-form solutions nearest q0 are polished by DLS; without
        one (or when none lies within the limits), DLS runs from q0 and from seeds covering
        the wrist branches. Raises IKError when nothing gets within `accept` metres (and
        10*accept radians).
        """
        pos = np.asarray(pos, dtype=float)
        self.fk(_COMFORT)  # base pose for the seeds (the base is fixed, any posture will do)
        if mat is None:
            # Any rotation will do: DLS from q0 and the seeds, then exact solutions for a
            # spread of rotations (they reach the odd corners clamped DLS stalls short of).
            starts = self._starts(pos, q0) + self._any_rotation(pos, q0)
        else:
            # The closed form is exact, so when it finds nothing within the limits DLS only
            # measures how far off the target is (for the error); a few starts suffice.
            starts = self.analytic(pos, mat, q0) or self._starts(pos, q0)[:3]
        best: IKResult | None = None
        for start in starts:
            q, pe, re = self._iterate(start, pos, mat, iters, tol)
            result = IKResult(q, pe, re if mat is not None else 0.0)
            if best is None or result.residual < best.residual:
                best = result
            if pe < accept and re < 10 * accept:
                return result
        assert best is not None
        raise IKError(f"{self.side} arm cannot reach tcp target {np.round(pos, 4).tolist()}"
                      + (f" with rotation {np.round(mat, 3).tolist()}" if mat is not None else "")
                      + f" (best: {best.pos_err:.4f} m, {best.rot_err:.3f} rad off)")


def _wrap_into_limits(q: np.ndarray) -> np.ndarray | None:
    """q with each angle shifted by a multiple of 2 pi into its range, or None if impossible."""
    out = q.copy()
    for i in range(len(out)):
        out[i] = (out[i] - _LOWER[i]) % (2 * math.pi) + _LOWER[i]
        if out[i] > _UPPER[i] + 1e-9:
            return None
    return np.clip(out, _LOWER, _UPPER)
