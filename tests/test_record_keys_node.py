"""record_keys over DDS: keys typed into a pty reach /recorder/command as the recorder's words."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import termios
import threading
import time

import pytest
from rclpy.parameter import Parameter

from conftest import REPO, wait_for
from sf_policy import topics

pytestmark = pytest.mark.ros

PAGE_DOWN = b"\x1b[6~"


class Commands:
    """What arrives on /recorder/command, through a plain rclpy subscriber."""

    def __init__(self, ros):
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from std_msgs.msg import String

        self.items, self.lock = [], threading.Lock()
        self.node = ros.node("recorder_standin")
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(String, topics.RECORDER_COMMAND, self._keep, qos)
        self.status_pub = self.node.create_publisher(String, topics.RECORDER_STATUS, qos)

    def _keep(self, msg):
        with self.lock:
            self.items.append(msg.data)

    def all(self):
        with self.lock:
            return list(self.items)

    def status(self, state):
        from std_msgs.msg import String

        self.status_pub.publish(String(data=json.dumps({"state": state, "episode": 1, "duration_s": 1.0,
                                                        "frames": 30})))


@pytest.fixture
def terminal():
    master, slave = pty.openpty()
    yield master, slave
    os.close(master)
    os.close(slave)


def test_keys_and_pedal_reach_the_recorder_as_commands(ros, terminal):
    from sf_nodes.record_keys import RecordKeys

    master, slave = terminal
    commands = Commands(ros)
    node = ros.add(RecordKeys(node_name="record_keys", context=ros.context, parameter_overrides=[
        Parameter("tty", value=os.ttyname(slave)), Parameter("prompt", value="lift the pot"),
        Parameter("keymap", value=str(REPO / "teleop" / "pedal.yaml")), Parameter("display", value="none")]))
    wait_for(lambda: node._pub.get_subscription_count() > 0, what="the recorder stand-in's subscription")

    def press(keys: bytes, expect: list[str]):
        os.write(master, keys)
        wait_for(lambda: commands.all()[-len(expect):] == expect, timeout=3, what=f"{expect} after {keys!r}")

    press(b" ", ["start lift the pot"])              # keyboard: space toggles
    press(b"x", ["start lift the pot"])              # unbound: nothing sent
    press(b"d", ["discard"])                         # keyboard: d discards
    press(PAGE_DOWN, ["start lift the pot"])         # pedal: page down toggles (we discarded: start)
    press(b"b", ["rerecord"])                        # pedal: b re-records
    assert len(commands.all()) == 4
    # the recorder's status decides the toggle once it postdates our last command
    wait_for(lambda: node.episodes.recording(time.monotonic()), what="our own rerecord to count as recording")
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        commands.status("idle")  # the recorder ended the episode by itself (e.g. a stream stalled)
        time.sleep(0.1)
    press(PAGE_DOWN, ["start lift the pot"])
    assert len(commands.all()) == 5


def test_record_keys_process_quits_on_q_and_gives_the_terminal_back(ros, terminal):
    master, slave = terminal
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen([sys.executable, "-m", "sf_nodes.record_keys", "--ros-args",
                             "-p", f"tty:={os.ttyname(slave)}", "-p", "display:=plain"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    try:
        wait_for(lambda: any("keys -> /recorder/command" in line for line in lines) or proc.poll() is not None,
                 timeout=20, what="record_keys to come up")
        assert proc.poll() is None, "".join(lines)
        os.write(master, b" ")  # nobody listens yet: the key is refused, not lost silently
        wait_for(lambda: any("ignored: no recorder listens" in line for line in lines), what="the refusal")
        commands = Commands(ros)
        wait_for(lambda: any("the recorder listens" in line for line in lines), timeout=10,
                 what="record_keys to see the recorder's subscription")
        os.write(master, b" ")
        wait_for(lambda: commands.all() == ["start"], timeout=5, what="start from the process")
        os.write(master, b"q")
        assert proc.wait(timeout=10) == 0, "".join(lines)
        assert termios.tcgetattr(slave) == before, "the terminal was left without echo"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
