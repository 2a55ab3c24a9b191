"""Camera driver node: one camera (RealSense or OpenCV) -> Image, CameraInfo, diagnostics.

Parameters: ``camera_config`` (YAML path, required), ``role`` (cam_high | cam_left_wrist |
cam_right_wrist, required), ``frame_id`` (default ``<role>_color_optical_frame``),
``diagnostics_period`` (s, default 1.0). Topics live under the camera's namespace
(``/camera_f`` for cam_high by default): ``color/image_raw`` (rgb8), ``color/camera_info``,
``color/image_raw/compressed`` (JPEG, when ``compressed``) and
``aligned_depth_to_color/image_raw`` (16UC1 mm, when ``depth``). Every message of a frame
carries the frame's capture time. Reconnection lives in ``sf_policy.drivers.cameras``.
CameraInfo comes from the camera's ``intrinsics:`` file in cameras.yaml when it has one
(``sf calibrate intrinsics``), else from the backend.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import cv2
import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from sf_policy.calibration.camera_info import load_camera_info
from sf_policy.config import CameraConfig, ConfigError, camera_for_role
from sf_policy.drivers.cameras import (CameraError, CameraSource, CameraStream, Frame, Intrinsics,
                                       StreamStatus, open_camera)
from sf_policy.topics import CAMERA_ROLES

from .common import (ERROR, IMAGE_QOS, OK, WARN, camera_info_msg, diagnostic_status, diagnostics_publisher,
                     header, image_msg, publish_diagnostics, run_node)

SourceFactory = Callable[[CameraConfig], CameraSource]
RATE_WARN_FRACTION = 0.8  # below this share of the configured fps, diagnostics say WARN
JPEG_QUALITY = 90


def jpeg_msg(rgb: np.ndarray, stamp_ns: int, frame_id: str) -> CompressedImage:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise CameraError("JPEG encoding failed")
    return CompressedImage(header=header(stamp_ns, frame_id), format="rgb8; jpeg compressed bgr8",
                           data=buf.tobytes())


def diagnostic_level(status: StreamStatus, fps: float) -> tuple[bytes, str]:
    if not status.ok:
        return ERROR, status.message
    if status.measured_hz < RATE_WARN_FRACTION * fps:
        return WARN, f"rate {status.measured_hz:.1f} Hz is below {RATE_WARN_FRACTION:.0%} of {fps:g} fps"
    return OK, status.message


class CameraDriverNode(Node):
    """Publishes one camera. Raises ConfigError from the constructor on a bad configuration.

    ``source_factory`` (cfg -> CameraSource) replaces :func:`open_camera`; tests hand in a
    RealSense source built on a software device.
    """

    def __init__(self, *, node_name: str | None = None, source_factory: SourceFactory | None = None,
                 **node_kwargs):
        super().__init__(node_name or "camera_driver", **node_kwargs)
        self.cfg = self._load_config()
        self.frame_id = self.declare_parameter("frame_id", f"{self.cfg.role}_color_optical_frame").value
        period = float(self.declare_parameter("diagnostics_period", 1.0).value)
        self.source = (source_factory or open_camera)(self.cfg)
        # A calibration file (cameras.yaml `intrinsics:`) overrides the backend's model.
        self._intrinsics: Intrinsics | None = (
            load_camera_info(self.cfg.intrinsics, expect_size=(self.cfg.width, self.cfg.height))
            if self.cfg.intrinsics else None)
        self._make_publishers()
        self._diagnostics = diagnostics_publisher(self)
        self.stream = CameraStream(self.source, self.cfg, on_frame=self._publish_frame, logger=self.get_logger())
        self.create_timer(period, self._publish_diagnostics)
        self.get_logger().info(f"camera {self.cfg.role} ({self.source.hardware_id}) -> {self._image_topic}")
        self.stream.start()

    def _load_config(self) -> CameraConfig:
        path = self.declare_parameter("camera_config", "").value
        role = self.declare_parameter("role", "").value
        for name, value in (("camera_config", path), ("role", role)):
            if not value:
                raise ConfigError(f"node {self.get_name()}", name,
                                  f"required parameter is not set (--ros-args -p {name}:=...)")
        return camera_for_role(path, role)

    def _make_publishers(self) -> None:
        ns = self.cfg.namespace.rstrip("/")
        self._image_topic = f"{ns}/color/image_raw"
        self._image_pub = self.create_publisher(Image, self._image_topic, IMAGE_QOS)
        self._info_pub = self.create_publisher(CameraInfo, f"{ns}/color/camera_info", IMAGE_QOS)
        self._jpeg_pub = (self.create_publisher(CompressedImage, f"{self._image_topic}/compressed", IMAGE_QOS)
                          if self.cfg.compressed else None)
        self._depth_pub = (self.create_publisher(Image, f"{ns}/aligned_depth_to_color/image_raw", IMAGE_QOS)
                           if self.cfg.depth else None)

    def _publish_frame(self, frame: Frame) -> None:
        """Runs on the camera thread, once per frame."""
        try:
            self._publish_messages(frame)
        except Exception:
            if self.context.ok():
                raise
            # Ctrl-C shut the context down before close() stopped this thread: not an error.

    def _publish_messages(self, frame: Frame) -> None:
        if self._intrinsics is None:  # known once the source is open, i.e. by the first frame
            self._intrinsics = self.source.intrinsics()
        stamp = frame.stamp_ns
        self._image_pub.publish(image_msg(frame.rgb, "rgb8", stamp, self.frame_id))
        self._info_pub.publish(camera_info_msg(self._intrinsics, stamp, self.frame_id))
        if self._jpeg_pub is not None:
            self._jpeg_pub.publish(jpeg_msg(frame.rgb, stamp, self.frame_id))
        if self._depth_pub is not None and frame.depth is not None:
            self._depth_pub.publish(image_msg(frame.depth, "16UC1", stamp, self.frame_id))

    def _publish_diagnostics(self) -> None:
        status = self.stream.status()
        level, message = diagnostic_level(status, self.cfg.fps)
        age = "none yet" if status.last_frame_age_s is None else f"{status.last_frame_age_s:.3f}"
        values = [("measured_hz", f"{status.measured_hz:.2f}"), ("frames", status.frames),
                  ("reopen_count", status.reopen_count), ("last_frame_age_s", age),
                  ("backend", self.cfg.backend), ("last_error", status.last_error)]
        publish_diagnostics(self, self._diagnostics, [
            diagnostic_status(f"camera_driver: {self.cfg.role}", self.source.hardware_id, level, message, values)])

    def close(self) -> None:
        """Stops the camera thread before the node goes, so it never publishes on a dead node."""
        stream = getattr(self, "stream", None)
        if stream is not None:
            stream.stop()

    def destroy_node(self):
        self.close()
        return super().destroy_node()


def _role_from_args(args: list[str]) -> str | None:
    """The value of ``-p role:=X`` among ROS arguments: the default node name is the role.

    Only a known role qualifies, so a typo reaches the config check (and its message)
    rather than failing as an invalid node name.
    """
    for arg in args:
        if arg.startswith("role:=") and arg.split(":=", 1)[1] in CAMERA_ROLES:
            return arg.split(":=", 1)[1]
    return None


def main(args: list[str] | None = None) -> int:
    argv = list(sys.argv if args is None else args)
    try:
        return run_node(lambda: CameraDriverNode(node_name=_role_from_args(argv)), argv)
    except (ConfigError, CameraError) as exc:
        print(f"camera_driver: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
