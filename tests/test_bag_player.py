"""The bag player over real DDS: a bag written by RawBagWriter is played onto its topics and a
subscriber receives every message, in order, restamped, with the recorded spacing / rate.
Plus the playback pieces without ROS and the console script's exit and error paths."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from rclpy.parameter import Parameter

from conftest import wait_for
from sf_policy import topics
from sf_policy.record.bag import IMAGE_TYPE, JOINT_STATE_TYPE, PROMPT_KEY, BagError, typestore
from sf_policy.record.bag_writer import RawBagWriter
from sf_policy.record.playback import BagPlayback, header_stamp_ns, qos_kind, restamp_cdr

T0 = 1_600_000_000_000_000_000
ARM_PERIOD = 20_000_000      # 50 Hz
IMAGE_PERIOD = 100_000_000   # 10 Hz
SECONDS = 0.6
JOINTS = topics.puppet_state("left")
IMAGES = topics.camera_image("cam_high")


def _header(stamp: int):
    T = typestore().types
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=stamp // 10**9,
                                                                          nanosec=stamp % 10**9), frame_id="f")


def joint_cdr(stamp: int, k: int) -> bytes:
    msg = typestore().types[JOINT_STATE_TYPE](header=_header(stamp), name=[], position=np.full(7, k / 100.0),
                                              velocity=np.zeros(0), effort=np.zeros(0))
    return bytes(typestore().serialize_cdr(msg, JOINT_STATE_TYPE))


def image_cdr(stamp: int, k: int) -> bytes:
    msg = typestore().types[IMAGE_TYPE](header=_header(stamp), height=48, width=64, encoding="rgb8", is_bigendian=0,
                                        step=192, data=np.full(48 * 64 * 3, k, np.uint8))
    return bytes(typestore().serialize_cdr(msg, IMAGE_TYPE))


def write_bag(path: Path, t0: int = T0) -> Path:
    """Arm states at 50 Hz, received 1 ms after their stamp; images at 10 Hz, received 4 ms after."""
    events = [(JOINTS, joint_cdr(t0 + k * ARM_PERIOD, k), t0 + k * ARM_PERIOD + 1_000_000)
              for k in range(int(SECONDS * 50))]
    events += [(IMAGES, image_cdr(t0 + k * IMAGE_PERIOD, k), t0 + k * IMAGE_PERIOD + 4_000_000)
               for k in range(int(SECONDS * 10))]
    with RawBagWriter(path, {JOINTS: JOINT_STATE_TYPE, IMAGES: IMAGE_TYPE}, custom_data={PROMPT_KEY: "p"}) as bag:
        for topic, raw, received in sorted(events, key=lambda e: e[2]):
            bag.write(topic, raw, received)
    return path


def test_playback_orders_bags_filters_topics_and_restamps_in_place(tmp_path):
    first, second = write_bag(tmp_path / "a"), write_bag(tmp_path / "b", t0=T0 + 10**9)
    everything = list(BagPlayback([first, second]))
    assert len(everything) == 2 * (30 + 6)
    assert [m.time_ns for m in everything] == sorted(m.time_ns for m in everything)
    assert [m.first for m in everything].count(True) == 2
    only = list(BagPlayback([first], topics=[JOINTS]))
    assert {m.topic for m in only} == {JOINTS} and len(only) == 30
    with pytest.raises(BagError, match="/nope"):
        BagPlayback([first], topics=["/nope"])

    moved = restamp_cdr(only[3].data, 123_456_789_012)
    msg = typestore().deserialize_cdr(moved, JOINT_STATE_TYPE)  # still a valid message, only the stamp changed
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (123, 456_789_012)
    assert list(msg.position) == [0.03] * 7 and header_stamp_ns(moved) == 123_456_789_012
    assert (qos_kind(IMAGES, IMAGE_TYPE), qos_kind(JOINTS, JOINT_STATE_TYPE),
            qos_kind(topics.arm_command("left"), JOINT_STATE_TYPE)) == ("image", "sensor", "command")


class Received:
    def __init__(self, ros, msg_type, topic, qos):
        self.items, self.lock = [], threading.Lock()
        ros.node(f"rx_{abs(hash(topic))}").create_subscription(msg_type, topic, self._on, qos)

    def _on(self, msg):
        with self.lock:
            self.items.append((time.time_ns(), msg))

    def __len__(self):
        with self.lock:
            return len(self.items)


@pytest.mark.ros
def test_player_publishes_every_message_in_order_on_the_recorded_time_line(ros, tmp_path):
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, JointState
    from std_srvs.srv import Trigger

    from sf_nodes.bag_player import BagPlayerNode

    bag = write_bag(tmp_path / "bag")
    deep = lambda reliability: QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=reliability)  # noqa: E731
    joints = Received(ros, JointState, JOINTS, deep(ReliabilityPolicy.BEST_EFFORT))
    images = Received(ros, Image, IMAGES, deep(ReliabilityPolicy.RELIABLE))
    rate = 2.0
    params = {"bag": str(bag), "rate": rate, "start_paused": True, "exit_when_done": False}
    player = ros.add(BagPlayerNode(context=ros.context,
                                   parameter_overrides=[Parameter(k, value=v) for k, v in params.items()]))
    # Paused until both subscriptions have matched: a volatile publisher's early messages reach no one.
    wait_for(lambda: all(p.get_subscription_count() > 0 for p in player._pubs.values()), timeout=10,
             what="the player's publishers to match the subscribers")
    time.sleep(0.2)
    assert len(joints) == 0 and player.player.status.published == 0  # really paused
    client = ros.node("player_client").create_client(Trigger, "/bag_player/resume")
    assert client.wait_for_service(timeout_sec=5)
    started = time.time_ns()
    answer = client.call_async(Trigger.Request())
    wait_for(answer.done, timeout=5, what="the resume service's answer")
    assert answer.result().success and answer.result().message == "playing"
    wait_for(lambda: player.player.finished and len(joints) == 30 and len(images) == 6, timeout=10,
             what=f"30 joint states and 6 images (got {len(joints)}, {len(images)})")

    arrived = np.array([t for t, _ in joints.items])
    positions = [m.position[0] for _, m in joints.items]
    stamps = np.array([m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for _, m in joints.items])
    assert positions == pytest.approx([k / 100 for k in range(30)])  # all of them, in order
    # restamped onto now, with the recorded spacing divided by the rate (to the nanosecond's rounding)
    assert np.abs(np.diff(stamps) - ARM_PERIOD / rate).max() <= 1
    assert abs(stamps[0] - started) < 2e9 and np.all(arrived - stamps > -5e6)
    span = (arrived[-1] - arrived[0]) / 1e9
    expected = 29 * ARM_PERIOD / rate / 1e9                     # 0.29 s
    assert expected * 0.8 < span < expected + 0.5, span           # not all at once, not at recorded speed
    image_stamps = np.array([m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for _, m in images.items])
    # one mapping for every topic: image k and arm sample 5k were stamped at the same instant, and still are
    assert np.abs(image_stamps - stamps[::5]).max() <= 1
    assert [int(m.data[0]) for _, m in images.items] == list(range(6))


def test_console_script_exits_when_done_and_names_a_missing_bag(tmp_path):
    bag = write_bag(tmp_path / "bag")
    exe = str(Path(sys.executable).parent / "bag_player")
    env = dict(os.environ)
    done = subprocess.run([exe, "--ros-args", "-p", f"bag:={bag}", "-p", "rate:=4.0"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "36 messages published" in done.stderr + done.stdout
    missing = subprocess.run([exe, "--ros-args", "-p", f"bag:={tmp_path / 'nope'}"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and str(tmp_path / "nope") in missing.stderr


def test_plan_runs_the_player_on_two_bags_through_its_command_line(tmp_path):
    from sf_policy.bringup.plan import bag_player_node
    from sf_policy.bringup.launcher import resolve_executable

    bags = [write_bag(tmp_path / "a"), write_bag(tmp_path / "b", t0=T0 + 10**9)]
    spec = bag_player_node(bags, rate=4.0, topics=(JOINTS,))
    done = subprocess.run(resolve_executable(spec) + spec.ros_args(), env=dict(os.environ), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "60 messages published" in done.stderr + done.stdout  # both bags, joint states only
