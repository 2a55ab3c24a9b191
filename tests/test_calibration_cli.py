"""``sf calibrate ...`` end to end: the files each command writes are the ones the nodes read."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from rclpy.parameter import Parameter
from typer.testing import CliRunner

from sf_policy.cli.calibrate import app
from sf_policy.config import load_camera_config, load_robot_config
from sf_policy.sim.piper_can import SimulatedPiper
from test_calibration_arms import robot_yaml
from test_calibration_cameras import usb_camera
from test_calibration_intrinsics import K_TRUE, Board, write_views

runner = CliRunner()


def cameras_yaml(tmp_path, **cam_high) -> str:
    path = tmp_path / "config" / "cameras.yaml"
    path.parent.mkdir(exist_ok=True)
    spec = {"backend": "opencv", "device": "/dev/video0", "width": 640, "height": 480, **cam_high}
    path.write_text("# my robot's cameras\ncameras:\n  cam_high:  # the top camera\n"
                    + "".join(f"    {k}: {yaml.safe_dump(v).strip().removesuffix('...').strip()}\n"
                              for k, v in spec.items()))
    return str(path)


class _IdleSource:
    hardware_id = "test:idle"

    def open(self):
        pass

    def read(self, timeout_s):
        return None

    def close(self):
        pass

    def intrinsics(self):
        raise AssertionError("the calibration file must be used, not the backend's model")


def test_intrinsics_command_writes_the_file_the_camera_driver_publishes(tmp_path, ros):
    from sf_nodes.camera_driver import CameraDriverNode
    from sf_nodes.common import camera_info_msg

    write_views(tmp_path / "views", Board("checkerboard", 9, 6, 0.03), 10)
    config = cameras_yaml(tmp_path)
    result = runner.invoke(app, ["intrinsics", "--images", str(tmp_path / "views"), "--role", "cam_high",
                                 "--cols", "9", "--rows", "6", "--square-m", "0.03", "--camera-config", config])
    assert result.exit_code == 0, result.output
    assert "RMS reprojection error" in result.output
    calib_file = tmp_path / "config" / "intrinsics" / "cam_high.yaml"
    assert yaml.safe_load(calib_file.read_text())["camera_name"] == "cam_high"
    text = (tmp_path / "config" / "cameras.yaml").read_text()
    assert "intrinsics: intrinsics/cam_high.yaml" in text and "# the top camera" in text
    assert load_camera_config(config)["cam_high"].intrinsics == str(calib_file)

    node = ros.add(CameraDriverNode(node_name="cam_high", context=ros.context, source_factory=lambda cfg: _IdleSource(),
                                    parameter_overrides=[Parameter("camera_config", value=config),
                                                         Parameter("role", value="cam_high")]))
    info = camera_info_msg(node._intrinsics, 0, "f")
    assert info.k[0] == pytest.approx(K_TRUE[0, 0], rel=0.01) and info.k[4] == pytest.approx(K_TRUE[1, 1], rel=0.01)
    assert list(info.p) == yaml.safe_load(calib_file.read_text())["projection_matrix"]["data"]


def test_intrinsics_command_refuses_a_size_other_than_the_configured_one(tmp_path):
    write_views(tmp_path / "views", Board("checkerboard", 9, 6, 0.03), 8)
    config = cameras_yaml(tmp_path, width=1280, height=720)
    result = runner.invoke(app, ["intrinsics", "--images", str(tmp_path / "views"), "--role", "cam_high",
                                 "--square-m", "0.03", "--camera-config", config])
    assert result.exit_code == 2
    assert "cameras.cam_high: configured for 1280x720 but calibrated at 640x480" in result.output
    assert load_camera_config(config)["cam_high"].intrinsics == ""  # cameras.yaml left as it was


def test_missing_calibration_file_is_named_at_start_up(tmp_path):
    config = cameras_yaml(tmp_path, intrinsics="intrinsics/nope.yaml")
    with pytest.raises(Exception, match=r"cameras.cam_high.intrinsics: calibration file .*nope.yaml' not found"):
        load_camera_config(config)


def test_cameras_command_lists_and_assigns(tmp_path):
    sysfs, dev = tmp_path / "sys", tmp_path / "dev"
    usb_camera(sysfs, dev, "video0", "1-3", "046d", "WEB123", "HD Webcam", by_id="usb-HD_Webcam_WEB123-video-index0")
    config = cameras_yaml(tmp_path)
    common = ["--sysfs", str(sysfs), "--dev", str(dev), "--camera-config", config]
    listed = runner.invoke(app, ["cameras", "--list", *common])
    assert listed.exit_code == 0 and "WEB123" in listed.output
    result = runner.invoke(app, ["cameras", "--assign", "cam_left_wrist=WEB123", *common])
    assert result.exit_code == 0, result.output
    cams = load_camera_config(config)
    assert cams["cam_left_wrist"].device == str(dev / "v4l" / "by-id" / "usb-HD_Webcam_WEB123-video-index0")
    wrong = runner.invoke(app, ["cameras", "--assign", "cam_high=NOPE", *common])
    assert wrong.exit_code == 2 and "cam_high=NOPE: no camera with serial 'NOPE'" in wrong.output


def test_arms_command_reports_and_exits_by_verdict(tmp_path, channel):
    path = robot_yaml(tmp_path, channel)
    report = tmp_path / "arms.yaml"
    with SimulatedPiper(channel, initial=np.array([0.0, 0.0, -0.05, 0.0, 0.0, 0.0, 0.03])):
        result = runner.invoke(app, ["arms", "--robot-config", str(path), "--side", "left", "--gripper", "skip",
                                     "--report", str(report)])
    assert result.exit_code == 1, result.output  # joint3 is 2.9 deg off
    data = yaml.safe_load(report.read_text())
    assert data["arms"]["left"]["joints"]["joint3"]["result"] == "FAIL"
    assert data["arms"]["left"]["joints"]["joint1"]["result"] == "PASS"
    assert load_robot_config(path).limits["gripper"].upper == 0.07  # no gripper measured: limits untouched


def test_timesync_command_names_an_unknown_stream():
    result = runner.invoke(app, ["timesync", "--skip", "cam_top"])
    assert result.exit_code == 2 and "--skip cam_top: unknown stream" in result.output


def test_sf_has_the_calibrate_group():
    from sf_policy.cli.main import app as sf_app

    result = runner.invoke(sf_app, ["calibrate", "--help"])
    assert result.exit_code == 0
    assert all(cmd in result.output for cmd in ("intrinsics", "cameras", "arms", "timesync"))
