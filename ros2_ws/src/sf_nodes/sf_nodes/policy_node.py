"""Policy node: cameras + puppet state in, safe joint commands out, at the control rate.

A lifecycle node. ``configure`` loads the checkpoint (``checkpoint``; or ``remote``: a policy
server URL, `sf serve`) and runs one warm-up inference; ``activate`` starts control;
``deactivate`` stops it (no command: the arm drivers hold). Each control tick:

    latest images + puppet states -> ChunkScheduler.observe (inference runs in a worker)
    ChunkScheduler.tick(now) -> SafetyFilter.filter(command, state, observation age)
    -> /puppet/joint_cmd_<side>  (or /policy/dry_run/joint_cmd_<side> with dry_run:=true)

It also publishes the remaining plan as ``trajectory_msgs/JointTrajectory`` on
``/policy/chunk`` whenever a new chunk is merged, each tick's unfiltered target on
``/policy/target`` (``sensor_msgs/JointState``, 14 joints: plot it against the command and
the puppet state to see what the safety filter changed), and ``/diagnostics`` (inference
latency, chunk timing, holds, the executed chunk step, and how often the filter limited
which joint and why). ``~/estop`` latches a hold from the next tick; ``~/resume`` clears it.
The logic lives in ``sf_policy.runtime``; this node only moves messages.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from builtin_interfaces.msg import Duration
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from sf_policy import topics
from sf_policy.config import load_robot_config
from sf_policy.embodiment import ARM_STATE_NAMES, DOF_PER_ARM, JOINT_NAMES, PIPER_LIMITS, SIDES
from sf_policy.record.images import image_to_rgb
from sf_policy.runtime.safety import ESTOP, SafetyFilter
from sf_policy.runtime.scheduler import ChunkScheduler, policy_infer
from sf_policy.runtime.watchdog import DEFAULT_MAX_DURATION, DEFAULT_MAX_ERROR, TrackingWatchdog
from sf_policy.runtime.workspace import WorkspaceGuard

from .common import (COMMAND_QOS, ERROR, OK, PROMPT_QOS, SENSOR_QOS, WARN, diagnostic_status, diagnostics_publisher,
                     header, ordered_positions, publish_diagnostics, run_node, stamp_to_ns)
from .recorder import image_qos

DRY_RUN_PREFIX = "/policy/dry_run"
TARGET_TOPIC = "/policy/target"  # the scheduler's target of each tick, before the safety filter


def load_infer(checkpoint: str, remote: str, token: str, num_steps: int, device: str, *, dtype: str = "",
               sampler: str = "fast", compile: bool = False, cuda_graph: bool = True, noise_scale: float = 1.0,
               max_guidance: float | None = None):
    """The model boundary: ``infer(sample) -> chunk [H, 14]`` from a checkpoint or a server."""
    if remote:
        from sf_policy.serve.client import PolicyClient

        client = PolicyClient(remote, token=token or None)
        return lambda sample: client.infer(sample)
    if not checkpoint:
        raise ValueError("parameter checkpoint: set a trained checkpoint directory (or remote:=<server url>)")
    from sf_policy.runtime.inference import load_for_inference

    policy = load_for_inference(checkpoint, device=device, dtype=dtype or None, sampler=sampler, compile=compile,
                                cuda_graph=cuda_graph, noise_scale=noise_scale, max_guidance=max_guidance)
    return policy_infer(policy, num_steps)


class PolicyNode(LifecycleNode):
    def __init__(self, infer=None, **kwargs):
        super().__init__(kwargs.pop("node_name", "policy"), **kwargs)
        p = self.declare_parameter
        self.checkpoint = p("checkpoint", "").value
        self.remote = p("remote", "").value
        # The server's bearer token: the environment (like `sf serve`) keeps it out of launch files and `ps`
        self.token = p("token", "").value or os.environ.get("SF_SERVE_TOKEN", "")
        self.prompt = p("prompt", "").value
        self.rate = float(p("rate", 30.0).value)
        self.num_steps = int(p("num_steps", 10).value)
        self.execute_steps = int(p("execute_steps", 25).value)
        self.refill_at = int(p("refill_at", 15).value)
        self.mode = p("mode", "blend").value  # blend | replace | rtc (real-time chunking)
        self.blend_steps = int(p("blend_steps", 10).value)
        self.rtc_max_guidance = float(p("rtc_max_guidance", 5.0).value)  # rtc: the guidance clip beta
        self.adaptive = bool(p("adaptive_horizon", True).value)
        self.on_error = p("on_error", "hold").value
        self.max_obs_age = float(p("max_obs_age", 0.2).value)
        self.velocity_scale = float(p("velocity_scale", 0.5).value)
        # The tracking watchdog: an arm joint this far (rad) from its command for this long (s)
        # latches the e-stop (a collision, a blocked arm, a dead motor); max_error 0 turns it off.
        self.tracking_max_error = float(p("tracking_max_error", DEFAULT_MAX_ERROR).value)
        self.tracking_max_duration = float(p("tracking_max_duration", DEFAULT_MAX_DURATION).value)
        # The robot YAML's joint limits, which the drivers and the teleop link honour ("": factory limits)
        self.robot_config = p("robot_config", "").value
        self.dry_run = bool(p("dry_run", False).value)
        self.device = p("device", "auto").value
        self.dtype = p("dtype", "").value  # "": bfloat16 on a GPU, float32 on CPU
        self.sampler = p("sampler", "fast").value
        self.compile = bool(p("compile", False).value)
        self.cuda_graph = bool(p("cuda_graph", True).value)
        self.noise_scale = float(p("noise_scale", 1.0).value)
        self.cameras = [c for c in p("cameras", list(topics.CAMERA_ROLES)).value if c]
        self.image_reliability = p("image_reliability", "best_effort").value
        self.autostart = bool(p("autostart", False).value)
        self._infer = infer  # tests may hand in the model boundary; otherwise configure loads it
        self.images: dict[str, Image] = {}
        self.states: dict[str, JointState] = {}
        self.scheduler: ChunkScheduler | None = None
        # The workspace guard: commands into the table, keep-out boxes or the other arm are held
        # (geometry: the robot YAML's workspace section, else AgileX's layout as in the twin).
        self.workspace_guard = bool(p("workspace_guard", True).value)
        robot = load_robot_config(self.robot_config) if self.robot_config else None
        limits = robot.limits if robot else dict(PIPER_LIMITS)
        guard = WorkspaceGuard(robot.workspace if robot else None) if self.workspace_guard else None
        watchdog = (TrackingWatchdog(self.tracking_max_error, self.tracking_max_duration)
                    if self.tracking_max_error > 0 else None)
        self.safety = SafetyFilter(limits, period=1.0 / self.rate, velocity_scale=self.velocity_scale,
                                   max_obs_age=self.max_obs_age, workspace=guard, watchdog=watchdog)
        self._timer = None
        self._observed_ns = 0
        self._chunks_published = 0
        self.commands = self.holds = 0
        self.hold_reason = ""
        for role in self.cameras:
            self.create_subscription(Image, topics.camera_image(role), lambda m, r=role: self.images.__setitem__(r, m),
                                     image_qos(self.image_reliability))
        for side in SIDES:
            self.create_subscription(JointState, topics.puppet_state(side),
                                     lambda m, s=side: self.states.__setitem__(s, m), SENSOR_QOS)
        self.create_subscription(String, topics.PROMPT, self._on_prompt, PROMPT_QOS)
        prefix = DRY_RUN_PREFIX if self.dry_run else ""
        self._cmd_pubs = {s: self.create_publisher(JointState, prefix + topics.arm_command(s), COMMAND_QOS)
                          for s in SIDES}
        self._chunk_pub = self.create_publisher(JointTrajectory, "/policy/chunk", 1)
        self._target_pub = self.create_publisher(JointState, TARGET_TOPIC, 10)
        self._diag_pub = diagnostics_publisher(self)
        self.create_service(Trigger, "~/estop", self._on_estop)
        self.create_service(Trigger, "~/resume", self._on_resume)
        self.create_timer(1.0, self._publish_diagnostics)
        if self.autostart:
            self._autostart_timer = self.create_timer(0.0, self._autostart)

    def _on_prompt(self, msg: String) -> None:
        prompt = msg.data.strip()
        if not prompt:
            self.get_logger().warning(f"{topics.PROMPT}: an empty prompt was ignored; still following {self.prompt!r}")
        elif prompt != self.prompt:
            self.prompt = prompt  # the next observation carries it
            if self.scheduler is not None and self.scheduler.running:
                self.scheduler.reset()  # the plan was for the old instruction (same thread as the tick)
            self.get_logger().info(f"prompt from {topics.PROMPT}: {prompt!r}")

    def _autostart(self) -> None:
        self._autostart_timer.cancel()
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds / 1e9

    # --- lifecycle -----------------------------------------------------------------------
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            infer = self._infer or load_infer(self.checkpoint, self.remote, self.token, self.num_steps, self.device,
                                              dtype=self.dtype, sampler=self.sampler, compile=self.compile,
                                              cuda_graph=self.cuda_graph, noise_scale=self.noise_scale,
                                              max_guidance=self.rtc_max_guidance)
            self.scheduler = ChunkScheduler(infer, period=1.0 / self.rate, execute_steps=self.execute_steps,
                                            refill_at=self.refill_at, mode=self.mode, blend_steps=self.blend_steps,
                                            adaptive=self.adaptive, on_error=self.on_error)
            infer(self._warmup_sample())  # the first call compiles / allocates: not on the control path
        except Exception as exc:  # noqa: BLE001 - any loading error fails the transition, named
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        source = self.remote or self.checkpoint or "the given model"
        self.get_logger().info(f"policy from {source}; {self.rate:g} Hz, {self.mode}, executes {self.execute_steps}"
                               f" steps per chunk{', DRY RUN on ' + DRY_RUN_PREFIX if self.dry_run else ''}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        self.safety.reset()
        self.scheduler.start(self._now())
        self._timer = self.create_timer(1.0 / self.rate, self._tick)
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._stop_control()
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._stop_control()
        self.scheduler = None
        return TransitionCallbackReturn.SUCCESS

    def _stop_control(self) -> None:
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        if self.scheduler is not None:
            self.scheduler.stop()

    def close(self) -> None:
        self._stop_control()

    # --- control -------------------------------------------------------------------------
    def _observation(self) -> tuple[dict | None, float | None]:
        """The newest sample for the policy and its time (the oldest stream's stamp)."""
        if any(s not in self.states for s in SIDES) or any(r not in self.images for r in self.cameras):
            return None, None
        stamps = [stamp_to_ns(m.header.stamp) for m in (*self.states.values(), *self.images.values())]
        state = np.concatenate([ordered_positions(self.states[s]) for s in SIDES]).astype(np.float32)
        images = {}
        for role in topics.CAMERA_ROLES:
            msg = self.images.get(role)
            images[role] = None if msg is None else image_to_rgb(msg.encoding, msg.height, msg.width, msg.step,
                                                                 msg.data, topics.camera_image(role))
        return {"images": images, "state": state, "prompt": self.prompt}, min(stamps) / 1e9

    def _tick(self) -> None:
        now = self._now()
        sample, stamp = self._observation()
        top = self.images.get(topics.CAMERA_ROLES[0])
        top_ns = stamp_to_ns(top.header.stamp) if top is not None else 0
        if sample is not None and top_ns > self._observed_ns:  # a new frame: worth a new chunk
            self._observed_ns = top_ns
            self.scheduler.observe(sample, stamp)
        command = self.scheduler.tick(now)
        if command is not None:
            self._target_pub.publish(JointState(header=header(int(now * 1e9), ""), name=list(JOINT_NAMES),
                                                position=command.tolist()))
        state = sample["state"] if sample is not None else None
        decision = self.safety.filter(command, state, None if stamp is None else now - stamp, now)
        if decision.action is None:
            self.holds += 1
            if decision.reason != self.hold_reason:
                # one call site per severity: rclpy refuses a call site whose severity changes
                if decision.code == ESTOP:
                    self.get_logger().error(f"holding the arms: {decision.reason}", throttle_duration_sec=1.0)
                else:
                    self.get_logger().warning(f"holding the arms: {decision.reason}", throttle_duration_sec=1.0)
            self.hold_reason = decision.reason
            return
        self.hold_reason = ""
        self._publish_command(decision.action, now)
        self._publish_plan()

    def _publish_command(self, action: np.ndarray, now: float) -> None:
        stamp = header(int(now * 1e9), "")
        for k, side in enumerate(SIDES):
            arm = action[k * DOF_PER_ARM:(k + 1) * DOF_PER_ARM]
            self._cmd_pubs[side].publish(JointState(header=stamp, name=list(ARM_STATE_NAMES), position=arm.tolist()))
        self.commands += 1

    def _publish_plan(self) -> None:
        chunks = self.scheduler.stats().chunks
        if chunks == self._chunks_published:
            return
        self._chunks_published = chunks
        planned = self.scheduler.planned()
        if planned is None:
            return
        start, steps = planned
        msg = JointTrajectory(joint_names=list(JOINT_NAMES))
        msg.header = header(int(start * 1e9), "")
        for i, q in enumerate(steps):
            t = i / self.rate
            msg.points.append(JointTrajectoryPoint(positions=[float(v) for v in q],
                                                   time_from_start=Duration(sec=int(t), nanosec=int(t % 1 * 1e9))))
        self._chunk_pub.publish(msg)

    # --- services and diagnostics --------------------------------------------------------
    def _on_estop(self, request, response):
        self.safety.estop("e-stop service")
        self.get_logger().warning("e-stop: holding the arms until ~/resume")
        response.success, response.message = True, "holding from the next tick"
        return response

    def _on_resume(self, request, response):
        self.safety.reset()  # and the tracking watchdog with it
        response.success, response.message = True, "resumed"
        return response

    def _publish_diagnostics(self) -> None:
        values = [("commands", self.commands), ("held_ticks", self.holds), ("hold_reason", self.hold_reason),
                  ("estopped", self.safety.estopped), ("dry_run", self.dry_run)]
        if self.scheduler is None:
            level, message = WARN, "not configured"
        else:
            s = self.scheduler.stats()
            values += [(k, v) for k, v in vars(s).items()]
            values += filter_diagnostics(self.safety, self.scheduler.last_tick_info)
            if self.safety.estopped:
                level, message = ERROR, f"e-stopped: {self.safety.estop_reason}"
            elif self.hold_reason:
                level, message = WARN, f"holding: {self.hold_reason}"
            else:
                level, message = OK, "driving the arms" if self._timer is not None else "inactive"
        publish_diagnostics(self, self._diag_pub, [diagnostic_status("policy", self.get_name(), level, message,
                                                                     [(k, str(v)) for k, v in values])])

    def _warmup_sample(self) -> dict:
        black = np.zeros((224, 224, 3), np.uint8)
        return {"images": {r: black if r in self.cameras else None for r in topics.CAMERA_ROLES},
                "state": np.zeros(len(JOINT_NAMES), np.float32), "prompt": self.prompt}


def filter_diagnostics(safety: SafetyFilter, info) -> list[tuple[str, object]]:
    """What the safety filter changed (shares of the commands sent, per cause, and the joints it
    limited most) and where the last command came from in its chunk."""
    stats = safety.stats()
    sent = max(stats.get("commands", 0), 1)
    by_joint = safety.limit_counts()
    worst = sorted(by_joint.items(), key=lambda kv: -sum(kv[1].values()))[:4]
    values: list[tuple[str, object]] = [
        ("limited_share", f"{stats.get('limited', 0) / sent:.3f}"),
        ("clamped_share", f"{stats.get('clamped', 0) / sent:.3f}"),
        ("most_limited", "; ".join(f"{j} " + ", ".join(f"{c} {n / sent:.1%}" for c, n in causes.items())
                                   for j, causes in worst) or "none")]
    if info is not None and info.chunk is not None:
        values += [("executing", f"chunk {info.chunk} step {info.step}"), ("blend_weight", f"{info.blend:.2f}")]
    return values


def main(args: list[str] | None = None) -> int:
    try:
        return run_node(PolicyNode, args)
    except ValueError as exc:
        print(f"policy: {exc}", file=sys.stderr)
        return 2
