"""Camera discovery (a RealSense software device, a fake sysfs + /dev tree) and role
assignment by serial written into cameras.yaml, comments kept."""

from __future__ import annotations

import os
from pathlib import Path

import pyrealsense2 as rs
import pytest
import yaml

from sf_policy.calibration.cameras import (AssignmentError, ask_assignments, discover, parse_assignments,
                                           plan_assignments, v4l2_devices, write_assignments)
from sf_policy.config import load_camera_config

SHIPPED = Path(__file__).resolve().parents[1] / "ros2_ws" / "src" / "sf_bringup" / "config" / "cameras.yaml"


def software_realsense(serial: str) -> rs.software_device:
    device = rs.software_device()
    device.register_info(rs.camera_info.name, "Intel RealSense D435 (software)")
    device.register_info(rs.camera_info.serial_number, serial)
    device.register_info(rs.camera_info.firmware_version, "5.16.0.1")
    return device


def usb_camera(sysfs: Path, dev: Path, node: str, port: str, vendor: str, serial: str | None, name: str,
               index: int = 0, by_id: str | None = None) -> None:
    """One V4L2 node the way the kernel lays it out: class link -> node under the USB interface."""
    usb = sysfs / "devices" / "pci0000:00" / "usb1" / port
    usb.mkdir(parents=True, exist_ok=True)
    (usb / "idVendor").write_text(vendor + "\n")
    (usb / "product").write_text(name + "\n")
    if serial is not None:
        (usb / "serial").write_text(serial + "\n")
    node_dir = usb / f"{port}:1.0" / "video4linux" / node
    node_dir.mkdir(parents=True)
    (node_dir / "name").write_text(name + "\n")
    (node_dir / "index").write_text(f"{index}\n")
    os.symlink("../..", node_dir / "device")  # -> the USB interface folder
    (sysfs / "class" / "video4linux").mkdir(parents=True, exist_ok=True)
    os.symlink(node_dir, sysfs / "class" / "video4linux" / node)
    if by_id:
        (dev / "v4l" / "by-id").mkdir(parents=True, exist_ok=True)
        os.symlink(f"../../{node}", dev / "v4l" / "by-id" / by_id)


@pytest.fixture
def fake_tree(tmp_path):
    sysfs, dev = tmp_path / "sys", tmp_path / "dev"
    usb_camera(sysfs, dev, "video0", "1-3", "046d", "WEB123", "HD Webcam", by_id="usb-Logi_HD_Webcam_WEB123-video-index0")
    usb_camera(sysfs, dev, "video1", "1-3", "046d", "WEB123", "HD Webcam", index=1)       # its metadata node
    usb_camera(sysfs, dev, "video2", "1-4", "8086", "RS999", "Intel(R) RealSense(TM) 435")  # RealSense's UVC node
    usb_camera(sysfs, dev, "video4", "1-5", "1bcf", None, "Cheap Cam")                      # no USB serial
    return sysfs, dev


def test_v4l2_discovery_reads_usb_serials_and_stable_links(fake_tree):
    sysfs, dev = fake_tree
    found = v4l2_devices(sysfs, dev)
    assert [(d.serial, d.name, d.node) for d in found] == [("WEB123", "HD Webcam", str(dev / "video0")),
                                                           ("", "Cheap Cam", str(dev / "video4"))]
    assert found[0].device == str(dev / "v4l" / "by-id" / "usb-Logi_HD_Webcam_WEB123-video-index0")
    assert found[1].device == str(dev / "video4")  # no udev link: the node itself
    assert v4l2_devices(sysfs / "missing", dev) == []


def test_assignment_by_serial_writes_cameras_yaml_and_keeps_comments(fake_tree, tmp_path):
    sysfs, dev = fake_tree
    devices = discover(rs.context(), [software_realsense("111122223333"), software_realsense("444455556666")],
                       sysfs, dev)
    assert {d.serial: d.kind for d in devices} == {"111122223333": "realsense", "444455556666": "realsense",
                                                   "WEB123": "v4l2", "": "v4l2"}
    assert devices[0].firmware == "5.16.0.1"
    config = tmp_path / "cameras.yaml"
    config.write_text(SHIPPED.read_text())
    chosen = plan_assignments(parse_assignments(["cam_high=444455556666", "cam_left_wrist=111122223333",
                                                 "cam_right_wrist=WEB123"]), devices)
    assert write_assignments(config, chosen) is True
    cams = load_camera_config(config)
    assert (cams["cam_high"].backend, cams["cam_high"].serial) == ("realsense", "444455556666")
    assert cams["cam_left_wrist"].serial == "111122223333"
    assert (cams["cam_right_wrist"].backend, cams["cam_right_wrist"].device) == ("opencv", devices[2].device)
    assert cams["cam_right_wrist"].serial == "" and cams["cam_right_wrist"].fps == 30.0  # other fields kept
    text = config.read_text()
    assert text.startswith("# Camera role -> device.") and "rs-enumerate-devices" in text


def test_wrong_assignments_name_the_role_and_serial(fake_tree, tmp_path):
    sysfs, dev = fake_tree
    devices = discover(rs.context(), [software_realsense("111122223333")], sysfs, dev)
    with pytest.raises(AssignmentError, match=r"cam_high=999: no camera with serial '999'; present: 111122223333"):
        plan_assignments({"cam_high": "999"}, devices)
    with pytest.raises(AssignmentError, match="unknown role 'cam_top'"):
        parse_assignments(["cam_top=111122223333"])
    with pytest.raises(AssignmentError, match="expected ROLE=SERIAL"):
        parse_assignments(["cam_high"])
    with pytest.raises(AssignmentError, match="cam_left_wrist=111122223333: the same camera is already assigned "
                                              "to cam_high"):
        plan_assignments({"cam_high": "111122223333", "cam_left_wrist": "111122223333"}, devices)
    # The file's cam_left_wrist keeps a serial that cam_high now takes: refused, file untouched.
    config = tmp_path / "cameras.yaml"
    config.write_text(yaml.safe_dump({"cameras": {"cam_left_wrist": {"backend": "realsense",
                                                                     "serial": "111122223333"}}}))
    before = config.read_text()
    with pytest.raises(AssignmentError, match=r"cameras.yaml: cameras.cam_high.serial: '111122223333' is already "
                                              r"assigned to cameras.cam_left_wrist"):
        write_assignments(config, plan_assignments({"cam_high": "111122223333"}, devices))
    assert config.read_text() == before


def test_interactive_answers_by_number_serial_or_skip(fake_tree):
    sysfs, dev = fake_tree
    devices = discover(rs.context(), [software_realsense("111122223333")], sysfs, dev)
    answers = iter(["2", "111122223333", ""])
    chosen = ask_assignments(devices, lambda role: next(answers))
    assert chosen == {"cam_high": "WEB123", "cam_left_wrist": "111122223333"}
