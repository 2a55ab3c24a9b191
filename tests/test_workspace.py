"""The ROS workspace: colcon builds it, files land where `ros2 launch` looks, and the plan
that launch files and `sf launch` share is right."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BRINGUP, REPO
from sf_policy.bringup import plan as bringup
from sf_policy.config import ConfigError

VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def colcon_install(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("colcon")
    result = subprocess.run(
        [str(VENV_BIN / "colcon"), "--log-base", str(base / "log"), "build", "--base-paths", "ros2_ws/src",
         "--build-base", str(base / "build"), "--install-base", str(base / "install"), "--symlink-install"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return base / "install"


@pytest.mark.colcon
def test_launch_files_and_configs_are_installed(colcon_install):
    share = colcon_install / "sf_bringup" / "share" / "sf_bringup"
    for launch_file in ("record.launch.py", "policy.launch.py", "drivers.launch.py", "_plan.py"):
        assert (share / "launch" / launch_file).is_file(), launch_file
    for cfg in ("robot.yaml", "robot_sim.yaml", "cameras.yaml", "arm_driver.yaml", "fastdds_large_data.xml",
                "tasks/lift_pot.yaml"):
        assert (share / "config" / cfg).is_file(), cfg
    index = "share/ament_index/resource_index/packages"
    assert (colcon_install / "sf_bringup" / index / "sf_bringup").is_file()
    assert (colcon_install / "sf_nodes" / index / "sf_nodes").is_file()
    for exe in ("piper_arm_driver", "camera_driver", "driver_monitor"):
        assert os.access(colcon_install / "sf_nodes" / "lib" / "sf_nodes" / exe, os.X_OK), exe


@pytest.mark.colcon
def test_symlinked_config_edits_reach_the_source_file(colcon_install, tmp_path):
    """The documented build (--symlink-install): `sf calibrate` edits the installed config
    through its link, i.e. the source file, so a rebuild cannot lose a calibration."""
    from sf_policy.calibration.yaml_edit import update_checked

    installed = colcon_install / "sf_bringup" / "share" / "sf_bringup" / "config" / "robot.yaml"
    source = REPO / "ros2_ws" / "src" / "sf_bringup" / "config" / "robot.yaml"
    assert installed.is_symlink() and installed.resolve() == source.resolve()
    original = source.read_text()
    try:
        update_checked(installed, [(["limits", "gripper"], [0.0, 0.069])], lambda path: None)
        assert installed.is_symlink() and "gripper: [0.0, 0.069]" in source.read_text()
        assert source.read_text().startswith(original.splitlines()[0])  # comments kept
    finally:
        source.write_text(original)


@pytest.mark.colcon
def test_plan_reads_the_installed_share(colcon_install, monkeypatch):
    monkeypatch.setenv("AMENT_PREFIX_PATH", f"{colcon_install / 'sf_bringup'}{os.pathsep}{colcon_install / 'sf_nodes'}")
    share = bringup.bringup_share()
    assert share == colcon_install / "sf_bringup" / "share" / "sf_bringup"
    assert bringup.task_config("lift_pot", share)["prompt"].startswith("Lift the pot")


@pytest.mark.colcon
def test_installed_node_rejects_bad_config_naming_the_file(colcon_install, tmp_path):
    bad = tmp_path / "robot.yaml"
    bad.write_text("arms:\n  left: {can_port: can0}\n  right: {can_port: can0}\n")
    exe = colcon_install / "sf_nodes" / "lib" / "sf_nodes" / "piper_arm_driver"
    env = {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    result = subprocess.run([str(exe), "--ros-args", "-p", f"robot_config:={bad}", "-p", "side:=right"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2
    assert f"{bad}: arms.right.can_port" in result.stderr


@pytest.mark.parametrize("name", ["record.launch.py", "policy.launch.py", "drivers.launch.py"])
def test_launch_files_use_the_shared_plan(name):
    tree = ast.parse((BRINGUP / "launch" / name).read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    plan = ast.parse((BRINGUP / "launch" / "_plan.py").read_text())
    imported = {a.name for n in ast.walk(plan) if isinstance(n, ast.ImportFrom) and n.module == "sf_policy.bringup.plan"
                for a in n.names}
    assert imported == {"driver_nodes", "task_config"} and all(hasattr(bringup, a) for a in imported)


def test_driver_plan_for_hardware_and_sim():
    hw = bringup.driver_nodes(BRINGUP)
    assert [s.name for s in hw] == ["piper_left", "piper_right", "cam_high", "cam_left_wrist", "cam_right_wrist"]
    assert hw[0].parameters["robot_config"].endswith("robot.yaml") and hw[0].parameters["simulate"] is False
    sim = bringup.driver_nodes(BRINGUP, sim=True, mode="teleop")
    assert [s.name for s in sim] == ["piper_left", "piper_right"]  # no cameras in sim without a camera config
    assert sim[1].parameters == {"side": "right", "robot_config": str(BRINGUP / "config" / "robot_sim.yaml"),
                                 "mode": "teleop", "simulate": True}
    args = sim[0].ros_args()
    assert args[:3] == ["--ros-args", "-r", "__node:=piper_left"]
    assert "simulate:=true" in args and "--params-file" in args


def test_unknown_task_lists_known_ones():
    with pytest.raises(ConfigError, match="known tasks: grasp_vegetable, lift_pot, place_block, stack_cups"):
        bringup.task_config("juggle", BRINGUP)
