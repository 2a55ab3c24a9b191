"""kill -9 of the recorder at several moments leaves every earlier episode intact and the dataset valid.

A first recorder process records episode 0 and exits normally; a second one appends to the
same dataset and is killed while recording episode 1, or while episode 1 is being committed.
The commit's renames run in a committer process of their own (sf_policy/data/commit.py), so
the dataset is valid right after the kill, with no repair. A power cut inside the renames is
simulated by killing the committer itself (SF_DATASET_CRASH_AT): earlier episodes stay
intact and DatasetWriter.open() repairs the rest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import wait_for
from test_recorder_node import Control

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sensors():
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "_streams.py"), "--width", "64", "--height", "48"],
                            env=os.environ.copy())
    yield proc
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:  # a stand-in stuck in DDS teardown is not what these tests test
        proc.kill()
        proc.wait(10)


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_recorder_outlives_its_test():
    """A failing test must not leave a recorder answering the next test's commands."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def start_recorder(root: Path, **env_extra: str) -> subprocess.Popen:
    from sf_policy.bringup.plan import recorder_node
    from sf_policy.bringup.launcher import resolve_executable

    spec = recorder_node(root, prompt="crash test")
    proc = subprocess.Popen(resolve_executable(spec) + spec.ros_args(), env={**os.environ, **env_extra},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _STARTED.append(proc)
    return proc


def record_episode(control: Control, frames: int = 15) -> None:
    control.wait(lambda s: s.get("state") == "idle" and s.get("silent") == [], "a fresh recorder hearing all streams",
                 timeout=30)
    for _ in range(3):  # a command sent while discovery still matches the recorder to us can be lost
        control.send("start")
        try:
            control.wait(lambda s: s.get("state") == "recording", "recording to start", timeout=5)
            break
        except pytest.fail.Exception:
            continue
    control.wait(lambda s: s.get("state") == "recording" and s.get("frames", 0) >= frames, f"{frames} frames")


def first_episode(control: Control, root: Path) -> np.ndarray:
    from sf_policy.data.reader import DatasetReader

    first = start_recorder(root)
    record_episode(control)
    control.send("stop")
    control.wait(lambda s: s.get("saved") == 1 and s.get("saving") == 0, "episode 0 saved")
    first.send_signal(signal.SIGINT)
    assert first.wait(15) == 0, first.stdout.read()
    control.status = {}
    return DatasetReader(root).episode_column(0, "observation.state")


def kill_9(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL


def assert_episode_0_intact(root: Path, frames_before: np.ndarray):
    from sf_policy.data.reader import DatasetReader

    ds = DatasetReader(root)
    assert np.array_equal(ds.episode_column(0, "observation.state"), frames_before)
    ds[0]  # and its frames decode
    return ds


@pytest.mark.parametrize("moment", [pytest.param("recording", marks=pytest.mark.slow), "committing"])  # 5 s each
def test_kill_9_of_the_recorder_leaves_a_valid_dataset(ros, tmp_path, sensors, moment):
    from sf_policy.data.validate import validate

    root = tmp_path / "ds"
    control = Control(ros)
    frames_before = first_episode(control, root)
    second = start_recorder(root, SF_DATASET_COMMIT_PAUSE_S="3")
    record_episode(control, frames=20)
    if moment == "committing":
        control.send("stop")  # the committer holds the commit open for 3 s after the meta row
        wait_for(lambda: list((root / ".staging").glob("*/paused")), timeout=30, what="the commit to be under way")
    kill_9(second)
    if moment == "committing":
        wait_for(lambda: not list((root / ".staging").glob("*/paused")), timeout=10, what="the committer to finish")
    assert validate(root) == [], f"invalid right after kill -9 while {moment}"
    ds = assert_episode_0_intact(root, frames_before)
    assert ds.num_episodes == (2 if moment == "committing" else 1)


# One moment in the default tier, the other three in the slow tier (5 s each).
@pytest.mark.parametrize("step", [*(pytest.param(s, marks=pytest.mark.slow) for s in ("staged", "videos", "meta")),
                                  "stats"])
def test_a_power_cut_inside_the_commit_is_repaired_by_open(ros, tmp_path, sensors, step):
    from sf_policy.data.validate import validate
    from sf_policy.data.writer import DatasetWriter

    root = tmp_path / "ds"
    control = Control(ros)
    frames_before = first_episode(control, root)
    second = start_recorder(root, SF_DATASET_CRASH_AT=step)
    record_episode(control, frames=20)
    control.send("stop")
    if step == "staged":  # staging runs in the recorder itself: the recorder dies there
        wait_for(lambda: second.poll() is not None, timeout=30, what="the recorder to die at 'staged'")
    else:  # the committer dies; the recorder survives and says so
        control.wait(lambda s: "saving failed" in s.get("last_error", ""), "the failed save to be reported")
        kill_9(second)
    ds = assert_episode_0_intact(root, frames_before)  # readable even before any repair
    DatasetWriter.open(root).close()
    assert validate(root) == []
    assert episodes_in(root) == (2 if step in ("meta", "stats") else 1) == max(ds.num_episodes, 1)
    assert [p for p in (root / ".staging").iterdir() if p.is_dir()] == []  # only the writer's lock file stays


def episodes_in(root: Path) -> int:
    from sf_policy.data.reader import DatasetReader

    return DatasetReader(root).num_episodes
