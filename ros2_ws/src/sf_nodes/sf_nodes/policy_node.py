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
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from sf_policy import topics
from sf_policy.config import load_robot_config
from sf_policy.embodiment import ARM_STATE_NAMES, DOF_PER_ARM, JOINT_NAMES, PIPER_LIMITS, SIDES
from sf_policy.record.images import image_to_rgb
from sf_policy.runtime.config import RuntimeConfig, describe, settings
from sf_policy.runtime.safety import ESTOP, SafetyFilter
from sf_policy.runtime.scheduler import ChunkScheduler, policy_infer

from .common import (COMMAND_QOS, ERROR, OK, PROMPT_QOS, SENSOR_QOS, WARN, diagnostic_status, diagnostics_publisher,
                     header, ordered_positions, publish_diagnostics, run_node, stamp_to_ns)
from .common import image_qos

DRY_RUN_PREFIX = "/policy/dry_run"
TARGET_TOPIC = "/policy/target"  # the scheduler's target of each tick, before the safety filter


def declare_runtime(node) -> RuntimeConfig:
    """Declare one read-only ROS parameter per runtime setting (a running node would not act on
    a change: ``ros2 param set`` is refused instead of ignored) and validate their values."""
    values = {f.name: node.declare_parameter(f.name, f.default, _about(describe(f))).value for f in settings()}
    return RuntimeConfig.from_values(values)


def _about(description: str) -> ParameterDescriptor:
    return ParameterDescriptor(description=description, read_only=True)


def load_infer(checkpoint: str, remote: str, token: str, runtime: RuntimeConfig):
    """The model boundary: ``infer(sample) -> chunk [H, 14]`` from a checkpoint or a server."""
    if remote:
        from sf_policy.serve.client import PolicyClient

        client = PolicyClient(remote, token=token or None)
        return lambda sample: client.infer(sample)
    if not checkpoint:
        raise ValueError("parameter checkpoint: set a trained checkpoint directory (or remote:=<server url>)")
    from sf_policy.runtime.inference import load_for_inference

    policy = load_for_inference(checkpoint, **runtime.model_options())
    return policy_infer(policy, runtime.num_steps)


class PolicyNode(LifecycleNode):
    def __init__(self, infer=None, **kwargs):
        super().__init__(kwargs.pop("node_name", "policy"), **kwargs)
        # How the arms are driven: declared from RuntimeConfig (type, default, description,
        # valid values: `ros2 param describe policy <name>`); policy.yaml holds the deployed values.
        self.runtime = declare_runtime(self)
        self.rate = self.runtime.rate
        p = self.declare_parameter  # what to run, and where: per task and robot (policy.launch.py fills them)
        self.checkpoint = p("checkpoint", "", _about("a trained checkpoint directory")).value
        self.remote = p("remote", "", _about("a policy server's URL (sf serve) instead of a checkpoint")).value
        # The server's bearer token: the environment (like `sf serve`) keeps it out of launch files and `ps`
        self.token = p("token", "", _about("the server's bearer token (prefer SF_SERVE_TOKEN)")).value \
            or os.environ.get("SF_SERVE_TOKEN", "")
        self.prompt = p("prompt", "", _about("the instruction; publish on /sf/prompt to change it while running")).value
        self.cameras = [c for c in p("cameras", list(topics.CAMERA_ROLES),
                                     _about("the camera roles the policy was trained with")).value if c]
        # The robot YAML's joint limits and workspace, which the drivers and the teleop link honour too
        self.robot_config = p("robot_config", "", _about("robot YAML ('': factory limits, the twin's layout)")).value
        self.autostart = bool(p("autostart", False, _about("configure and activate on start")).value)
        self.dry_run = self.runtime.dry_run
        self._infer = infer  # tests may hand in the model boundary; otherwise configure loads it
        self.images: dict[str, Image] = {}
        self.states: dict[str, JointState] = {}
        self.scheduler: ChunkScheduler | None = None
        robot = load_robot_config(self.robot_config) if self.robot_config else None
        self.safety = self.runtime.safety_filter(robot.limits if robot else dict(PIPER_LIMITS),
                                                 workspace=robot.workspace if robot else None)
        self._timer = None
        self._observed_ns = 0
        self._chunks_published = 0
        self.commands = self.holds = 0
        self.hold_reason = ""
        for role in self.cameras:
            self.create_subscription(Image, topics.camera_image(role), lambda m, r=role: self.images.__setitem__(r, m),
                                     image_qos(self.runtime.image_reliability))
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
            infer = self._infer or load_infer(self.checkpoint, self.remote, self.token, self.runtime)
            self.scheduler = self.runtime.scheduler(infer)
            infer(self._warmup_sample())  # the first call compiles / allocates: not on the control path
        except Exception as exc:  # noqa: BLE001 - any loading error fails the transition, named
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        source = self.remote or self.checkpoint or "the given model"
        self.get_logger().info(f"policy from {source}; {self.rate:g} Hz, {self.runtime.mode}, executes "
                               f"{self.runtime.execute_steps}"
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
