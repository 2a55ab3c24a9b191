"""The MuJoCo Piper built from the DH table: its forward kinematics match piper_sdk's."""

from __future__ import annotations

import math

import mujoco
import numpy as np
import pytest
from piper_sdk.kinematics.piper_fk import C_PiperForwardKinematics

from sf_policy.embodiment import ARM_JOINTS, PIPER_LIMITS
from sf_policy.sim.piper_mjcf import MOUNTS, scene_xml


@pytest.fixture(scope="module")
def model():
    return mujoco.MjModel.from_xml_string(scene_xml())


def sdk_flange(q: np.ndarray) -> np.ndarray:
    """piper_sdk's FK of link6 (mm) -> metres, in the arm's base frame."""
    return np.array(C_PiperForwardKinematics(dh_is_offset=1).CalFK(list(q))[-1][:3]) / 1000.0


def base_to_world(mount, p: np.ndarray) -> np.ndarray:
    c, s = math.cos(mount.yaw), math.sin(mount.yaw)
    return np.array(mount.pos) + np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ p


def test_fk_matches_piper_sdk(model):
    data = mujoco.MjData(model)
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(100):
        for mount in MOUNTS:
            q = np.array([rng.uniform(PIPER_LIMITS[j].lower, PIPER_LIMITS[j].upper) for j in ARM_JOINTS])
            for joint, value in zip(ARM_JOINTS, q):
                data.qpos[model.jnt_qposadr[model.joint(mount.prefix + joint).id]] = value
            mujoco.mj_kinematics(model, data)
            ours = data.site(mount.prefix + "flange").xpos
            worst = max(worst, float(np.max(np.abs(ours - base_to_world(mount, sdk_flange(q))))))
    assert worst < 1e-5, f"FK differs from piper_sdk by {worst:.2e} m"


def test_model_has_the_agilex_cameras_and_500_hz_physics(model):
    names = {model.camera(i).name for i in range(model.ncam)}
    assert names == {"cam_high", "left_wrist_cam", "right_wrist_cam"}
    assert model.opt.timestep == pytest.approx(1 / 500)
    assert model.nu == 2 * (6 + 2)


def test_servos_track_under_gravity_and_fingers_open(model):
    data = mujoco.MjData(model)
    target = np.array([0.3, 1.0, -1.0, 0.2, 0.5, -0.4])
    for i, joint in enumerate(ARM_JOINTS):
        data.ctrl[model.actuator("left_" + joint).id] = target[i]
    for finger in ("finger_a", "finger_b"):
        data.ctrl[model.actuator("left_" + finger).id] = 0.03
    for _ in range(1000):  # 2 s at 500 Hz
        mujoco.mj_step(model, data)
    q = np.array([data.joint("left_" + j).qpos[0] for j in ARM_JOINTS])
    assert np.max(np.abs(q - target)) < 1e-3
    opening = data.joint("left_finger_a").qpos[0] + data.joint("left_finger_b").qpos[0]
    assert opening == pytest.approx(0.06, abs=1e-3)


def test_cameras_render_offscreen(model):
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    renderer = mujoco.Renderer(model, 96, 128)
    try:
        renderer.update_scene(data, camera="cam_high")
        image = renderer.render()
    finally:
        renderer.close()
    assert image.shape == (96, 128, 3) and image.std() > 5  # a scene, not a blank frame
