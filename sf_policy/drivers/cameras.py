"""Camera sources (Intel RealSense, OpenCV) and a background stream that keeps them alive.

No ROS here: ``sf_nodes.camera_driver`` wraps a :class:`CameraStream` and publishes its
frames. Every frame carries the host wall-clock time (``time.time_ns()`` domain, as ROS
stamps do) at which it was captured, so streams of different cameras can be matched by time.

RealSense devices are read below ``rs.pipeline``: the colour (and depth) sensors are opened
directly and started into an ``rs.syncer``. The pipeline cannot see software devices, and
the tests inject frames through ``rs.software_device``, so this one code path serves both.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..config import CameraConfig

_LOG = logging.getLogger(__name__)

#: Horizontal field of view assumed for an uncalibrated OpenCV camera (a typical webcam /
#: RealSense D435 colour lens). ``calibration/`` replaces the guess with measured values.
DEFAULT_HFOV_DEG = 69.0


class CameraError(RuntimeError):
    """A camera cannot be found, opened or read; the message names the role and the device."""


@dataclass
class Frame:
    rgb: np.ndarray                # H x W x 3 uint8, RGB order
    depth: np.ndarray | None       # H x W uint16 in millimetres, aligned to rgb; None without depth
    stamp_ns: int                  # capture time, host wall clock (time.time_ns() domain)
    seq: int                       # counts up by one per delivered frame, across reopens


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole model of the colour image, in the terms sensor_msgs/CameraInfo uses."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion_model: str = "plumb_bob"       # ROS name: plumb_bob, equidistant, ...
    coefficients: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)
    #: 3x4 row-major projection matrix of the rectified image (CameraInfo.P); None: [K | 0].
    projection: tuple[float, ...] | None = None


@runtime_checkable
class CameraSource(Protocol):
    """What CameraStream needs from a backend. ``read`` never blocks longer than asked."""

    hardware_id: str  # e.g. "realsense:123456", "opencv:/dev/video0"; for logs and diagnostics

    def open(self) -> None: ...

    def read(self, timeout_s: float) -> Frame | None: ...

    def close(self) -> None: ...

    def intrinsics(self) -> Intrinsics: ...


def _describe(cfg: CameraConfig, hardware_id: str) -> str:
    return f"camera {cfg.role} ({hardware_id})"


# --- RealSense -----------------------------------------------------------------------
def _import_rs():
    try:
        import pyrealsense2 as rs
    except ImportError as exc:  # pragma: no cover - the drivers extra is not installed
        raise CameraError("pyrealsense2 is not installed (pip install 'sf-policy[drivers]')") from exc
    return rs


_ROS_DISTORTION = {  # librealsense model name -> sensor_msgs/CameraInfo distortion_model
    "none": "plumb_bob",
    "brown_conrady": "plumb_bob",
    "modified_brown_conrady": "plumb_bob",
    "inverse_brown_conrady": "plumb_bob",
    "kannala_brandt4": "equidistant",
    "ftheta": "equidistant",
}


class RealSenseCamera:
    """An Intel RealSense camera picked by serial number, colour as RGB8, optional aligned depth.

    ``devices`` adds devices that ``context.query_devices()`` does not list. pyrealsense2
    2.59 does not enumerate software devices added with ``software_device.add_to(ctx)``
    (the context's devices-changed callback reports them, ``query_devices`` returns none),
    so tests hand their ``rs.software_device`` in here; everything after the lookup is the
    hardware path.
    """

    def __init__(self, cfg: CameraConfig, context: Any | None = None, devices: Iterable[Any] = ()):
        self.cfg = cfg
        self.hardware_id = f"realsense:{cfg.serial}"
        self._context = context
        self._extra_devices = tuple(devices)
        self._sensors: list[Any] = []
        self._syncer = None
        self._align = None
        self._color_profile = None
        self._seq = 0

    # open/close ------------------------------------------------------------------------
    def open(self) -> None:
        rs = _import_rs()
        if self._syncer is not None:
            return  # already open
        device = self._find_device(rs)
        color = self._pick_profile(rs, device, rs.stream.color, rs.format.rgb8, "colour")
        wanted = [color]
        if self.cfg.depth:
            wanted.append(self._pick_profile(rs, device, rs.stream.depth, rs.format.z16, "depth"))
        syncer = rs.syncer()
        try:
            self._start_sensors(device, wanted, syncer)
        except RuntimeError as exc:
            self.close()
            raise CameraError(f"{_describe(self.cfg, self.hardware_id)}: cannot start streaming: {exc}") from exc
        self._syncer = syncer
        self._color_profile = color[1].as_video_stream_profile()
        self._align = rs.align(rs.stream.color) if self.cfg.depth else None

    def _find_device(self, rs):
        context = self._context if self._context is not None else rs.context()
        present: dict[str, Any] = {}
        for device in [*context.query_devices(), *self._extra_devices]:
            if device.supports(rs.camera_info.serial_number):
                present.setdefault(device.get_info(rs.camera_info.serial_number), device)
        if self.cfg.serial not in present:
            listed = ", ".join(sorted(present)) or "none"
            raise CameraError(f"{_describe(self.cfg, self.hardware_id)}: no RealSense device with serial "
                              f"{self.cfg.serial!r}; serials present: {listed}")
        return present[self.cfg.serial]

    def _pick_profile(self, rs, device, stream, fmt, label: str):
        """(sensor index, profile) for the stream at the configured fps; depth may differ in size."""
        cfg, fps = self.cfg, int(round(self.cfg.fps))
        candidates = []
        for index, sensor in enumerate(device.query_sensors()):
            for profile in sensor.get_stream_profiles():
                if profile.stream_type() == stream and profile.is_video_stream_profile():
                    candidates.append((index, profile))
        exact = [(i, p) for i, p in candidates if p.format() == fmt and p.fps() == fps]
        same_size = [(i, p) for i, p in exact
                     if (p.as_video_stream_profile().width(), p.as_video_stream_profile().height())
                     == (cfg.width, cfg.height)]
        if same_size:
            return same_size[0]
        if stream == rs.stream.depth and exact:
            return exact[0]  # rs.align resamples depth onto the colour grid anyway
        available = sorted({_profile_text(p) for _, p in candidates}) or ["none"]
        raise CameraError(f"{_describe(cfg, self.hardware_id)}: no {label} profile {cfg.width}x{cfg.height} "
                          f"@ {fps} fps {fmt.name.upper()}; available: {', '.join(available)}")

    def _start_sensors(self, device, wanted, syncer) -> None:
        sensors = device.query_sensors()
        by_sensor: dict[int, list] = {}
        for index, profile in wanted:  # one open() per sensor, with all its profiles at once
            by_sensor.setdefault(index, []).append(profile)
        for index, profiles in by_sensor.items():
            sensor = sensors[index]
            sensor.open(profiles if len(profiles) > 1 else profiles[0])
            self._sensors.append(sensor)
            sensor.start(syncer)

    def close(self) -> None:
        for sensor in self._sensors:
            for step in (sensor.stop, sensor.close):
                try:
                    step()
                except RuntimeError:
                    pass  # not started / already closed: nothing left to release
        self._sensors.clear()
        self._syncer = self._align = None

    # reading ---------------------------------------------------------------------------
    def read(self, timeout_s: float) -> Frame | None:
        if self._syncer is None:
            raise CameraError(f"{_describe(self.cfg, self.hardware_id)}: read() before open()")
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            ok, frames = self._syncer.try_wait_for_frames(max(1, int(remaining * 1000)))
            if not ok:
                return None
            frame = self._to_frame(frames)
            if frame is not None:
                return frame
        return None

    def _to_frame(self, frames) -> Frame | None:
        rs = _import_rs()
        if not frames.first_or_default(rs.stream.color):
            return None  # the syncer also emits depth-only sets (e.g. the first one)
        depth = None
        if self._align is not None and frames.first_or_default(rs.stream.depth):
            frames = self._align.process(frames).as_frameset()
            depth = _depth_mm(frames.get_depth_frame())
        color = frames.get_color_frame()
        # Copies: librealsense recycles the frame's memory once the frame is released.
        rgb = np.asanyarray(color.get_data()).copy()
        self._seq += 1
        return Frame(rgb=rgb, depth=depth, stamp_ns=_host_stamp_ns(rs, color), seq=self._seq)

    def intrinsics(self) -> Intrinsics:
        if self._color_profile is None:
            raise CameraError(f"{_describe(self.cfg, self.hardware_id)}: intrinsics are known once the camera is open")
        i = self._color_profile.get_intrinsics()
        return Intrinsics(width=i.width, height=i.height, fx=i.fx, fy=i.fy, cx=i.ppx, cy=i.ppy,
                          distortion_model=_ROS_DISTORTION.get(i.model.name, i.model.name),
                          coefficients=tuple(float(c) for c in i.coeffs))


def _profile_text(profile) -> str:
    video = profile.as_video_stream_profile()
    return f"{video.width()}x{video.height()}@{profile.fps()} {profile.format().name.upper()}"


def _host_stamp_ns(rs, frame) -> int:
    domain = frame.get_frame_timestamp_domain()
    if domain in (rs.timestamp_domain.system_time, rs.timestamp_domain.global_time):
        return int(frame.get_timestamp() * 1e6)  # already milliseconds of host wall time
    # hardware_clock: the camera's own counter, unrelated to the host clock (metadata off,
    # or a firmware without global time). The best host time left is the frame's arrival:
    # late by the USB transfer (a few ms), but on the same clock as every other stream.
    arrival = rs.frame_metadata_value.time_of_arrival
    if frame.supports_frame_metadata(arrival):
        arrival_ms = frame.get_frame_metadata(arrival)
        if arrival_ms > 0:
            return int(arrival_ms * 1_000_000)
    return time.time_ns()


def _depth_mm(depth_frame) -> np.ndarray:
    raw = np.asanyarray(depth_frame.get_data())
    units_m = depth_frame.get_units()
    if math.isclose(units_m, 0.001, rel_tol=1e-4):
        return raw.copy()
    # Some models (D405) count 0.1 mm; the contract is millimetres, as 16UC1 images use.
    return np.clip(np.rint(raw * (units_m * 1000.0)), 0, 65535).astype(np.uint16)


# --- OpenCV --------------------------------------------------------------------------
def _import_cv2():
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - the drivers extra is not installed
        raise CameraError("opencv is not installed (pip install 'sf-policy[drivers]')") from exc
    return cv2


def pinhole_guess(width: int, height: int, hfov_deg: float = DEFAULT_HFOV_DEG) -> Intrinsics:
    """A centred, distortion-free pinhole with the given horizontal field of view."""
    f = width / (2.0 * math.tan(math.radians(hfov_deg) / 2.0))
    return Intrinsics(width=width, height=height, fx=f, fy=f, cx=width / 2.0, cy=height / 2.0)


class OpenCVCamera:
    """A V4L2 camera (index or /dev/video path) or a video file, through cv2.VideoCapture.

    Video files are paced at ``cfg.fps`` and start again at the end when ``cfg.loop``; once a
    file ends without loop, ``finished`` turns True and ``read`` returns None. Frames of
    another size are resized to the configured one. Intrinsics are a pinhole guess
    (:func:`pinhole_guess`) until ``calibration/`` supplies measured ones.
    """

    def __init__(self, cfg: CameraConfig, intrinsics: Intrinsics | None = None):
        self.cfg = cfg
        self.hardware_id = f"opencv:{cfg.device}"
        self._intrinsics = intrinsics or pinhole_guess(cfg.width, cfg.height)
        self._cap = None
        self._is_file = not (cfg.device.isdigit() or cfg.device.startswith("/dev/"))
        self._next_due = 0.0
        self._seq = 0
        self.finished = False

    def open(self) -> None:
        cv2 = _import_cv2()
        if self._cap is not None:
            return
        device = self.cfg.device
        if self._is_file and not Path(device).is_file():
            raise CameraError(f"{_describe(self.cfg, self.hardware_id)}: video file not found")
        if device.isdigit():
            cap = cv2.VideoCapture(int(device))
        elif device.startswith("/dev/"):
            cap = cv2.VideoCapture(device, cv2.CAP_V4L2)
        else:
            cap = cv2.VideoCapture(device)
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"{_describe(self.cfg, self.hardware_id)}: cv2.VideoCapture cannot open it")
        if not self._is_file:
            self._request_mode(cv2, cap)
        self._cap, self.finished = cap, False
        self._next_due = time.monotonic()

    def _request_mode(self, cv2, cap) -> None:
        # Requests only: a camera that cannot do the mode delivers another, which read()
        # resizes. The read timeout bounds a blocking grab on backends that support it.
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.cfg.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.cfg.height)
        cap.set(cv2.CAP_PROP_FPS, self.cfg.fps)
        cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.cfg.timeout_s * 1000))

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def read(self, timeout_s: float) -> Frame | None:
        if self._cap is None:
            raise CameraError(f"{_describe(self.cfg, self.hardware_id)}: read() before open()")
        if self.finished:
            time.sleep(timeout_s)
            return None
        if self._is_file and not self._wait_until_due(timeout_s):
            return None
        if not self._grab():
            return None
        stamp_ns = time.time_ns()  # grab() just returned: the host time of capture
        ok, bgr = self._cap.retrieve()
        if not ok or bgr is None:
            return None
        self._seq += 1
        return Frame(rgb=self._to_rgb(bgr), depth=None, stamp_ns=stamp_ns, seq=self._seq)

    def _wait_until_due(self, timeout_s: float) -> bool:
        """Paces a file at cfg.fps; False when the next frame is not due within the timeout."""
        now = time.monotonic()
        wait = self._next_due - now
        if wait > timeout_s:
            time.sleep(timeout_s)
            return False
        if wait > 0:
            time.sleep(wait)
        # Keep the schedule, but never try to catch up a backlog after a stall.
        self._next_due = max(self._next_due, now - 1.0 / self.cfg.fps) + 1.0 / self.cfg.fps
        return True

    def _grab(self) -> bool:
        cv2 = _import_cv2()
        if self._cap.grab():
            return True
        if not self._is_file:
            return False
        if not self.cfg.loop:
            self.finished = True
            return False
        self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        return self._cap.grab()

    def _to_rgb(self, bgr: np.ndarray) -> np.ndarray:
        cv2 = _import_cv2()
        if bgr.ndim == 2:
            bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
        if bgr.shape[:2] != (self.cfg.height, self.cfg.width):
            bgr = cv2.resize(bgr, (self.cfg.width, self.cfg.height), interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def intrinsics(self) -> Intrinsics:
        return self._intrinsics


def open_camera(cfg: CameraConfig, context: Any | None = None) -> CameraSource:
    """The source for ``cfg.backend``; it is opened by whoever runs it (CameraStream)."""
    if cfg.backend == "realsense":
        return RealSenseCamera(cfg, context=context)
    if cfg.backend == "opencv":
        return OpenCVCamera(cfg)
    raise CameraError(f"camera {cfg.role}: unknown backend {cfg.backend!r}")


# --- the stream ----------------------------------------------------------------------
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 5.0
RATE_WINDOW_S = 2.0
FIRST_FRAME_GRACE_S = 3.0


@dataclass(frozen=True)
class StreamStatus:
    ok: bool                         # frames arrive within cfg.timeout_s
    stale: bool                      # no frame for longer than cfg.timeout_s (or none yet)
    message: str
    measured_hz: float
    frames: int
    reopen_count: int
    last_error: str
    last_frame_age_s: float | None   # None before the first frame


class _Logger(Protocol):  # python logging.Logger and rclpy's node logger both fit
    def info(self, msg: str) -> Any: ...

    def warning(self, msg: str) -> Any: ...


@dataclass
class _State:
    latest: Frame | None = None
    frames: int = 0
    reopen_count: int = 0
    last_error: str = ""
    stale: bool = False
    ended: bool = False
    last_frame_mono: float | None = None
    arrivals: deque = field(default_factory=lambda: deque(maxlen=512))


class CameraStream:
    """Runs a source in a background thread and keeps only its latest frame.

    When no frame arrives for ``cfg.timeout_s`` (or opening/reading fails) the stream turns
    stale, logs one line naming the camera, closes the source and reopens it with a backoff
    of 0.5 s doubling to 5 s, until frames flow again (one more line says so). Nothing
    raises out of the thread; ``status()`` tells the story.
    """

    def __init__(self, source: CameraSource, cfg: CameraConfig, *,
                 on_frame: Callable[[Frame], None] | None = None, logger: _Logger | None = None):
        self.source, self.cfg = source, cfg
        self._on_frame = on_frame
        self._log = logger or _LOG
        self._name = _describe(cfg, source.hardware_id)
        self._lock = threading.Lock()
        self._state = _State()
        self._stop = threading.Event()
        self._delivered = False          # the current open() has produced a frame
        self._callback_failing = False
        self._thread = threading.Thread(target=self._run, name=f"camera-{cfg.role}", daemon=True)

    def start(self) -> CameraStream:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ends the thread, which closes the source on its way out."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    def latest(self) -> Frame | None:
        with self._lock:
            return self._state.latest

    def status(self) -> StreamStatus:
        now = time.monotonic()
        with self._lock:
            s = self._state
            age = None if s.last_frame_mono is None else now - s.last_frame_mono
            # Judged here too, so a read stuck inside a driver still shows up as stale.
            stale = s.stale or s.ended or age is None or age > self.cfg.timeout_s
            recent = [t for t in s.arrivals if t >= now - RATE_WINDOW_S]
            span = recent[-1] - recent[0] if len(recent) >= 2 else 0.0
            hz = (len(recent) - 1) / span if span > 0 else 0.0
            return StreamStatus(ok=not stale, stale=stale, message=self._message(s, age, stale),
                                measured_hz=hz, frames=s.frames, reopen_count=s.reopen_count,
                                last_error=s.last_error, last_frame_age_s=age)

    def _message(self, s: _State, age: float | None, stale: bool) -> str:
        if s.ended:
            return "end of video file (loop is off)"
        if not stale:
            return "streaming"
        if s.stale and s.last_error:  # the thread's own verdict, from this outage
            return s.last_error
        return "waiting for the first frame" if age is None else f"no frame for {age:.1f} s"

    # the thread --------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = BACKOFF_MIN_S
        while not self._stop.is_set():
            self._delivered = False
            try:
                self._serve()
            except Exception as exc:  # noqa: BLE001 - the thread must survive any driver error
                self._trouble(self._reason(exc))
            if self._stop.is_set() or self._ended():
                break
            self._close_source()
            if self._delivered:  # it worked until now: retry soon, then slow down
                backoff = BACKOFF_MIN_S
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2.0, BACKOFF_MAX_S)
            with self._lock:
                self._state.reopen_count += 1
        self._close_source()

    def _serve(self) -> None:
        """Opens the source and reads until it stalls, ends, or the stream is stopped."""
        self.source.open()
        last_progress = time.monotonic()
        # A camera may take a moment to deliver its first frame after opening.
        allowed = max(self.cfg.timeout_s, FIRST_FRAME_GRACE_S)
        read_slice = min(0.1, self.cfg.timeout_s / 2.0)  # short reads keep stop() responsive
        while not self._stop.is_set():
            frame = self.source.read(read_slice)
            now = time.monotonic()
            if frame is not None:
                self._deliver(frame, now)
                last_progress, allowed = now, self.cfg.timeout_s
                continue
            if getattr(self.source, "finished", False):
                self._mark_ended()
                return
            if now - last_progress > allowed:
                since = "the last frame" if self._delivered else "opening"
                self._trouble(f"no frame for {now - last_progress:.1f} s after {since} "
                              f"(timeout_s {self.cfg.timeout_s:g})")
                return

    def _deliver(self, frame: Frame, now: float) -> None:
        self._delivered = True
        with self._lock:
            s = self._state
            recovered, reopens = s.stale, s.reopen_count
            s.latest, s.frames, s.last_frame_mono, s.stale = frame, s.frames + 1, now, False
            s.arrivals.append(now)
        if recovered:
            self._log.info(f"{self._name}: frames flow again after {reopens} reopen(s)")
        if self._on_frame is None:
            return
        try:
            self._on_frame(frame)
            self._callback_failing = False
        except Exception:  # noqa: BLE001 - a consumer's bug must not stop the camera
            if not self._callback_failing:  # once per run of failures, not 30 times a second
                self._log.warning(f"{self._name}: on_frame callback failed:\n{traceback.format_exc()}")
            self._callback_failing = True

    def _reason(self, exc: Exception) -> str:
        if isinstance(exc, CameraError):  # already names the camera: keep only what went wrong
            return str(exc).removeprefix(f"{self._name}: ")
        return f"{type(exc).__name__}: {exc}"

    def _trouble(self, reason: str) -> None:
        """Records a failure; logs only on the way from healthy to stale, never per retry."""
        with self._lock:
            first = not self._state.stale
            self._state.stale, self._state.last_error = True, reason
        if first:
            self._log.warning(f"{self._name}: stale: {reason}; reopening it with a backoff of "
                              f"{BACKOFF_MIN_S:g} s doubling to {BACKOFF_MAX_S:g} s")

    def _mark_ended(self) -> None:
        with self._lock:
            self._state.ended = True
        self._log.warning(f"{self._name}: end of video file and loop is off; no more frames")

    def _ended(self) -> bool:
        with self._lock:
            return self._state.ended

    def _close_source(self) -> None:
        try:
            self.source.close()
        except Exception as exc:  # noqa: BLE001 - closing a broken device may fail too
            _LOG.debug("%s: close failed: %s", self._name, exc)
