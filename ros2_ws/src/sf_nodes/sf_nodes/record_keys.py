"""Episode control from a keyboard or a foot pedal: keys in, recorder commands out.

Reads keys from a terminal (``tty``, default this process's own), maps them through the
key map (``keymap`` YAML, see teleop/pedal.yaml), publishes ``std_msgs/String`` commands on
``/recorder/command`` and shows the recorder's ``/recorder/status`` as one live line. It
needs a terminal with the focus, so it runs in a shell of its own (``ros2 run sf_nodes
record_keys``), not from a launch file. The key logic lives in ``sf_policy.teleop``.
"""

from __future__ import annotations

import json
import sys
import time

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from sf_policy import topics
from sf_policy.config import ConfigError
from sf_policy.teleop.episode_keys import EpisodeKeys, status_line
from sf_policy.teleop.keys import TerminalKeys, load_keymap

from .common import run_node

#: A command must not be lost (a missed "stop" records on), and a few may queue in a burst.
COMMAND_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)
#: Best effort and volatile match any publisher's profile; a status comes twice a second.
STATUS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                        durability=DurabilityPolicy.VOLATILE)
DISPLAYS = ("auto", "plain", "none")
_COLOURS = {"recording": "\x1b[1;31m", "saving": "\x1b[33m", "idle": "\x1b[32m"}
_RESET = "\x1b[0m"


class RecordKeys(Node):
    def __init__(self, **kwargs):
        super().__init__(kwargs.pop("node_name", "record_keys"), **kwargs)
        p = self.declare_parameter
        self.keymap_path = p("keymap", "").value
        self.prompt = p("prompt", "").value  # "" lets the recorder use the task's prompt
        self.tty = p("tty", "").value
        self.display = p("display", "auto").value
        poll_rate = float(p("poll_rate", 50.0).value)
        if self.display not in DISPLAYS:
            raise ValueError(f"parameter display: expected one of {', '.join(DISPLAYS)}, got {self.display!r}")
        self.keymap = load_keymap(self.keymap_path or None)
        self.episodes = EpisodeKeys(self.prompt)
        self.in_place = sys.stdout.isatty()
        self._status_time = None
        self.terminal = TerminalKeys(self.tty or None)
        self._pub = self.create_publisher(String, topics.RECORDER_COMMAND, COMMAND_QOS)
        self.create_subscription(String, topics.RECORDER_STATUS, self._on_status, STATUS_QOS)
        self.create_timer(1.0 / poll_rate, self._poll_keys)
        self._recorder_listening = False
        self.create_timer(0.5, self._check_recorder)
        bindings = ", ".join(f"{key}: {action}" for key, action in self.keymap.items())
        self.get_logger().info(f"keys -> {topics.RECORDER_COMMAND}: {bindings}")

    def _poll_keys(self) -> None:
        for key in self.terminal.read(0.0):
            action = self.keymap.get(key)
            if action is None:
                self.get_logger().info(f"key {key!r} is not bound", throttle_duration_sec=2.0)
            elif action == "quit":
                self.get_logger().info("quit")
                self.context.try_shutdown()  # the executor's spin ends; main() cleans up
                return
            elif not self._pub.get_subscription_count():
                # Sent now, the command would be lost (commands are not kept for late joiners: an
                # old "start" must never reach a recorder started later). Say so instead.
                self.get_logger().warning(f"{key} ({action}) ignored: no recorder listens on "
                                          f"{topics.RECORDER_COMMAND}")
            else:
                command = self.episodes.command(action, time.monotonic())
                self._pub.publish(String(data=command))
                self.get_logger().info(f"{key} -> {command!r}")

    def _check_recorder(self) -> None:
        listening = self._pub.get_subscription_count() > 0
        if listening != self._recorder_listening:
            self.get_logger().info(f"the recorder listens on {topics.RECORDER_COMMAND}" if listening else
                                   f"no recorder listens on {topics.RECORDER_COMMAND}; start it to record")
        self._recorder_listening = listening

    def _on_status(self, msg: String) -> None:
        try:
            status = json.loads(msg.data)
        except json.JSONDecodeError:
            self.get_logger().warning(f"unreadable status on {topics.RECORDER_STATUS}: {msg.data[:80]!r}",
                                      throttle_duration_sec=5.0)
            return
        self.episodes.on_status(status, time.monotonic())
        self._show(status)

    def _show(self, status: dict) -> None:
        if self.display == "none":
            return
        line = status_line(status)
        if self.in_place:  # a terminal: redraw one line in place
            colour = _COLOURS.get(str(status.get("state")), "") if self.display == "auto" else ""
            sys.stdout.write(f"\r{colour}{line}{_RESET if colour else ''}\x1b[K")
        else:  # a log file or a pipe: one line per status
            sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def close(self) -> None:
        """Give the terminal its settings back (echo, line editing)."""
        self.terminal.close()
        if self.in_place and self.display != "none":
            sys.stdout.write("\n")


def main(args: list[str] | None = None) -> int:
    try:
        return run_node(RecordKeys, args)
    except (ConfigError, ValueError) as exc:
        print(f"[record_keys] configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"[record_keys] {exc}; run it in a terminal of its own: ros2 run sf_nodes record_keys",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
