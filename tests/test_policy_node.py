"""The policy node: closed loop on the twin through the ROS graph, and its safety behaviour.

The closed-loop test runs the deployment plan itself (`policy_nodes(sim=True)`: the twin and
the policy node as processes) with a tiny checkpoint written here. The safety tests run the
node in-process with stand-in sensors and the model boundary (``infer``) handed in, so they
can make it return NaN or stall.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from rclpy.parameter import Parameter

from conftest import wait_for
from sf_policy import topics
from sf_policy.embodiment import PIPER_LIMITS, SIDES

pytestmark = pytest.mark.ros


def tiny_checkpoint(path):
    """A training-checkpoint-shaped directory with a random tiny policy (checkpoint/policy/)."""
    from sf_policy.model.policy import Policy, PolicyConfig
    from sf_policy.model.tokenizer import tiny_tokenizer

    tokenizer = tiny_tokenizer(path / "tokenizer")
    stats = {key: {"mean": np.zeros(14, np.float32), "std": np.full(14, 0.1, np.float32),
                   "q01": np.full(14, -0.3, np.float32), "q99": np.full(14, 0.3, np.float32),
                   "min": np.full(14, -0.5, np.float32), "max": np.full(14, 0.5, np.float32)}
             for key in ("observation.state", "action")}
    Policy.build(PolicyConfig(tiny=True), stats=stats, tokenizer=tokenizer).save_pretrained(path / "ckpt" / "policy")
    return path / "ckpt"


class Listener:
    def __init__(self, ros, msg_type, topic, qos):
        self.msgs, self.lock = [], threading.Lock()
        ros.node(f"listen_{abs(hash(topic))}").create_subscription(msg_type, topic, self._on, qos)

    def _on(self, msg):
        with self.lock:
            self.msgs.append((time.monotonic(), msg))

    def count(self) -> int:
        with self.lock:
            return len(self.msgs)

    def positions(self) -> np.ndarray:
        with self.lock:
            return np.array([m.position for _, m in self.msgs])


def test_policy_node_drives_the_twin_closed_loop(ros, tmp_path):
    from sensor_msgs.msg import JointState
    from sf_nodes.common import COMMAND_QOS, SENSOR_QOS

    from sf_policy.bringup.plan import policy_nodes
    from sf_policy.bringup.launcher import Launch

    checkpoint = tiny_checkpoint(tmp_path)
    # grasp_vegetable: the twin names each scene's vegetable and publishes that prompt on
    # /sf/prompt; the node must follow it instead of its launch-time prompt (the robot's).
    specs = policy_nodes("grasp_vegetable", sim=True, checkpoint=str(checkpoint))
    commands = Listener(ros, JointState, topics.arm_command("left"), COMMAND_QOS)
    puppet = Listener(ros, JointState, topics.puppet_state("left"), SENSOR_QOS)
    log: list[str] = []
    with Launch(specs, env=dict(os.environ), echo=log.append) as graph:
        wait_for(lambda: commands.count() >= 40, timeout=120, what="40 policy commands\n" + "\n".join(log[-30:]))
        assert not graph.dead(), log
        start = puppet.count()
        wait_for(lambda: puppet.count() > start + 100, timeout=30, what="the twin to keep publishing")
    sent = commands.positions()
    limits = [PIPER_LIMITS[n] for n in ("joint1", "joint2", "joint3", "joint4", "joint5", "joint6", "gripper")]
    assert np.isfinite(sent).all()
    for j, limit in enumerate(limits):
        assert (sent[:, j] >= limit.lower - 1e-6).all() and (sent[:, j] <= limit.upper + 1e-6).all()
    states = puppet.positions()
    assert np.abs(states[-1] - states[0]).max() > 1e-3, "the twin's arm did not move under the policy's commands"
    assert any("policy from" in line for line in log)
    assert any("prompt from /sf/prompt: 'pick up the" in line for line in log), log


# -- the node in-process, with stand-in sensors


class Sensors:
    """Three cameras and two arms at 30 Hz; ``images`` can be switched off (a stalled camera)."""

    def __init__(self, ros):
        from sensor_msgs.msg import Image, JointState
        from sf_nodes.common import IMAGE_QOS, SENSOR_QOS, header

        self.images = True
        node = ros.node("standin_sensors")
        cams = {r: node.create_publisher(Image, topics.camera_image(r), IMAGE_QOS) for r in topics.CAMERA_ROLES}
        arms = {s: node.create_publisher(JointState, topics.puppet_state(s), SENSOR_QOS) for s in SIDES}
        pixels = bytes(64 * 48 * 3)

        def publish():
            stamp = header(node.get_clock().now().nanoseconds, "")
            for side, pub in arms.items():
                pub.publish(JointState(header=stamp, name=["joint1", "joint2", "joint3", "joint4", "joint5", "joint6",
                                                           "gripper"], position=[0.0, 1.0, -1.0, 0.0, 0.0, 0.0, 0.02]))
            if self.images:
                for pub in cams.values():
                    pub.publish(Image(header=stamp, height=48, width=64, encoding="rgb8", step=64 * 3, data=pixels))

        node.create_timer(1 / 30, publish)


def start_node(ros, infer, **params):
    from rclpy.lifecycle import TransitionCallbackReturn
    from sf_nodes.policy_node import PolicyNode

    overrides = [Parameter(k, value=v) for k, v in {"prompt": "lift", "max_obs_age": 0.2, **params}.items()]
    node = ros.add(PolicyNode(infer=infer, context=ros.context, parameter_overrides=overrides))
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    return node


def test_the_node_follows_the_prompt_topic(ros):
    """/sf/prompt is latched: a prompt published before the node starts reaches it; a later
    one replaces it for the next chunk; an empty one is ignored."""
    from std_msgs.msg import String
    from sf_nodes.common import PROMPT_QOS

    Sensors(ros)
    publisher = ros.node("prompter").create_publisher(String, topics.PROMPT, PROMPT_QOS)
    publisher.publish(String(data="pick up the carrot with the right gripper"))
    seen: list[str] = []

    def infer(sample):
        seen.append(sample["prompt"])
        return holding_chunk(sample)

    node = start_node(ros, infer)
    wait_for(lambda: "pick up the carrot with the right gripper" in seen, timeout=20, what="the latched prompt")
    publisher.publish(String(data=""))
    publisher.publish(String(data="Stack the cup on the other cup."))
    wait_for(lambda: seen[-1] == "Stack the cup on the other cup.", timeout=20, what="the new prompt")
    assert "" not in seen and node.prompt == "Stack the cup on the other cup."


def test_rtc_mode_hands_the_model_the_plan_still_to_execute(ros):
    Sensors(ros)
    seen: list[dict] = []

    def infer(sample):
        seen.append(sample)
        return holding_chunk(sample)

    node = start_node(ros, infer, mode="rtc")
    wait_for(lambda: any("prefix_actions" in s for s in seen), timeout=20, what="a request carrying the plan")
    guided = next(s for s in seen if "prefix_actions" in s)
    assert guided["prefix_actions"].shape[1] == 14 and guided["inference_delay"] >= 1
    assert "prefix_actions" not in seen[0]  # the first chunk has no plan to follow
    assert node.scheduler.stats().guided >= 1


def test_an_arm_that_does_not_follow_latches_the_estop_naming_the_joint(ros, command_log):
    """The stand-in arms never move: commands that keep asking joint2 for 0.6 rad more leave
    the measured joints behind, and the tracking watchdog stops the node."""
    def reach(sample):
        chunk = holding_chunk(sample)
        chunk[:, [1, 8]] += 0.6
        return chunk

    Sensors(ros)
    node = start_node(ros, reach, tracking_max_duration=0.3)
    wait_for(lambda: node.safety.estopped, timeout=20, what="the tracking watchdog to trip")
    assert node.safety.estop_reason.startswith("tracking: left_joint2 stayed"), node.safety.estop_reason
    sent = command_log.count()
    time.sleep(0.5)
    assert command_log.count() == sent  # nothing commanded after the trip


def holding_chunk(sample) -> np.ndarray:
    """A model that asks to stay where the arm is (a chunk of the current state)."""
    return np.repeat(np.asarray(sample["state"], np.float32)[None], 50, axis=0)


@pytest.fixture
def command_log(ros):
    from sensor_msgs.msg import JointState
    from sf_nodes.common import COMMAND_QOS

    return Listener(ros, JointState, topics.arm_command("left"), COMMAND_QOS)


def test_a_stale_camera_makes_the_arms_hold(ros, command_log):
    sensors = Sensors(ros)
    node = start_node(ros, holding_chunk)
    wait_for(lambda: command_log.count() > 10, timeout=30, what="commands while the cameras stream")
    sensors.images = False
    wait_for(lambda: "old" in node.hold_reason, timeout=5, what=f"a hold on the stale camera ({node.hold_reason!r})")
    stalled_at = command_log.count()
    time.sleep(0.5)
    assert command_log.count() == stalled_at, "commands kept coming from a stale observation"
    sensors.images = True
    wait_for(lambda: command_log.count() > stalled_at + 5, timeout=10, what="commands again once the camera is back")


def test_nan_output_never_becomes_a_command(ros, command_log):
    Sensors(ros)
    calls = []

    def nan_model(sample):
        calls.append(1)
        chunk = holding_chunk(sample)
        chunk[:, 3] = np.nan
        return chunk

    node = start_node(ros, nan_model)
    wait_for(lambda: len(calls) > 3, timeout=30, what="several inferences")
    time.sleep(0.3)
    assert command_log.count() == 0
    assert node.scheduler.stats().errors > 0 or node.holds > 0


def test_estop_stops_commands_within_one_tick(ros, command_log):
    from std_srvs.srv import Trigger

    Sensors(ros)
    node = start_node(ros, holding_chunk)
    wait_for(lambda: command_log.count() > 10, timeout=30, what="commands before the e-stop")
    client = ros.node("estop_client").create_client(Trigger, f"/{node.get_name()}/estop")
    assert client.wait_for_service(timeout_sec=5)
    future = client.call_async(Trigger.Request())
    wait_for(future.done, timeout=5, what="the e-stop service")
    stopped_at = time.monotonic()
    time.sleep(0.5)
    with command_log.lock:
        late = [t for t, _ in command_log.msgs if t > stopped_at + 1 / 30 + 0.02]
    assert late == [] and node.safety.estopped
    assert "e-stop" in node.hold_reason


def test_remote_policy_server_drives_the_node(ros, command_log, tmp_path):
    """remote:=<url>: the node gets its chunks from `sf serve`'s app instead of a local model."""
    from rclpy.lifecycle import TransitionCallbackReturn
    from sf_nodes.policy_node import PolicyNode

    from sf_policy.serve.running import BackgroundServer
    from sf_policy.serve.server import create_app
    from sf_policy.train.checkpoint import load_policy

    checkpoint = tiny_checkpoint(tmp_path)
    Sensors(ros)
    with BackgroundServer(create_app(lambda: load_policy(checkpoint), token=None)) as server:
        node = ros.add(PolicyNode(context=ros.context, parameter_overrides=[
            Parameter("remote", value=server.url), Parameter("prompt", value="lift")]))
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        wait_for(lambda: command_log.count() > 10, timeout=60, what=f"commands from the remote policy "
                                                                     f"({node.hold_reason!r})")
        node.trigger_deactivate()
    assert np.isfinite(command_log.positions()).all()


def test_the_safety_filter_clamps_to_the_robot_yaml_limits(ros, tmp_path):
    """robot_config:=…: the limits the drivers and the teleop link honour, not the factory's."""
    from sf_nodes.policy_node import PolicyNode

    robot = tmp_path / "robot.yaml"
    robot.write_text("arms:\n  left: {can_port: can_left}\n  right: {can_port: can_right}\n"
                     "limits:\n  joint1: [-0.5, 0.5]\n  gripper: [0.0, 0.05]\n")
    node = ros.add(PolicyNode(infer=holding_chunk, context=ros.context,
                              parameter_overrides=[Parameter("robot_config", value=str(robot))]))
    far = np.array([2.0, 0.5, -0.5, 0.0, 0.3, 0.0, 0.07] * 2)
    decision = node.safety.filter(far, far, 0.0, 0.0)  # from the measured state (clamped) at rest
    assert decision.clamped and set(decision.clamped_joints) == {"left_joint1", "left_gripper", "right_joint1",
                                                                 "right_gripper"}
    assert decision.action[0] <= 0.5 and decision.action[6] <= 0.05
