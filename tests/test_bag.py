"""Raw bags: real rclpy raw subscriptions -> RawBagWriter -> rosbags/rclpy read back, and
bag -> dataset conversion against the frame sync fed directly (sf_policy/record/: bag.py,
bag_writer.py, episode_bags.py, from_bag.py)."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from sf_policy import topics
from sf_policy.embodiment import ARM_STATE_NAMES, arm_positions
from sf_policy.record.bag import (
    IMAGE_TYPE, JOINT_STATE_TYPE, OUTCOME_KEY, PROMPT_KEY, STARTED_KEY, BagError, bag_custom_data, recorder_streams,
    recorder_topics, typestore,
)
from sf_policy.record.bag_writer import RawBagWriter
from sf_policy.record.episode_bags import EpisodeBags
from sf_policy.record.from_bag import convert_bag
from sf_policy.record.images import image_to_rgb
from sf_policy.record.sync import ARM_STREAMS, FrameSync

H, W = 48, 64
T0 = 1_700_000_000_000_000_000
CAMERA_OFFSETS_MS = {"cam_high": 0.0, "cam_left_wrist": 7.0, "cam_right_wrist": 12.0}


# -- synthetic messages (rosbags' serializer: no ROS needed) ---------------------------------

def _header(stamp: int, frame_id: str = "f"):
    T = typestore().types
    return T["std_msgs/msg/Header"](
        stamp=T["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id=frame_id)


def image_cdr(stamp: int, value: int, encoding: str = "rgb8", data: np.ndarray | None = None) -> bytes:
    pixels = np.full((H, W, 3), value % 256, np.uint8) if data is None else data
    msg = typestore().types[IMAGE_TYPE](header=_header(stamp), height=H, width=W, encoding=encoding,
                                        is_bigendian=0, step=W * 3, data=pixels.reshape(-1))
    return bytes(typestore().serialize_cdr(msg, IMAGE_TYPE))


def joint_cdr(stamp: int, positions, names=ARM_STATE_NAMES) -> bytes:
    msg = typestore().types[JOINT_STATE_TYPE](header=_header(stamp), name=list(names),
                                              position=np.asarray(positions, float),
                                              velocity=np.zeros(0), effort=np.zeros(0))
    return bytes(typestore().serialize_cdr(msg, JOINT_STATE_TYPE))


def synthetic_events(seconds: float = 1.0, t0: int = T0, skip: tuple[str, ...] = ()):
    """(topic, raw, receive_ns) in receive order: 3 cameras at 30 Hz, 4 arms at 200 Hz."""
    streams = recorder_streams()
    events = []
    for role, offset in CAMERA_OFFSETS_MS.items():
        for k in range(int(seconds * 30)):
            stamp = t0 + int(k * 1e9 / 30 + offset * 1e6)
            events.append((streams[role], image_cdr(stamp, k), stamp + 4_000_000))
    for j, name in enumerate(ARM_STREAMS):
        for k in range(int(seconds * 200)):
            stamp = t0 + k * 5_000_000 + j * 300_000
            events.append((streams[name], joint_cdr(stamp, np.full(7, j + k / 1000.0)), stamp + 400_000))
    return sorted((e for e in events if e[0] not in skip), key=lambda e: e[2])


def write_bag(path: Path, events, custom: dict | None = None, topic_types: dict | None = None) -> Path:
    with RawBagWriter(path, topic_types or recorder_topics(), custom_data=custom) as bag:
        for topic, raw, received in events:
            assert bag.write(topic, raw, received)
    assert bag.summary.ok and bag.summary.messages == len(events)
    return path


def reference_frames(events, started_ns: int = 0):
    """What the live recorder does with these messages: FrameSync polled after each one."""
    sync = FrameSync()
    by_topic = {topic: stream for stream, topic in recorder_streams().items()}
    frames = []
    for topic, raw, received in events:
        stream = by_topic[topic]
        if stream in CAMERA_OFFSETS_MS:
            msg = typestore().deserialize_cdr(raw, IMAGE_TYPE)
            image = image_to_rgb(msg.encoding, msg.height, msg.width, msg.step, msg.data, topic)
            sync.add_image(stream, _stamp(msg), image, received)
        else:
            msg = typestore().deserialize_cdr(raw, JOINT_STATE_TYPE)
            sync.add_arm(stream, _stamp(msg), arm_positions(msg.name, msg.position), received)
        frames += [f for f in sync.poll(received) if f.stamp_ns >= started_ns]
    return frames


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def dataset_rows(root: Path) -> list[dict]:
    """Every frame's state, action and stamps, in dataset order."""
    from sf_policy.data import DatasetReader
    from sf_policy.data.features import ACTION, STAMPS, STATE

    with DatasetReader(root) as reader:
        columns = {key: reader.column(key) for key in (STATE, ACTION, STAMPS)}
    return [{key: values[i] for key, values in columns.items()} for i in range(len(columns[STATE]))]


def assert_same_frames(rows: list[dict], frames) -> None:
    from sf_policy.data.features import ACTION, STAMP_NAMES, STAMPS, STATE

    assert len(rows) == len(frames)
    for i, (row, frame) in enumerate(zip(rows, frames)):
        np.testing.assert_array_equal(row[STATE], frame.state, err_msg=f"frame {i}")
        np.testing.assert_array_equal(row[ACTION], frame.action, err_msg=f"frame {i}")
        np.testing.assert_array_equal(row[STAMPS], frame.stamps(STAMP_NAMES), err_msg=f"frame {i}")


# -- RawBagWriter --------------------------------------------------------------------------

def test_bag_keeps_bytes_receive_times_and_prompt(tmp_path):
    events = synthetic_events(0.3)
    bag = write_bag(tmp_path / "b", events, custom={PROMPT_KEY: "lift the pot"})
    assert bag_custom_data(bag)[PROMPT_KEY] == "lift the pot"
    with Reader(bag) as reader:
        assert {c.topic: c.msgtype for c in reader.connections} == recorder_topics()
        read = [(c.topic, bytes(raw), t) for c, t, raw in reader.messages()]
    assert read == events


def test_existing_bag_directory_is_refused_by_name(tmp_path):
    (tmp_path / "b").mkdir()
    with pytest.raises(BagError, match=str(tmp_path / "b")):
        RawBagWriter(tmp_path / "b", recorder_topics())


def test_unknown_type_names_topic_and_leaves_nothing(tmp_path):
    with pytest.raises(BagError, match="/x.*no_pkg/msg/Nothing"):
        RawBagWriter(tmp_path / "b", {"/x": "no_pkg/msg/Nothing"})
    assert not (tmp_path / "b").exists()


def test_write_never_blocks_while_the_disk_is_slow(tmp_path):
    bag = RawBagWriter(tmp_path / "b", recorder_topics())
    real_write, gate = bag._bag.write, threading.Event()

    def slow_write(*args):
        gate.wait(5.0)
        real_write(*args)
    bag._bag.write = slow_write
    raw, topic = image_cdr(T0, 1), topics.camera_image("cam_high")
    longest = 0.0
    for k in range(50):
        start = time.perf_counter()
        assert bag.write(topic, raw, T0 + k)
        longest = max(longest, time.perf_counter() - start)
    assert bag.backlog >= 49 and bag.backlog_bytes >= 49 * len(raw)
    assert longest < 0.05
    gate.set()
    summary = bag.close(timeout=10)
    assert summary.ok and summary.messages == 50 and bag.backlog == 0


def test_backlog_limit_drops_instead_of_growing(tmp_path):
    errors = []
    bag = RawBagWriter(tmp_path / "b", recorder_topics(), max_backlog_bytes=10_000, on_error=errors.append)
    gate = threading.Event()
    real_write = bag._bag.write
    bag._bag.write = lambda *a: (gate.wait(5.0), real_write(*a))
    raw, topic = image_cdr(T0, 1), topics.camera_image("cam_high")  # ~9 kB each
    accepted = [bag.write(topic, raw, T0 + k) for k in range(5)]
    assert accepted == [True, False, False, False, False]
    gate.set()
    summary = bag.close(timeout=10)
    assert summary.messages == 1 and summary.dropped == 4
    assert len(errors) == 1 and "dropping messages" in errors[0] and str(tmp_path / "b") in errors[0]


def test_disk_full_is_reported_not_raised(tmp_path):
    errors = []
    bag = RawBagWriter(tmp_path / "b", recorder_topics(), on_error=errors.append)

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")
    bag._bag.write = full
    topic = topics.puppet_state("left")
    for k in range(5):
        bag.write(topic, joint_cdr(T0 + k, np.zeros(7)), T0 + k)  # must not raise
    summary = bag.close(timeout=10)
    assert not summary.ok and "No space left on device" in summary.error and str(tmp_path / "b") in summary.error
    assert summary.dropped == 5 and len(errors) == 1
    assert not (tmp_path / "b" / "metadata.yaml").exists()
    assert bag.write(topic, b"x", T0) is False


def test_undeclared_topic_is_a_programming_error(tmp_path):
    with RawBagWriter(tmp_path / "b", recorder_topics()) as bag:
        with pytest.raises(ValueError, match="/nope"):
            bag.write("/nope", b"", 0)


# -- EpisodeBags ---------------------------------------------------------------------------

def test_episode_bags_follow_the_session(tmp_path):
    bags = EpisodeBags(tmp_path, recorder_topics(), dataset_name="pots")
    topic, raw = topics.puppet_state("left"), joint_cdr(T0, np.zeros(7))
    bags.follow("recording", 1, "lift the pot", started_ns=T0)
    bags.write(topic, raw, T0 + 1)
    bags.follow("idle", 2, "lift the pot")                    # stop: the episode number moved on
    bags.follow("recording", 2, "lift it", started_ns=T0 + 10)
    bags.write(topic, raw, T0 + 11)
    bags.follow("recording", 2, "lift it", started_ns=T0 + 20)  # rerecord: the first attempt goes
    bags.write(topic, raw, T0 + 21)
    bags.follow("idle", 2, "lift it")                         # discard / abort: number unchanged
    bags.follow("recording", 2, "lift it again", started_ns=T0 + 30)
    bags.write(topic, raw, T0 + 31)
    bags.close(timeout=10)                                    # closed while recording: kept
    kept = sorted(tmp_path.iterdir())
    assert [p.name.split("_")[:3] for p in kept] == [["pots", "episode", "1"], ["pots", "episode", "2"]]
    first, second = (bag_custom_data(p) for p in kept)
    assert first[PROMPT_KEY] == "lift the pot" and first[STARTED_KEY] == str(T0) and first[OUTCOME_KEY] == "recorded"
    assert second[PROMPT_KEY] == "lift it again" and second[OUTCOME_KEY] == "interrupted"
    with Reader(kept[1]) as reader:
        assert [t for _, t, _ in reader.messages()] == [T0 + 31]
    assert bags.backlog == 0 and bags.last_error == ""


def test_episode_bags_report_instead_of_raising(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    logged = []
    bags = EpisodeBags(blocker / "bags", recorder_topics(), log=logged.append)
    bags.follow("recording", 1, "p", started_ns=T0)  # must not raise into the recorder
    bags.write(topics.puppet_state("left"), b"", T0)
    assert bags.current is None and str(blocker) in bags.last_error and logged


# -- conversion ----------------------------------------------------------------------------

def test_missing_topic_is_named(tmp_path):
    missing = topics.master_state("right")
    declared = {t: v for t, v in recorder_topics().items() if t != missing}
    bag = write_bag(tmp_path / "b", synthetic_events(0.2, skip=(missing,)), {PROMPT_KEY: "p"}, declared)
    with pytest.raises(BagError, match=f"{tmp_path / 'b'}: missing topic {missing} \\(master_right\\)"):
        convert_bag(bag, tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds").exists()
    # Declared but silent (the stream died before the episode started): named too.
    bag = write_bag(tmp_path / "b2", synthetic_events(0.2, skip=(missing,)), {PROMPT_KEY: "p"})
    with pytest.raises(BagError, match=f"{tmp_path / 'b2'}: topic {missing} \\(master_right\\) has no messages"):
        convert_bag(bag, tmp_path / "ds", progress=False)


def test_malformed_message_is_named(tmp_path):
    events = synthetic_events(0.2)
    i = next(i for i, e in enumerate(events) if e[0] == topics.camera_image("cam_left_wrist"))
    events[i] = (events[i][0], events[i][1][:40], events[i][2])  # truncated CDR
    bag = write_bag(tmp_path / "b", events, custom={PROMPT_KEY: "p"})
    with pytest.raises(BagError, match=f"{tmp_path / 'b'}: /camera_l/color/image_raw .*cannot be decoded"):
        convert_bag(bag, tmp_path / "ds", progress=False)


def test_unsupported_encoding_is_named(tmp_path):
    events = synthetic_events(0.2)
    i = next(i for i, e in enumerate(events) if e[0] == topics.camera_image("cam_high"))
    events[i] = (events[i][0], image_cdr(T0, 0, encoding="yuv422"), events[i][2])
    bag = write_bag(tmp_path / "b", events, custom={PROMPT_KEY: "p"})
    with pytest.raises(BagError, match="/camera_f/color/image_raw.*yuv422"):
        convert_bag(bag, tmp_path / "ds", progress=False)


def test_no_prompt_needs_a_task(tmp_path):
    bag = write_bag(tmp_path / "b", synthetic_events(0.2))
    with pytest.raises(BagError, match="--task"):
        convert_bag(bag, tmp_path / "ds", progress=False)


def test_convert_synthetic_bags_like_the_live_sync(tmp_path):
    first = synthetic_events(1.0)
    second = synthetic_events(0.7, t0=T0 + 5 * 10**9)
    started = T0 + 5 * 10**9 + 100_000_000  # the episode started 0.1 s into the second bag
    bags = [write_bag(tmp_path / "b1", first, custom={PROMPT_KEY: "lift the pot"}),
            write_bag(tmp_path / "b2", second, custom={PROMPT_KEY: "lift it", STARTED_KEY: str(started)})]
    summary = convert_bag(bags, tmp_path / "ds", progress=False)
    expected = [reference_frames(first), reference_frames(second, started)]
    assert [b.frames for b in summary.bags] == [len(f) for f in expected] and summary.bags[1].before_start >= 2
    assert [b.episode_index for b in summary.bags] == [0, 1] and summary.drops == 0
    assert summary.skew_ms_max == pytest.approx(12.0, abs=0.01)
    rows = dataset_rows(tmp_path / "ds")
    assert_same_frames(rows, expected[0] + expected[1])

    from sf_policy.data import DatasetReader
    with DatasetReader(tmp_path / "ds") as reader:
        assert [e.task for e in reader.episodes] == ["lift the pot", "lift it"]
        # Images too: each synthetic image is flat with value k, so the video shows which was used.
        for role in CAMERA_OFFSETS_MS:
            decoded = [float(image.mean()) for image in reader.episode_frames(1, role)]
            used = [float(frame.images[role].mean()) for frame in expected[1]]
            np.testing.assert_allclose(decoded, used, atol=3.0, err_msg=role)
    # Appending a third bag with a --task override adds an episode.
    convert_bag(write_bag(tmp_path / "b3", synthetic_events(0.3)), tmp_path / "ds", task="again", progress=False)
    with DatasetReader(tmp_path / "ds") as reader:
        assert [e.task for e in reader.episodes] == ["lift the pot", "lift it", "again"]
    from sf_policy.data.validate import validate
    assert validate(tmp_path / "ds") == []


def test_cli_from_bag(tmp_path):
    from typer.testing import CliRunner

    from sf_policy.cli.main import app

    bag = write_bag(tmp_path / "b", synthetic_events(0.5), custom={PROMPT_KEY: "lift the pot"})
    result = CliRunner().invoke(app, ["dataset", "from-bag", str(bag), "--root", str(tmp_path / "ds"),
                                      "--camera", "cam_high", "--camera", "cam_left_wrist"])
    assert result.exit_code == 0, result.output
    assert "frames 1" in result.output  # 14 or 15 frames from half a second at 30 Hz
    from sf_policy.data import DatasetReader
    with DatasetReader(tmp_path / "ds") as reader:
        assert reader.camera_roles == ["cam_high", "cam_left_wrist"] and reader.episodes[0].task == "lift the pot"
    missing = topics.puppet_state("left")
    declared = {t: v for t, v in recorder_topics().items() if t != missing}
    bad = write_bag(tmp_path / "bad", synthetic_events(0.2, skip=(missing,)), {PROMPT_KEY: "p"}, declared)
    result = CliRunner().invoke(app, ["dataset", "from-bag", str(bad), "--root", str(tmp_path / "ds")])
    assert result.exit_code == 2 and missing in result.output


# -- real rclpy: raw subscription bytes -> bag -> rosbags and rclpy ---------------------------

@pytest.fixture(scope="module")
def live_bag(tmp_path_factory):
    """Publish 3 image streams (30 Hz) and 4 JointStates (200 Hz) over loopback DDS, record
    them from raw subscriptions into a bag; returns (bag, published, received)."""
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("ROS_DOMAIN_ID", str(70 + os.getpid() % 10))
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, JointState

    path = tmp_path_factory.mktemp("live") / "bag"
    context = rclpy.Context()
    rclpy.init(context=context)
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.RELIABLE)
    node = rclpy.create_node("bag_test", context=context)
    streams = recorder_streams()
    kinds = {topic: (Image if stream in CAMERA_OFFSETS_MS else JointState) for stream, topic in streams.items()}
    bag = RawBagWriter(path, recorder_topics(), custom_data={PROMPT_KEY: "lift the pot"})
    received = []

    def callback(topic):
        def on_raw(raw: bytes) -> None:
            now = time.time_ns()
            received.append((topic, raw, now))
            bag.write(topic, raw, now)
        return on_raw
    for topic, kind in kinds.items():
        node.create_subscription(kind, topic, callback(topic), qos, raw=True)
    publishers = {topic: node.create_publisher(kind, topic, qos) for topic, kind in kinds.items()}
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.02)
    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    published = {}
    try:
        deadline = time.monotonic() + 10
        while any(p.get_subscription_count() == 0 for p in publishers.values()) and time.monotonic() < deadline:
            time.sleep(0.02)
        published = _publish(publishers, streams, seconds=1.5)
        deadline = time.monotonic() + 5
        while len(received) < len(published) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        spinner.join(2.0)
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
    summary = bag.close(timeout=10)
    assert summary.ok, summary.error
    return path, published, received


def _publish(publishers, streams, seconds: float) -> dict:
    """Paced from this thread (not executor timers, which lag on 2 cores); returns
    (topic, stamp) -> the message published."""
    from sensor_msgs.msg import Image, JointState

    published, rng = {}, np.random.default_rng(0)
    start = time.monotonic()
    ticks = int(seconds * 200)
    for tick in range(ticks):
        time.sleep(max(0.0, start + tick / 200 - time.monotonic()))
        now = time.time_ns()
        if tick % 20 in (0, 7, 13):  # 30 Hz: 3 images every 20 ticks of 5 ms
            for role, offset in CAMERA_OFFSETS_MS.items():
                msg = Image(height=H, width=W, encoding="rgb8", step=W * 3)
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now - int(offset * 1e6), 10**9)
                msg.header.frame_id = role
                msg.data = rng.integers(0, 256, H * W * 3, dtype=np.uint8).tobytes()
                published[(streams[role], now - int(offset * 1e6))] = msg
                publishers[streams[role]].publish(msg)
        for j, name in enumerate(ARM_STREAMS):
            msg = JointState(name=list(ARM_STATE_NAMES), position=list(rng.normal(size=7)),
                             velocity=list(rng.normal(size=7)), effort=[0.0] * 7)
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now - j * 100_000, 10**9)
            published[(streams[name], now - j * 100_000)] = msg
            publishers[streams[name]].publish(msg)
    return published


@pytest.mark.ros
def test_live_raw_bytes_read_back_with_rosbags_and_rclpy(live_bag):
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image, JointState

    path, published, received = live_bag
    assert len(received) >= 0.95 * len(published)
    with Reader(path) as reader:
        assert {c.topic: c.msgtype for c in reader.connections} == recorder_topics()
        read = [(c.topic, bytes(raw), t) for c, t, raw in reader.messages()]
    assert read == sorted(received, key=lambda e: e[2])  # the very bytes, at their receive times
    for topic, raw, _ in read:
        kind, type_name = (Image, IMAGE_TYPE) if topic.endswith("image_raw") else (JointState, JOINT_STATE_TYPE)
        as_rclpy = deserialize_message(raw, kind)
        sent = published[(topic, as_rclpy.header.stamp.sec * 10**9 + as_rclpy.header.stamp.nanosec)]
        assert as_rclpy == sent
        as_rosbags = typestore().deserialize_cdr(raw, type_name)
        if kind is Image:
            assert (as_rosbags.height, as_rosbags.width, as_rosbags.encoding) == (H, W, "rgb8")
            assert as_rosbags.data.tobytes() == bytes(sent.data)
        else:
            assert list(as_rosbags.name) == list(sent.name)
            np.testing.assert_array_equal(as_rosbags.position, sent.position)
            np.testing.assert_array_equal(as_rosbags.velocity, sent.velocity)


@pytest.mark.ros
def test_live_bag_converts_like_the_live_sync(live_bag, tmp_path):
    path, _, received = live_bag
    summary = convert_bag(path, tmp_path / "ds", progress=False)
    frames = reference_frames(sorted(received, key=lambda e: e[2]))
    assert summary.frames == len(frames) >= 35
    assert_same_frames(dataset_rows(tmp_path / "ds"), frames)


def test_bags_are_numbered_by_the_dataset_episode_index_when_appending(tmp_path):
    """A session appending to a dataset with 2 episodes records its first episode as index 2:
    its bag must carry 2 (the number `sf eval replay --dataset ... --episodes 2` uses), not 1."""
    from sf_policy.data.writer import DatasetWriter
    from sf_policy.record.session import RecordingSession, SessionConfig
    from sf_policy.record.sync import FrameSync
    from sf_policy.sim.record_without_ros import record_expert

    root = tmp_path / "pots"
    record_expert(root, task="grasp_vegetable", episodes=2, width=32, height=32, every=10)
    writer = DatasetWriter.open(root)
    try:
        session = RecordingSession(writer, FrameSync(), {}, SessionConfig())
        assert session.episode_number == 1 and session.dataset_index == 2
        bags = EpisodeBags(tmp_path / "bags", recorder_topics(), dataset_name=root.name)
        bags.follow("recording", session.dataset_index, "pick", started_ns=T0)
        bags.write(topics.puppet_state("left"), joint_cdr(T0, np.zeros(7)), T0 + 1)
        bags.close(timeout=10)
        assert len(bags.kept) == 1 and bags.kept[0].name.startswith("pots_episode_2_")
    finally:
        writer.close()


def test_the_recorder_nodes_lazy_writer_names_an_appended_episode_by_its_dataset_index(tmp_path):
    """The node opens its dataset at the first start; the session read the count before that (0),
    and the bag of dataset episode 2 was named ..._episode_0_... (issue 16)."""
    from sf_nodes.recorder import _LazyWriter

    from sf_policy.data.writer import DatasetWriter
    from sf_policy.record.session import RecordingSession, SessionConfig
    from sf_policy.record.sync import FrameSync
    from sf_policy.sim.record_without_ros import record_expert

    root = tmp_path / "pots"
    record_expert(root, task="grasp_vegetable", episodes=2, width=32, height=32, every=10)

    class Opener:  # what _LazyWriter asks of the recorder node: open_writer() and writer
        writer = None

        def open_writer(self):
            self.writer = self.writer or DatasetWriter.open(root)
            return self.writer

    node = Opener()
    session = RecordingSession(_LazyWriter(node), FrameSync(), {}, SessionConfig())
    try:
        session.start("pick")
        assert session.episode_number == 1 and session.dataset_index == 2
    finally:
        session.discard()
        node.writer.close()
