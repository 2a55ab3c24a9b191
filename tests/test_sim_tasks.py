"""The twin's tasks and their scripted operators: seeded resets, success checks, IK."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sf_policy.embodiment import ARM_JOINTS, DOF_PER_ARM as DOF, PIPER_LIMITS, SIDES, STATE_DIM
from sf_policy.sim.experts import make_expert, run_episode
from sf_policy.sim.ik import ArmIK, IKError, grasp_frame
from sf_policy.sim.piper_mjcf import TABLE_TOP_Z
from sf_policy.sim.tasks import TASKS, get_task, yaw_quat
from sf_policy.sim.twin import Twin

LOWER = np.array([PIPER_LIMITS[j].lower for j in ARM_JOINTS])
UPPER = np.array([PIPER_LIMITS[j].upper for j in ARM_JOINTS])
TASK_NAMES = sorted(TASKS)


@pytest.fixture(scope="module")
def twins():
    made = {name: Twin(name, cameras=()) for name in TASK_NAMES}
    yield made
    for twin in made.values():
        twin.close()


def scene(twin: Twin) -> np.ndarray:
    """Everything a reset places: joint positions and the static (mocap) props."""
    return np.concatenate([twin.data.qpos, twin.data.mocap_pos.ravel(), twin.data.mocap_quat.ravel()])


# --- tasks ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TASK_NAMES)
def test_reset_is_deterministic_per_seed(twins, name):
    twin = twins[name]
    twin.reset(11)
    first, info = scene(twin), dict(twin.info)
    twin.reset(12)
    other = scene(twin)
    twin.reset(11)
    assert np.array_equal(scene(twin), first) and twin.info == info
    assert not np.allclose(other, first), "different seeds must give different scenes"
    assert isinstance(info["prompt"], str) and info["prompt"]


@pytest.mark.parametrize("name", TASK_NAMES)
def test_success_is_false_at_reset_and_while_idle(twins, name):
    twin = twins[name]
    for seed in range(4):
        twin.reset(seed)
        assert not twin.success()
        for _ in range(10):  # objects settle; nothing is solved by waiting
            twin.step(twin.master)
        assert not twin.success(), f"{name} seed {seed} succeeds without doing anything"


def test_vegetable_target_varies_lies_right_and_is_named(twins):
    twin = twins["grasp_vegetable"]
    targets = set()
    for seed in range(12):
        twin.reset(seed)
        target = twin.info["target"]
        targets.add(target)
        assert target in twin.info["prompt"] and "right" in twin.info["prompt"]
        assert twin.body_pos(target)[0] > 0
    assert len(targets) >= 2


@pytest.mark.parametrize("name", TASK_NAMES)
def test_the_twin_records_the_prompt_the_launch_files_deploy(twins, name):
    """One source: config/tasks/<task>.yaml. The twin's prompt is what policy.launch.py gives the
    policy node, or (a task whose scenes name their object) what the twin publishes on /sf/prompt."""
    from sf_policy.bringup.plan import policy_nodes, task_config

    twin = twins[name]
    twin.reset(3)
    deployed = next(s for s in policy_nodes(name, sim=True, checkpoint="c") if s.name == "policy").parameters["prompt"]
    config = task_config(name)
    assert deployed == config["prompt"]
    if "sim_prompt" in config:
        assert twin.info["prompt"] == config["sim_prompt"].format(**twin.info)
    else:
        assert twin.info["prompt"] == deployed


def test_a_sim_prompt_that_the_scene_cannot_fill_names_the_file(tmp_path):
    from sf_policy.bringup.plan import task_prompt
    from sf_policy.config import ConfigError

    (tmp_path / "config" / "tasks").mkdir(parents=True)
    (tmp_path / "config" / "tasks" / "t.yaml").write_text('prompt: "Pick it."\nsim_prompt: "pick the {colour} one"\n')
    assert task_prompt("t", share=tmp_path) == "Pick it."
    with pytest.raises(ConfigError, match=r"t.yaml.*sim_prompt.*\['target'\]"):
        task_prompt("t", {"target": "carrot"}, share=tmp_path)


def test_platform_height_varies(twins):
    twin = twins["place_block"]
    tops = set()
    for seed in range(5):
        twin.reset(seed)
        tops.add(round(twin.task.platform_top(twin), 4))
        assert twin.info["platform_top"] == pytest.approx(twin.task.platform_top(twin))
    assert len(tops) == 5


def settle(twin: Twin, ticks: int = 20) -> None:
    for _ in range(ticks):
        twin.step(twin.master)


def test_place_block_success_needs_the_block_on_the_platform(twins):
    twin = twins["place_block"]
    twin.reset(0)
    top, size = twin.task.platform_top(twin), twin.task.block
    xy = twin.body_pos("platform")[:2]
    twin.set_free_body("block", (*xy, top + size / 2 + 0.002))
    settle(twin)
    assert twin.success()
    twin.set_free_body("block", (xy[0], xy[1] - 0.09, TABLE_TOP_Z + size / 2 + 0.002))
    settle(twin)
    assert not twin.success()


def test_stack_cups_success_needs_the_small_cup_inside(twins):
    twin = twins["stack_cups"]
    twin.reset(0)
    big = twin.body_pos("cup_big")
    twin.set_free_body("cup_small", (big[0], big[1], big[2] + 0.008))
    settle(twin, 30)
    assert twin.success()
    twin.set_free_body("cup_small", (big[0] + 0.15, big[1], TABLE_TOP_Z + 0.001))
    settle(twin)
    assert not twin.success()


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match="known tasks: grasp_vegetable, lift_pot, place_block, stack_cups"):
        get_task("juggle")
    with pytest.raises(ValueError, match="unknown task 'juggle'"):
        Twin("juggle", cameras=())


# --- scripted operators ----------------------------------------------------------------------
@pytest.mark.parametrize("name", TASK_NAMES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scripted_operator_solves_the_task(twins, name, seed):
    result = run_episode(name, seed, twin=twins[name])
    assert result["success"], f"{name} seed {seed} failed after {result['ticks']} ticks"
    assert result["ticks"] < twins[name].task.step_limit


def test_expert_moves_smoothly_within_speed_limits(twins):
    twin = twins["stack_cups"]
    twin.reset(3)
    expert = make_expert(twin)
    previous, fastest = twin.master.copy(), np.zeros(STATE_DIM)
    while not expert.done:
        q = expert.act()
        assert q.shape == (STATE_DIM,) and np.all(np.isfinite(q))
        fastest = np.maximum(fastest, np.abs(q - previous) * 30)
        previous = q
        twin.step(q)
    limits = np.array([PIPER_LIMITS[j].max_velocity for j in ARM_JOINTS + ("gripper",)] * 2)
    assert np.all(fastest < 0.6 * limits), f"peak speeds {np.round(fastest, 3)} vs limits {limits}"


def test_the_wrist_takes_the_same_finger_order_across_scenes(twins):
    """The two finger orders are the same grasp pi apart on joint 6; a script switching between
    them from scene to scene teaches a policy two wrist angles it averages into neither."""
    wrists = np.array([run_episode("lift_pot", seed, twin=twins["lift_pot"], keep_targets=True)["targets"][-1]
                       for seed in range(8)])
    left, right = wrists[:, 5], wrists[:, DOF + 5]
    assert np.all(left > 0) and np.all(right < 0), f"left {np.round(left, 2)}, right {np.round(right, 2)}"
    assert np.ptp(left) < 1.5 and np.ptp(right) < 1.5  # one cluster per arm, not two pi apart


def test_a_grasp_lifts_as_soon_as_the_fingers_stop_on_the_object(twins):
    """No pause in which nothing observable changes: the arm rises within a few ticks of the
    fingers stopping on the vegetable (a policy cannot time the end of a blind pause)."""
    twin = twins["grasp_vegetable"]
    twin.reset(4)
    expert = make_expert(twin)
    states = []
    while not twin.success() and not twin.done():
        twin.step(expert.act())
        states.append(twin.puppet_state())
    states = np.array(states)
    grip, arm = states[:, DOF + 6], states[:, DOF:DOF + 6]
    moving_grip = np.abs(np.diff(grip)) > 1e-4
    moving_arm = np.max(np.abs(np.diff(arm, axis=0)), axis=1) > 1e-3
    still = ~moving_grip & ~moving_arm
    longest = max((len(run) for run in "".join("x" if s else " " for s in still).split()), default=0)
    # A settle between moves is a few ticks; closing fully before lifting was 43 (1.4 s).
    assert twin.success() and longest <= 10, f"{longest} ticks in which neither arm nor fingers moved"


# --- inverse kinematics ----------------------------------------------------------------------
@pytest.mark.parametrize("side", SIDES)
def test_ik_round_trips_random_reachable_poses(twins, side):
    ik = ArmIK(twins["lift_pot"].model, side)
    rng = np.random.default_rng(5)
    for _ in range(60):
        q = rng.uniform(LOWER, UPPER)
        pos, mat = ik.fk(q)
        result = ik.solve(pos, mat)
        reached_pos, reached_mat = ik.fk(result.q)
        assert np.linalg.norm(reached_pos - pos) < 1e-3
        assert np.max(np.abs(reached_mat - mat)) < 1e-2
        assert np.all(result.q >= LOWER) and np.all(result.q <= UPPER)
        assert result.residual < 2e-3


@pytest.mark.parametrize("side", SIDES)
def test_ik_position_only_in_the_workspace(twins, side):
    ik = ArmIK(twins["lift_pot"].model, side)
    rng = np.random.default_rng(6)
    for _ in range(20):
        target = np.array([rng.uniform(-0.25, 0.25), rng.uniform(-0.25, 0.05), rng.uniform(0.78, 1.0)])
        result = ik.solve(target)
        assert np.linalg.norm(ik.fk(result.q)[0] - target) < 1e-3


def test_ik_top_down_grasp_and_continuity(twins):
    ik = ArmIK(twins["lift_pot"].model, "right")
    first = ik.solve([0.15, -0.15, 0.80], grasp_frame(0.0, 0.0))
    _, mat = ik.fk(first.q)
    assert mat[2, 2] == pytest.approx(-1.0, abs=1e-3)  # pointing straight down
    nearby = ik.solve([0.15, -0.15, 0.81], grasp_frame(0.0, 0.0), q0=first.q)
    assert np.max(np.abs(nearby.q - first.q)) < 0.1  # a small move stays on the same branch


def test_ik_unreachable_target_names_side_and_target(twins):
    ik = ArmIK(twins["lift_pot"].model, "left")
    with pytest.raises(IKError, match=r"left arm cannot reach tcp target \[0\.0, 1\.5, 0\.8\]"):
        ik.solve([0.0, 1.5, 0.8])
    with pytest.raises(IKError, match="left arm"):
        ik.solve([-0.3, -0.45, 1.9], grasp_frame(0.0, 0.0))


def test_ik_leaves_the_twin_untouched(twins):
    twin = twins["lift_pot"]
    twin.reset(0)
    before_q, before_x = twin.data.qpos.copy(), twin.data.xpos.copy()
    ik = ArmIK(twin.model, "right")
    ik.solve([0.1, -0.1, 0.85], grasp_frame(math.pi / 4, 0.3))
    assert np.array_equal(twin.data.qpos, before_q) and np.array_equal(twin.data.xpos, before_x)


def test_yaw_quat_is_a_rotation_about_z():
    w, x, y, z = yaw_quat(math.pi / 2)
    assert (w, x, y) == pytest.approx((math.sqrt(0.5), 0.0, 0.0)) and z == pytest.approx(math.sqrt(0.5))
