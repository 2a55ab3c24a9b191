"""The twin's ROS node exchanging real messages: states, images, commands, resets, episodes."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from rclpy.parameter import Parameter

from conftest import wait_for
from sf_policy import topics

pytestmark = pytest.mark.ros


def make_sim(ros, **params):
    from sf_nodes.sim_node import SimNode

    values = {"operator": "none", "width": 64, "height": 48, **params}
    return ros.add(SimNode(node_name="piper_twin", context=ros.context,
                           parameter_overrides=[Parameter(k, value=v) for k, v in values.items()]))


class Inbox:
    def __init__(self, ros, msg_type, topic, qos):
        self.items, self.lock = [], threading.Lock()
        node = ros.node(f"inbox_{len(ros.nodes)}")
        node.create_subscription(msg_type, topic, self._keep, qos)

    def _keep(self, msg):
        with self.lock:
            self.items.append(msg)

    def __len__(self):
        with self.lock:
            return len(self.items)

    def last(self):
        with self.lock:
            return self.items[-1]


def test_sim_node_speaks_the_drivers_topics_and_follows_commands(ros):
    from sensor_msgs.msg import CameraInfo, Image, JointState
    from sf_nodes.common import COMMAND_QOS, IMAGE_QOS, SENSOR_QOS, header

    puppet = Inbox(ros, JointState, topics.puppet_state("left"), SENSOR_QOS)
    master = Inbox(ros, JointState, topics.master_state("right"), SENSOR_QOS)
    image = Inbox(ros, Image, topics.camera_image("cam_high"), IMAGE_QOS)
    info = Inbox(ros, CameraInfo, topics.camera_info("cam_left_wrist"), IMAGE_QOS)
    make_sim(ros)
    wait_for(lambda: len(puppet) > 100 and len(master) > 100 and len(image) > 10 and len(info) > 10,
             timeout=15, what="states, images and camera info from the twin")
    img = image.last()
    assert (img.height, img.width, img.encoding) == (48, 64, "rgb8") and len(img.data) == 48 * 64 * 3
    assert info.last().k[0] > 0 and list(puppet.last().name)[-1] == "gripper"
    # follow mode: a command moves the left arm
    cmd_node = ros.node("sim_commander")
    pub = cmd_node.create_publisher(JointState, topics.arm_command("left"), COMMAND_QOS)
    goal = np.array(puppet.last().position)
    goal[0] += 0.25
    goal[6] = 0.02

    def send_and_check():
        msg = JointState(name=["joint1", "joint2", "joint3", "joint4", "joint5", "joint6", "gripper"],
                         position=goal.tolist())
        msg.header = header(__import__("time").time_ns(), "")
        pub.publish(msg)
        return np.allclose(puppet.last().position, goal, atol=5e-3)

    wait_for(send_and_check, timeout=10, period=0.033, what="the twin's left arm to follow the command")


def test_episodes_are_reported_and_reset_takes_task_and_seed(ros):
    from std_msgs.msg import String
    from std_srvs.srv import Trigger
    from sf_nodes.common import SIM_EPISODE_QOS

    episodes = Inbox(ros, String, topics.SIM_EPISODE, SIM_EPISODE_QOS)
    sim = make_sim(ros, step_limit=10, episodes=1, cameras=[""], seed=5)
    wait_for(lambda: len(episodes) >= 1, timeout=15, what="an episode report")
    first = json.loads(episodes.last().data)
    assert first == {**first, "episode": 1, "task": "lift_pot", "seed": 5, "success": False, "ticks": 10}
    sim.set_parameters([Parameter("seed", value=9)])
    client = ros.node("reset_client").create_client(Trigger, "/piper_twin/reset")
    assert client.wait_for_service(timeout_sec=5.0)
    reply = client.call(Trigger.Request(), timeout_sec=30.0)
    assert reply.success, reply.message
    wait_for(lambda: len(episodes) >= 2, timeout=15, what="the episode after the reset")
    assert json.loads(episodes.last().data)["seed"] == 9
