"""Piper arm driver: one lifecycle node per CAN bus (a master/puppet pair shares a bus).

  unconfigured --configure--> inactive: CAN open, state published, arm untouched
  inactive --activate--> active: (follow mode) motors enabled, commands executed
  active --deactivate--> inactive: (follow mode) motors disabled
  cleanup / shutdown: motors disabled (follow mode), CAN closed

Modes: ``teleop`` reads the puppet and the master arm's targets and sends nothing (the
hardware master-puppet link drives the arm); ``follow`` drives the puppet from the command
topic; ``master`` reads a master arm alone on its bus (the software link: the teleop_link
node turns its targets into the puppet driver's commands) and sends nothing. The safety
rules live in ``sf_policy.drivers.piper.PiperArm``; this node adds the command's age check,
the e-stop services and diagnostics. See docs/interfaces.md.
"""

from __future__ import annotations

import sys
import threading

import numpy as np
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger

from sf_policy import topics
from sf_policy.config import ConfigError, load_robot_config
from sf_policy.drivers.piper import ArmReading, ArmSilentError, PiperArm
from sf_policy.embodiment import ARM_STATE_NAMES
from sf_policy.runtime.upsample import BSplineUpsampler

from .common import (COMMAND_QOS, ERROR, OK, SENSOR_QOS, WARN, diagnostic_status, diagnostics_publisher, header,
                     ordered_positions, publish_diagnostics, run_node, stale_reason)

MODES = ("teleop", "follow", "master")


class PiperArmDriver(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__(kwargs.pop("node_name", "piper_arm_driver"), **kwargs)
        p = self.declare_parameter
        self.side = p("side", "left").value
        self.robot_config = p("robot_config", "").value
        self.mode = p("mode", "follow").value
        self.speed_percent = p("speed_percent", 50).value
        self.gripper_effort = p("gripper_effort", 1.0).value
        self.silence_timeout = p("silence_timeout", 0.25).value
        self.max_command_age = p("max_command_age", 0.2).value
        # > 0: commands go to the arm at this rate (Hz) along a C² B-spline through the received
        # targets (sf_policy/runtime/upsample.py; ~45 ms of lag at 30 Hz); 0: each as it comes.
        self.command_rate = float(p("command_rate", 0.0).value)
        self.frame_id = p("frame_id", "").value or f"{self.side}_base_link"
        self.diagnostics_period = p("diagnostics_period", 1.0).value
        self.simulate = p("simulate", False).value
        self.autostart = p("autostart", False).value
        self._check_parameters()
        self.upsampler = BSplineUpsampler(stale_s=self.max_command_age) if self.command_rate > 0 else None
        self._upsample_timer = None
        self.arm: PiperArm | None = None
        self.sim = None
        self._active = False
        self._was_silent = True
        self._counts = {"commands": 0, "refused": 0, "clamped": 0, "stale": 0}
        self._last_refusal = ""
        self._count_lock = threading.Lock()
        self._diag_pub = diagnostics_publisher(self)
        self._diag_timer = None
        if self.autostart:
            self._autostart_timer = self.create_timer(0.0, self._autostart)

    def _check_parameters(self) -> None:
        if self.side not in ("left", "right"):
            raise ConfigError("(node parameters)", "side", f"expected left or right, got {self.side!r}")
        if not 0 <= self.command_rate <= 1000:
            raise ConfigError("(node parameters)", "command_rate",
                              f"expected 0 (off) or a rate in Hz up to 1000, got {self.command_rate}")
        if self.mode not in MODES:
            raise ConfigError("(node parameters)", "mode", f"expected one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.robot_config:
            raise ConfigError("(node parameters)", "robot_config", "path to the robot YAML is required")
        self.robot = load_robot_config(self.robot_config)  # fails here, naming file and field
        if self.side not in self.robot.arms:
            raise ConfigError(self.robot_config, f"arms.{self.side}", "no entry for this arm side")

    def _autostart(self) -> None:
        self._autostart_timer.cancel()
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    # --- lifecycle -----------------------------------------------------------------------
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        arm_cfg = self.robot.arms[self.side]
        if self.simulate:
            self.sim = self._start_simulated_arm(arm_cfg)
        master_only = self.mode == "master"  # no puppet on this bus: no puppet state, no commands
        if not master_only:
            self._state_pub = self.create_publisher(JointState, topics.puppet_state(self.side), SENSOR_QOS)
        self._master_pub = self.create_publisher(JointState, topics.master_state(self.side), SENSOR_QOS)
        try:
            self.arm = PiperArm(arm_cfg.can_port, arm_cfg.bustype, self.robot.limits, self.speed_percent,
                                self.gripper_effort, self.silence_timeout,
                                on_state=None if master_only else self._publish_state,
                                on_master=self._publish_master if self.mode in ("teleop", "master") else None,
                                master_only=master_only)
            self.arm.connect()
        except Exception as exc:  # the SDK raises ConnectionError, ValueError...
            self.get_logger().error(f"cannot open CAN port {arm_cfg.can_port!r} ({arm_cfg.bustype}) "
                                    f"from {self.robot_config}: {exc}")
            self._stop_simulated_arm()
            return TransitionCallbackReturn.FAILURE
        if not master_only:  # the puppet's driver takes the commands and the e-stop
            self._cmd_sub = self.create_subscription(JointState, topics.arm_command(self.side), self._on_command,
                                                     COMMAND_QOS)
            self._srv_estop = self.create_service(Trigger, "~/estop", self._on_estop)
            self._srv_resume = self.create_service(Trigger, "~/resume", self._on_resume)
        self._diag_timer = self.create_timer(self.diagnostics_period, self._publish_diagnostics)
        self.get_logger().info(f"{self.side} arm on {arm_cfg.can_port} ({arm_cfg.bustype}), mode={self.mode}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        if self.mode == "follow":
            try:
                self.arm.enable()
            except ArmSilentError as exc:
                self.get_logger().error(f"cannot activate: {exc}")
                return TransitionCallbackReturn.FAILURE
        self._active = True
        if self.upsampler is not None and self.mode == "follow":
            self.upsampler.reset()
            self._upsample_timer = self.create_timer(1.0 / self.command_rate, self._send_upsampled)
        self.get_logger().info("active: " + ("executing commands on " + topics.arm_command(self.side)
                                             if self.mode == "follow" else f"{self.mode}, reading only"))
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._active = False
        if self._upsample_timer is not None:
            self._upsample_timer.cancel()
            self._upsample_timer = None
        if self.mode == "follow":
            self.arm.disable()
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        """Called on process exit: never leave the motors enabled behind us."""
        self._release()

    def _release(self) -> None:
        was_active, self._active = self._active, False
        if self.arm is not None:
            if self.mode == "follow" and was_active and not self.arm.is_silent():
                self.arm.disable()
            self.arm.close()
            self.arm = None
        for name in ("_cmd_sub", "_srv_estop", "_srv_resume"):
            entity = self.__dict__.pop(name, None)
            if entity is not None:
                destroy = self.destroy_subscription if name == "_cmd_sub" else self.destroy_service
                destroy(entity)
        if self._diag_timer is not None:
            self._diag_timer.cancel()
            self._diag_timer = None
        self._stop_simulated_arm()

    # --- simulated hardware --------------------------------------------------------------
    def _start_simulated_arm(self, arm_cfg):
        from sf_policy.sim.piper_can import SimulatedPiper, teleop_wave

        if arm_cfg.bustype != "virtual":
            raise ConfigError(self.robot_config, f"arms.{self.side}.bustype",
                              "simulate:=true needs bustype 'virtual' (never simulate on a real bus)")
        master = teleop_wave(self.side) if self.mode in ("teleop", "master") else None
        return SimulatedPiper(arm_cfg.can_port, "virtual", master=master, puppet=self.mode != "master").start()

    def _stop_simulated_arm(self) -> None:
        if self.sim is not None:
            self.sim.stop()
            self.sim = None

    # --- state out -----------------------------------------------------------------------
    def _joint_state(self, reading: ArmReading) -> JointState:
        return JointState(header=header(reading.stamp_ns, self.frame_id), name=list(ARM_STATE_NAMES),
                          position=reading.position.tolist(), velocity=reading.velocity.tolist(),
                          effort=reading.effort.tolist())

    def _publish_state(self, reading: ArmReading) -> None:
        self._state_pub.publish(self._joint_state(reading))  # runs on the SDK's CAN thread

    def _publish_master(self, reading: ArmReading) -> None:
        self._master_pub.publish(self._joint_state(reading))

    # --- commands in ---------------------------------------------------------------------
    def _on_command(self, msg: JointState) -> None:
        if not self._active or self.mode != "follow" or self.arm is None:
            return
        with self._count_lock:
            self._counts["commands"] += 1
        stale = stale_reason(self, msg, self.max_command_age)
        if stale:
            return self._refuse(stale, "stale")
        try:
            target = ordered_positions(msg)
        except ValueError as exc:
            return self._refuse(str(exc))
        if self.upsampler is not None:  # the timer sends it, smoothed, at command_rate
            if np.isfinite(target).all():
                self.upsampler.push(self._now(), target)
                return
            return self._refuse("non-finite command")
        self._send(target)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds / 1e9

    def _send_upsampled(self) -> None:
        if not self._active or self.arm is None:
            return
        target = self.upsampler.sample(self._now())
        if target is not None:  # None: no fresh command: the arm holds where it was sent
            self._send(target)

    def _send(self, target) -> None:
        result = self.arm.command(target)
        if not result.sent:
            return self._refuse(result.reason)
        if result.clamped:
            with self._count_lock:
                self._counts["clamped"] += 1
            self.get_logger().warning(f"command clamped to limits: {', '.join(result.clamped)}",
                                   throttle_duration_sec=1.0)

    def _refuse(self, reason: str, counter: str = "refused") -> None:
        with self._count_lock:
            self._counts[counter] += 1
            self._last_refusal = reason
        self.get_logger().warning(f"command refused on {topics.arm_command(self.side)}: {reason}",
                               throttle_duration_sec=1.0)

    def _on_estop(self, request, response):
        if self.arm is None:
            response.success, response.message = False, "not configured"
            return response
        self.arm.emergency_stop()
        if self.upsampler is not None:
            self.upsampler.reset()  # resume starts from the next command, not from the old curve
        self.get_logger().error("EMERGENCY STOP requested; commands are refused until ~/resume")
        response.success, response.message = True, "emergency stop sent"
        return response

    def _on_resume(self, request, response):
        if self.arm is None:
            response.success, response.message = False, "not configured"
            return response
        self.arm.resume()
        if self._active and self.mode == "follow":
            try:
                self.arm.enable()
            except ArmSilentError as exc:
                response.success, response.message = False, str(exc)
                return response
        response.success, response.message = True, "resumed from emergency stop"
        return response

    # --- diagnostics ---------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        if self.arm is None:
            return
        st = self.arm.status()
        if st.silent and not self._was_silent:
            self.get_logger().error(f"no CAN feedback from the {self.side} arm on {self.arm.can_port} for "
                                    f"{st.feedback_age_s:.2f} s; commands are held until it returns")
        elif not st.silent and self._was_silent:
            self.get_logger().info(f"CAN feedback from the {self.side} arm on {self.arm.can_port}")
        self._was_silent = st.silent
        if st.silent:
            what = "frames from the master arm" if self.mode == "master" else "feedback"
            level, message = ERROR, f"no CAN {what} for {st.feedback_age_s:.2f} s"
        elif st.arm_status != 0 or st.err_code != 0:
            level, message = ERROR, f"arm status: {st.arm_status_text}, error bits 0x{st.err_code:04X}"
        elif self.mode == "follow" and self._active and not st.motors_enabled:
            level, message = WARN, "active but the motors report disabled"
        else:
            level, message = OK, f"{self.mode}, {'active' if self._active else 'inactive'}"
        with self._count_lock:
            counts = dict(self._counts)
            last_refusal = self._last_refusal
        values = [("mode", self.mode), ("active", self._active), ("can_port", self.arm.can_port),
                  ("arm_status", st.arm_status_text), ("ctrl_mode", st.ctrl_mode), ("err_code", f"0x{st.err_code:04X}"),
                  ("motors_enabled", st.motors_enabled), ("can_rx_hz", f"{st.can_rx_hz:.0f}"),
                  ("feedback_age_s", f"{min(st.feedback_age_s, 1e6):.3f}"),
                  *counts.items(), ("last_refusal", last_refusal)]
        publish_diagnostics(self, self._diag_pub, [
            diagnostic_status(self._diagnostic_name(), self.arm.can_port, level, message, values)])

    def _diagnostic_name(self) -> str:
        # The master's driver runs beside its puppet's: their statuses must not share a name.
        return f"piper_arm_driver: {self.side}" + (" master" if self.mode == "master" else "")


def main(args: list[str] | None = None) -> int:
    try:
        return run_node(PiperArmDriver, args)
    except ConfigError as exc:
        print(f"[piper_arm_driver] configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
