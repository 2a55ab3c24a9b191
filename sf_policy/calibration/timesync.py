"""Time-sync check: are the cameras' and arms' stamps on one clock, and how far apart are
the messages the recorder will put in one frame?

For N seconds a node of its own subscribes to the three camera image topics and the four
arm state topics and keeps, per message, its header stamp and the host time it arrived.
Per stream it reports:

* **rate** (from the stamps) against the expected rate;
* **latency** = arrival - stamp, p50 / p99. Both sides are the host's wall clock, so a
  negative latency means stamps from the future: a device stamping with its own clock (a
  RealSense without global time, CAN hardware timestamps) rather than host time. A stream
  on another clock cannot be matched to the others at all, whatever its rate;
* **skew** to cam_high: for every cam_high stamp, the signed difference to the stream's
  nearest stamp, p50 and p99 of its magnitude. This is the pairing rule of the recorder
  (``sf_policy.record.sync``), so the p99 is the misalignment a recorded frame will have.
  Free-running cameras at one rate stay within half a period (16.7 ms at 30 Hz); more
  means dropped frames, a slower stream or drifting clocks.

Nearest-neighbour skew alone cannot see a constant clock offset on a fast stream (a 200 Hz
arm always has a stamp within 2.5 ms of anything); latency is what catches that.

The analysis is pure (:func:`analyse`) so it is tested on synthetic stamps as well as live.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .. import topics
from ..embodiment import SIDES

PIVOT = "cam_high"
ARM_STREAMS = tuple(f"{kind}_{side}" for kind in ("puppet", "master") for side in SIDES)
RATE_FRACTION = 0.8  # below this share of the expected rate: FAIL (the camera driver warns at the same share)


@dataclass(frozen=True)
class Stream:
    name: str
    topic: str
    kind: str            # "image" or "joints"
    expected_hz: float


@dataclass(frozen=True)
class Thresholds:
    max_latency_ms: float = 100.0   # p99; the recorder waits 0.25 s for late streams
    max_future_ms: float = 2.0      # p50 latency below -this: stamps ahead of the host clock
    max_skew_ms: float | None = None  # p99 |skew| to cam_high; default half cam_high's period


def default_streams(camera_namespaces: dict[str, str] | None = None, camera_hz: dict[str, float] | None = None,
                    arm_hz: float = 200.0) -> list[Stream]:
    """The three cameras (namespaces from cameras.yaml when given) and the four arm streams."""
    namespaces = {**topics.CAMERA_NAMESPACES, **(camera_namespaces or {})}
    streams = [Stream(role, f"{namespaces[role].rstrip('/')}/color/image_raw", "image",
                      (camera_hz or {}).get(role, 30.0)) for role in topics.CAMERA_ROLES]
    for name in ARM_STREAMS:
        kind, side = name.split("_")
        topic = topics.puppet_state(side) if kind == "puppet" else topics.master_state(side)
        streams.append(Stream(name, topic, "joints", arm_hz))
    return streams


# --- analysis --------------------------------------------------------------------------
@dataclass
class StreamResult:
    stream: Stream
    messages: int
    rate_hz: float = 0.0
    latency_ms: tuple[float, float] = (0.0, 0.0)   # p50, p99
    skew_ms: tuple[float, float] = (0.0, 0.0)      # p50 (signed), p99 of |skew|
    max_gap_ms: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        r = lambda v: round(float(v), 3)  # noqa: E731
        return {"topic": self.stream.topic, "messages": self.messages, "rate_hz": r(self.rate_hz),
                "expected_hz": r(self.stream.expected_hz),
                "latency_ms": {"p50": r(self.latency_ms[0]), "p99": r(self.latency_ms[1])},
                "skew_to_cam_high_ms": {"p50": r(self.skew_ms[0]), "p99_abs": r(self.skew_ms[1])},
                "max_gap_ms": r(self.max_gap_ms), "result": "PASS" if self.ok else "FAIL",
                **({"problems": list(self.problems)} if self.problems else {})}


def nearest_skew_ns(pivot: np.ndarray, other: np.ndarray) -> np.ndarray:
    """other's nearest stamp minus each pivot stamp, for pivot stamps inside other's span
    (outside it "nearest" is only the first or last message, not a pairing)."""
    other = np.sort(other)
    pivot = pivot[(pivot >= other[0]) & (pivot <= other[-1])]
    if len(pivot) == 0:
        return np.zeros(0, np.int64)
    idx = np.clip(np.searchsorted(other, pivot), 1, len(other) - 1)
    before, after = other[idx - 1], other[idx]
    return np.where(pivot - before <= after - pivot, before, after) - pivot


def _stream_result(stream: Stream, stamps: np.ndarray, arrivals: np.ndarray, pivot: np.ndarray | None,
                   limits: Thresholds, max_skew_ms: float) -> StreamResult:
    result = StreamResult(stream, len(stamps))
    if len(stamps) < 2:
        result.problems.append(f"{len(stamps)} messages on {stream.topic}: is it published (and named so)?")
        return result
    order = np.argsort(stamps)
    stamps, arrivals = stamps[order], arrivals[order]
    span = (stamps[-1] - stamps[0]) / 1e9
    result.rate_hz = (len(stamps) - 1) / span if span > 0 else 0.0
    result.max_gap_ms = float(np.diff(stamps).max() / 1e6)
    latency = (arrivals - stamps) / 1e6
    result.latency_ms = (float(np.percentile(latency, 50)), float(np.percentile(latency, 99)))
    if pivot is not None and len(pivot) and stream.name != PIVOT:
        skew = nearest_skew_ns(pivot, stamps) / 1e6
        if len(skew):
            result.skew_ms = (float(np.percentile(skew, 50)), float(np.percentile(np.abs(skew), 99)))
    _judge(result, limits, max_skew_ms)
    return result


def _judge(result: StreamResult, limits: Thresholds, max_skew_ms: float) -> None:
    s, p = result.stream, result.problems
    if result.rate_hz < RATE_FRACTION * s.expected_hz:
        p.append(f"rate {result.rate_hz:.1f} Hz is below {RATE_FRACTION:.0%} of the expected {s.expected_hz:g} Hz")
    if result.latency_ms[0] < -limits.max_future_ms:
        p.append(f"stamps are {-result.latency_ms[0]:.1f} ms ahead of the host clock (p50 latency): the source "
                 "stamps with a clock of its own, not host time")
    if result.latency_ms[1] > limits.max_latency_ms:
        p.append(f"latency p99 {result.latency_ms[1]:.1f} ms exceeds {limits.max_latency_ms:g} ms: stamps are old on "
                 "arrival (another clock, or an overloaded machine / network)")
    if s.name != PIVOT and result.skew_ms[1] > max_skew_ms:
        p.append(f"skew to {PIVOT} p99 {result.skew_ms[1]:.1f} ms exceeds {max_skew_ms:.1f} ms")


def analyse(streams: list[Stream], samples: dict[str, tuple[np.ndarray, np.ndarray]],
            limits: Thresholds = Thresholds()) -> list[StreamResult]:
    """``samples``: stream name -> (stamps ns, arrival ns)."""
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    pivot_stamps = samples.get(PIVOT, empty)[0]
    pivot_stream = next((s for s in streams if s.name == PIVOT), None)
    if limits.max_skew_ms is not None:
        max_skew = limits.max_skew_ms
    else:  # half of cam_high's measured period (its expected one when it is missing)
        hz = (len(pivot_stamps) - 1) / (np.ptp(pivot_stamps) / 1e9) if len(pivot_stamps) > 2 else (
            pivot_stream.expected_hz if pivot_stream else 30.0)
        max_skew = 500.0 / hz
    return [_stream_result(s, *map(np.asarray, samples.get(s.name, empty)),
                           pivot_stamps if len(pivot_stamps) else None, limits, max_skew) for s in streams]


def recorder_advice(results: list[StreamResult], recorder_wait_s: float = 0.25, stall_s: float = 0.5) -> dict:
    """What the measurement means for the recorder's parameters (``stall_s`` in recorder.yaml,
    FrameSync's ``wait_s``): both must exceed what the streams really do."""
    measured = [r for r in results if r.messages >= 2]
    latency = max((r.latency_ms[1] for r in measured), default=0.0)
    gap = max((r.max_gap_ms for r in measured), default=0.0)
    return {"latency_p99_ms": round(latency, 3), "max_gap_ms": round(gap, 3),
            "wait_s": recorder_wait_s, "wait_s_ok": latency < recorder_wait_s * 1000.0,
            "stall_s": stall_s, "stall_s_ok": gap < stall_s * 1000.0}


def report_dict(results: list[StreamResult], duration_s: float, limits: Thresholds) -> dict:
    return {"result": "PASS" if all(r.ok for r in results) else "FAIL", "duration_s": duration_s,
            "pivot": PIVOT, "thresholds": {"max_latency_ms": limits.max_latency_ms,
                                           "max_future_ms": limits.max_future_ms,
                                           "max_skew_ms": limits.max_skew_ms or "half of cam_high's period",
                                           "min_rate_fraction": RATE_FRACTION},
            "streams": {r.stream.name: r.as_dict() for r in results},
            "recorder": recorder_advice(results)}


# --- measuring over ROS 2 ----------------------------------------------------------------
def header_stamp_ns(raw: bytes) -> int:
    """The header stamp of a serialized message whose first field is std_msgs/Header (Image,
    JointState): CDR encapsulation (4 bytes), then int32 sec and uint32 nanosec. Reading the
    raw bytes spares deserializing megabyte images only to look at eight bytes."""
    little = raw[1] & 0x01  # representation id 0x0001 (CDR_LE) / 0x0000 (CDR_BE)
    sec, nanosec = struct.unpack("<iI" if little else ">iI", raw[4:12])
    return sec * 1_000_000_000 + nanosec


class Collector:
    """Arrival and stamp of every message, per stream; callbacks run on the executor thread."""

    def __init__(self, streams: list[Stream]):
        self.streams = streams
        self._data: dict[str, list[tuple[int, int]]] = {s.name: [] for s in streams}
        self._lock = threading.Lock()

    def callback(self, name: str) -> Callable[[bytes], None]:
        def on_message(raw: bytes) -> None:
            arrived = time.time_ns()
            with self._lock:
                self._data[name].append((header_stamp_ns(raw), arrived))
        return on_message

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {k: len(v) for k, v in self._data.items()}

    def samples(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        with self._lock:
            return {k: (np.array([s for s, _ in v], np.int64), np.array([a for _, a in v], np.int64))
                    for k, v in self._data.items()}


def measure(streams: list[Stream], duration_s: float, progress: Callable[[float, dict], None] | None = None,
            node_name: str = "calibrate_timesync") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Subscribes for ``duration_s`` (after discovery settles) in a context of its own."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, JointState

    # Best effort takes both reliable and best-effort publishers; a deep queue so a slow
    # callback does not drop what it is measuring.
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.BEST_EFFORT)
    context = rclpy.Context()
    rclpy.init(context=context)
    collector = Collector(streams)
    try:
        node = rclpy.create_node(node_name, context=context)
        for s in streams:
            node.create_subscription(Image if s.kind == "image" else JointState, s.topic, collector.callback(s.name),
                                     qos, raw=True)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        _spin_for(executor, duration_s, collector, progress)
        executor.shutdown()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    return collector.samples()


def _spin_for(executor, duration_s: float, collector: Collector, progress) -> None:
    start = time.monotonic()
    last_report = start
    while (elapsed := time.monotonic() - start) < duration_s:
        executor.spin_once(timeout_sec=0.05)
        if progress is not None and time.monotonic() - last_report >= 0.5:
            last_report = time.monotonic()
            progress(elapsed, collector.counts())
