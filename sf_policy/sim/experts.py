"""Scripted teleoperators: one per task, playing the human on the master arms.

An expert reads the true object poses (it is a script, not a policy), plans Cartesian
waypoints for the tool point, turns them into joint targets with the IK, and streams
smoothly interpolated master targets at 30 Hz, as a person moving the master arms would.
Speeds stay well within the Piper's limits: joints peak below ~1.7 rad/s (limit pi) and
grippers move at half their 0.1 m/s, so a full close takes 1.4 s. A grasp closes until the
fingers stop on the object and lifts at once, squeezing on while it rises, as an operator who
feels the contact would (``Expert.close_until_contact``).

Scripts are written to be learnable, not only to succeed: no pause in which nothing observable
changes, and the same choice of wrist angle for similar scenes (``Expert.choose_frame``).

Each task's script is a generator of 14-d master targets: it reads the twin between steps,
so later waypoints (where to put a held object) come from where things actually are.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..embodiment import DOF_PER_ARM, PIPER_LIMITS, SIDES
from .ik import ArmIK, IKError, grasp_frame, rotation_error
from .piper_mjcf import TABLE_TOP_Z
from .twin import CONTROL_HZ, Twin

GRIP_OPEN = PIPER_LIMITS["gripper"].upper
GRIP_CLOSED = 0.0   # the servo then squeezes with what its gain gives at the object's width
# Arm moves follow min-jerk profiles, which peak at 1.875x their average speed: joints stay
# below ~1.7 rad/s (limit pi). Grippers ramp at a steady half of their 0.1 m/s limit.
JOINT_SPEED = 0.9   # rad/s, average over a move
GRIP_SPEED = 0.05   # m/s of opening
LINE_SPEED = 0.12   # m/s along Cartesian lines
LINE_STEP = 0.01    # m between IK waypoints on a Cartesian line
# Fingers this far wider than their command are held apart by the object: contact. Free
# fingers lag a ramping command by ~4 mm.
CONTACT_LAG = 0.008  # m
# The wrist angle (joint 6) each arm's grasps keep nearest to, choosing between the two finger
# orders: mirrored, and where the tasks' grasps gather (right arm -1.7..-0.4 rad for the
# vegetables, left arm +0.6..1.1 on the pot's handle), so no task's scenes straddle a switch.
WRIST_REFERENCE = {"left": math.pi / 2, "right": -math.pi / 2}
TILTS = np.radians([0, 10, 20, 30, 40, 50, 60])  # approach tilts tried, most vertical first

Pose = tuple[np.ndarray, np.ndarray]  # tcp position (3) and rotation matrix (3x3)
Script = Callable[["Expert"], Iterator[np.ndarray]]


def min_jerk(s: float) -> float:
    """Smooth 0 -> 1 with zero speed and acceleration at both ends."""
    return s * s * s * (10 - 15 * s + 6 * s * s)


class Expert:
    """Streams master targets from a task script; `done` once the script has finished."""

    def __init__(self, twin: Twin, script: Script):
        self.twin = twin
        self.ik = {side: ArmIK(twin.model, side) for side in SIDES}
        self.q = twin.master.copy()
        self.done = False
        self.error: str | None = None  # why the script gave up, if it did
        self._ticks = script(self)

    def act(self) -> np.ndarray:
        """Master targets (14, SI) for the next tick."""
        if not self.done:
            try:
                self.q = np.asarray(next(self._ticks), dtype=float)
            except StopIteration:
                self.done = True  # keep sending the last targets: the arms hold still
            except IKError as exc:  # a scene the script cannot reach: stop and say why
                self.done, self.error = True, str(exc)
        return self.q.copy()

    # --- state ---------------------------------------------------------------------------
    def arm(self, side: str) -> np.ndarray:
        """The six joint targets now sent to this side's master."""
        k = SIDES.index(side) * DOF_PER_ARM
        return self.q[k:k + 6].copy()

    def tcp(self, side: str, q6: np.ndarray | None = None) -> Pose:
        """The tcp pose the master targets (or q6) command, by FK on the IK's own data."""
        return self.ik[side].fk(self.arm(side) if q6 is None else q6)

    # --- planning ------------------------------------------------------------------------
    def line(self, side: str, start_q: np.ndarray, goal: Pose) -> list[np.ndarray]:
        """Joint waypoints moving the tcp on a straight line to `goal`, the rotation turning
        evenly from the start's to the goal's about one axis.

        Raises IKError when a point is out of reach or the IK would jump branches.
        """
        start_p, start_m = self.tcp(side, start_q)
        goal_p, goal_m = goal
        n = max(1, math.ceil(np.linalg.norm(goal_p - start_p) / LINE_STEP))
        path, q = [start_q], start_q
        for i in range(1, n + 1):
            s = i / n
            mat = goal_m if np.allclose(start_m, goal_m, atol=1e-6) else _blend(start_m, goal_m, s)
            q = self.ik[side].solve(start_p + s * (goal_p - start_p), mat, q0=q).q
            if np.max(np.abs(q - path[-1])) > 0.35:
                raise IKError(f"{side} arm: the IK branch jumps on the line to {np.round(goal_p, 3).tolist()}")
            path.append(q)
        return path

    def choose_frame(self, side: str, points: Callable[[np.ndarray], list[np.ndarray]],
                     yaws: list[float]) -> np.ndarray:
        """The most vertical grasp rotation that reaches every point (``points(rotation)``)
        with one IK branch, joined by straight lines.

        Tries each tilt (most vertical first), tilting either way, for each closing yaw: the
        Piper's +-70 deg wrist leaves only some of them. Of the finger orders that reach (the
        same grasp, pi apart on joint 6) it takes the one nearest this arm's WRIST_REFERENCE: a
        script that took whichever it tried first would switch between them as the scene
        varies, and a policy trained on both averages them into a wrist angle that grasps
        nothing (lift_pot's left arm: 15 of 50 demonstrations at -2.0 rad, 35 at +0.6..1.1).
        """
        for tilt in TILTS:
            found = []  # (distance to the reference wrist angle, order tried, rotation)
            for sign in (1.0, -1.0) if tilt else (1.0,):  # tilting the other way with the fingers
                for yaw in yaws:                            # swapped is the same approach
                    for flip in (0.0, math.pi):
                        mat = grasp_frame(yaw + flip, sign * tilt)
                        q = self._reach(side, points(mat), mat)
                        if q is not None:
                            found.append((abs(q[5] - WRIST_REFERENCE[side]), len(found), mat))
            if found:
                return min(found, key=lambda f: f[:2])[2]
        where = [np.round(p, 3).tolist() for p in points(grasp_frame(0.0, 0.0))]
        raise IKError(f"{side} arm: no grasp rotation reaches all of {where}")

    def _reach(self, side: str, points: list[np.ndarray], mat: np.ndarray) -> np.ndarray | None:
        """The joints at the first point if the arm reaches every point with one IK branch,
        joined by straight lines; None if it does not."""
        ik, q = self.ik[side], self.arm(side)
        for p in points:
            found = ik.analytic(p, mat, q)
            if not found:
                return None
            q = found[0]
        try:  # the points must also join up on straight lines without branch jumps
            first = q = ik.solve(points[0], mat, q0=self.arm(side)).q
            for p in points[1:]:
                q = self.line(side, q, (p, mat))[-1]
        except IKError:
            return None
        return first

    # --- motions (generators of master targets) ------------------------------------------
    def move(self, goals: dict[str, Pose], grips: dict[str, float] | None = None, straight: bool = True,
             speed: float = LINE_SPEED, settle: float = 0.15) -> Iterator[np.ndarray]:
        """Move the given arms' tcps to their goals together (on lines if `straight`, else
        through joint space), grippers ramping to `grips` meanwhile."""
        paths = {}
        for side, goal in goals.items():
            start = self.arm(side)
            if straight:
                paths[side] = self.line(side, start, goal)
            else:
                paths[side] = [start, self.ik[side].solve(goal[0], goal[1], q0=start).q]
        yield from self._follow(paths, grips or {}, speed, settle)

    def _follow(self, paths: dict[str, list[np.ndarray]], grips: dict[str, float], speed: float,
                settle: float) -> Iterator[np.ndarray]:
        """Arms along their joint paths on a min-jerk profile; grippers at a steady speed
        (they ramp over their own time, as the gripper's speed-limited servo would)."""
        seconds = 0.4
        for side, path in paths.items():
            joint_travel = float(np.max(np.abs(path[-1] - path[0])))
            cart = float(np.linalg.norm(self.tcp(side, path[-1])[0] - self.tcp(side, path[0])[0]))
            seconds = max(seconds, joint_travel / JOINT_SPEED, cart / speed)
        start = self.q.copy()
        grip_ticks = {side: abs(opening - start[SIDES.index(side) * DOF_PER_ARM + 6]) / GRIP_SPEED * CONTROL_HZ
                      for side, opening in grips.items()}
        ticks = max([round(seconds * CONTROL_HZ)] + [math.ceil(n) for n in grip_ticks.values()])
        for t in range(1, ticks + 1):
            s = min_jerk(t / ticks)
            q = start.copy()
            for side, path in paths.items():
                k = SIDES.index(side) * DOF_PER_ARM
                q[k:k + 6] = _along(path, s)
            for side, opening in grips.items():
                k = SIDES.index(side) * DOF_PER_ARM + 6
                q[k] = start[k] + min(1.0, t / max(grip_ticks[side], 1.0)) * (opening - start[k])
            self.q = q
            yield q
        yield from self.wait(settle)

    def grip(self, grips: dict[str, float], hold: float = 0.2) -> Iterator[np.ndarray]:
        """Ramp the grippers to these openings, then hold still while the grip settles."""
        yield from self._follow({}, grips, LINE_SPEED, settle=hold)

    def close_until_contact(self, sides: Sequence[str]) -> Iterator[np.ndarray]:
        """Close these grippers until each one's fingers stop on the object, as an operator
        closes until they feel it and then moves on. The next move keeps squeezing (pass it
        ``grips={side: GRIP_CLOSED}``). Why not close fully and hold: the fingers stop at the
        object's width while the command keeps ramping, so the camera and the joint state
        stay the same for a second or more, and a policy cannot tell when that pause ends:
        it re-plans inside the pause forever and never lifts."""
        step = GRIP_SPEED / CONTROL_HZ
        closing = list(sides)
        while closing:
            state = self.twin.puppet_state()
            for side in list(closing):
                k = SIDES.index(side) * DOF_PER_ARM + 6
                if self.q[k] <= GRIP_CLOSED or state[k] - self.q[k] > CONTACT_LAG:
                    closing.remove(side)
                else:
                    self.q[k] = max(GRIP_CLOSED, self.q[k] - step)
            if closing:
                yield self.q.copy()

    def wait(self, seconds: float) -> Iterator[np.ndarray]:
        for _ in range(round(seconds * CONTROL_HZ)):
            yield self.q.copy()


def _along(path: list[np.ndarray], s: float) -> np.ndarray:
    """Point at fraction s of a polyline of joint waypoints (equally spaced in Cartesian)."""
    if len(path) == 1:
        return path[0]
    x = s * (len(path) - 1)
    i = min(int(x), len(path) - 2)
    return path[i] + (x - i) * (path[i + 1] - path[i])


def _blend(a: np.ndarray, b: np.ndarray, s: float) -> np.ndarray:
    """Rotation part way from a to b (about the single axis between them)."""
    import mujoco

    w = rotation_error(b, a) * s
    quat = np.empty(4)
    angle = float(np.linalg.norm(w))
    if angle < 1e-12:
        return a.copy()
    mujoco.mju_axisAngle2Quat(quat, w / angle, angle)
    rot = np.empty(9)
    mujoco.mju_quat2Mat(rot, quat)
    return rot.reshape(3, 3) @ a


def _above(p: np.ndarray, mat: np.ndarray, distance: float) -> np.ndarray:
    """A point `distance` back along the approach axis: where a grasp starts descending."""
    return p - mat[:, 2] * distance


def _horizontal_yaw(axis: np.ndarray) -> float:
    return math.atan2(axis[1], axis[0])


# --- task scripts ----------------------------------------------------------------------
def _pick(ex: Expert, side: str, grasp: np.ndarray, yaws: list[float], lift_to: np.ndarray,
          extra: Sequence[np.ndarray] = (), opening: float = GRIP_OPEN, approach: float = 0.08) -> Iterator[np.ndarray]:
    """Reach above the grasp point, descend, close, lift to `lift_to`."""
    mat = ex.choose_frame(side, lambda m: [_above(grasp, m, approach), grasp, lift_to, *extra], yaws)
    pre = _above(grasp, mat, approach)
    yield from ex.move({side: (pre, mat)}, {side: opening}, straight=False, speed=0.25)
    yield from ex.move({side: (grasp, mat)}, speed=0.08)
    yield from ex.close_until_contact([side])
    yield from ex.move({side: (lift_to, mat)}, {side: GRIP_CLOSED}, speed=0.1)


def _place(ex: Expert, side: str, body: str, goal: np.ndarray, clearance: float) -> Iterator[np.ndarray]:
    """Carry the held body so its origin lands on `goal`, lowering the last `clearance`
    metres straight down, then let go and back off."""
    _, mat = ex.tcp(side)
    offset = ex.twin.body_pos(body) - ex.twin.site_pos(f"{side}_tcp")  # the grasp, as it ended up
    over = goal - offset + np.array([0.0, 0.0, clearance])
    yield from ex.move({side: (over, mat)}, speed=0.15)
    yield from ex.move({side: (goal - offset, mat)}, speed=0.05)
    yield from ex.grip({side: GRIP_OPEN})
    yield from ex.move({side: (_above(goal - offset, mat, 0.06), mat)}, speed=0.1)


def lift_pot(ex: Expert) -> Iterator[np.ndarray]:
    """Both arms reach the loop handles together, close on the outer bars and lift 12 cm
    (success is 8 cm: the lift goes on through it, so a policy need not stop on the mark)."""
    rot = ex.twin.body_mat("pot")
    handles = {side: ex.twin.site_pos(f"pot_handle_{side}") for side in SIDES}
    lift = np.array([0.0, 0.0, 0.12])
    frames = {}
    for side in SIDES:
        # Fingers close across the bar (along the pot's x), the approach tilting along it.
        h = handles[side]
        frames[side] = ex.choose_frame(side, lambda m, h=h: [_above(h, m, 0.07), h, h + lift],
                                       [_horizontal_yaw(rot[:, 0])])
    yield from ex.move({s: (_above(handles[s], frames[s], 0.07), frames[s]) for s in SIDES},
                       {s: 0.04 for s in SIDES}, straight=False, speed=0.25)
    yield from ex.move({s: (handles[s], frames[s]) for s in SIDES}, speed=0.06)
    yield from ex.close_until_contact(SIDES)
    yield from ex.move({s: (handles[s] + lift, frames[s]) for s in SIDES}, {s: GRIP_CLOSED for s in SIDES}, speed=0.06)
    yield from ex.wait(1.0)


def place_block(ex: Expert) -> Iterator[np.ndarray]:
    """The arm on the block's side picks it across two faces and sets it on the platform."""
    twin = ex.twin
    side, size = twin.info["arm"], twin.task.block
    block, rot = twin.body_pos("block"), twin.body_mat("block")
    top = twin.task.platform_top(twin)
    target = np.array([*twin.body_pos("platform")[:2], top + size / 2 + 0.003])
    grasp = block + np.array([0.0, 0.0, 0.004])
    lift = grasp + np.array([0.0, 0.0, top - TABLE_TOP_Z + 0.06])
    yaws = [_horizontal_yaw(rot[:, 0]) + k * math.pi / 2 for k in range(2)]  # either pair of faces
    carry = target - block + grasp
    yield from _pick(ex, side, grasp, yaws, lift, extra=[carry + [0, 0, 0.04], carry], opening=0.065)
    yield from _place(ex, side, "block", target, clearance=0.04)
    yield from ex.wait(1.0)


def grasp_vegetable(ex: Expert) -> Iterator[np.ndarray]:
    """The right arm picks the named vegetable across its long axis and lifts it 10 cm."""
    twin = ex.twin
    name = twin.info["target"]
    pos, rot = twin.body_pos(name), twin.body_mat(name)
    grasp = np.array([pos[0], pos[1], max(pos[2], TABLE_TOP_Z + 0.02)])
    # Close across the long axis (the body's x), tilting along it if the wrist needs to.
    yaws = [_horizontal_yaw(rot[:, 0]) + math.pi / 2]
    yield from _pick(ex, "right", grasp, yaws, grasp + np.array([0.0, 0.0, 0.1]))
    yield from ex.wait(1.0)


def stack_cups(ex: Expert) -> Iterator[np.ndarray]:
    """The arm on the small cup's side grips it near the rim, carries it over the big cup and
    lowers it in, letting go just above the floor (the fingers stay above the big rim)."""
    twin = ex.twin
    side = twin.info["arm"]
    small_h, big_h = twin.task.small[1], twin.task.big[1]
    small, big = twin.body_pos("cup_small"), twin.body_pos("cup_big")
    grasp = small + np.array([0.0, 0.0, small_h - 0.015])
    lift = grasp + np.array([0.0, 0.0, big_h + 0.03])
    target = big + np.array([0.0, 0.0, 0.005 + 0.008])  # on the big cup's floor, dropped the last 8 mm
    carry = target - small + grasp
    yaws = [k * math.pi / 6 for k in range(6)]  # a cup is round: any closing direction will do
    yield from _pick(ex, side, grasp, yaws, lift, extra=[carry + [0, 0, big_h + 0.01], carry])
    yield from _place(ex, side, "cup_small", target, clearance=big_h + 0.01)
    yield from ex.wait(1.0)


SCRIPTS: dict[str, Script] = {"lift_pot": lift_pot, "place_block": place_block,
                              "grasp_vegetable": grasp_vegetable, "stack_cups": stack_cups}


def make_expert(twin: Twin) -> Expert:
    """The scripted operator for the twin's task, planned from the scene as reset."""
    name = twin.task.name
    if name not in SCRIPTS:
        raise ValueError(f"no scripted expert for task {name!r}; known: {', '.join(sorted(SCRIPTS))}")
    return Expert(twin, SCRIPTS[name])


def run_episode(task_name: str, seed: int, render: bool = False, twin: Twin | None = None,
                keep_targets: bool = False) -> dict[str, Any]:
    """One expert episode until success or the step limit: success, ticks, wall time, the
    reset's info, and the expert's error if it gave up. Physics only unless `render` (then
    `frames` holds the top camera's images); pass `twin` to reuse a built model. With
    `keep_targets`, `targets` holds the master targets it commanded, tick by tick."""
    twin = twin or Twin(task_name, cameras=() if not render else ("cam_high",))
    if twin.task.name != task_name:
        raise ValueError(f"the twin runs {twin.task.name!r}, not {task_name!r}")
    started = time.perf_counter()
    twin.reset(seed)
    expert = make_expert(twin)
    success = False
    frames, targets = [], []
    while not twin.done():
        target = expert.act()
        twin.step(target)
        if keep_targets:
            targets.append(target)
        if render:
            frames.append(twin.render("cam_high")[0])
        if twin.success():
            success = True
            break
    result = {"task": task_name, "seed": seed, "success": success, "ticks": twin.tick,
              "expert_done": expert.done, "expert_error": expert.error, "wall_s": time.perf_counter() - started,
              "info": dict(twin.info)}
    if render:
        result["frames"] = frames
    if keep_targets:
        result["targets"] = np.asarray(targets, dtype=np.float64)
    return result
