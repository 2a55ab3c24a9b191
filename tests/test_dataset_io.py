"""Writer -> reader round trips, appending, episodes in flight, discarding (real PyAV, real files)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import wait_for
from test_dataset_support import FPS, frame_images, frame_values, psnr, record

from sf_policy.data.commit import PAUSE_ENV
from sf_policy.data.features import ACTION, SKEW, STAMPS, STAMP_NAMES, STATE, DatasetError, image_key, robot_features
from sf_policy.data.reader import DatasetReader
from sf_policy.data.validate import validate
from sf_policy.data.writer import DatasetWriter

CAMERAS = {"cam_high": (48, 64), "cam_left_wrist": (32, 48), "cam_right_wrist": (32, 48)}


def _staging_entries(root: Path) -> list[str]:
    return sorted(p.name for p in (root / ".staging").iterdir() if p.name != "lock")


def test_features_follow_the_contract():
    features = robot_features({"cam_high": (480, 640)})
    assert features[STATE]["shape"] == [14] and features[ACTION]["dtype"] == "float32"
    assert features[image_key("cam_high")]["shape"] == [480, 640, 3]
    assert features[STAMPS]["names"] == list(STAMP_NAMES) and features[SKEW]["shape"] == [1]
    assert {"timestamp", "frame_index", "episode_index", "index", "task_index"} <= set(features)
    with pytest.raises(ValueError, match="cam_top"):
        robot_features({"cam_top": (480, 640)})


def test_round_trip_frame_by_frame(tmp_path):
    root = tmp_path / "ds"
    lengths, tasks = (23, 17), ("lift the pot by both handles", "stack the cups")
    with DatasetWriter.create(root, fps=FPS, cameras=CAMERAS) as writer:
        for e, (n, task) in enumerate(zip(lengths, tasks)):
            ep = writer.begin_episode(task=task)
            record(ep, n, CAMERAS, episode_seed=e)
            summary = ep.save()
            assert (summary.episode_index, summary.length, summary.task) == (e, n, task)
        assert _staging_entries(root) == []

    ds = DatasetReader(root)
    assert (ds.num_episodes, ds.num_frames, ds.fps) == (2, sum(lengths), FPS)
    assert ds.camera_roles == list(CAMERAS)
    assert [(ep.index, ep.task, ep.length, ep.from_index, ep.to_index) for ep in ds.episodes] == [
        (0, tasks[0], 23, 0, 23), (1, tasks[1], 17, 23, 40)]
    for e, n in enumerate(lengths):
        for key in (STATE, ACTION, STAMPS, SKEW):
            expected = np.stack([frame_values(i, e)[key] for i in range(n)])
            np.testing.assert_array_equal(ds.episode_column(e, key), expected.reshape(n, -1).squeeze(-1)
                                          if key == SKEW else expected)
        np.testing.assert_allclose(ds.episode_column(e, "timestamp"), np.arange(n) / FPS, atol=1e-6)
        for role in CAMERAS:
            decoded = list(ds.episode_frames(e, role))
            assert len(decoded) == n
            assert min(psnr(img, frame_images(i, CAMERAS, e)[role]) for i, img in enumerate(decoded)) > 30
    item = ds[30]  # episode 1, frame 7: random access
    assert item["task"] == tasks[1] and item["frame_index"] == 7 and item["index"] == 30
    np.testing.assert_array_equal(item[STATE], frame_values(7, 1)[STATE])
    assert psnr(item[image_key("cam_left_wrist")], frame_images(7, CAMERAS, 1)["cam_left_wrist"]) > 30
    assert validate(root) == []


def test_append_to_an_existing_dataset(tmp_path):
    root = tmp_path / "ds"
    cams = {"cam_high": (32, 48)}
    with DatasetWriter.create(root, fps=FPS, cameras=cams) as writer:
        ep = writer.begin_episode("pick")
        record(ep, 8, cams)
        ep.save()
    with pytest.raises(DatasetError, match="not empty"):
        DatasetWriter.create(root, fps=FPS, cameras=cams)
    with DatasetWriter.open(root) as writer:
        with pytest.raises(DatasetError, match="another DatasetWriter"):
            DatasetWriter.open(root)
        assert (writer.num_episodes, writer.num_frames, writer.tasks) == (1, 8, ["pick"])
        for e, task in ((1, "place"), (2, "pick")):
            ep = writer.begin_episode(task)
            record(ep, 5 + e, cams, episode_seed=e)
            assert ep.save().episode_index == e
    ds = DatasetReader(root)
    assert [ep.length for ep in ds.episodes] == [8, 6, 7]
    assert ds.tasks == {0: "pick", 1: "place"}
    np.testing.assert_array_equal(ds.column("index"), np.arange(21))
    np.testing.assert_array_equal(ds.column("task_index"), [0] * 8 + [1] * 6 + [0] * 7)
    assert ds.stats["index"]["count"].tolist() == [21]
    assert validate(root) == []


def test_save_one_episode_while_the_next_records(tmp_path, monkeypatch):
    """The next episode records while the previous one is being committed (no timing assertion:
    the committer is held open after the commit point by its test hook, and frames go in then)."""
    root = tmp_path / "ds"
    cams = {"cam_high": (48, 64), "cam_left_wrist": (48, 64)}
    monkeypatch.setenv(PAUSE_ENV, "3")  # the first commit holds for 3 s after its meta row
    with DatasetWriter.create(root, fps=FPS, cameras=cams) as writer:
        first = writer.begin_episode("first")
        record(first, 20, cams, episode_seed=0)
        second = writer.begin_episode("second")
        saved = {}
        saver = threading.Thread(target=lambda: saved.setdefault("first", first.save()), daemon=True)
        saver.start()
        wait_for(lambda: list((root / ".staging").glob("*/paused")), timeout=30, what="the first commit to hold")
        monkeypatch.delenv(PAUSE_ENV)  # the second episode commits without a pause
        during_commit = []
        for i in range(20):
            second.add_frame(frame_values(i, 1), frame_images(i, cams, 1))
            during_commit.append(bool(list((root / ".staging").glob("*/paused"))))
        assert during_commit[0], "the first frame waited for the other episode's commit"
        saver.join(30)
        assert not saver.is_alive() and saved["first"].episode_index == 0
        assert second.save().episode_index == 1
    ds = DatasetReader(root)
    assert [ep.task for ep in ds.episodes] == ["first", "second"]
    np.testing.assert_array_equal(ds.episode_column(1, STATE), np.stack([frame_values(i, 1)[STATE] for i in range(20)]))
    assert validate(root) == []


def test_discard_leaves_nothing_behind(tmp_path):
    root = tmp_path / "ds"
    cams = {"cam_high": (32, 48)}
    with DatasetWriter.create(root, fps=FPS, cameras=cams) as writer:
        kept = writer.begin_episode("kept")
        record(kept, 6, cams)
        kept.save()
        dropped = writer.begin_episode("dropped")
        record(dropped, 9, cams)
        assert len(_staging_entries(root)) == 1
        dropped.discard()
        dropped.discard()  # idempotent
        assert _staging_entries(root) == []
        with pytest.raises(DatasetError, match="discarded"):
            record(dropped, 1, cams)
        with pytest.raises(DatasetError, match="saved"):
            kept.discard()
        empty = writer.begin_episode("never recorded")
        with pytest.raises(DatasetError, match="no frames"):
            empty.save()
        unsaved = writer.begin_episode("left open")
        record(unsaved, 2, cams)
    assert _staging_entries(root) == []  # close() discarded the episode never saved
    ds = DatasetReader(root)
    assert (ds.num_episodes, ds.num_frames, list(ds.tasks.values())) == (1, 6, ["kept"])
    assert validate(root) == []


def test_add_frame_names_the_bad_feature(tmp_path):
    cams = {"cam_high": (32, 48)}
    with DatasetWriter.create(tmp_path / "ds", fps=FPS, cameras=cams) as writer:
        ep = writer.begin_episode("checks")
        good_values, good_images = frame_values(0), frame_images(0, cams)
        bad_cases = [
            ({**good_values, STATE: np.zeros(13, np.float32)}, good_images, STATE),
            ({**good_values, ACTION: np.zeros(14, np.float64)}, good_images, ACTION),
            ({k: v for k, v in good_values.items() if k != STAMPS}, good_images, STAMPS),
            ({**good_values, SKEW: 0.5}, good_images, SKEW),
            (good_values, {"cam_high": np.zeros((32, 48, 3), np.float32)}, "observation.images.cam_high"),
            (good_values, {"cam_left_wrist": good_images["cam_high"]}, "cam_left_wrist"),
        ]
        for values, images, name in bad_cases:
            with pytest.raises(ValueError, match=name.replace(".", r"\.")):
                ep.add_frame(values, images)
        ep.add_frame(good_values, good_images)  # the episode is still usable
        assert ep.num_frames == 1
        assert ep.save().length == 1


def test_a_stalled_encoder_does_not_stall_add_frame(tmp_path):
    """add_frame only queues: with every encoder process frozen (SIGSTOP), frames still go in.

    No timing assertion (speed is bench/record.py's business): the frames are added in a thread
    with a generous join timeout, so a regression that makes add_frame wait for the encoder fails
    here instead of hanging. Each frame (64x96x3 = 18 KiB) overflows the 64 KiB pipe after a few
    frames, so a frozen encoder really does leave frames queued.
    """
    root = tmp_path / "ds"
    cams = {"cam_high": (64, 96), "cam_left_wrist": (64, 96)}
    n = 40
    with DatasetWriter.create(root, fps=FPS, cameras=cams) as writer:
        ep = writer.begin_episode("stalled encoders")
        procs = [encoder._proc for encoder in ep._encoders.values()]
        added: list[int] = []
        errors: list[BaseException] = []

        def feed() -> None:
            try:
                for i in range(n):
                    ep.add_frame(frame_values(i), frame_images(i, cams))
                    added.append(i)
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        for proc in procs:
            os.kill(proc.pid, signal.SIGSTOP)
        try:
            feeder = threading.Thread(target=feed, daemon=True)
            feeder.start()
            feeder.join(30)
            assert not feeder.is_alive(), f"add_frame blocked behind frozen encoders after {len(added)} frames"
            assert errors == [] and added == list(range(n))
            assert all(proc.poll() is None for proc in procs)  # still there, still frozen
            backlog = ep.backlog
            assert backlog > len(cams) * n // 2, f"backlog {backlog}: the encoders were not stalled"
        finally:
            for proc in procs:
                os.kill(proc.pid, signal.SIGCONT)
        summary = ep.save(timeout=60)
        assert summary.length == n and ep.backlog == 0
    ds = DatasetReader(root)
    np.testing.assert_array_equal(ds.episode_column(0, STATE), np.stack([frame_values(i)[STATE] for i in range(n)]))
    for role in cams:
        decoded = list(ds.episode_frames(0, role))
        assert len(decoded) == n
        assert min(psnr(img, frame_images(i, cams)[role]) for i, img in enumerate(decoded)) > 30
    assert validate(root) == []


def test_reader_on_an_empty_dataset(tmp_path):
    with DatasetWriter.create(tmp_path / "ds", fps=FPS, cameras={"cam_high": (32, 48)}):
        pass
    ds = DatasetReader(tmp_path / "ds")
    assert (ds.num_episodes, ds.num_frames, ds.column(STATE).shape) == (0, 0, (0, 14))
    assert validate(tmp_path / "ds") == []
