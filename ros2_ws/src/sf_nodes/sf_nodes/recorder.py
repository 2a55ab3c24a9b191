"""Recorder node: cameras + puppet and master arms -> LeRobot v3 episodes (and raw bags).

Parameters (docs/interfaces.md): ``dataset_root`` (required), ``task`` (default prompt),
``cameras``, ``fps``, ``max_duration_s``, ``stall_s``, ``episodes`` (0 = no limit),
``exit_when_done``, ``bag_root`` ("" = no raw bags), ``video_codec``, ``video_crf``,
``image_reliability`` (best_effort | reliable).

Control: ``/recorder/command`` (std_msgs/String "start [prompt]", "stop", "discard",
"rerecord"), services ``~/start ~/stop ~/discard ~/rerecord`` (std_srvs/Trigger); status as
JSON on ``/recorder/status`` (2 Hz) and ``/diagnostics``. The logic lives in
``sf_policy.record``; this node only moves messages.
"""

from __future__ import annotations

import json
from pathlib import Path

import rclpy
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger

from sf_policy import topics
from sf_policy.data.writer import DatasetWriter, VideoOptions
from sf_policy.embodiment import arm_positions
from sf_policy.record.bag import arm_topic, recorder_streams, recorder_topics
from sf_policy.record.images import image_to_rgb, size_mismatch, stamp_ns
from sf_policy.record.session import CommandError, RecordingSession, SessionConfig
from sf_policy.record.sync import ARM_STREAMS, FrameSync

from .common import (ERROR, OK, RECORDER_COMMAND_QOS, RECORDER_STATUS_QOS, WARN, diagnostic_status,
                     diagnostics_publisher, image_qos, publish_diagnostics, run_node)

#: Arm states a subscription keeps until the executor takes them: a quarter second (images: one
#: second, common.IMAGE_DEPTH). A deeper queue turns a late executor into a delay, not a lost sample.
ARM_DEPTH = 50
#: The drivers' sensor QoS (best effort, volatile), deeper.
ARM_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=ARM_DEPTH, reliability=ReliabilityPolicy.BEST_EFFORT,
                     durability=DurabilityPolicy.VOLATILE)


class RecorderNode(Node):
    def __init__(self, **node_kwargs):
        super().__init__(topics.RECORDER_NODE, **node_kwargs)
        p = {name: self.declare_parameter(name, default).value for name, default in (
            ("dataset_root", ""), ("task", ""), ("cameras", list(topics.CAMERA_ROLES)), ("fps", 30.0),
            ("max_duration_s", 60.0), ("stall_s", 0.5), ("episodes", 0), ("exit_when_done", False),
            ("bag_root", ""), ("video_codec", "libx264"), ("video_crf", 23), ("image_reliability", "best_effort"),
            ("robot_type", "agilex_piper_bimanual"))}
        if not p["dataset_root"]:
            raise ValueError("parameter dataset_root is required (where the LeRobot dataset is written)")
        self.params = p
        self.root = Path(p["dataset_root"]).expanduser()
        self.roles = tuple(p["cameras"])
        for role in self.roles:
            topics.check_camera_role(role)
        self.writer = None  # opened at the first start, when image sizes are known
        self._latest_shape: dict[str, tuple[int, int]] = {}
        self.session = RecordingSession(
            _LazyWriter(self), FrameSync(self.roles, ARM_STREAMS, fps=p["fps"]), recorder_streams(self.roles),
            SessionConfig(max_duration_s=p["max_duration_s"], stall_s=p["stall_s"], episodes=p["episodes"],
                          default_prompt=p["task"]),
            log=self.get_logger().info, clock=lambda: self.get_clock().now().nanoseconds)
        self.bags = None
        if p["bag_root"]:
            from sf_policy.record.episode_bags import EpisodeBags
            self.bags = EpisodeBags(Path(p["bag_root"]).expanduser(), recorder_topics(self.roles),
                                    dataset_name=self.root.name, log=self.get_logger().error)

        qos = image_qos(p["image_reliability"])
        for role in self.roles:
            self.create_subscription(Image, topics.camera_image(role), self._image_callback(role), qos, raw=True)
        for name in ARM_STREAMS:
            self.create_subscription(JointState, arm_topic(name), self._arm_callback(name), ARM_QOS, raw=True)
        self.create_subscription(String, topics.RECORDER_COMMAND, self._on_command, RECORDER_COMMAND_QOS)
        for word in topics.RECORDER_COMMANDS:
            self.create_service(Trigger, f"~/{word}", self._service(word))
        self._status_pub = self.create_publisher(String, topics.RECORDER_STATUS, RECORDER_STATUS_QOS)
        self._diag_pub = diagnostics_publisher(self)
        self.create_timer(0.1, self._check)
        self.create_timer(0.5, self._publish_status)
        self.create_timer(1.0, self._publish_diagnostics)
        self.get_logger().info(f"recording into {self.root} ({', '.join(self.roles)}); "
                               f"send 'start' on {topics.RECORDER_COMMAND} or call ~/start")

    # -- messages ----------------------------------------------------------------------
    def _image_callback(self, role: str):
        topic = topics.camera_image(role)

        def callback(raw: bytes) -> None:
            msg = deserialize_message(raw, Image)
            try:
                rgb = image_to_rgb(msg.encoding, msg.height, msg.width, msg.step, msg.data, topic)
            except ValueError as error:
                self.get_logger().error(str(error), throttle_duration_sec=5.0)
                return
            self._latest_shape[role] = rgb.shape[:2]
            self._bag_write(topic, raw)
            self.session.on_image(role, stamp_ns(msg.header), rgb)
        return callback

    def _arm_callback(self, name: str):
        topic = arm_topic(name)

        def callback(raw: bytes) -> None:
            msg = deserialize_message(raw, JointState)
            try:
                positions = arm_positions(msg.name, msg.position)
            except ValueError as error:
                self.get_logger().error(f"{topic}: {error}", throttle_duration_sec=5.0)
                return
            self._bag_write(topic, raw)
            self.session.on_arm(name, stamp_ns(msg.header), positions)
        return callback

    def _bag_write(self, topic: str, raw: bytes) -> None:
        if self.bags is not None and self.session.state == "recording":
            self.bags.write(topic, raw, self.get_clock().now().nanoseconds)

    # -- control -----------------------------------------------------------------------
    def _run_command(self, text: str) -> tuple[bool, str]:
        try:
            message = self.session.command(text)
        except CommandError as error:
            self.get_logger().warning(str(error))
            return False, str(error)
        except Exception as error:  # e.g. the dataset cannot be opened: say so, keep running
            self.session.last_error = str(error)
            self.get_logger().error(str(error))
            return False, str(error)
        self._follow_with_bags()
        self._publish_status()
        return True, message

    def _follow_with_bags(self) -> None:
        """One bag per episode: opened at start, kept when saved, deleted when discarded."""
        if self.bags is not None:
            self.bags.follow(self.session.state, self.session.dataset_index, self.session.prompt,
                             started_ns=self.session.episode_started_ns)

    def _on_command(self, msg: String) -> None:
        self._run_command(msg.data)

    def _service(self, word: str):
        def handle(_request, response):
            response.success, response.message = self._run_command(word)
            return response
        return handle

    def _check(self) -> None:
        was = self.session.state
        self.session.check()
        if was != self.session.state:
            self._follow_with_bags()
        if self._done() and self.params["exit_when_done"]:
            self.get_logger().info(f"{len(self.session.saved)} episodes recorded; exiting")
            raise SystemExit(0)

    def _done(self) -> bool:
        wanted = self.params["episodes"]
        status = self.session.status()
        return bool(wanted) and status["saved"] >= wanted and status["saving"] == 0 and status["state"] == "idle"

    # -- reporting ---------------------------------------------------------------------
    def status(self) -> dict:
        status = self.session.status()
        silent = self.session.sync.silent_streams(self.get_clock().now().nanoseconds, self.params["stall_s"],
                                                  self.session.listening_since_ns)
        status["silent"] = [self.session.stream_topics[s] for s in silent]
        status["dataset"] = str(self.root)
        if self.bags is not None:
            status["bag_backlog"] = self.bags.backlog
            status["last_error"] = status["last_error"] or self.bags.last_error
        return status

    def _publish_status(self) -> None:
        self._status_pub.publish(String(data=json.dumps(self.status())))

    def _publish_diagnostics(self) -> None:
        s = self.status()
        if s["silent"]:
            level, message = ERROR, f"no messages on {', '.join(s['silent'])}"
        elif s["last_error"]:
            level, message = WARN, s["last_error"]
        elif s["state"] == "recording" and s["frames"] > 30 and s["rate_hz"] < 0.9 * self.params["fps"]:
            # The frames keep their real stamps, but the dataset says fps: the operator must know.
            level, message = WARN, f"recording at {s['rate_hz']:.1f} Hz, below the dataset's {self.params['fps']:g} fps"
        else:
            level, message = OK, s["state"]
        values = [(k, s[k]) for k in ("state", "episode", "frames", "rate_hz", "drops", "duplicates", "backlog",
                                      "saved", "aborted")]
        publish_diagnostics(self, self._diag_pub, [diagnostic_status("recorder", str(self.root), level, message,
                                                                     values)])

    def open_writer(self) -> DatasetWriter:
        """The dataset, created at the first start with the image sizes seen on the topics."""
        if self.writer is None:
            missing = [r for r in self.roles if r not in self._latest_shape]
            if missing:
                raise CommandError(f"no image yet on {', '.join(topics.camera_image(r) for r in missing)}")
            if self.root.exists() and any(self.root.iterdir()):
                self.writer = DatasetWriter.open(self.root)
                self._check_sizes(self.writer)
            else:
                video = VideoOptions(codec=self.params["video_codec"], crf=int(self.params["video_crf"]))
                self.writer = DatasetWriter.create(self.root, fps=round(self.params["fps"]),
                                                   cameras=dict(self._latest_shape), video=video,
                                                   robot_type=self.params["robot_type"])
        return self.writer

    def _check_sizes(self, writer: DatasetWriter) -> None:
        wrong = size_mismatch(writer, self._latest_shape)
        if wrong:
            role, (height, width), shape = wrong
            raise CommandError(f"{topics.camera_image(role)} sends {width}x{height} images but "
                               f"{self.root} holds {shape[1]}x{shape[0]}; record into another dataset_root")

    def close(self) -> None:
        self.session.close()
        if self.bags is not None:
            self.bags.close()
        if self.writer is not None:
            self.writer.close()


class _LazyWriter:
    """Opens the dataset at the first episode, when the image sizes are known."""

    def __init__(self, node: RecorderNode):
        self._node = node

    def begin_episode(self, task: str):
        return self._node.open_writer().begin_episode(task=task)

    @property
    def num_episodes(self) -> int | None:
        """The opened dataset's episode count (None until the first episode opens it)."""
        return self._node.writer.num_episodes if self._node.writer is not None else None


def main(args=None) -> int:
    try:
        return run_node(RecorderNode, args)
    except SystemExit as done:
        return int(done.code or 0)
    finally:
        if rclpy.ok():
            rclpy.shutdown()
