"""The software master-puppet link: master arm samples in, puppet driver commands out.

Subscribes ``/master/joint_<side>`` (from a driver in ``master`` mode, or the twin) and
``/puppet/joint_<side>`` (where a (re)started link begins), and publishes stamped commands
on ``/puppet/joint_cmd_<side>`` at ``rate``. The rules (stale or non-finite master samples
give no command, limits, speed caps, the rate cap) live in ``sf_policy.teleop.link``.
No command means the puppet driver holds the arm where it is. See docs/interfaces.md.
"""

from __future__ import annotations

import sys

from rclpy.node import Node
from sensor_msgs.msg import JointState

from sf_policy import topics
from sf_policy.config import ConfigError, load_robot_config
from sf_policy.embodiment import ARM_STATE_NAMES, PIPER_LIMITS, SIDES
from sf_policy.teleop.link import SoftwareLink

from .common import (COMMAND_QOS, ERROR, OK, SENSOR_QOS, WARN, diagnostic_status, diagnostics_publisher, header,
                     ordered_positions, publish_diagnostics, run_node, stamp_to_ns)


class _SideCounts:
    """What one side's link did since start (and since the last diagnostics)."""

    def __init__(self):
        self.commands = self.refused = self.held = self.clamped = self.limited = 0
        self.commands_at_last_report = self.refused_at_last_report = 0
        self.hold_reason = self.last_refusal = ""


class TeleopLink(Node):
    def __init__(self, **kwargs):
        super().__init__(kwargs.pop("node_name", "teleop_link"), **kwargs)
        p = self.declare_parameter
        self.sides = [s for s in p("sides", list(SIDES)).value if s]
        self.rate = float(p("rate", 50.0).value)
        self.max_master_age = float(p("max_master_age", 0.1).value)
        self.velocity_scale = float(p("velocity_scale", 0.5).value)
        self.gripper_speed = float(p("gripper_speed", PIPER_LIMITS["gripper"].max_velocity).value)
        self.max_puppet_age = float(p("max_puppet_age", 0.5).value)
        self.robot_config = p("robot_config", "").value  # its limits: the puppets' (default: factory)
        self.diagnostics_period = float(p("diagnostics_period", 1.0).value)
        for side in self.sides:
            topics.arm_command(side)  # raises on an unknown side, naming the known ones
        limits = load_robot_config(self.robot_config).limits if self.robot_config else dict(PIPER_LIMITS)
        self.links = {s: SoftwareLink(limits, rate_hz=self.rate, max_master_age=self.max_master_age,
                                      velocity_scale=self.velocity_scale, gripper_speed=self.gripper_speed,
                                      max_puppet_age=self.max_puppet_age) for s in self.sides}
        self.counts = {s: _SideCounts() for s in self.sides}
        self._cmd_pubs = {s: self.create_publisher(JointState, topics.arm_command(s), COMMAND_QOS) for s in self.sides}
        for side in self.sides:
            self.create_subscription(JointState, topics.master_state(side),
                                     lambda msg, side=side: self._on_master(side, msg), SENSOR_QOS)
            self.create_subscription(JointState, topics.puppet_state(side),
                                     lambda msg, side=side: self._on_puppet(side, msg), SENSOR_QOS)
        self._diag_pub = diagnostics_publisher(self)
        self.create_timer(1.0 / self.rate, self._tick)
        self.create_timer(self.diagnostics_period, self._publish_diagnostics)
        self.get_logger().info(f"software link for {', '.join(self.sides)}: {self.rate:g} Hz, joints at most "
                               f"{self.velocity_scale:g} x their max speed, master samples at most "
                               f"{self.max_master_age * 1000:.0f} ms old")

    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds / 1e9

    # --- samples in ----------------------------------------------------------------------
    def _on_master(self, side: str, msg: JointState) -> None:
        link, counts = self.links[side], self.counts[side]
        try:
            reason = link.observe_master(ordered_positions(msg), stamp_to_ns(msg.header.stamp) / 1e9)
        except ValueError as exc:
            link.forget_master()
            reason = str(exc)
        if reason:
            counts.refused += 1
            counts.last_refusal = reason
            self.get_logger().warning(f"master sample refused on {topics.master_state(side)}: {reason}",
                                      throttle_duration_sec=1.0)

    def _on_puppet(self, side: str, msg: JointState) -> None:
        try:
            self.links[side].observe_puppet(ordered_positions(msg), stamp_to_ns(msg.header.stamp) / 1e9)
        except ValueError:
            pass  # the puppet driver's own diagnostics report a bad state

    # --- commands out --------------------------------------------------------------------
    def _tick(self) -> None:
        now = self._now_s()
        for side in self.sides:
            out, counts = self.links[side].tick(now), self.counts[side]
            if out.command is None:
                if out.reason != "rate":  # a tick early within its slot is not a hold
                    counts.held += 1
                    counts.hold_reason = out.reason
                continue
            msg = JointState(header=header(int(now * 1e9), ""), name=list(ARM_STATE_NAMES),
                             position=out.command.tolist())
            self._cmd_pubs[side].publish(msg)
            counts.commands += 1
            counts.hold_reason = ""
            counts.clamped += bool(out.clamped)
            counts.limited += bool(out.limited)

    # --- diagnostics ---------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        statuses = []
        for side in self.sides:
            c = self.counts[side]
            sent = c.commands - c.commands_at_last_report
            refused = c.refused - c.refused_at_last_report
            c.commands_at_last_report, c.refused_at_last_report = c.commands, c.refused
            if refused and not sent:
                level, message = ERROR, f"master samples refused: {c.last_refusal}"
            elif c.hold_reason:
                level, message = WARN, f"holding the puppet: {c.hold_reason}"
            else:
                level, message = OK, "the puppet follows the master"
            values = [("rate_hz", f"{sent / self.diagnostics_period:.1f}"), ("commands", c.commands),
                      ("held_ticks", c.held), ("refused_master_samples", c.refused), ("clamped", c.clamped),
                      ("speed_limited", c.limited), ("last_refusal", c.last_refusal)]
            statuses.append(diagnostic_status(f"teleop_link: {side}", topics.master_state(side), level, message,
                                              values))
        publish_diagnostics(self, self._diag_pub, statuses)


def main(args: list[str] | None = None) -> int:
    try:
        return run_node(TeleopLink, args)
    except (ConfigError, ValueError) as exc:
        print(f"[teleop_link] configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
