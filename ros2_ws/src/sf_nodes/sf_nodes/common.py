"""Small pieces the nodes share: QoS profiles, headers, image messages, diagnostics and the main() wrapper.

Nodes import from here, never from each other (what is ROS-free lives in ``sf_policy``)."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Header

from sf_policy.embodiment import arm_positions
from sf_policy.topics import DIAGNOSTICS

if TYPE_CHECKING:
    from sf_policy.drivers.cameras import Intrinsics

#: Small sensor streams (joint states): best effort, keep the latest few. Subscribers
#: must be best effort too (ros2 topic echo and rviz adapt by themselves).
SENSOR_QOS = qos_profile_sensor_data
#: Images: reliable, keep the latest 2. Measured here between two processes with Fast DDS's
#: default transports, a 640x480 rgb8 image (921 KB) published best effort arrived at
#: 1-2 Hz (its UDP fragments are lost; the default shared-memory segment is too small),
#: reliable at 28 Hz. A reliable publisher also serves best-effort subscribers; for those,
#: config/fastdds_large_data.xml (set by our runners, see sf_policy.bringup.env) fixes the rate.
IMAGE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2,
                       reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
#: Commands: reliable, and only the newest matters (a queued old command is a stale one).
COMMAND_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                         reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
#: The prompt (topics.PROMPT): latched, so a node that starts later still gets the current one.
PROMPT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                        reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
DIAGNOSTICS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
#: Recorder commands (topics.RECORDER_COMMAND), for the recorder and the twin's scripted pedal: a few may
#: queue in a burst, none may be lost.
RECORDER_COMMAND_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
#: The recorder's status (topics.RECORDER_STATUS): the newest one, latched for late joiners.
RECORDER_STATUS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
#: The twin's finished-episode reports (topics.SIM_EPISODE): all of them, for late joiners too.
SIM_EPISODE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)

#: Samples an image subscription keeps until the executor takes them: one second of images. With
#: best effort, a deeper queue is what turns a late executor (GC, a burst of saving work on two
#: cores) into a delay instead of a lost frame: with depth 5 the recorder's soak lost ~1 frame in
#: 600 on a loaded 2-core machine (bench/record.py, docs/recording.md).
IMAGE_DEPTH = 30


def image_qos(reliability: str) -> QoSProfile:
    """The QoS of a subscription to camera images (recorder, policy node); ``reliability`` is the
    nodes' ``image_reliability`` parameter (best_effort | reliable)."""
    policies = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
    if reliability not in policies:
        raise ValueError(f"parameter image_reliability: expected best_effort or reliable, got {reliability!r}")
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=IMAGE_DEPTH, reliability=policies[reliability])


OK, WARN, ERROR, STALE = (DiagnosticStatus.OK, DiagnosticStatus.WARN,
                          DiagnosticStatus.ERROR, DiagnosticStatus.STALE)


def header(stamp_ns: int, frame_id: str) -> Header:
    h = Header(frame_id=frame_id)
    h.stamp.sec, h.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return h


def stamp_to_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def image_msg(array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> Image:
    array = np.ascontiguousarray(array)
    height, width = array.shape[:2]
    return Image(header=header(stamp_ns, frame_id), height=height, width=width, encoding=encoding,
                 is_bigendian=int(sys.byteorder == "big"), step=array.strides[0], data=array.tobytes())


def camera_info_msg(intr: Intrinsics, stamp_ns: int, frame_id: str) -> CameraInfo:
    fx, fy, cx, cy = intr.fx, intr.fy, intr.cx, intr.cy
    return CameraInfo(header=header(stamp_ns, frame_id), width=intr.width, height=intr.height,
                      distortion_model=intr.distortion_model, d=list(intr.coefficients),
                      k=[fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0],
                      r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                      p=list(intr.projection) if intr.projection is not None
                      else [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0])


def diagnostic_status(name: str, hardware_id: str, level: bytes, message: str,
                      values: Iterable[tuple[str, object]] = ()) -> DiagnosticStatus:
    return DiagnosticStatus(level=level, name=name, hardware_id=hardware_id, message=message,
                            values=[KeyValue(key=k, value=str(v)) for k, v in values])


def publish_diagnostics(node: Node, publisher, statuses: list[DiagnosticStatus]) -> None:
    arr = DiagnosticArray(status=statuses)
    arr.header.stamp = node.get_clock().now().to_msg()
    publisher.publish(arr)


def diagnostics_publisher(node: Node):
    return node.create_publisher(DiagnosticArray, DIAGNOSTICS, DIAGNOSTICS_QOS)


def run_node(make_node: Callable[[], Node], args: list[str] | None = None) -> int:
    """Standard entry point: init, spin, clean shutdown on Ctrl-C.

    The executor is single-threaded on purpose. Measured here (rclpy 9.1, kilted wheels):
    with a MultiThreadedExecutor in the process, other Python threads (piper_sdk's CAN
    reader, camera grabbers) were starved of the GIL and 200 Hz arm feedback fell to
    5-50 Hz; with the SingleThreadedExecutor it stayed at 200 Hz. Callbacks here are short,
    and the hot paths (CAN feedback, camera frames) publish from their own threads.
    """
    # Ctrl-C / SIGTERM only set a flag: the default KeyboardInterrupt lands in whatever Python
    # frame runs, and inside a pybind call (message deserialisation) it became a TypeError and
    # exit status 1 instead of a clean shutdown (seen in the recorder crash tests).
    # After the first one, SIGINT and SIGTERM are ignored to the end of the process: a terminal's
    # Ctrl-C reaches the whole process group and `ros2 launch` then sends its own SIGINT, which
    # landed during teardown, or after Python's finalisation had put the default handler back, and
    # ended policy_node and sim_node with -2 ("process has died"). A hung teardown is launch's to
    # escalate (SIGKILL); an ignored signal stays ignored through finalisation, a handler does not.
    rclpy.init(args=args if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    def request_stop(*_):
        stop.set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, request_stop)
    node = None
    try:
        node = make_node()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while rclpy.ok() and not stop.is_set():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
        for sig in (signal.SIGINT, signal.SIGTERM):  # the process ends: nothing more to stop
            signal.signal(sig, signal.SIG_IGN)
    return 0


def stale_reason(node: Node, msg, max_age_s: float) -> str:
    """Why a stamped command must not be executed ("" when it is fresh)."""
    if msg.header.stamp.sec == 0 and msg.header.stamp.nanosec == 0:
        return "command has no header.stamp; stamp commands so stale ones can be refused"
    age = (node.get_clock().now().nanoseconds - stamp_to_ns(msg.header.stamp)) / 1e9
    if age > max_age_s:
        return f"stale command: {age * 1000:.0f} ms old (max_command_age {max_age_s * 1000:.0f} ms)"
    return ""


def ordered_positions(msg: JointState) -> np.ndarray:
    """Positions in ARM_STATE_NAMES order: by name when names are given, else by position."""
    return arm_positions(msg.name, msg.position)


