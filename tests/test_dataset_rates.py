"""An episode's real rate, from its header stamps: stored per episode, flagged by validate,
logged by the recorder (sf_policy/data/rates.py)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
from typer.testing import CliRunner

from sf_policy.data.features import ACTION, SKEW, STAMP_NAMES, STAMPS, STATE
from sf_policy.data.rates import measured_rates, shortfalls
from sf_policy.data.reader import load_episode_rows
from sf_policy.data.validate import validate, validate_with_warnings
from sf_policy.data.writer import DatasetWriter

CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
T0 = 1_700_000_000_000_000_000


def _stamps(frames: int, hz: float, wrist_every: int = 1) -> np.ndarray:
    """Frame k at k/hz; the wrist cameras give a new image every ``wrist_every`` frames."""
    out = np.zeros((frames, len(STAMP_NAMES)), np.int64)
    times = T0 + (np.arange(frames) * 1e9 / hz).astype(np.int64)
    for name in STAMP_NAMES:
        out[:, STAMP_NAMES.index(name)] = times
    for role in CAMERAS[1:]:
        out[:, STAMP_NAMES.index(role)] = times[(np.arange(frames) // wrist_every) * wrist_every]
    return out


def _record(root, episodes: list[np.ndarray], writer: DatasetWriter | None = None) -> list:
    writer = writer or DatasetWriter.create(root, fps=30, cameras={role: (16, 16) for role in CAMERAS})
    summaries = []
    with writer:
        for stamps in episodes:
            episode = writer.begin_episode("lift the pot")
            for k, row in enumerate(stamps):
                episode.add_frame({STATE: np.full(14, k, np.float32), ACTION: np.zeros(14, np.float32),
                                   STAMPS: row, SKEW: np.zeros(1, np.float32)},
                                  images={role: np.zeros((16, 16, 3), np.uint8) for role in CAMERAS})
            summaries.append(episode.save())
    return summaries


def test_rates_from_stamps():
    rates = measured_rates(_stamps(61, 30.0), CAMERAS)
    assert list(rates) == list(CAMERAS) and np.allclose(list(rates.values()), 30.0)
    assert shortfalls(rates, 30) == []
    slow = measured_rates(_stamps(37, 18.0), CAMERAS)
    assert np.allclose(list(slow.values()), 18.0)
    assert shortfalls(slow, 30) == ["frames were taken at 18.0 Hz (cam_high header stamps) in a 30 fps dataset: "
                                    "it replays 1.67x too fast"]
    wrist = measured_rates(_stamps(60, 30.0, wrist_every=2), CAMERAS)
    assert np.isclose(wrist["cam_high"], 30.0) and np.isclose(wrist["cam_left_wrist"], 15.0)
    assert "cam_left_wrist delivered 15.0 images/s: 50 % of its frames repeat the previous image" in \
        shortfalls(wrist, 30)
    twin = _stamps(31, 10.0) - T0  # the twin's clock starts at 0: a stamp of 0 is a time, not a gap
    assert np.allclose(list(measured_rates(twin, CAMERAS).values()), 10.0)
    assert measured_rates(_stamps(1, 30.0), CAMERAS) == {}                       # one frame: cannot tell
    assert measured_rates(np.zeros((5, len(STAMP_NAMES)), np.int64), CAMERAS) == {}  # no stamps


def test_a_slow_episode_is_stored_warned_and_validated(tmp_path):
    root = tmp_path / "ds"
    summaries = _record(root, [_stamps(40, 30.0), _stamps(40, 18.0)])
    assert summaries[0].rate_warnings == () and "18.0 Hz" in summaries[1].rate_warnings[0]
    rows = load_episode_rows(root)
    assert [round(r["sync/measured_fps/cam_high"], 1) for r in rows] == [30.0, 18.0]
    problems, warnings = validate_with_warnings(root)
    assert problems == [] and validate(root) == []  # it loads and trains: a warning, not an error
    assert [(w.path, w.field) for w in warnings] == [("data/chunk-000/file-001.parquet", STAMPS)]
    assert warnings[0].message.startswith("episode 1: frames were taken at 18.0 Hz")

    from sf_policy.cli.main import app
    result = CliRunner().invoke(app, ["dataset", "validate", str(root)])
    assert result.exit_code == 0 and "1 warning" in result.output and "18.0 Hz" in result.output, result.output
    assert CliRunner().invoke(app, ["dataset", "validate", str(root), "--strict"]).exit_code == 1


def test_appending_to_a_dataset_without_rates_keeps_its_schema(tmp_path):
    root = tmp_path / "ds"
    _record(root, [_stamps(10, 30.0)])
    # A dataset written before rates were stored: its meta/episodes file has no such column.
    meta = next((root / "meta" / "episodes").rglob("*.parquet"))
    table = pq.read_table(meta)
    pq.write_table(table.drop_columns([c for c in table.column_names if c.startswith("sync/")]), meta)
    _record(root, [_stamps(10, 18.0)], writer=DatasetWriter.open(root))
    assert all(not any(k.startswith("sync/") for k in row) for row in load_episode_rows(root))
    problems, warnings = validate_with_warnings(root)
    assert problems == [] and len(warnings) == 1  # still flagged: validate reads the stamps


def test_the_recording_session_says_when_its_cameras_fell_behind(tmp_path):
    """Cameras at 18 Hz through the live recorder's session and frame sync: the saved episode
    is followed by a log line naming the rate."""
    import time

    from sf_policy.record.session import RecordingSession, SessionConfig
    from sf_policy.record.sync import ARM_STREAMS, FrameSync

    said: list[str] = []
    writer = DatasetWriter.create(tmp_path / "ds", fps=30, cameras={role: (16, 16) for role in CAMERAS})
    clock = [T0]
    session = RecordingSession(writer, FrameSync(), {}, SessionConfig(), log=said.append, clock=lambda: clock[0])
    session.start("lift the pot")
    image = np.zeros((16, 16, 3), np.uint8)
    for k in range(36):  # 2 s of images at 18 Hz, arms at 180 Hz
        stamp = T0 + int(k * 1e9 / 18)
        for j in range(10):
            for name in ARM_STREAMS:
                session.on_arm(name, stamp + j * 5_555_555, np.zeros(7), now_ns=stamp + j * 5_555_555 + 1000)
        for role in CAMERAS:
            session.on_image(role, stamp, image, now_ns=stamp + 2_000_000)
    clock[0] = T0 + 3 * 10**9
    session.stop()
    deadline = time.monotonic() + 60
    while not session.saved and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.close()
    assert session.saved and any("frames were taken at 18.0 Hz" in line for line in said), said
