"""Bag player node: plays recorded raw bags onto the live topics, so any node runs against a recording.

Parameters: ``bag`` (a bag directory, or a list of them played one after the other),
``rate`` (1.0: recorded speed), ``loop`` (false), ``start_paused`` (false), ``topics``
(empty: every recorded topic), ``restamp`` (true: header stamps moved to now, keeping the
offsets between streams; see sf_policy.record.playback), ``exit_when_done`` (true).

Each topic is published with the QoS it had live (images like the camera driver, joint
states like the arm drivers), as the recorded bytes. Services ``~/pause`` and ``~/resume``
(std_srvs/Trigger); progress on ``/diagnostics`` (1 Hz). The logic lives in
``sf_policy.record.playback``; this node only creates publishers and reports.
"""

from __future__ import annotations

import importlib
import sys

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_srvs.srv import Trigger

from sf_policy.record.bag import BagError
from sf_policy.record.playback import BagPlayback, Player, qos_kind

from .common import (COMMAND_QOS, ERROR, IMAGE_QOS, OK, SENSOR_QOS, diagnostic_status, diagnostics_publisher,
                     publish_diagnostics, run_node)

QOS = {"image": IMAGE_QOS, "sensor": SENSOR_QOS, "command": COMMAND_QOS,
       "default": QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)}


LISTS = ("bag", "topics")


def _strings(value) -> list[str]:
    """A string or list parameter as a list of non-empty strings ("a,b" splits too)."""
    items = [value] if isinstance(value, str) else list(value or ())
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def message_class(msgtype: str):
    """"sensor_msgs/msg/Image" -> sensor_msgs.msg.Image (an error naming the type if not installed)."""
    package, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError) as error:
        raise BagError(f"message type {msgtype} is not installed here: {error}") from error


class BagPlayerNode(Node):
    def __init__(self, **node_kwargs):
        super().__init__("bag_player", **node_kwargs)
        # bag and topics take a string or a list of strings: dynamic typing accepts both.
        listy = ParameterDescriptor(dynamic_typing=True)
        p = self.params = {name: self.declare_parameter(name, default, descriptor=listy if name in LISTS else None).value
                           for name, default in (("bag", ""), ("rate", 1.0), ("loop", False), ("start_paused", False),
                                                 ("topics", ""), ("restamp", True), ("exit_when_done", True))}
        bags = _strings(p["bag"])
        if not bags:
            raise ValueError("parameter bag: give a bag directory (or a list of them)")
        playback = BagPlayback(bags, _strings(p["topics"]) or None)
        self._reported_end = False
        self._pubs = {topic: self.create_publisher(message_class(msgtype), topic, QOS[qos_kind(topic, msgtype)])
                      for topic, msgtype in playback.topic_types.items()}
        self.player = Player(playback, self._publish, rate=float(p["rate"]), loop=bool(p["loop"]),
                             restamp=bool(p["restamp"]), paused=bool(p["start_paused"]))
        self.create_service(Trigger, "~/pause", self._service(self.player.pause, "paused"))
        self.create_service(Trigger, "~/resume", self._service(self.player.resume, "playing"))
        self._diag_pub = diagnostics_publisher(self)
        self.create_timer(1.0, self._report)
        self.create_timer(0.1, self._check_done)
        self.get_logger().info(f"playing {playback.total} messages on {len(self._pubs)} topics from "
                               f"{', '.join(bags)} at rate {p['rate']}{' (paused)' if p['start_paused'] else ''}")
        self.player.start()

    def _publish(self, topic: str, data: bytes) -> None:
        self._pubs[topic].publish(data)  # the recorded CDR bytes as they are

    def _service(self, action, word: str):
        def handle(_request, response):
            action()
            response.success, response.message = True, word
            return response
        return handle

    def _report(self) -> None:
        s = self.player.status
        level = ERROR if s.error else OK
        message = s.error or ("finished" if s.finished else "paused" if self.player.clock.paused else "playing")
        values = [("published", s.published), ("of", self.player.playback.total), ("passes", s.passes),
                  ("bag", s.current_bag), ("max_lag_ms", f"{s.lag_ms_max:.1f}")]
        publish_diagnostics(self, self._diag_pub, [diagnostic_status("bag_player", "bag_player", level, message,
                                                                     values)])

    def _check_done(self) -> None:
        status = self.player.status
        if not status.finished or self._reported_end:
            return
        self._reported_end = True
        if status.error:
            self.get_logger().error(f"playback stopped: {status.error}")
        if self.params["exit_when_done"]:
            self._report()
            self.get_logger().info(f"done: {status.published} messages published")
            raise SystemExit(1 if status.error else 0)

    def close(self) -> None:
        self.player.stop()


def main(args=None) -> int:
    try:
        return run_node(BagPlayerNode, args)
    except SystemExit as done:
        return int(done.code or 0)
    except (BagError, ValueError) as error:  # a bad bag or parameter: one line naming it, no traceback
        print(f"bag_player: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
