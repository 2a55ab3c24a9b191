"""Small pieces every node shares: QoS profiles, headers, diagnostics and the main() wrapper."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterable

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from sensor_msgs.msg import JointState
from std_msgs.msg import Header

from sf_policy.embodiment import arm_positions
from sf_policy.topics import DIAGNOSTICS

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

OK, WARN, ERROR, STALE = (DiagnosticStatus.OK, DiagnosticStatus.WARN,
                          DiagnosticStatus.ERROR, DiagnosticStatus.STALE)


def header(stamp_ns: int, frame_id: str) -> Header:
    h = Header(frame_id=frame_id)
    h.stamp.sec, h.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return h


def stamp_to_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


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


