"""CameraDriverNode on real rclpy/DDS (loopback only): images, camera info, diagnostics.

The node runs in-process on its own rclpy context; a best-effort subscriber node in the
same context checks what it publishes. Sources: a software RealSense device and a video
file through OpenCV (the helpers live in test_cameras.py).
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402

from sf_nodes.camera_driver import CameraDriverNode, main  # noqa: E402
from sf_nodes.common import DIAGNOSTICS_QOS, stamp_to_ns  # noqa: E402

pytestmark = pytest.mark.ros

DOMAIN_ID = str(os.getpid() % 100 + 100)


def _load_helpers():
    """test_cameras.py by path: works whether or not tests/ is a package."""
    spec = importlib.util.spec_from_file_location("_camera_test_helpers", Path(__file__).with_name("test_cameras.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helpers = _load_helpers()


@pytest.fixture
def ros(monkeypatch):
    """A fresh rclpy context on loopback, with an executor spinning in the background."""
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("ROS_DOMAIN_ID", DOMAIN_ID)
    context = Context()
    rclpy.init(context=context)
    # Single-threaded on purpose: rclpy's MultiThreadedExecutor, with a subscriber busy on
    # 30 Hz images in this process, starved the camera thread (measured 5-16 Hz instead of 30).
    executor = SingleThreadedExecutor(context=context)
    nodes = []

    def add(node):
        nodes.append(node)
        executor.add_node(node)
        return node

    stop = threading.Event()

    def spin():
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.05)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        yield context, add
    finally:
        stop.set()
        spinner.join(2.0)  # before anything is torn down under its feet
        for node in reversed(nodes):
            executor.remove_node(node)
            node.destroy_node()
        executor.shutdown(timeout_sec=2.0)
        rclpy.shutdown(context=context)


class Listener:
    """Collects what a camera publishes, plus /diagnostics."""

    def __init__(self, context, namespace: str):
        self.node = rclpy.create_node("camera_listener", context=context)
        self.lock = threading.RLock()  # wait() holds it while pairs() takes it again
        self.images: list[Image] = []
        self.infos: list[CameraInfo] = []
        self.depths: list[Image] = []
        self.jpegs: list[CompressedImage] = []
        self.diagnostics: list[DiagnosticStatus] = []
        for msg_type, topic, store in ((Image, f"{namespace}/color/image_raw", self.images),
                                       (CameraInfo, f"{namespace}/color/camera_info", self.infos),
                                       (Image, f"{namespace}/aligned_depth_to_color/image_raw", self.depths),
                                       (CompressedImage, f"{namespace}/color/image_raw/compressed", self.jpegs)):
            self.node.create_subscription(msg_type, topic, self._keeper(store), qos_profile_sensor_data)
        self.node.create_subscription(DiagnosticArray, "/diagnostics",
                                      lambda msg: self._keeper(self.diagnostics)(*msg.status), DIAGNOSTICS_QOS)

    def _keeper(self, store):
        def keep(*msgs):
            with self.lock:
                store.extend(msgs)
        return keep

    def wait(self, predicate, timeout_s: float, what: str):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(self):
                    return
            time.sleep(0.05)
        with self.lock:
            seen = [(s.level, s.message) for s in self.diagnostics[-5:]]
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last diagnostics: {seen}")

    def pairs(self) -> list[tuple[Image, CameraInfo]]:
        """Images with the CameraInfo of the same stamp."""
        with self.lock:
            infos = {stamp_to_ns(i.header.stamp): i for i in self.infos}
            return [(img, infos[stamp_to_ns(img.header.stamp)]) for img in self.images
                    if stamp_to_ns(img.header.stamp) in infos]


def to_rgb(msg: Image) -> np.ndarray:
    assert msg.encoding == "rgb8" and msg.step == msg.width * 3
    return np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)


def camera_node(context, config: Path, role: str, **kw) -> CameraDriverNode:
    params = [Parameter("camera_config", value=str(config)), Parameter("role", value=role),
              Parameter("diagnostics_period", value=0.2)]
    return CameraDriverNode(node_name=role, context=context, parameter_overrides=params, **kw)


def levels(listener: Listener, name: str) -> list[int]:
    return [int.from_bytes(s.level, "little") for s in listener.diagnostics if s.name == name]


def test_realsense_node_publishes_and_reports_a_stalled_camera(ros, tmp_path):
    context, add = ros
    config = tmp_path / "cameras.yaml"
    config.write_text(f"cameras:\n  cam_high: {{backend: realsense, serial: '{helpers.SERIAL}', width: {helpers.W},"
                      f" height: {helpers.H}, fps: 30, depth: true, compressed: true, timeout_s: 0.4}}\n")
    with helpers.SoftwareRealSense(depth=True) as sim:
        listener = Listener(context, "/camera_f")
        add(listener.node)
        node = add(camera_node(context, config, "cam_high", source_factory=sim.camera))
        assert node.get_name() == "cam_high"
        listener.wait(lambda s: len(s.pairs()) >= 5 and s.depths and s.jpegs, 8.0, "images with camera info")

        image, info = listener.pairs()[-1]
        assert (image.width, image.height) == (helpers.W, helpers.H)
        assert image.header.frame_id == info.header.frame_id == "cam_high_color_optical_frame"
        rgb = to_rgb(image)
        n = int(rgb[0, 0, 0])
        np.testing.assert_array_equal(rgb, helpers.pattern(n))
        assert stamp_to_ns(image.header.stamp) == int(sim.sent[n] * 1e6)  # the capture time
        assert (info.width, info.height) == (helpers.W, helpers.H)
        assert list(info.k) == pytest.approx([helpers.FX, 0, helpers.CX, 0, helpers.FY, helpers.CY, 0, 0, 1])
        depth = listener.depths[-1]
        assert depth.encoding == "16UC1" and (depth.width, depth.height) == (helpers.W, helpers.H)

        name = "camera_driver: cam_high"
        listener.wait(lambda s: 0 in levels(s, name), 3.0, "an OK diagnostic")
        with listener.lock:
            listener.diagnostics.clear()
        sim.running.clear()  # the camera stops delivering
        listener.wait(lambda s: 2 in levels(s, name), 4.0, "an ERROR diagnostic")
        with listener.lock:
            error = [s for s in listener.diagnostics if s.name == name and s.level == DiagnosticStatus.ERROR][-1]
        assert "no frame" in error.message
        assert error.hardware_id == f"realsense:{helpers.SERIAL}"
        assert {kv.key for kv in error.values} >= {"measured_hz", "frames", "reopen_count",
                                                    "last_frame_age_s", "backend"}

        sim.running.set()  # the node is still alive and picks the camera up again
        count = len(listener.images)
        listener.wait(lambda s: len(s.images) > count + 5, 8.0, "images after recovery")
        assert node.stream._thread.is_alive()


def test_opencv_node_publishes_a_video_file(ros, tmp_path):
    context, add = ros
    video = helpers.write_video(tmp_path / "clip.avi")
    config = tmp_path / "cameras.yaml"
    config.write_text(f"cameras:\n  cam_left_wrist: {{backend: opencv, device: '{video}', width: {helpers.W},"
                      f" height: {helpers.H}, fps: 20}}\n")
    listener = Listener(context, "/camera_l")
    add(listener.node)
    add(camera_node(context, config, "cam_left_wrist"))
    listener.wait(lambda s: len(s.pairs()) >= 2 * len(helpers.COLOURS), 8.0, "images with camera info")

    pairs = listener.pairs()
    for image, info in pairs:
        assert (image.width, image.height) == (helpers.W, helpers.H)
        mean = to_rgb(image).reshape(-1, 3).mean(axis=0)
        assert min(np.abs(mean - np.array(c)).max() for c in helpers.COLOURS) < 12  # one of the colours
        assert info.k[0] == pytest.approx(helpers.W / (2 * np.tan(np.radians(69) / 2)))
    stamps = [stamp_to_ns(img.header.stamp) for img, _ in pairs]
    assert stamps == sorted(stamps) and abs(stamps[-1] - time.time_ns()) < 2e9
    listener.wait(lambda s: 0 in levels(s, "camera_driver: cam_left_wrist"), 3.0, "an OK diagnostic")


def test_bad_configuration_exits_with_a_message(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("ROS_DOMAIN_ID", DOMAIN_ID)
    missing = tmp_path / "nowhere.yaml"
    code = main(["camera_driver", "--ros-args", "-p", f"camera_config:={missing}", "-p", "role:=cam_high"])
    assert code == 2 and str(missing) in capsys.readouterr().err

    config = tmp_path / "cameras.yaml"
    config.write_text("cameras:\n  cam_high: {backend: opencv, device: '0'}\n")
    code = main(["camera_driver", "--ros-args", "-p", f"camera_config:={config}", "-p", "role:=cam_right_wrist"])
    err = capsys.readouterr().err
    assert code == 2 and str(config) in err and "cameras.cam_right_wrist" in err
