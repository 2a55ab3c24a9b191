"""Configuration files fail at start-up with the file and field named."""

from __future__ import annotations

import pytest
import yaml

from conftest import BRINGUP
from sf_policy.config import ConfigError, camera_for_role, load_camera_config, load_robot_config


def write(tmp_path, data, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_shipped_configs_load():
    robot = load_robot_config(BRINGUP / "config" / "robot.yaml")
    assert set(robot.arms) == {"left", "right"}
    assert load_robot_config(BRINGUP / "config" / "robot_sim.yaml").arms["left"].bustype == "virtual"
    assert set(load_camera_config(BRINGUP / "config" / "cameras.yaml")) == {"cam_high", "cam_left_wrist",
                                                                           "cam_right_wrist"}


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: file not found"):
        load_robot_config(tmp_path / "nope.yaml")


def test_two_arms_on_one_can_channel(tmp_path):
    path = write(tmp_path, {"arms": {"left": {"can_port": "can0"}, "right": {"can_port": "can0"}}})
    with pytest.raises(ConfigError) as err:
        load_robot_config(path)
    assert str(path) in str(err.value) and "arms.right.can_port" in str(err.value)
    assert "already used by arms.left" in str(err.value)


@pytest.mark.parametrize("bounds, message", [
    ([1.0, -1.0], "inverted"),
    ([-3.0, 1.0], "leaves the Piper's range"),
    ([0.0], "expected \\[lower, upper\\]"),
    ("wide", "expected \\[lower, upper\\]"),
])
def test_bad_limits(tmp_path, bounds, message):
    path = write(tmp_path, {"arms": {"left": {"can_port": "can0"}}, "limits": {"joint1": bounds}})
    with pytest.raises(ConfigError, match=message) as err:
        load_robot_config(path)
    assert f"{path}: limits.joint1" in str(err.value)


def test_tighter_limits_are_applied(tmp_path):
    path = write(tmp_path, {"arms": {"left": {"can_port": "can0"}}, "limits": {"gripper": [0.0, 0.05]}})
    assert load_robot_config(path).limits["gripper"].upper == 0.05


def test_unknown_fields_and_sides(tmp_path):
    with pytest.raises(ConfigError, match="arms.middle: unknown arm side"):
        load_robot_config(write(tmp_path, {"arms": {"middle": {"can_port": "can0"}}}))
    with pytest.raises(ConfigError, match="arms.left.can_prot: unknown field"):
        load_robot_config(write(tmp_path, {"arms": {"left": {"can_prot": "can0"}}}))
    with pytest.raises(ConfigError, match="arms.left.can_port: required field is missing"):
        load_robot_config(write(tmp_path, {"arms": {"left": {}}}))


def test_camera_errors_name_file_and_field(tmp_path):
    cams = {"cameras": {"cam_top": {"backend": "realsense", "serial": "1"}}}
    with pytest.raises(ConfigError, match=r"cameras\.cam_top: unknown camera role"):
        load_camera_config(write(tmp_path, cams))
    dup = {"cameras": {"cam_high": {"backend": "realsense", "serial": "7"},
                       "cam_left_wrist": {"backend": "realsense", "serial": "7"}}}
    with pytest.raises(ConfigError, match=r"cameras\.cam_left_wrist\.serial: '7' is already assigned"):
        load_camera_config(write(tmp_path, dup))
    with pytest.raises(ConfigError, match=r"cameras\.cam_high\.backend: expected one of"):
        load_camera_config(write(tmp_path, {"cameras": {"cam_high": {"backend": "gige", "serial": "1"}}}))
    with pytest.raises(ConfigError, match=r"cameras\.cam_high\.fps"):
        load_camera_config(write(tmp_path, {"cameras": {"cam_high": {"backend": "opencv", "device": "0",
                                                                       "fps": 0}}}))
    ok = write(tmp_path, {"cameras": {"cam_high": {"backend": "opencv", "device": 0}}})
    with pytest.raises(ConfigError, match=r"cameras\.cam_right_wrist: no entry"):
        camera_for_role(ok, "cam_right_wrist")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_camera_config(write(tmp_path, "cameras: [unclosed", "bad.yaml"))


def test_an_odd_camera_size_is_refused_up_front_as_the_dataset_writer_would(tmp_path):
    cams = {"cameras": {"cam_high": {"backend": "opencv", "device": "0", "width": 641}}}
    with pytest.raises(ConfigError, match=r"cameras\.cam_high\.width: must be even .*got 641"):
        load_camera_config(write(tmp_path, cams))


def test_sf_config_check_prints_the_message_whole(tmp_path):
    """`[lower, upper]` in a message is text, not rich markup (it used to print "expected  in SI units")."""
    import subprocess
    import sys
    from pathlib import Path

    robot = write(tmp_path, {"arms": {"left": {"can_port": "can0"}}, "limits": {"joint1": "wide"}})
    done = subprocess.run([str(Path(sys.executable).parent / "sf"), "config", "check", "--robot", str(robot)],
                          capture_output=True, text=True, timeout=60, env={"COLUMNS": "300", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and "limits.joint1: expected [lower, upper] in SI units, got 'wide'" in done.stdout
