"""The recorder node over real DDS: the twin (or hand-made streams) -> recorder -> dataset on disk."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from rclpy.parameter import Parameter

from conftest import wait_for
from sf_policy import topics

pytestmark = pytest.mark.ros


def make_recorder(ros, root, **params):
    from sf_nodes.recorder import RecorderNode

    values = {"dataset_root": str(root), "task": "test prompt", **params}
    return ros.add(RecorderNode(context=ros.context,
                                parameter_overrides=[Parameter(k, value=v) for k, v in values.items()]))


class Control:
    """Sends commands and follows the status, as the key helper does."""

    def __init__(self, ros):
        from std_msgs.msg import String
        from sf_nodes.common import RECORDER_COMMAND_QOS, RECORDER_STATUS_QOS

        self.String, self.status, self.lock = String, {}, threading.Lock()
        node = ros.node("recorder_control")
        self.pub = node.create_publisher(String, topics.RECORDER_COMMAND, RECORDER_COMMAND_QOS)
        node.create_subscription(String, topics.RECORDER_STATUS, self._on_status, RECORDER_STATUS_QOS)

    def _on_status(self, msg):
        with self.lock:
            self.status = json.loads(msg.data)

    def send(self, text):
        # A recorder's status can reach us before our publisher has matched its subscription.
        wait_for(lambda: self.pub.get_subscription_count() > 0, timeout=10, what="the recorder to subscribe to commands")
        self.pub.publish(self.String(data=text))

    def wait(self, predicate, what, timeout=20.0):
        return wait_for(lambda: predicate(self.status), timeout=timeout, what=f"{what} (status {self.status})")


class Streams:
    """Cameras (64x48 at 30 Hz) and arms (200 Hz) published from a thread, with a kill switch per stream."""

    def __init__(self, ros):
        from sensor_msgs.msg import Image, JointState
        from sf_nodes.common import IMAGE_QOS, SENSOR_QOS, header

        self.Image, self.JointState, self.header = Image, JointState, header
        node = ros.node("fake_sensors")
        self.images = {r: node.create_publisher(Image, topics.camera_image(r), IMAGE_QOS) for r in topics.CAMERA_ROLES}
        self.arms = {f"{kind}_{side}": node.create_publisher(JointState, topic(side), SENSOR_QOS)
                     for kind, topic in (("puppet", topics.puppet_state), ("master", topics.master_state))
                     for side in ("left", "right")}
        self.muted: set[str] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        k = 0
        while not self.stop.is_set():
            stamp = time.time_ns()
            for name, pub in self.arms.items():
                if name not in self.muted:
                    q = [0.01 * k] * 6 + [0.03]
                    pub.publish(self.JointState(header=self.header(stamp, ""), name=[], position=q))
            if k % 7 == 0:  # ~28.6 Hz: close enough to 30 for the recorder, which follows the camera
                for role, pub in self.images.items():
                    if role not in self.muted:
                        data = np.full((48, 64, 3), k % 256, np.uint8).tobytes()
                        pub.publish(self.Image(header=self.header(stamp, role), height=48, width=64, encoding="rgb8",
                                               step=64 * 3, data=data))
            k += 1
            time.sleep(0.005)

    def close(self):
        self.stop.set()
        self.thread.join(2)


def test_twin_episodes_are_recorded_through_the_graph(ros, tmp_path):
    """The twin publishes; the recorder records two episodes; the reader gets them back intact."""
    from sf_policy.data.features import ACTION, STAMP_NAMES, STAMPS, STATE
    from sf_policy.data.reader import DatasetReader
    from sf_policy.data.validate import validate
    from test_sim_node import make_sim

    root = tmp_path / "ds"
    control = Control(ros)
    make_recorder(ros, root)
    make_sim(ros)
    control.wait(lambda s: s.get("state") == "idle" and s.get("silent") == [], "the recorder to hear every stream")
    for episode, prompt in enumerate(("first episode", "second episode")):
        control.send(f"start {prompt}")
        control.wait(lambda s: s.get("state") == "recording" and s.get("frames", 0) >= 20, "20 frames")
        control.send("stop")
        control.wait(lambda s, n=episode + 1: s.get("saved") == n and s.get("saving") == 0, "the episode saved")
    assert validate(root) == []
    ds = DatasetReader(root)
    assert ds.num_episodes == 2 and [list(e.tasks) for e in ds.episodes] == [["first episode"], ["second episode"]]
    stamps = ds.column(STAMPS)
    cam = stamps[:, STAMP_NAMES.index("cam_high")]
    assert np.all(np.diff(cam[: ds.episodes[0].length]) > 0)  # every frame a new image, in order
    assert ds.column(STATE).shape[1] == 14 and np.all(np.isfinite(ds.column(ACTION)))
    frame = ds[5]
    assert frame["observation.images.cam_high"].shape == (48, 64, 3)


def test_commands_services_and_refusals(ros, tmp_path):
    from std_srvs.srv import Trigger

    streams = Streams(ros)
    try:
        control = Control(ros)
        make_recorder(ros, tmp_path / "ds")
        node = ros.node("service_caller")
        clients = {w: node.create_client(Trigger, f"/recorder/{w}") for w in topics.RECORDER_COMMANDS}
        control.wait(lambda s: s.get("silent") == [], "all streams heard")

        def call(word):
            assert clients[word].wait_for_service(5.0)
            future = clients[word].call_async(Trigger.Request())
            wait_for(future.done, timeout=10, what=f"/recorder/{word}")
            return future.result()

        assert not call("stop").success  # nothing to stop
        assert call("start").success
        assert "already recording" in call("start").message
        control.wait(lambda s: s.get("frames", 0) >= 5, "frames")
        assert call("rerecord").success
        control.wait(lambda s: s.get("state") == "recording" and s.get("frames", 0) >= 5, "frames after rerecord")
        assert call("discard").success
        control.send("dance")  # an unknown command is refused, and nothing breaks
        assert call("start").success
        control.wait(lambda s: s.get("frames", 0) >= 10, "frames")
        assert call("stop").success
        control.wait(lambda s: s.get("saved") == 1 and s.get("saving") == 0, "saved")
    finally:
        streams.close()


def test_a_stalled_stream_aborts_the_episode_naming_its_topic_and_recording_goes_on(ros, tmp_path):
    from sf_policy.data.reader import DatasetReader

    streams = Streams(ros)
    try:
        control = Control(ros)
        make_recorder(ros, tmp_path / "ds")
        control.wait(lambda s: s.get("silent") == [], "all streams heard")
        control.send("start")
        control.wait(lambda s: s.get("frames", 0) >= 5, "frames")
        streams.muted.add("cam_left_wrist")
        control.wait(lambda s: s.get("state") == "idle" and s.get("aborted") == 1, "the episode to be aborted")
        assert "/camera_l/color/image_raw" in control.status["last_error"]
        control.send("start")  # refused while the camera is silent
        time.sleep(0.5)
        assert control.status["state"] == "idle"
        streams.muted.clear()
        control.wait(lambda s: s.get("silent") == [], "the camera back")
        control.send("start")
        control.wait(lambda s: s.get("frames", 0) >= 5, "frames after the stall")
        control.send("stop")
        control.wait(lambda s: s.get("saved") == 1 and s.get("saving") == 0, "saved")
        assert DatasetReader(tmp_path / "ds").num_episodes == 1
    finally:
        streams.close()
