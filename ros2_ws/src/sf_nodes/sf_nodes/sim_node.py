"""The twin on the ROS graph: the hardware drivers' topics, from MuJoCo.

Publishes what the arm and camera drivers publish (puppet and master JointState at
``state_rate``, the three cameras' Image + CameraInfo at ``camera_rate``, `/diagnostics`),
executes the same joint command topics (follow mode: a command sets that arm's master
targets, as a policy would), and runs episodes: ``~/reset`` (std_srvs/Trigger) starts the
episode given by the ``task`` and ``seed`` parameters; every finished episode is reported
as JSON on ``/sim/episode`` (std_msgs/String). With ``operator:=scripted`` the task's
scripted expert plays the teleoperator and drives the master arms. With
``recorder_control:=true`` it also works the recorder's pedal (``sf_policy.sim.pedal``): it waits
until the recorder hears every stream, sends "start <prompt>", holds still ``hold_s``, runs the
episode, sends "stop" after a success or "discard" after a failure, and holds still again.

``link`` models the master-puppet link: ``hardware`` (default) as above, the puppets track
the masters; ``software``: the puppets follow only the command topics (the teleop_link node
turns the published masters into them), while the masters still move with the operator.

Physics and rendering run on one thread of their own (an EGL context belongs to the thread
that made it), paced to the wall clock when ``realtime`` is true.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger

from sf_policy import topics
from sf_policy.embodiment import ARM_STATE_NAMES, DOF_PER_ARM, SIDES
from sf_policy.sim.pedal import ScriptedPedal
from sf_policy.sim.twin import CONTROL_HZ, Twin

from .common import (COMMAND_QOS, ERROR, IMAGE_QOS, OK, PROMPT_QOS, RECORDER_COMMAND_QOS, RECORDER_STATUS_QOS,
                     SENSOR_QOS, SIM_EPISODE_QOS, camera_info_msg, diagnostic_status, diagnostics_publisher, header,
                     image_msg, ordered_positions, publish_diagnostics, run_node, stale_reason)


class SimNode(Node):
    def __init__(self, **kwargs):
        super().__init__(kwargs.pop("node_name", "piper_twin"), **kwargs)
        p = self.declare_parameter
        self.task = p("task", "lift_pot").value
        self.seed = p("seed", 0).value
        self.episodes = p("episodes", 0).value  # 0: keep running episodes (seed, seed+1, ...)
        self.operator = p("operator", "scripted").value
        self.width, self.height = p("width", 224).value, p("height", 224).value
        self.roles = [r for r in p("cameras", list(topics.CAMERA_ROLES)).value if r]
        self.depth = p("depth", False).value
        self.state_rate = p("state_rate", 200.0).value
        self.camera_rate = p("camera_rate", 30.0).value
        self.realtime = p("realtime", True).value
        self.max_command_age = p("max_command_age", 0.2).value
        self.step_limit = p("step_limit", 0).value  # control ticks per episode; 0: the task's own
        self.link = p("link", "hardware").value  # software: the puppets follow only the command topics
        if self.link not in ("hardware", "software"):
            raise ValueError(f"parameter link: expected hardware or software, got {self.link!r}")
        self.recorder_control = p("recorder_control", False).value
        self.hold_s = p("hold_s", 0.3).value
        if self.operator not in ("scripted", "none"):
            raise ValueError(f"parameter operator: expected scripted or none, got {self.operator!r}")
        for role in self.roles:
            topics.check_camera_role(role)
        self._lock = threading.Lock()
        self._commands: dict[str, np.ndarray] = {}
        self._reset_request: threading.Event | None = None
        self._episode_log: list[dict] = []
        self._pedal: ScriptedPedal | None = None  # recorder_control: the scripted operator's pedal
        self._steps = 0  # physics steps since start: the camera cadence runs on across episodes
        self._next_wall = time.monotonic()
        self._last_error = ""
        self._make_interfaces()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="twin", daemon=True)
        self._thread.start()

    def _make_interfaces(self) -> None:
        self._state_pubs = {s: self.create_publisher(JointState, topics.puppet_state(s), SENSOR_QOS) for s in SIDES}
        self._master_pubs = {s: self.create_publisher(JointState, topics.master_state(s), SENSOR_QOS) for s in SIDES}
        self._image_pubs = {r: self.create_publisher(Image, topics.camera_image(r), IMAGE_QOS) for r in self.roles}
        self._info_pubs = {r: self.create_publisher(CameraInfo, topics.camera_info(r), IMAGE_QOS) for r in self.roles}
        self._depth_pubs = ({r: self.create_publisher(Image, topics.camera_depth(r), IMAGE_QOS) for r in self.roles}
                            if self.depth else {})
        self._episode_pub = self.create_publisher(String, topics.SIM_EPISODE, SIM_EPISODE_QOS)
        self._prompt_pub = self.create_publisher(String, topics.PROMPT, PROMPT_QOS)
        self._diag_pub = diagnostics_publisher(self)
        for side in SIDES:
            self.create_subscription(JointState, topics.arm_command(side),
                                     lambda msg, side=side: self._on_command(side, msg), COMMAND_QOS)
        self.create_service(Trigger, "~/reset", self._on_reset)
        if self.recorder_control:
            recorder_pub = self.create_publisher(String, topics.RECORDER_COMMAND, RECORDER_COMMAND_QOS)
            self._pedal = ScriptedPedal(send=lambda text: recorder_pub.publish(String(data=text)),
                                        listening=lambda: recorder_pub.get_subscription_count() > 0,
                                        hold_s=self.hold_s, log=self.get_logger().info,
                                        warn=self.get_logger().warning)
            self.create_subscription(String, topics.RECORDER_STATUS, self._on_recorder_status, RECORDER_STATUS_QOS)
        self.create_timer(1.0, self._publish_diagnostics)

    # --- commands and services (executor thread) -----------------------------------------
    def _on_command(self, side: str, msg: JointState) -> None:
        reason = stale_reason(self, msg, self.max_command_age)
        try:
            target = None if reason else ordered_positions(msg)
        except ValueError as exc:
            reason = str(exc)
        if target is not None and not np.all(np.isfinite(target)):
            reason, target = "non-finite value", None
        if reason:
            self._last_error = f"command refused on {topics.arm_command(side)}: {reason}"
            self.get_logger().warning(self._last_error, throttle_duration_sec=1.0)
            return
        with self._lock:
            self._commands[side] = target

    def _on_recorder_status(self, msg: String) -> None:
        self._pedal.on_status(json.loads(msg.data))

    def _on_reset(self, request, response):
        self.task = self.get_parameter("task").value
        self.seed = self.get_parameter("seed").value
        done = threading.Event()
        with self._lock:
            self._reset_request = done
        ok = done.wait(timeout=30.0)
        response.success = ok and not self._last_error.startswith("reset failed")
        response.message = f"task {self.task}, seed {self.seed}" if response.success else self._last_error
        return response

    # --- the twin's thread ---------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # noqa: BLE001 - report, do not die silently
            self._last_error = f"simulation stopped: {type(exc).__name__}: {exc}"
            self.get_logger().error(self._last_error)

    def _new_episode(self, twin: Twin | None) -> Twin:
        if twin is None or twin.task.name != self.task:
            if twin is not None:
                twin.close()
            twin = Twin(self.task, self.width, self.height, tuple(self.roles), self.depth)
        if self.step_limit:
            twin.task.step_limit = int(self.step_limit)
        twin.reset(int(self.seed))
        self._servo_home = twin.master.copy()  # software link: where the puppets hold until commanded
        self._expert = self._make_expert(twin)
        with self._lock:
            self._commands.clear()
        self.get_logger().info(f"episode: task {self.task}, seed {self.seed}: {twin.info['prompt']}")
        # The scene's own instruction (grasp_vegetable names its vegetable) for the policy node.
        self._prompt_pub.publish(String(data=twin.info["prompt"]))
        return twin

    def _make_expert(self, twin: Twin):
        if self.operator != "scripted":
            return None
        from sf_policy.sim.experts import make_expert

        return make_expert(twin)

    def _loop(self) -> None:
        twin = self._new_episode(None)
        tick_every = max(1, round(self.state_rate / CONTROL_HZ))
        step, episodes_done = 0, 0
        master = twin.master.copy()
        self._begin_recording(twin)
        while not self._stop.is_set():
            request = self._take_reset_request()
            if request is not None:
                twin, step, master = self._reset_now(twin, request)
                self._begin_recording(twin)
            if step % tick_every == 0:
                master = self._master_targets(twin, master)
            self._physics_step(twin, master)
            step += 1
            if step % tick_every == 0:
                twin.tick += 1
                if twin.success() or twin.done():
                    episodes_done += 1
                    self._report(twin, episodes_done)
                    self._end_recording(twin)
                    if self.episodes and episodes_done >= self.episodes:
                        self._idle_until_reset(twin)  # the loop's top takes the reset request
                        continue
                    self.seed = int(self.seed) + 1
                    twin = self._new_episode(twin)
                    master = twin.master.copy()
                    self._begin_recording(twin)

    def _physics_step(self, twin: Twin, master: np.ndarray) -> None:
        """One step at ``state_rate``: physics, states, and the cameras every ``camera_rate``."""
        dt = 1.0 / self.state_rate
        self._drive(twin, master)
        twin.advance(dt)
        stamp = time.time_ns()
        self._publish_states(twin, stamp)
        if self.roles and self._steps % max(1, round(self.state_rate / self.camera_rate)) == 0:
            self._publish_images(twin, stamp)
        self._steps += 1
        if self.realtime:
            self._next_wall += dt
            delay = self._next_wall - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                self._next_wall = time.monotonic()  # behind: never burst to catch up

    def _hold(self, twin: Twin, seconds: float | None = None, until=None) -> None:
        """Keep the world running with the masters still, so states and images keep flowing."""
        master, end = twin.master.copy(), time.monotonic() + (seconds or 0.0)
        while not self._stop.is_set():
            if until is not None and until():
                return
            if seconds is not None and time.monotonic() >= end:
                return
            self._physics_step(twin, master)

    # --- the recorder's pedal (recorder_control; the logic is sf_policy.sim.pedal) ------------
    def _begin_recording(self, twin: Twin) -> None:
        if self._pedal is not None:
            self._pedal.begin(twin.info["prompt"], lambda seconds, until: self._hold(twin, seconds, until))

    def _end_recording(self, twin: Twin) -> None:
        if self._pedal is not None:
            self._pedal.end(twin.success(), lambda seconds, until: self._hold(twin, seconds, until))

    def _drive(self, twin: Twin, master: np.ndarray) -> None:
        """The master-puppet link. ``hardware``: the puppets' servos track the masters.
        ``software``: they track the command topics only (an arm holds its episode-start pose
        until its first command), while the masters move with the operator and are published."""
        if self.link == "hardware":
            twin.set_master(master)
            return
        servo = self._with_commands(self._servo_home)
        twin.set_master(servo)  # the twin's servos track its "master" targets...
        twin.master = master.copy()  # ...but the masters it reports are the operator's

    def _with_commands(self, targets: np.ndarray) -> np.ndarray:
        out = targets.copy()
        with self._lock:
            for k, side in enumerate(SIDES):
                if side in self._commands:
                    out[k * DOF_PER_ARM:(k + 1) * DOF_PER_ARM] = self._commands[side]
        return out

    def _master_targets(self, twin: Twin, current: np.ndarray) -> np.ndarray:
        """The scripted operator's targets; on the hardware link a fresh command overrides its arm."""
        master = current.copy()
        if self._expert is not None and not getattr(self._expert, "done", False):
            master = np.asarray(self._expert.act(), dtype=float)
        return master if self.link == "software" else self._with_commands(master)

    def _take_reset_request(self):
        with self._lock:
            request, self._reset_request = self._reset_request, None
        return request

    def _reset_now(self, twin: Twin, request: threading.Event | None):
        try:
            twin = self._new_episode(twin)
            self._last_error = ""
        except Exception as exc:  # noqa: BLE001 - e.g. an unknown task name
            self._last_error = f"reset failed: {exc}"
            self.get_logger().error(self._last_error)
        if request is not None:
            request.set()
        return twin, 0, twin.master.copy()

    def _idle_until_reset(self, twin: Twin) -> None:
        """After the requested episodes: hold still (state keeps flowing) until ~/reset."""
        while not self._stop.is_set():
            with self._lock:
                if self._reset_request is not None:
                    return
            self._publish_states(twin, time.time_ns())
            time.sleep(1.0 / self.state_rate)

    def _report(self, twin: Twin, number: int) -> None:
        result = {"episode": number, "task": twin.task.name, "seed": twin.seed, "success": twin.success(),
                  "ticks": twin.tick, "sim_time_s": round(twin.time, 3), "prompt": twin.info.get("prompt", "")}
        self._episode_log.append(result)
        self._episode_pub.publish(String(data=json.dumps(result)))
        self.get_logger().info(f"episode {number}: {twin.task.name} seed {twin.seed}: "
                               f"{'SUCCESS' if result['success'] else 'failure'} after {twin.tick} ticks")

    # --- messages ------------------------------------------------------------------------
    def _publish_states(self, twin: Twin, stamp: int) -> None:
        q, v, m = twin.puppet_state(), twin.puppet_velocity(), twin.master
        for k, side in enumerate(SIDES):
            sl = slice(k * DOF_PER_ARM, (k + 1) * DOF_PER_ARM)
            h = header(stamp, f"{side}_base_link")
            self._state_pubs[side].publish(JointState(header=h, name=list(ARM_STATE_NAMES), position=q[sl].tolist(),
                                                      velocity=v[sl].tolist(), effort=[0.0] * DOF_PER_ARM))
            self._master_pubs[side].publish(JointState(header=h, name=list(ARM_STATE_NAMES), position=m[sl].tolist(),
                                                       velocity=[0.0] * DOF_PER_ARM, effort=[0.0] * DOF_PER_ARM))

    def _publish_images(self, twin: Twin, stamp: int) -> None:
        for role in self.roles:
            rgb, depth = twin.render(role)
            frame_id = f"{role}_color_optical_frame"
            self._image_pubs[role].publish(image_msg(rgb, "rgb8", stamp, frame_id))
            self._info_pubs[role].publish(camera_info_msg(twin.intrinsics(role), stamp, frame_id))
            if depth is not None and role in self._depth_pubs:
                mm = np.clip(depth * 1000.0, 0, 65535).astype(np.uint16)
                self._depth_pubs[role].publish(image_msg(mm, "16UC1", stamp, frame_id))

    def _publish_diagnostics(self) -> None:
        done = self._episode_log
        level = ERROR if self._last_error.startswith(("simulation stopped", "reset failed")) else OK
        values = [("task", self.task), ("seed", self.seed), ("operator", self.operator),
                  ("episodes", len(done)), ("successes", sum(e["success"] for e in done)),
                  ("last_error", self._last_error)]
        publish_diagnostics(self, self._diag_pub, [diagnostic_status(
            "piper_twin", "mujoco", level, self._last_error or f"running {self.task}", values)])

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5.0)


def main(args: list[str] | None = None) -> int:
    try:
        return run_node(SimNode, args)
    except ValueError as exc:
        print(f"[piper_twin] {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
