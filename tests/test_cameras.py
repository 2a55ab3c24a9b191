"""Camera sources and CameraStream, without ROS.

RealSense: a real librealsense software device (rs.software_device) stands in for the USB
camera; frames are injected from a thread at ~30 Hz and read through RealSenseCamera's
hardware path (sensors -> rs.syncer -> rs.align). OpenCV: a short MJPG video file.

``SoftwareRealSense`` and ``write_video`` are also used by test_camera_node.py.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import cv2  # noqa: E402
import pyrealsense2 as rs  # noqa: E402

from sf_policy.config import CameraConfig, ConfigError, camera_for_role, load_camera_config  # noqa: E402
from sf_policy.drivers.cameras import (CameraError, CameraStream, Frame, OpenCVCamera,  # noqa: E402
                                       RealSenseCamera, open_camera, pinhole_guess)

SERIAL = "123456789012"
W, H, FPS = 64, 48, 30
FX, FY, CX, CY = 60.0, 61.0, 31.5, 23.5


# --- a RealSense made of software ------------------------------------------------------
def _video_stream(stream, fmt, bpp: int, uid: int, width: int = W, height: int = H) -> rs.video_stream:
    vs = rs.video_stream()
    vs.type, vs.index, vs.uid, vs.fmt, vs.bpp = stream, 0, uid, fmt, bpp
    vs.width, vs.height, vs.fps = width, height, FPS
    intr = rs.intrinsics()
    intr.width, intr.height, intr.fx, intr.fy, intr.ppx, intr.ppy = width, height, FX, FY, CX, CY
    intr.model, intr.coeffs = rs.distortion.inverse_brown_conrady, [0.0] * 5
    vs.intrinsics = intr
    return vs


def pattern(n: int) -> np.ndarray:
    """Frame n: R = n mod 256, G = 3 * column (a left-to-right ramp), B = 200."""
    rgb = np.empty((H, W, 3), np.uint8)
    rgb[..., 0] = n % 256
    rgb[..., 1] = (np.arange(W, dtype=np.uint16) * 3 % 256).astype(np.uint8)
    rgb[..., 2] = 200
    return rgb


class SoftwareRealSense:
    """rs.software_device with a colour sensor (and optionally a Z16 depth sensor), fed at ~30 Hz.

    ``depth_mm`` is the distance every depth pixel shows; ``depth_units`` the metres per raw
    unit the device reports (0.001 like a D435, 0.0001 like a D405).
    """

    def __init__(self, serial: str = SERIAL, *, depth: bool = False, depth_mm: int = 1234,
                 depth_units: float = 0.001, domain=rs.timestamp_domain.system_time):
        self.serial, self.domain, self.depth_mm, self.depth_units = serial, domain, depth_mm, depth_units
        self.device = rs.software_device()
        self.device.register_info(rs.camera_info.name, "Software RealSense")
        self.device.register_info(rs.camera_info.serial_number, serial)
        self.color_sensor = self.device.add_sensor("RGB Camera")
        self.color_profile = self.color_sensor.add_video_stream(_video_stream(rs.stream.color, rs.format.rgb8, 3, 0))
        self.color_sensor.add_video_stream(_video_stream(rs.stream.color, rs.format.rgb8, 3, 2, 128, 96))
        self.depth_sensor = self.depth_profile = None
        if depth:
            self._add_depth_sensor()
        self.context = rs.context()
        self.device.add_to(self.context)
        self.sent: dict[int, float] = {}  # n mod 256 -> timestamp (ms) of the last frame n sent
        self.running = threading.Event()
        self.running.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._inject, daemon=True)

    def _add_depth_sensor(self) -> None:
        self.depth_sensor = self.device.add_sensor("Stereo Module")
        self.depth_profile = self.depth_sensor.add_video_stream(_video_stream(rs.stream.depth, rs.format.z16, 2, 1))
        self.depth_sensor.add_read_only_option(rs.option.depth_units, self.depth_units)
        identity = rs.extrinsics()  # depth and colour share one optical centre here
        identity.rotation, identity.translation = [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], [0.0, 0.0, 0.0]
        self.depth_profile.register_extrinsics_to(self.color_profile, identity)

    def camera(self, cfg: CameraConfig) -> RealSenseCamera:
        # query_devices() does not list software devices (pyrealsense2 2.59), hence devices=.
        return RealSenseCamera(cfg, context=self.context, devices=[self.device])

    def __enter__(self) -> SoftwareRealSense:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2.0)

    def _video_frame(self, profile, pixels: np.ndarray, bpp: int, n: int, stamp_ms: float):
        f = rs.software_video_frame()
        f.pixels, f.stride, f.bpp = pixels, pixels.shape[1] * bpp, bpp
        f.timestamp, f.domain, f.frame_number = stamp_ms, self.domain, n
        f.profile = profile.as_video_stream_profile()
        return f

    def _inject(self) -> None:
        n, next_t = 0, time.monotonic()
        raw_depth = round(self.depth_mm * 0.001 / self.depth_units)
        while not self._stop.is_set():
            next_t += 1.0 / FPS
            time.sleep(max(0.0, next_t - time.monotonic()))
            if not self.running.is_set():
                continue
            n += 1
            stamp_ms = time.time() * 1000.0 if self.domain != rs.timestamp_domain.hardware_clock else n * 33.3
            self.sent[n % 256] = stamp_ms
            self.color_sensor.on_video_frame(self._video_frame(self.color_profile, pattern(n), 3, n, stamp_ms))
            if self.depth_sensor is not None:
                depth = np.full((H, W), raw_depth, np.uint16)
                frame = self._video_frame(self.depth_profile, depth, 2, n, stamp_ms)
                frame.depth_units = self.depth_units
                self.depth_sensor.on_video_frame(frame)


def rs_config(**kw) -> CameraConfig:
    base = dict(role="cam_high", backend="realsense", namespace="/camera_f", serial=SERIAL,
                width=W, height=H, fps=float(FPS), timeout_s=0.5)
    base.update(kw)
    return CameraConfig(**base)


def read_frames(cam, count: int, timeout_s: float = 5.0) -> list[Frame]:
    frames, deadline = [], time.monotonic() + timeout_s
    while len(frames) < count and time.monotonic() < deadline:
        frame = cam.read(0.2)
        if frame is not None:
            frames.append(frame)
    assert len(frames) == count, f"got {len(frames)} of {count} frames in {timeout_s} s"
    return frames


def check_pattern(frame: Frame) -> int:
    """Asserts frame is pattern(n) for some n (RGB order, orientation); returns n mod 256."""
    assert frame.rgb.shape == (H, W, 3) and frame.rgb.dtype == np.uint8
    n = int(frame.rgb[0, 0, 0])
    np.testing.assert_array_equal(frame.rgb[..., 1:], pattern(n)[..., 1:])
    assert (frame.rgb[..., 0] == n).all()
    return n


# --- RealSense -------------------------------------------------------------------------
def test_realsense_frames_keep_pixels_order_stamp_and_sequence():
    with SoftwareRealSense() as sim:
        cam = sim.camera(rs_config())
        cam.open()
        try:
            frames = read_frames(cam, 15)
        finally:
            cam.close()
    for frame in frames:
        n = check_pattern(frame)
        assert frame.depth is None
        # system_time is host wall time already: the stamp is exactly what was injected.
        assert frame.stamp_ns == int(sim.sent[n] * 1e6)
    seqs, stamps = [f.seq for f in frames], [f.stamp_ns for f in frames]
    assert seqs == sorted(set(seqs)) and stamps == sorted(set(stamps))
    assert abs(frames[-1].stamp_ns - time.time_ns()) < 1e9
    period = (stamps[-1] - stamps[0]) / (len(stamps) - 1) / 1e9
    assert 0.5 / FPS < period < 2.0 / FPS


@pytest.mark.parametrize("depth_units", [0.001, 0.0001])
def test_realsense_depth_is_aligned_and_in_millimetres(depth_units):
    with SoftwareRealSense(depth=True, depth_mm=1234, depth_units=depth_units) as sim:
        cam = sim.camera(rs_config(depth=True))
        cam.open()
        try:
            frames = read_frames(cam, 8)
        finally:
            cam.close()
    with_depth = [f for f in frames if f.depth is not None]
    assert len(with_depth) >= 6  # the syncer may hand out an unpaired colour frame first
    for frame in with_depth:
        check_pattern(frame)
        assert frame.depth.shape == (H, W) and frame.depth.dtype == np.uint16
        # Identity extrinsics and equal intrinsics: alignment maps each pixel onto itself.
        inner = frame.depth[2:-2, 2:-2]
        assert (inner == 1234).mean() > 0.95, np.unique(inner)


def test_realsense_hardware_clock_is_stamped_with_host_time():
    with SoftwareRealSense(domain=rs.timestamp_domain.hardware_clock) as sim:
        cam = sim.camera(rs_config())
        cam.open()
        try:
            before = time.time_ns()
            frames = read_frames(cam, 3)
            after = time.time_ns()
        finally:
            cam.close()
    for frame in frames:  # the device counter (n * 33 ms) is not host time; arrival is
        assert before - 200_000_000 <= frame.stamp_ns <= after


def test_realsense_intrinsics_come_from_the_stream_profile():
    with SoftwareRealSense() as sim:
        cam = sim.camera(rs_config())
        with pytest.raises(CameraError, match="open"):
            cam.intrinsics()
        cam.open()
        try:
            intr = cam.intrinsics()
        finally:
            cam.close()
    assert (intr.width, intr.height) == (W, H)
    assert (intr.fx, intr.fy, intr.cx, intr.cy) == pytest.approx((FX, FY, CX, CY))
    assert intr.distortion_model == "plumb_bob" and intr.coefficients == (0.0,) * 5


def test_realsense_unknown_serial_names_the_serials_present():
    sim = SoftwareRealSense(serial="111111111111")
    cam = sim.camera(rs_config(serial="999999999999"))
    with pytest.raises(CameraError) as err:
        cam.open()
    message = str(err.value)
    assert "999999999999" in message and "111111111111" in message and "cam_high" in message


def test_realsense_wrong_resolution_lists_the_available_profiles():
    sim = SoftwareRealSense()
    cam = sim.camera(rs_config(width=640, height=480))
    with pytest.raises(CameraError) as err:
        cam.open()
    message = str(err.value)
    assert "640x480" in message and f"{W}x{H}@{FPS} RGB8" in message and f"128x96@{FPS} RGB8" in message


def test_open_camera_picks_the_backend(tmp_path):
    assert isinstance(open_camera(rs_config()), RealSenseCamera)
    assert isinstance(open_camera(rs_config(backend="opencv", device=str(tmp_path / "v.avi"))), OpenCVCamera)
    with pytest.raises(CameraError, match="backend"):
        open_camera(rs_config(backend="firewire"))


# --- OpenCV ----------------------------------------------------------------------------
COLOURS = [(230, 30, 30), (30, 230, 30), (30, 30, 230), (230, 230, 30)]  # RGB, one per frame


def write_video(path: Path, colours=COLOURS, size=(W, H), fps: float = 20.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for rgb in colours:
        frame = np.zeros((size[1], size[0], 3), np.uint8)
        frame[:] = rgb
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def cv_config(device: Path, **kw) -> CameraConfig:
    base = dict(role="cam_left_wrist", backend="opencv", namespace="/camera_l", device=str(device),
                width=W, height=H, fps=20.0, timeout_s=0.5)
    base.update(kw)
    return CameraConfig(**base)


def mean_rgb(frame: Frame) -> np.ndarray:
    return frame.rgb.reshape(-1, 3).mean(axis=0)


def test_opencv_file_colours_order_pacing_and_loop(tmp_path):
    cam = OpenCVCamera(cv_config(write_video(tmp_path / "clip.avi")))
    cam.open()
    try:
        start = time.monotonic()
        frames = read_frames(cam, 2 * len(COLOURS) + 1)
        elapsed = time.monotonic() - start
    finally:
        cam.close()
    expected = (COLOURS * 3)[: len(frames)]  # it loops
    for frame, rgb in zip(frames, expected):
        assert frame.rgb.shape == (H, W, 3) and frame.rgb.dtype == np.uint8
        np.testing.assert_allclose(mean_rgb(frame), rgb, atol=12)  # JPEG tolerance
    assert elapsed == pytest.approx((len(frames) - 1) / 20.0, abs=0.15)
    stamps = [f.stamp_ns for f in frames]
    assert stamps == sorted(stamps) and [f.seq for f in frames] == list(range(1, len(frames) + 1))
    assert abs(stamps[-1] - time.time_ns()) < 1e9


def test_opencv_resizes_and_stops_at_the_end_without_loop(tmp_path):
    path = write_video(tmp_path / "big.avi", size=(2 * W, 2 * H))
    cam = OpenCVCamera(cv_config(path, loop=False, fps=100.0))
    cam.open()
    try:
        frames = read_frames(cam, len(COLOURS))
        assert cam.read(0.1) is None and cam.finished
    finally:
        cam.close()
    assert all(f.rgb.shape == (H, W, 3) for f in frames)
    np.testing.assert_allclose(mean_rgb(frames[2]), COLOURS[2], atol=12)


def test_opencv_missing_file_and_default_intrinsics(tmp_path):
    cam = OpenCVCamera(cv_config(tmp_path / "nope.avi", width=640, height=480))
    with pytest.raises(CameraError, match="nope.avi"):
        cam.open()
    intr = cam.intrinsics()
    assert intr.fx == intr.fy == pytest.approx(640 / (2 * math.tan(math.radians(69) / 2)))
    assert (intr.cx, intr.cy, intr.width, intr.height) == (320.0, 240.0, 640, 480)
    assert pinhole_guess(640, 480) == intr


# --- CameraStream ----------------------------------------------------------------------
class Gate:
    """Wraps a real source; while closed it delivers nothing (like an unplugged camera)."""

    def __init__(self, source):
        self.source, self.hardware_id = source, source.hardware_id
        self.open_gate = threading.Event()
        self.open_gate.set()
        self.opens = 0

    def open(self):
        self.opens += 1
        self.source.open()

    def read(self, timeout_s):
        if not self.open_gate.is_set():
            time.sleep(timeout_s)
            return None
        return self.source.read(timeout_s)

    def close(self):
        self.source.close()

    def intrinsics(self):
        return self.source.intrinsics()


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture
def stream_log(caplog):
    caplog.set_level(logging.INFO, logger="sf_policy.drivers.cameras")
    return caplog


@pytest.mark.slow  # 5 s: the default tier stays under 5 minutes
def test_stream_goes_stale_reports_once_reopens_and_recovers(tmp_path, stream_log):
    cfg = cv_config(write_video(tmp_path / "clip.avi"), fps=30.0, timeout_s=0.3)
    gate = Gate(OpenCVCamera(cfg))
    seen: list[Frame] = []
    stream = CameraStream(gate, cfg, on_frame=seen.append).start()
    try:
        wait_for(lambda: stream.status().ok and stream.status().frames >= 10, 3.0, "frames")
        assert stream.latest().seq >= seen[-1].seq  # latest() is set before on_frame runs
        assert stream.status().measured_hz == pytest.approx(30.0, rel=0.3)

        gate.open_gate.clear()
        wait_for(lambda: stream.status().stale, 2.0, "stale")
        status = stream.status()
        assert not status.ok and "no frame" in status.message and "no frame" in status.last_error
        wait_for(lambda: gate.opens >= 3, 6.0, "reopen attempts")  # 0.5 s, then the 3 s grace
        warnings = [r.getMessage() for r in stream_log.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings
        assert "cam_left_wrist" in warnings[0] and "clip.avi" in warnings[0] and "stale" in warnings[0]

        gate.open_gate.set()
        frames_before = stream.status().frames
        wait_for(lambda: stream.status().ok and stream.status().frames > frames_before + 5, 8.0, "recovery")
        status = stream.status()
        assert status.reopen_count >= 2 and status.last_frame_age_s < 0.3
        assert any("frames flow again" in r.getMessage() for r in stream_log.records)
    finally:
        stream.stop()
    assert not stream._thread.is_alive()


class Unplugged:
    hardware_id = "realsense:000000000000"

    def __init__(self):
        self.opens = 0

    def open(self):
        self.opens += 1
        raise CameraError("camera cam_high (realsense:000000000000): no RealSense device with serial ...")

    def read(self, timeout_s):
        raise AssertionError("never opened")

    def close(self):
        pass

    def intrinsics(self):
        raise CameraError("not open")


def test_stream_survives_a_missing_device_with_backoff_and_one_log_line(stream_log):
    source = Unplugged()
    stream = CameraStream(source, rs_config()).start()
    try:
        time.sleep(2.0)  # attempts at 0, 0.5, 1.5 s (then 3.5 s): backoff, not a busy loop
        status = stream.status()
        assert 2 <= source.opens <= 4 and status.stale and status.frames == 0
        assert "no RealSense device" in status.last_error and status.last_frame_age_s is None
        assert stream._thread.is_alive()
    finally:
        stream.stop()
    warnings = [r for r in stream_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cam_high" in warnings[0].getMessage()


def test_stream_survives_a_failing_callback_and_keeps_only_the_latest(tmp_path):
    cfg = cv_config(write_video(tmp_path / "clip.avi"), fps=60.0)
    calls = []

    def explode(frame):
        calls.append(frame.seq)
        raise ValueError("subscriber bug")

    stream = CameraStream(OpenCVCamera(cfg), cfg, on_frame=explode).start()
    try:
        wait_for(lambda: len(calls) >= 10, 3.0, "callbacks")
        assert stream.status().ok and stream.latest().seq >= calls[9]
    finally:
        stream.stop()


def test_stream_reports_the_end_of_a_file_without_loop(tmp_path):
    cfg = cv_config(write_video(tmp_path / "clip.avi"), fps=60.0, loop=False)
    stream = CameraStream(OpenCVCamera(cfg), cfg).start()
    try:
        wait_for(lambda: "end of video file" in stream.status().message, 3.0, "end of file")
        assert stream.status().frames == len(COLOURS) and not stream.status().ok
    finally:
        stream.stop()


def test_realsense_stream_recovers_when_injection_resumes():
    with SoftwareRealSense() as sim:
        cfg = rs_config(timeout_s=0.3)
        stream = CameraStream(sim.camera(cfg), cfg).start()
        try:
            wait_for(lambda: stream.status().frames >= 5, 3.0, "frames")
            sim.running.clear()
            wait_for(lambda: stream.status().reopen_count >= 1, 3.0, "a reopen")
            assert stream.status().stale
            sim.running.set()
            count = stream.status().frames
            wait_for(lambda: stream.status().ok and stream.status().frames > count + 5, 6.0, "recovery")
            assert stream.status().reopen_count >= 1
            check_pattern(stream.latest())
        finally:
            stream.stop()


# --- configuration errors name the file and the field ----------------------------------
def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cameras.yaml"
    path.write_text(text)
    return path


def test_unknown_role_names_file_and_field(tmp_path):
    path = write_yaml(tmp_path, "cameras:\n  cam_top:\n    backend: realsense\n    serial: '1'\n")
    with pytest.raises(ConfigError) as err:
        load_camera_config(path)
    assert str(path) in str(err.value) and "cameras.cam_top" in str(err.value)
    with pytest.raises(ConfigError, match="role"):
        camera_for_role(write_yaml(tmp_path, "cameras: {}\n"), "cam_top")


def test_duplicate_serial_names_file_and_field(tmp_path):
    path = write_yaml(tmp_path, "cameras:\n"
                                "  cam_high: {backend: realsense, serial: '42'}\n"
                                "  cam_left_wrist: {backend: realsense, serial: '42'}\n")
    with pytest.raises(ConfigError) as err:
        load_camera_config(path)
    assert str(path) in str(err.value) and "cameras.cam_left_wrist.serial" in str(err.value)
    assert "cameras.cam_high" in str(err.value)


def test_missing_file_and_missing_role_entry(tmp_path):
    with pytest.raises(ConfigError) as err:
        camera_for_role(tmp_path / "absent.yaml", "cam_high")
    assert "absent.yaml" in str(err.value) and "not found" in str(err.value)
    path = write_yaml(tmp_path, "cameras:\n  cam_high: {backend: opencv, device: '0'}\n")
    with pytest.raises(ConfigError) as err:
        camera_for_role(path, "cam_right_wrist")
    assert str(path) in str(err.value) and "cameras.cam_right_wrist" in str(err.value)
    assert camera_for_role(path, "cam_high").device == "0"
