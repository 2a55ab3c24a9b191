"""The MuJoCo twin of the bimanual Piper: one implementation behind the Gymnasium env, the
ROS sim node and the benchmarks.

Control works like the hardware: a teleoperator (human or scripted) sets the master arms'
joint targets, and the puppets' position servos track them (the master-puppet link). A
policy in follow mode sets the same targets through the command topic. Physics runs at
500 Hz; a control tick is 1/30 s (16 or 17 physics steps, so that 30 ticks are exactly 1 s).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..embodiment import ARM_JOINTS, DOF_PER_ARM, PIPER_LIMITS, SIDES, STATE_DIM, arm_limits_arrays
from ..topics import CAMERA_ROLES
from .piper_mjcf import GRIPPER_HALF_MAX, PHYSICS_HZ, scene_xml

CONTROL_HZ = 30
CAMERA_NAMES = {"cam_high": "cam_high", "cam_left_wrist": "left_wrist_cam", "cam_right_wrist": "right_wrist_cam"}
_LOWER, _UPPER = arm_limits_arrays()


def _mujoco():
    os.environ.setdefault("MUJOCO_GL", "egl")  # offscreen through Mesa; must precede the import
    import mujoco

    return mujoco


@dataclass
class Observation:
    """What the robot's sensors give: puppet joints (14, SI) and camera images."""

    state: np.ndarray
    images: dict[str, np.ndarray] = field(default_factory=dict)  # role -> H x W x 3 uint8 RGB
    depth: dict[str, np.ndarray] = field(default_factory=dict)   # role -> H x W float32 metres
    time: float = 0.0


@dataclass
class CameraDepth:
    """One camera's depth image and where the camera was (what the geometry teacher needs)."""

    depth: np.ndarray  # [h, w] float32 metres along the optical axis
    pose: np.ndarray  # [4, 4] camera-to-world; MuJoCo's camera frame: x right, y up, looking along -z
    focal: float  # pixels of this depth image (square pixels, principal point at the centre)


class Twin:
    def __init__(self, task: Any, width: int = 224, height: int = 224, cameras: tuple[str, ...] = CAMERA_ROLES,
                 depth: bool = False):
        from .tasks import get_task  # tasks build on the twin's helpers

        mujoco = _mujoco()
        self.task = get_task(task) if isinstance(task, str) else task
        self.width, self.height, self.cameras, self.want_depth = width, height, tuple(cameras), depth
        self.model = mujoco.MjModel.from_xml_string(scene_xml(self.task.objects_xml(), width=width, height=height))
        self.data = mujoco.MjData(self.model)
        self._mj = mujoco
        self._renderer = None
        self._depth_renderers: dict[tuple[int, int], Any] = {}  # (height, width) -> depth-only renderer
        self._joint_qpos = {f"{s}_{j}": self.model.jnt_qposadr[self.model.joint(f"{s}_{j}").id]
                            for s in SIDES for j in ARM_JOINTS + ("finger_a", "finger_b")}
        self._joint_dof = {k: self.model.jnt_dofadr[self.model.joint(k).id] for k in self._joint_qpos}
        self._actuator = {f"{s}_{j}": self.model.actuator(f"{s}_{j}").id
                          for s in SIDES for j in ARM_JOINTS + ("finger_a", "finger_b")}
        self.master = np.zeros(STATE_DIM)
        self.tick = 0
        self.info: dict[str, Any] = {}
        self.seed: int | None = None
        self._sim_clock, self._physics_steps = 0.0, 0

    # --- episode -----------------------------------------------------------------------
    def reset(self, seed: int, home: np.ndarray | None = None) -> Observation:
        """A deterministic episode: the same seed gives the same scene, bit for bit."""
        self._mj.mj_resetData(self.model, self.data)
        self.seed, self.tick = seed, 0
        self._sim_clock, self._physics_steps = 0.0, 0
        rng = np.random.default_rng(seed)
        start = self.task.home() if home is None else np.asarray(home, float)
        self._set_puppet(start)
        self.master = start.copy()
        self._apply(start)
        self.info = dict(self.task.reset(self, rng) or {})
        self.info["prompt"] = self.prompt_for(self.info)
        self._mj.mj_forward(self.model, self.data)
        return self.observe()

    def prompt_for(self, scene: dict[str, Any]) -> str:
        """The scene's instruction, from config/tasks/<task>.yaml: what the launch files deploy."""
        from ..bringup.plan import task_prompt

        return task_prompt(self.task.name, scene)

    def _set_puppet(self, q14: np.ndarray) -> None:
        for k, side in enumerate(SIDES):
            arm = q14[k * DOF_PER_ARM:(k + 1) * DOF_PER_ARM]
            for i, joint in enumerate(ARM_JOINTS):
                self.data.qpos[self._joint_qpos[f"{side}_{joint}"]] = arm[i]
            for finger in ("finger_a", "finger_b"):
                self.data.qpos[self._joint_qpos[f"{side}_{finger}"]] = arm[6] / 2

    def _apply(self, targets14: np.ndarray) -> None:
        """The master-puppet link: puppet servos track the (clamped) master targets."""
        safe = np.clip(targets14, np.tile(_LOWER, 2), np.tile(_UPPER, 2))
        for k, side in enumerate(SIDES):
            arm = safe[k * DOF_PER_ARM:(k + 1) * DOF_PER_ARM]
            for i, joint in enumerate(ARM_JOINTS):
                self.data.ctrl[self._actuator[f"{side}_{joint}"]] = arm[i]
            half = min(max(arm[6] / 2, 0.0), GRIPPER_HALF_MAX)
            for finger in ("finger_a", "finger_b"):
                self.data.ctrl[self._actuator[f"{side}_{finger}"]] = half

    def set_master(self, master_targets: np.ndarray) -> None:
        """New master targets (14, SI); the puppets track them from the next physics step."""
        targets = np.asarray(master_targets, dtype=float)
        if targets.shape != (STATE_DIM,) or not np.all(np.isfinite(targets)):
            raise ValueError(f"master targets must be {STATE_DIM} finite values, got {targets}")
        self.master = targets.copy()
        self._apply(targets)

    def advance(self, seconds: float) -> None:
        """Run physics for `seconds` (whole 500 Hz steps; the remainder carries over)."""
        self._sim_clock += seconds
        n = int(round(self._sim_clock * PHYSICS_HZ)) - self._physics_steps
        if n > 0:
            self._mj.mj_step(self.model, self.data, nstep=n)
            self._physics_steps += n

    def step(self, master_targets: np.ndarray) -> None:
        """One control tick (1/30 s) with these master targets."""
        self.set_master(master_targets)
        self.advance(1.0 / CONTROL_HZ)
        self.tick += 1

    @property
    def time(self) -> float:
        return float(self.data.time)

    def success(self) -> bool:
        return bool(self.task.success(self))

    def done(self) -> bool:
        return self.tick >= self.task.step_limit

    # --- sensors -----------------------------------------------------------------------
    def puppet_state(self) -> np.ndarray:
        q = np.empty(STATE_DIM)
        for k, side in enumerate(SIDES):
            for i, joint in enumerate(ARM_JOINTS):
                q[k * DOF_PER_ARM + i] = self.data.qpos[self._joint_qpos[f"{side}_{joint}"]]
            q[k * DOF_PER_ARM + 6] = sum(self.data.qpos[self._joint_qpos[f"{side}_{f}"]] for f in ("finger_a", "finger_b"))
        return q

    def puppet_velocity(self) -> np.ndarray:
        v = np.zeros(STATE_DIM)
        for k, side in enumerate(SIDES):
            for i, joint in enumerate(ARM_JOINTS):
                v[k * DOF_PER_ARM + i] = self.data.qvel[self._joint_dof[f"{side}_{joint}"]]
        return v

    def render(self, role: str) -> tuple[np.ndarray, np.ndarray | None]:
        if self._renderer is None:
            self._renderer = self._mj.Renderer(self.model, self.height, self.width)
        camera = CAMERA_NAMES[role]
        self._renderer.update_scene(self.data, camera=camera)
        rgb = self._renderer.render().copy()
        depth = None
        if self.want_depth:
            self._renderer.enable_depth_rendering()
            self._renderer.update_scene(self.data, camera=camera)
            depth = self._renderer.render().astype(np.float32)
            self._renderer.disable_depth_rendering()
        return rgb, depth

    def intrinsics(self, role: str):
        """Pinhole model of a camera, from its vertical field of view (square pixels)."""
        from ..drivers.cameras import Intrinsics

        fovy = float(self.model.cam_fovy[self.model.camera(CAMERA_NAMES[role]).id])
        f = (self.height / 2) / np.tan(np.radians(fovy) / 2)
        return Intrinsics(self.width, self.height, f, f, self.width / 2, self.height / 2)

    def camera_depths(self, height: int, width: int) -> dict[str, CameraDepth]:
        """Each camera's metric depth at a reduced height×width (same field of view) and its pose now.

        A separate small renderer, so the full-size RGB pass is untouched: three 32×32 depth
        renders took 3.5 ms here against 10 ms for the three 224² colour ones (the geometry
        teacher needs a few samples per patch, not every pixel).
        """
        renderer = self._depth_renderers.get((height, width))
        if renderer is None:
            renderer = self._depth_renderers[(height, width)] = self._mj.Renderer(self.model, height, width)
            renderer.enable_depth_rendering()
        out = {}
        for role in self.cameras:
            cam = self.model.camera(CAMERA_NAMES[role]).id
            renderer.update_scene(self.data, camera=CAMERA_NAMES[role])
            pose = np.eye(4)
            pose[:3, :3] = self.data.cam_xmat[cam].reshape(3, 3)
            pose[:3, 3] = self.data.cam_xpos[cam]
            focal = (height / 2) / np.tan(np.radians(float(self.model.cam_fovy[cam])) / 2)
            out[role] = CameraDepth(renderer.render().astype(np.float32), pose, float(focal))
        return out

    def observe(self, images: bool = True) -> Observation:
        obs = Observation(self.puppet_state(), time=self.time)
        if images:
            for role in self.cameras:
                obs.images[role], depth = self.render(role)
                if depth is not None:
                    obs.depth[role] = depth
        return obs

    # --- geometry helpers for tasks and experts ----------------------------------------
    def body_pos(self, name: str) -> np.ndarray:
        return self.data.body(name).xpos.copy()

    def body_mat(self, name: str) -> np.ndarray:
        return self.data.body(name).xmat.reshape(3, 3).copy()

    def site_pos(self, name: str) -> np.ndarray:
        return self.data.site(name).xpos.copy()

    def set_free_body(self, name: str, pos, quat=(1.0, 0.0, 0.0, 0.0)) -> None:
        joint = self.model.body(name).jntadr[0]
        adr = self.model.jnt_qposadr[joint]
        self.data.qpos[adr:adr + 3] = pos
        self.data.qpos[adr + 3:adr + 7] = quat

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        for renderer in self._depth_renderers.values():
            renderer.close()
        self._depth_renderers.clear()


def clamp_to_limits(q14: np.ndarray) -> np.ndarray:
    return np.clip(q14, np.tile(_LOWER, 2), np.tile(_UPPER, 2))


__all__ = ["CONTROL_HZ", "Observation", "Twin", "clamp_to_limits", "PIPER_LIMITS"]
