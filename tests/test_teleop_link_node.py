"""The software link over DDS: real drivers on simulated CAN buses, the link node, the twin."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
from rclpy.parameter import Parameter

from conftest import wait_for
from sf_policy import topics
from sf_policy.sim.piper_can import JOINT_CTRL, SimulatedPiper

from test_arm_driver_node import Listener, diagnostics, level_of, make_driver, write_robot

pytestmark = pytest.mark.ros

REST = np.array([0.1, 0.6, -0.4, 0.05, 0.2, -0.1, 0.03])
NAMES = ["joint1", "joint2", "joint3", "joint4", "joint5", "joint6", "gripper"]


def make_link(ros, **params):
    from sf_nodes.teleop_link import TeleopLink

    values = {"sides": ["left"], "rate": 50.0, "diagnostics_period": 0.2, **params}
    return ros.add(TeleopLink(node_name="teleop_link", context=ros.context,
                              parameter_overrides=[Parameter(k, value=v) for k, v in values.items()]))


def make_master_driver(ros, robot_config, side="left"):
    from sf_nodes.arm_driver import PiperArmDriver

    values = {"side": side, "robot_config": robot_config, "diagnostics_period": 0.1, "mode": "master",
              "autostart": True}
    node = PiperArmDriver(node_name=f"piper_{side}_master", context=ros.context,
                          parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
    return ros.add(node)


class Operator:
    """The master arm's trajectory, set by the test: the operator's hand."""

    def __init__(self, start):
        self.target, self.lock = np.array(start, dtype=float), threading.Lock()

    def set(self, target):
        with self.lock:
            self.target = np.array(target, dtype=float)

    def __call__(self, t):
        with self.lock:
            return self.target.copy()


def commands_listener(ros, side="left"):
    from sensor_msgs.msg import JointState
    from sf_nodes.common import COMMAND_QOS

    return Listener(ros, JointState, topics.arm_command(side), COMMAND_QOS)


def stamped_at(listener):
    with listener.lock:
        return [(m.header.stamp.sec + m.header.stamp.nanosec * 1e-9, np.array(m.position)) for m in listener.messages]


def test_master_on_its_own_bus_drives_the_puppet_through_the_link(ros, tmp_path, request):
    master_bus, puppet_bus = f"{request.node.name}_M", f"{request.node.name}_P"
    hand = Operator(REST)
    with SimulatedPiper(master_bus, master=hand, puppet=False) as master_sim, \
            SimulatedPiper(puppet_bus, initial=REST) as puppet_sim:
        diag = diagnostics(ros)
        cmds = commands_listener(ros)
        masters_cfg = tmp_path / "masters"
        masters_cfg.mkdir()
        make_master_driver(ros, write_robot(masters_cfg, {"left": master_bus}))
        make_driver(ros, write_robot(tmp_path, {"left": puppet_bus}), autostart=True)
        wait_for(lambda: puppet_sim.snapshot().motors_enabled, what="the puppet's driver to enable it")
        make_link(ros, velocity_scale=0.5)
        # the operator moves the master; the puppet follows over ROS, not over the bus
        goal = REST + np.array([0.15, 0.1, -0.1, 0.1, 0.1, 0.15, 0.02])
        hand.set(goal)
        wait_for(lambda: np.allclose(puppet_sim.snapshot().position, goal, atol=3e-3), timeout=10,
                 what="the puppet to reach the master's pose")
        assert not master_sim.received, "a driver sent frames on the master's bus"
        probe = ros.node("probe")
        assert probe.count_publishers(topics.puppet_state("left")) == 1, "the master's driver publishes puppet state"
        assert probe.count_subscribers(topics.arm_command("left")) == 2  # the puppet's driver and our listener
        # speed cap: a 1.2 rad jump of the master becomes a ramp of commands
        n0 = cmds.count()
        far = goal + np.array([1.2, 0, 0, 0, 0, 0, 0])
        hand.set(far)
        wait_for(lambda: np.allclose(puppet_sim.snapshot().position, far, atol=3e-3), timeout=10,
                 what="the puppet to reach the far pose")
        ramp = stamped_at(cmds)[n0 - 1:]
        steps = [(abs(b[1][0] - a[1][0]), b[0] - a[0]) for a, b in zip(ramp, ramp[1:])]
        cap = 0.5 * math.pi  # velocity_scale x joint1's max speed
        # (the listener keeps the newest command only, so it may skip some: bound by elapsed time)
        assert all(step <= cap * dt + 1e-6 for step, dt in steps), "a step beat the speed cap"
        assert len(steps) >= 1.2 / (cap * 2 / 50), "the jump was not spread over a ramp"
        rate = (len(ramp) - 1) / (ramp[-1][0] - ramp[0][0])
        assert rate <= 51, f"commands at {rate:.1f} Hz, above the link's rate"
        # the master goes silent: no more commands, the puppet holds, the link says why
        master_sim.silent = True
        time.sleep(0.3)
        held, n_frames = cmds.count(), sum(1 for i in puppet_sim.received_ids() if i in JOINT_CTRL)
        time.sleep(0.5)
        assert cmds.count() == held, "the link kept commanding without a master"
        assert sum(1 for i in puppet_sim.received_ids() if i in JOINT_CTRL) == n_frames
        wait_for(lambda: (s := level_of(diag, "teleop_link: left")) and "stale master" in s[1],
                 what="a diagnostic naming the stale master")
        # the master's driver reports its silent bus
        wait_for(lambda: (s := level_of(diag, "piper_arm_driver: left master")) and s[0] == b"\x02",
                 what="the master driver's ERROR on a silent bus")
        master_sim.silent = False
        hand.set(goal)
        wait_for(lambda: np.allclose(puppet_sim.snapshot().position, goal, atol=3e-3), timeout=10,
                 what="the puppet to follow again")


def test_the_link_refuses_nan_and_stale_master_samples(ros):
    """Master samples from a plain publisher: NaN and old stamps never become commands."""
    from sensor_msgs.msg import JointState
    from sf_nodes.common import SENSOR_QOS, header

    node = ros.node("fake_arms")
    master_pub = node.create_publisher(JointState, topics.master_state("right"), SENSOR_QOS)
    puppet_pub = node.create_publisher(JointState, topics.puppet_state("right"), SENSOR_QOS)
    cmds = commands_listener(ros, "right")
    diag = diagnostics(ros)
    make_link(ros, sides=["right"], max_master_age=0.1)
    wait_for(lambda: master_pub.get_subscription_count() and puppet_pub.get_subscription_count(),
             what="the link's subscriptions")

    def publish_for(seconds, position, age=0.0):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            stamp = time.time_ns()
            puppet_pub.publish(JointState(header=header(stamp, ""), name=NAMES, position=REST.tolist()))
            master_pub.publish(JointState(header=header(stamp - int(age * 1e9), ""), name=NAMES,
                                          position=[float(v) for v in position]))
            time.sleep(0.005)

    def publish_until(condition, position, what, timeout=10.0):
        # Discovery between the link's command publisher and our listener takes its own time
        # on a loaded machine: wait on the outcome, not on a fixed window.
        end = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < end, f"timed out waiting for {what}"
            publish_for(0.1, position)

    publish_until(lambda: cmds.count() > 10, REST + 0.05, "commands from good samples")
    assert all(np.all(np.isfinite(m.position)) for m in cmds.messages)
    with_nan = (REST + 0.05).tolist()
    with_nan[2] = math.nan
    for position, age, why in [(with_nan, 0.0, "master samples refused: non-finite master value for joint3"),
                               (REST + 0.05, 0.3, "holding the puppet: stale master sample")]:
        publish_for(0.2, position, age)  # let the last good sample's commands drain
        n = cmds.count()
        publish_for(0.5, position, age)
        assert cmds.count() == n, f"commands passed with {why}"
        wait_for(lambda: (s := level_of(diag, "teleop_link: right")) and s[1].startswith(why), what=why)
    publish_until(lambda: cmds.count() > n, REST + 0.05, "good samples to resume the link")


def test_twin_with_the_software_link_moves_its_puppets_only_through_the_link(ros):
    """The twin's scripted operator moves the masters; the puppets wait for the link's commands."""
    from sensor_msgs.msg import JointState
    from sf_nodes.common import SENSOR_QOS
    from sf_nodes.sim_node import SimNode

    puppets = {s: Listener(ros, JointState, topics.puppet_state(s), SENSOR_QOS) for s in ("left", "right")}
    masters = {s: Listener(ros, JointState, topics.master_state(s), SENSOR_QOS) for s in ("left", "right")}
    ros.add(SimNode(node_name="piper_twin", context=ros.context, parameter_overrides=[
        Parameter("operator", value="scripted"), Parameter("link", value="software"),
        Parameter("cameras", value=[""]), Parameter("task", value="lift_pot")]))
    wait_for(lambda: all(x.count() > 20 for x in [*puppets.values(), *masters.values()]), timeout=15,
             what="the twin's states")
    start = {s: np.array(puppets[s].last().position) for s in puppets}

    def gap(side):
        return np.abs(np.array(masters[side].last().position) - np.array(puppets[side].last().position))[:6].max()

    wait_for(lambda: gap("left") > 0.1 or gap("right") > 0.1, timeout=10, what="the operator to move a master")
    assert all(np.allclose(puppets[s].last().position, start[s], atol=0.02) for s in puppets), \
        "a puppet moved without a command"
    make_link(ros, sides=["left", "right"], velocity_scale=1.0)
    moved = [s for s in puppets if gap(s) > 0.1]
    wait_for(lambda: all(gap(s) < 0.05 for s in moved), timeout=10, what="the puppets to catch up with the masters")
    assert any(np.abs(np.array(puppets[s].last().position) - start[s]).max() > 0.1 for s in moved)


@pytest.mark.slow  # ~8 s: the default tier stays under 5 minutes
def test_software_link_bringup_runs_as_processes(ros, tmp_path):
    """driver_nodes(link="software") with simulated arms, run by the launcher: master driver,
    puppet driver and link node in processes of their own; the puppet follows the master's wave."""
    import os

    from sensor_msgs.msg import JointState
    from sf_nodes.common import SENSOR_QOS
    from sf_policy.bringup.plan import driver_nodes
    from sf_policy.bringup.launcher import Launch

    from conftest import BRINGUP

    robot = write_robot(tmp_path, {"left": "sim_can_left"})  # one arm: fewer processes on a small machine
    specs = driver_nodes(BRINGUP, sim=True, mode="teleop", link="software", robot_config=robot)
    assert [(s.name, s.parameters.get("mode")) for s in specs] == [
        ("piper_left", "follow"), ("piper_left_master", "master"), ("teleop_link", None)]
    master, puppet = Listener(ros, JointState, topics.master_state("left"), SENSOR_QOS), \
        Listener(ros, JointState, topics.puppet_state("left"), SENSOR_QOS)
    cmds = commands_listener(ros)
    log = []
    with Launch(specs, env=dict(os.environ), echo=log.append) as launch:
        # Our process discovers each of the three on its own: the master's samples and the link's
        # commands arriving say nothing about the puppet driver's samples (under load they came
        # later, and puppet.last() was None after 200 master samples), nor about the puppet driver
        # hearing the link. So wait on each: every stream flowing, and the puppet moving under
        # the link's commands (it holds still without them); then 50 more commands before
        # measuring, as the settling time. Generous deadlines: discovery takes seconds under load.
        def streams():
            return f"{master.count()} master, {puppet.count()} puppet samples, {cmds.count()} commands"

        def settle(condition, what, timeout=60.0):
            deadline = time.monotonic() + timeout
            while not condition():
                assert not launch.dead(), f"a process died while waiting for {what}\n" + "\n".join(log[-20:])
                assert time.monotonic() < deadline, (f"timed out after {timeout} s waiting for {what} "
                                                     f"({streams()})\n" + "\n".join(log[-20:]))
                time.sleep(0.05)

        settle(lambda: master.count() > 200 and puppet.count() > 200 and cmds.count() > 0, "all three streams")
        rest = np.array(puppet.messages[0].position)
        settle(lambda: np.abs(np.array(puppet.last().position) - rest)[:6].max() > 0.05,
               "the puppet to move under the link's commands")
        moved_at = cmds.count()
        settle(lambda: cmds.count() > moved_at + 50, "50 more commands from the link")
        assert not launch.dead(), log
        wave, errors = [], []
        for _ in range(20):  # the puppet tracks the wave (0.25 Hz, up to 0.8 rad/s) with a short lag
            time.sleep(0.05)
            m, p = np.array(master.last().position), np.array(puppet.last().position)
            wave.append(m[0])
            errors.append(np.abs(m - p)[:6].max())
        # 0.2 rad is ~250 ms behind the wave; a loaded 2-core machine delays a sample now and then.
        assert np.median(errors) < 0.2 and max(errors) < 0.35, f"puppet far from master: {np.round(errors, 3)}"
        assert np.ptp(wave) > 0.01, "the simulated master should be moving"
