"""``sf dataset view`` (sf_policy/data/view.py): episodes logged to Rerun and read back from the .rrd,
and the Foxglove layout generated from sf_policy/topics.py.

Each .rrd is read back with rerun's own reader (``rerun.chunk.RrdReader``) and compared with
the dataset (or the bag's synchronized frames): every camera, every joint's state and action,
the prompt and the timelines, row for row.
"""

from __future__ import annotations

import io
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import BRINGUP, REPO
from test_dataset_support import FPS, write_dataset
from typer.testing import CliRunner

from sf_policy import topics
from sf_policy.cli.main import app
from sf_policy.data.features import ACTION, STAMP_NAMES, STAMPS, STATE
from sf_policy.data.view import (
    FOXGLOVE_LAYOUT, downscale, foxglove_layout_json, foxglove_topics, joint_entity,
)
from sf_policy.embodiment import ARM_STATE_NAMES, JOINT_NAMES, SIDES

CAMERAS = {"cam_high": (32, 48), "cam_left_wrist": (32, 48), "cam_right_wrist": (32, 48)}
LENGTHS = (10, 7)
TASKS = ("pick up the red cup", "put the cup on the plate")
runner = CliRunner()


def sf(*args) -> object:
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "400"})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("view") / "cups", CAMERAS, LENGTHS, TASKS)


# -- reading a .rrd back -------------------------------------------------------------------------

def read_rrd(path: Path) -> dict[str, dict[str, list]]:
    """Entity -> column -> values of its temporal rows in frame order (static rows under "static:")."""
    from rerun.chunk import RrdReader

    reader = RrdReader(path)
    [recording] = reader.recordings()
    assert reader.blueprints(), f"{path}: no blueprint (the default layout) was saved"
    rows: dict[str, list[dict]] = defaultdict(list)
    for chunk in reader.stream(store=recording):
        batch = chunk.to_record_batch()
        key = ("static:" if chunk.is_static else "") + chunk.entity_path.lstrip("/")
        columns = {f.name: _values(batch.column(i)) for i, f in enumerate(batch.schema)
                   if f.name != "rerun.controls.RowId"}
        rows[key] += [{name: values[i] for name, values in columns.items()} for i in range(batch.num_rows)]
    table = {}
    for entity, entity_rows in rows.items():
        entity_rows.sort(key=lambda r: r.get("frame", 0))
        table[entity] = {name: [r.get(name) for r in entity_rows] for name in entity_rows[0]}
    return table


def _values(column: pa.Array) -> list:
    """Index columns as ns integers; components (a batch per row: one value here) unwrapped."""
    if pa.types.is_timestamp(column.type) or pa.types.is_duration(column.type):
        return column.cast(pa.int64()).to_pylist()  # ns, without datetime's microseconds
    return [v[0] if isinstance(v, list) and len(v) == 1 else v for v in column.to_pylist()]


def scalars(table, entity: str) -> np.ndarray:
    return np.array(table[entity]["Scalars:scalars"])


def raw_image(table, entity: str, i: int) -> np.ndarray:
    fmt = table[entity]["Image:format"][i]
    return np.array(table[entity]["Image:buffer"][i], np.uint8).reshape(fmt["height"], fmt["width"], 3)


def dataset_episode(root: Path, episode: int) -> dict:
    from sf_policy.data.reader import DatasetReader

    with DatasetReader(root) as reader:
        out = {key: reader.episode_column(episode, key) for key in (STATE, ACTION, STAMPS)}
        out["images"] = {role: list(reader.episode_frames(episode, role)) for role in reader.camera_roles}
    return out


# -- datasets ------------------------------------------------------------------------------------

def test_a_dataset_episode_reads_back_exactly(dataset, tmp_path):
    out = tmp_path / "ep1.rrd"
    result = sf("dataset", "view", dataset, "--episode", 1, "--save", out, "--downscale", 1, "--jpeg-quality", 0)
    assert result.exit_code == 0, result.output
    assert "cups episode 1: 7 frames" in result.output and str(out) in result.output
    table, expected, n = read_rrd(out), dataset_episode(dataset, 1), LENGTHS[1]
    for role in CAMERAS:  # the decoded video, pixel for pixel (raw images, no downscale)
        entity = f"cameras/{role}"
        assert table[entity]["frame"] == list(range(n))
        for i in range(n):
            np.testing.assert_array_equal(raw_image(table, entity, i), expected["images"][role][i], err_msg=role)
    for j, name in enumerate(JOINT_NAMES):  # 14 plots, each with the state and the action series
        for kind, key in (("state", STATE), ("action", ACTION)):
            entity = f"{joint_entity(name)}/{kind}"
            np.testing.assert_array_equal(scalars(table, entity), expected[key][:, j].astype(np.float64),
                                          err_msg=entity)
            assert table[f"static:{entity}"]["SeriesLines:names"] == [kind]
    capture = expected[STAMPS][:, STAMP_NAMES.index("cam_high")]
    assert table["arms/left/joint1/state"]["capture_time"] == capture.tolist()
    assert table["cameras/cam_high"]["capture_time"] == capture.tolist()
    timestamps_ns = table["arms/right/gripper/action"]["timestamp"]
    np.testing.assert_allclose(np.array(timestamps_ns) / 1e9, np.arange(n) / FPS, atol=1e-6)
    assert table["prompt"]["TextLog:text"] == [TASKS[1]] and table["prompt"]["frame"] == [0]
    assert len(scalars(table, "sync/camera_skew_ms")) == n
    assert "put the cup on the plate" in table["static:episode"]["TextDocument:text"][0]


def test_defaults_shrink_images_and_several_episodes_get_a_file_each(dataset, tmp_path):
    from PIL import Image

    result = sf("dataset", "view", dataset, "-e", 0, "-e", 1, "--max-frames", 4, "--save", tmp_path / "cups.rrd")
    assert result.exit_code == 0, result.output
    for episode in (0, 1):
        table = read_rrd(tmp_path / f"cups_episode_{episode}.rrd")
        assert len(scalars(table, "arms/left/joint3/state")) == 4
        assert table["prompt"]["TextLog:text"] == [TASKS[episode]]
        decoded_videos = dataset_episode(dataset, episode)["images"]
        original, other = decoded_videos["cam_left_wrist"], decoded_videos["cam_high"]
        entity = table["cameras/cam_left_wrist"]
        assert entity["frame"] == [0, 1, 2, 3] and set(entity["EncodedImage:media_type"]) == {"image/jpeg"}
        for i, blob in enumerate(entity["EncodedImage:blob"]):
            decoded = np.asarray(Image.open(io.BytesIO(bytes(blob))).convert("RGB"))
            assert decoded.shape == (16, 24, 3)  # half of 32x48
            error = np.abs(decoded.astype(int) - downscale(original[i], 2).astype(int)).mean()
            elsewhere = np.abs(decoded.astype(int) - downscale(other[i], 2).astype(int)).mean()
            assert error < 8 and elsewhere > 3 * error, f"episode {episode} frame {i}: {error}, {elsewhere}"


def test_without_a_display_the_default_is_a_file(dataset, tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.chdir(tmp_path)
    result = sf("dataset", "view", dataset, "--max-frames", 2)
    assert result.exit_code == 0, result.output
    assert len(scalars(read_rrd(tmp_path / "cups_episode_0.rrd"), "arms/right/joint6/action")) == 2


def test_downscale_is_a_block_mean():
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    small = downscale(image, 2)
    assert small.shape == (2, 3, 3)
    assert small[1, 2, 0] == image[2:4, 4:6, 0].mean().astype(np.uint8)
    assert downscale(image[:3], 2).shape == (1, 3, 3)  # a row that does not fill a block is cropped


# -- raw bags --------------------------------------------------------------------------------------

H, W = 24, 32
T0 = 1_700_000_000_000_000_000


def _write_bag(path: Path, seconds: float = 0.4, custom: dict | None = None) -> Path:
    """A bag of the recorder's seven topics, written with rosbags (no recorder, no ROS)."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from sf_policy.record.bag import IMAGE_TYPE, recorder_streams, recorder_topics, typestore

    T = typestore().types
    header = lambda stamp: T["std_msgs/msg/Header"](  # noqa: E731
        stamp=T["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id="f")
    events = []
    for c, role in enumerate(topics.CAMERA_ROLES):
        for k in range(int(seconds * 30)):
            stamp = T0 + int(k * 1e9 / 30) + c * 3_000_000
            pixels = ((np.arange(H * W * 3).reshape(H, W, 3) + 11 * k + 50 * c) % 256).astype(np.uint8)
            msg = T[IMAGE_TYPE](header=header(stamp), height=H, width=W, encoding="rgb8", is_bigendian=0,
                                step=W * 3, data=pixels.reshape(-1))
            events.append((recorder_streams()[role], stamp + 2_000_000, msg))
    for j, stream in enumerate(("puppet_left", "puppet_right", "master_left", "master_right")):
        for k in range(int(seconds * 200)):
            stamp = T0 + k * 5_000_000 + j * 100_000
            msg = T["sensor_msgs/msg/JointState"](header=header(stamp), name=list(ARM_STATE_NAMES),
                                                  position=np.full(7, j + k / 1000.0), velocity=np.zeros(0),
                                                  effort=np.zeros(0))
            events.append((recorder_streams()[stream], stamp + 300_000, msg))
    writer = Writer(path, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    connections = {topic: writer.add_connection(topic, msgtype, typestore=typestore())
                   for topic, msgtype in recorder_topics().items()}
    for topic, received, msg in sorted(events, key=lambda e: e[1]):
        writer.write(connections[topic], received, bytes(typestore().serialize_cdr(msg, connections[topic].msgtype)))
    for key, value in (custom or {}).items():
        writer.set_custom_data(key, value)
    writer.close()
    return path


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    from sf_policy.record.bag import EPISODE_KEY, PROMPT_KEY

    return _write_bag(tmp_path_factory.mktemp("bags") / "cups_episode_4",
                      custom={PROMPT_KEY: "stack the cups", EPISODE_KEY: "4"})


def test_a_bag_reads_back_as_the_recorders_frames(bag, tmp_path):
    from sf_policy.record.from_bag import bag_frames

    frames = list(bag_frames(bag, topics.CAMERA_ROLES))
    assert len(frames) >= 8
    mcap = next(bag.glob("*.mcap"))  # the .mcap stands for its bag
    result = sf("dataset", "view", mcap, "--save", tmp_path / "bag.rrd", "--downscale", 1, "--jpeg-quality", 0)
    assert result.exit_code == 0, result.output
    assert f"cups_episode_4: {len(frames)} frames" in result.output
    table = read_rrd(tmp_path / "bag.rrd")
    for role in topics.CAMERA_ROLES:
        for i, frame in enumerate(frames):
            np.testing.assert_array_equal(raw_image(table, f"cameras/{role}", i), frame.images[role])
    for j, name in enumerate(JOINT_NAMES):
        np.testing.assert_array_equal(scalars(table, f"{joint_entity(name)}/state"), [f.state[j] for f in frames])
        np.testing.assert_array_equal(scalars(table, f"{joint_entity(name)}/action"), [f.action[j] for f in frames])
    # State is the puppets (streams 0, 1), action the masters (2, 3): never swapped.
    assert np.floor(scalars(table, "arms/left/joint1/state")).tolist() == [0.0] * len(frames)
    assert np.floor(scalars(table, "arms/right/gripper/action")).tolist() == [3.0] * len(frames)
    assert table["arms/left/joint1/action"]["capture_time"] == [f.stamp_ns for f in frames]
    assert table["prompt"]["TextLog:text"] == ["stack the cups"]
    np.testing.assert_allclose(scalars(table, "sync/camera_skew_ms"), 6.0, atol=0.01)  # cameras 3 ms apart


# -- bad input ---------------------------------------------------------------------------------

def _error(result, code: int, *words: str) -> None:
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), "a traceback instead of an error message"
    for word in words:
        assert word in result.output, f"{word!r} not in {result.output!r}"


def test_bad_input_is_named_and_exits_2(dataset, bag, tmp_path):
    (tmp_path / "empty").mkdir()
    _error(sf("dataset", "view", tmp_path / "empty"), 2, str(tmp_path / "empty"), "neither a LeRobot dataset")
    _error(sf("dataset", "view", tmp_path / "nowhere"), 2, str(tmp_path / "nowhere"), "does not exist")
    _error(sf("dataset", "view", dataset, "--episode", 7, "--save", tmp_path / "x.rrd"), 2, "--episode 7", "0-1")
    _error(sf("dataset", "view", bag, "--episode", 0), 2, str(bag), "datasets only")
    _error(sf("dataset", "view", dataset, "--save", tmp_path / "x.rrd", "--spawn"), 2, "one of --save")
    _error(sf("dataset", "view", dataset, "--connect", "nohost"), 2, "--connect nohost")
    _error(sf("dataset", "view", dataset, "--downscale", 0), 2, "--downscale")
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "killed_0.mcap").write_bytes(b"\x89MCAP0\r\n")  # a recorder killed before it closed the bag
    _error(sf("dataset", "view", killed, "--save", tmp_path / "x.rrd"), 2, "repair-bag")
    assert not (tmp_path / "x.rrd").exists()


def test_without_rerun_the_error_says_what_to_install(dataset, monkeypatch):
    monkeypatch.setitem(sys.modules, "rerun", None)  # import rerun -> ImportError
    _error(sf("dataset", "view", dataset), 1, "pip install rerun-sdk")


# -- the Foxglove layout --------------------------------------------------------------------------

def _layout_topics(layout: dict) -> set[str]:
    found = set()
    for config in layout["configById"].values():
        found.add(config.get("imageMode", {}).get("imageTopic"))
        found.update(path["value"].split(".")[0] for path in config.get("paths", []))
        found.update((config.get("topicPath"), config.get("topicToRender")))
    return found - {None}


def _stack_topics() -> set[str]:
    """Every topic name sf_policy/topics.py defines."""
    names = {v for k, v in vars(topics).items() if k.isupper() and isinstance(v, str) and v.startswith("/")}
    for side in SIDES:
        names |= {topics.puppet_state(side), topics.master_state(side), topics.arm_command(side)}
    for role in topics.CAMERA_ROLES:
        names |= {topics.camera_image(role), topics.camera_info(role), topics.camera_depth(role)}
    return names


def _panel_ids(node) -> set[str]:
    if isinstance(node, str):
        return {node}
    return _panel_ids(node["first"]) | _panel_ids(node["second"])


def test_the_shipped_foxglove_layout_is_the_generated_one():
    shipped = (REPO / FOXGLOVE_LAYOUT).read_text()
    assert shipped == foxglove_layout_json(), (
        f"{FOXGLOVE_LAYOUT} drifted from sf_policy/topics.py; regenerate it: .venv/bin/python -c "
        "'from sf_policy.data.view import write_foxglove_layout; write_foxglove_layout(\".\")'")
    layout = json.loads(shipped)
    used = _layout_topics(layout)
    assert used == set(foxglove_topics()) and used <= _stack_topics(), used - _stack_topics()
    wanted = {topics.camera_image(r) for r in topics.CAMERA_ROLES} | {topics.DIAGNOSTICS, topics.PROMPT}
    wanted |= {f(side) for side in SIDES for f in (topics.puppet_state, topics.arm_command)}
    assert wanted <= used
    # Every panel in the layout tree (and in the tabs) has a config, and every config is shown.
    ids = _panel_ids(layout["layout"])
    for tab in layout["configById"]["Tab!arms"]["tabs"]:
        ids |= _panel_ids(tab["layout"])
    assert ids == set(layout["configById"])
    plots = [c for k, c in layout["configById"].items() if k.startswith("Plot!")]
    assert len(plots) == len(JOINT_NAMES)  # a plot per joint and gripper, both arms
    assert "config/*.json" in (BRINGUP / "setup.py").read_text()  # colcon installs it with the other configs
