"""The workspace guard (sf_policy/runtime/workspace.py): kinematics equal to the twin's, exact
segment distances, and the safety filter holding commands into the table, a keep-out box or
the other arm, whatever the command."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sf_policy.embodiment import ARM_STATE_NAMES, PIPER_LIMITS
from sf_policy.runtime.safety import WORKSPACE, SafetyFilter
from sf_policy.runtime.workspace import Box, Workspace, WorkspaceGuard, segment_distances

HOME = np.array([0.0, 0.6, -0.9, 0.0, 0.5, 0.0, 0.035] * 2)
LOWER = np.array([PIPER_LIMITS[n].lower for n in ARM_STATE_NAMES] * 2)
UPPER = np.array([PIPER_LIMITS[n].upper for n in ARM_STATE_NAMES] * 2)


def test_kinematics_equal_the_twins():
    """Link origins and the fingertips against MuJoCo's own forward kinematics of the twin."""
    import mujoco

    from sf_policy.sim.twin import Twin

    twin = Twin("lift_pot", cameras=())
    guard = WorkspaceGuard()
    rng = np.random.default_rng(0)
    try:
        for _ in range(20):
            q = rng.uniform(LOWER, UPPER)
            twin._set_puppet(q)
            mujoco.mj_kinematics(twin.model, twin.data)
            for side, points in guard.points(q).items():
                expected = [twin.data.body(f"{side}_base").xpos]
                expected += [twin.data.body(f"{side}_link{i}").xpos for i in range(1, 7)]
                expected += [twin.data.site(f"{side}_tcp").xpos]
                np.testing.assert_allclose(points, np.array(expected), atol=1e-9)
    finally:
        twin.close()


def test_segment_distances_are_the_closest_points():
    rng = np.random.default_rng(1)
    p0, p1, q0, q1 = (rng.normal(size=(6, 3)) for _ in range(4))
    p1[0] = p0[0]  # a point, not a segment
    q1[2] = q0[2]
    q1[3] = q0[3] + 2 * (p1[3] - p0[3])  # parallel segments
    exact = segment_distances(p0, p1, q0, q1)
    u = np.linspace(0, 1, 801)[:, None]
    for i in range(6):
        for j in range(6):
            a = p0[i] + u * (p1[i] - p0[i])
            b = q0[j] + u * (q1[j] - q0[j])
            sampled = np.linalg.norm(a[:, None] - b[None], axis=-1).min()
            assert exact[i, j] <= sampled + 1e-12 and sampled - exact[i, j] < 5e-3


def test_home_is_clear_and_each_zone_is_named():
    guard = WorkspaceGuard(Workspace(keep_out=(Box("camera mast", (0.1, -0.3, 0.74), (0.5, -0.1, 1.4)),)))
    depth, _ = WorkspaceGuard().penetration(HOME)
    assert depth < 0  # the home pose is clear of everything
    down = HOME.copy()
    down[8] = 2.6  # the right shoulder pitched down: into the table
    depth, what = guard.penetration(down)
    assert depth > 0 and what.startswith("right") and "into the table" in what
    reach = HOME.copy()
    reach[7] = -0.6  # the right arm swung over the mast
    depth, what = guard.penetration(reach)
    assert depth > 0 and "keep-out box 'camera mast'" in what
    towards = HOME.copy()
    towards[0], towards[7] = -1.5, 1.5  # both arms swung towards each other
    depth, what = WorkspaceGuard().penetration(towards)
    assert depth > 0 and what.startswith("left") and "of right" in what


def test_the_filter_holds_a_command_into_the_table_and_lets_an_arm_inside_move_out():
    period = 1 / 30
    f = SafetyFilter(period=period, workspace=WorkspaceGuard())
    state = HOME.copy()
    commands = []
    for k in range(100):
        target = state.copy()
        target[8] = 2.6
        decision = f.filter(target, state, 0.0, k * period)
        if decision.action is None:
            assert decision.code == WORKSPACE and "right" in decision.reason and "table" in decision.reason
            break
        commands.append(decision.action)
        state = decision.action  # a perfect servo
    else:
        pytest.fail("never held")
    last = commands[-1]
    assert WorkspaceGuard().penetration(last)[0] <= 0  # everything sent stayed outside
    # An arm already inside (pushed there): commands that do not go deeper are allowed.
    inside = HOME.copy()
    inside[8] = 2.3
    assert WorkspaceGuard().penetration(inside)[0] > 0
    g = SafetyFilter(period=period, workspace=WorkspaceGuard())
    out = inside.copy()
    out[8] = 1.0
    assert g.filter(out, inside, 0.0, 0.0).action is not None


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=14, max_size=14),
       st.lists(st.floats(-4, 4), min_size=14, max_size=14))
def test_adversarial_commands_never_raise_and_never_enter(command, state):
    guard = WorkspaceGuard()
    f = SafetyFilter(workspace=guard)
    state = np.clip(np.array(state), LOWER, UPPER)
    decision = f.filter(command, state, 0.0, 0.0)
    if decision.action is not None:
        depth = guard.penetration(decision.action)[0]
        assert depth <= 0 or depth <= guard.penetration(state)[0] + 1e-4


@pytest.mark.slow  # 40 s
@pytest.mark.parametrize("task", ["grasp_vegetable", "place_block", "stack_cups", "lift_pot"])
def test_every_task_done_right_never_meets_the_guard_or_the_watchdog(task):
    """The scripted expert's plan through the runtime: grasping on the table, lifting, placing
    and stacking stay clear of the guard's zones and track their commands."""
    from sf_policy.eval.sim import ExpertPlan, evaluate

    result = evaluate(ExpertPlan(), task, 2, 0, label="oracle", cameras=(), progress=False)
    assert result.successes == 2
    assert [(e.held_ticks, e.estop) for e in result.episodes] == [(3, ""), (3, "")]  # only the first inference


@pytest.mark.parametrize("section, message", [
    ("workspace: {keep_out: {mast: [[0, 0, 0], [1, 1]]}}", "workspace.keep_out.mast: expected [x, y, z]"),
    ("workspace: {keep_out: {mast: [[0, 0, 1], [1, 1, 0.5]]}}", "workspace.keep_out.mast: min"),
    ("workspace: {bases: {middle: {pos: [0, 0, 0], yaw: 0}}}", "workspace.bases.middle: unknown field"),
    ("workspace: {table_height: 0.7}", "workspace.table_height: unknown field"),
    ("workspace: {min_arm_distance: -0.1}", "workspace.min_arm_distance: must be a distance"),
])
def test_a_bad_workspace_section_names_the_field(tmp_path, section, message):
    from sf_policy.config import ConfigError, load_robot_config

    path = tmp_path / "robot.yaml"
    path.write_text("arms: {left: {can_port: a}, right: {can_port: b}}\n" + section + "\n")
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_robot_config(path)


def test_the_shipped_robot_files_give_the_twins_geometry():
    from conftest import BRINGUP

    from sf_policy.config import load_robot_config

    for name in ("robot.yaml", "robot_sim.yaml"):
        workspace = load_robot_config(BRINGUP / "config" / name).workspace
        assert workspace.table_z == Workspace().table_z and workspace.keep_out == ()
        for side, (pos, yaw) in Workspace().bases.items():
            assert workspace.bases[side][0] == pos and workspace.bases[side][1] == pytest.approx(yaw, abs=1e-4)
