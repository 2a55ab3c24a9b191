"""Arm zero and gripper range checks: the real piper_sdk (through PiperArm) on a python-can
virtual bus, against SimulatedPiper set to known joint offsets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import wait_for
from sf_policy.calibration.arms import (ArmCheckError, Tolerances, check_arm, connect_arm, gripper_limits,
                                        write_gripper_limits)
from sf_policy.config import load_robot_config
from sf_policy.sim.piper_can import SimulatedPiper

SHIPPED = Path(__file__).resolve().parents[1] / "ros2_ws" / "src" / "sf_bringup" / "config" / "robot.yaml"
OFFSETS = np.array([0.002, 0.0, -0.03, 0.004, 0.0, -0.001])  # joint3 is 1.7 deg off: beyond the 1 deg tolerance


def robot_yaml(tmp_path, channel: str) -> Path:
    text = SHIPPED.read_text().replace("can_port: can_left", f"can_port: {channel}").replace(
        "bustype: socketcan", "bustype: virtual", 1)
    path = tmp_path / "robot.yaml"
    path.write_text(text)
    return path


def test_zero_offsets_and_commanded_gripper_range(tmp_path, channel):
    path = robot_yaml(tmp_path, channel)
    robot = load_robot_config(path)
    with SimulatedPiper(channel, initial=np.append(OFFSETS, 0.03)) as sim:
        arm = connect_arm(robot, "left", speed_percent=100)  # the tool's default is slower; tests save time
        try:
            report = check_arm(arm, "left", gripper="command")
        finally:
            arm.close()
        wait_for(lambda: not sim.snapshot().motors_enabled, what="motors released after the gripper check")
    offsets = {j.name: j.offset for j in report.joints}
    assert offsets == pytest.approx(dict(zip(offsets, OFFSETS)), abs=2e-5)  # SDK resolution: 0.001 deg
    assert [j.name for j in report.joints if not j.ok] == ["joint3"]
    assert report.gripper.closed_m == pytest.approx(0.0, abs=3e-4)
    assert report.gripper.open_m == pytest.approx(0.07, abs=3e-4)
    assert report.gripper.ok and not report.ok
    data = report.as_dict()
    assert data["result"] == "FAIL" and data["joints"]["joint3"]["offset_deg"] == pytest.approx(-1.719, abs=0.01)

    # The driver reads the measured range from robot.yaml, comments kept.
    assert write_gripper_limits(path, gripper_limits([report])) is True
    assert load_robot_config(path).limits["gripper"].upper == pytest.approx(0.07, abs=3e-4)
    assert "# Optional tighter limits" in path.read_text()


def test_manual_gripper_that_does_not_open_fully_fails_and_narrows_the_limits(tmp_path, channel):
    path = robot_yaml(tmp_path, channel)
    with SimulatedPiper(channel, initial=np.zeros(7)) as sim:
        def operator(message: str):  # stands in for the hand on the gripper
            with sim._lock:
                sim.state.position[6] = 0.0012 if "closed" in message else 0.0615

        arm = connect_arm(load_robot_config(path), "left")
        try:
            report = check_arm(arm, "left", gripper="manual", prompt=operator)
        finally:
            arm.close()
    assert all(j.ok for j in report.joints)
    assert report.gripper.closed_ok and not report.gripper.open_ok
    assert report.gripper.open_m == pytest.approx(0.0615, abs=1e-5)
    assert gripper_limits([report]) == [0.0012, 0.0615]
    write_gripper_limits(path, gripper_limits([report]))
    assert yaml.safe_load(path.read_text())["limits"]["gripper"] == [0.0012, 0.0615]


def test_commanded_check_refuses_away_from_rest_and_names_the_port(tmp_path, channel):
    path = robot_yaml(tmp_path, channel)
    robot = load_robot_config(path)
    with SimulatedPiper(channel, initial=np.array([0.0, 0.5, -0.5, 0.0, 0.3, 0.0, 0.02])) as sim:
        arm = connect_arm(robot, "left")
        try:
            with pytest.raises(ArmCheckError, match="joint2, joint3, joint5 more than 5 deg from zero"):
                check_arm(arm, "left", gripper="command", tolerances=Tolerances(joint_rad=math.radians(1)))
        finally:
            arm.close()
        assert not sim.snapshot().motors_enabled  # nothing was enabled
    with pytest.raises(ArmCheckError, match=r"arms.sideways: no entry"):
        connect_arm(robot, "sideways")
