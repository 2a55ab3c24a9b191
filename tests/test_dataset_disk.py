"""A full disk while saving an episode: a clear error, and nothing committed is damaged.

The disk filling up is simulated with RLIMIT_FSIZE in a child process (this file, run as a
script): with SIGXFSZ ignored, a write past the limit fails with EFBIG ("File too large"), as
one on a full disk fails with ENOSPC. The encoder subprocesses and the committer inherit both
the limit and the ignored signal. Episode 0 is saved normally first; the child then appends
episode 1 under the limit and reports the error it got. Back in the parent (no limit): every
committed file is byte for byte unchanged, the staging area is empty, the dataset validates,
episode 0 reads back frame by frame, and the dataset can be opened and appended to again.
"""

from __future__ import annotations

import hashlib
import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_dataset_support import FPS, frame_values

from sf_policy.data.features import STATE, TASKS_PATH, image_key
from sf_policy.data.reader import DatasetReader
from sf_policy.data.validate import validate
from sf_policy.data.writer import DatasetWriter

REPO = Path(__file__).resolve().parents[1]
FRAMES = 20
CAMERA = {"cam_high": (128, 192)}


def noise(i: int, episode: int, cameras: dict) -> dict[str, np.ndarray]:
    """Incompressible images, so that a video is much larger than any metadata file."""
    rng = np.random.default_rng(1000 * episode + i)
    return {role: rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for role, (h, w) in cameras.items()}


def add_episode(writer: DatasetWriter, episode: int, task: str):
    cameras = {role: tuple(writer.features[image_key(role)]["shape"][:2]) for role in writer.camera_roles}
    ep = writer.begin_episode(task)
    for i in range(FRAMES):
        ep.add_frame(frame_values(i, episode), noise(i, episode, cameras))
    return ep


def committed_files(root: Path) -> dict[str, str]:
    """sha256 of every file outside the staging area."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".staging" not in p.relative_to(root).parts}


def run_child(root: Path, limit: int, mode: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, str(root), str(limit), mode], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"child died ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child(root: Path, limit: int, mode: str) -> None:
    """Append episode 1 with writes capped at `limit` bytes per file; print what went wrong.

    mode "save": record FRAMES frames, then save. mode "recording": keep recording (up to 30 s)
    until add_frame itself reports the dead encoder, as the recorder sees a disk filling up
    mid-episode."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death; inherited by exec'd children
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    result: dict = {"saved": False, "error": None, "type": None, "where": "open"}
    try:
        with DatasetWriter.open(root) as writer:
            result["where"] = "add_frame"
            ep = add_episode(writer, 1, "the episode that does not fit")
            if mode == "recording":
                cameras = {role: tuple(writer.features[image_key(role)]["shape"][:2]) for role in writer.camera_roles}
                deadline, i = time.monotonic() + 30, FRAMES
                while time.monotonic() < deadline:
                    ep.add_frame(frame_values(i, 1), noise(i, 1, cameras))
                    i += 1
                    time.sleep(0.02)
            result["where"] = "save"
            ep.save(timeout=60)
            result["saved"] = True
    except Exception as exc:  # report whatever it was; the test judges it
        import traceback

        result |= {"error": str(exc), "type": type(exc).__name__, "traceback": traceback.format_exc()}
    print(json.dumps(result))


@pytest.fixture
def dataset(request, tmp_path) -> tuple[Path, dict[str, int]]:
    """A dataset holding episode 0; also the sizes of its files."""
    root = tmp_path / "ds"
    with DatasetWriter.create(root, fps=FPS, cameras=request.param) as writer:
        add_episode(writer, 0, "the episode that fits").save()
    sizes = {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}
    return root, sizes


def largest(sizes: dict[str, int], prefix: str) -> int:
    return max(size for path, size in sizes.items() if path.startswith(prefix))


# (cameras, how the limit is chosen from episode 0's file sizes, child mode, the file expected to fail)
SCENARIOS = {
    # Metadata and data fit, the video does not: the encoder fails; save() says so.
    "video": (CAMERA, lambda s: max(largest(s, "meta/"), largest(s, "data/")) + 16384, "save", "cam_high.mp4"),
    # Nothing fits, not even the metadata: the first file written (the video) fails.
    "everything": (CAMERA, lambda s: 512, "save", "cam_high.mp4"),
    # The same, noticed while still recording: add_frame reports the dead encoder.
    "mid_episode": (CAMERA, lambda s: 512, "recording", "cam_high.mp4"),
    # No cameras, nothing fits: the data parquet fails while being staged.
    "data": ({}, lambda s: 512, "save", "data.parquet"),
    # No cameras, the data parquet fits and the (larger) episode row does not.
    "metadata": ({}, lambda s: largest(s, "data/") + 256, "save", "episode.parquet"),
}


@pytest.mark.parametrize(("dataset", "scenario"), [(v[0], k) for k, v in SCENARIOS.items()],
                         indirect=["dataset"], ids=list(SCENARIOS))
def test_a_full_disk_gives_a_clear_error_and_damages_nothing(dataset, scenario):
    root, sizes = dataset
    _, choose, mode, failing = SCENARIOS[scenario]
    limit = choose(sizes)
    if scenario == "video":
        assert largest(sizes, "videos/") > 2 * limit, f"the video must not fit: {sizes}"
    if scenario == "metadata":
        assert largest(sizes, "meta/episodes/") > limit + 256, sizes
    before = committed_files(root)
    state_before = DatasetReader(root).episode_column(0, STATE)

    result = run_child(root, limit, mode)

    # A clear error: ours, naming the file and saying why.
    assert not result["saved"], f"episode 1 was saved under a {limit} byte limit"
    assert result["type"] == "DatasetError", result.get("traceback")
    assert result["where"] == ("add_frame" if mode == "recording" else "save"), result
    message = result["error"]
    assert "File too large" in message and "is the disk full?" in message, message
    assert str(root / ".staging") in message, message  # names the file being written
    assert failing in message, message
    assert "Traceback" not in message, message  # one line, not a child's traceback

    # No damage: committed files untouched, staging cleaned, dataset valid and readable.
    assert committed_files(root) == before
    assert [p.name for p in (root / ".staging").iterdir()] == ["lock"]
    assert validate(root) == []
    with DatasetReader(root) as ds:
        assert (ds.num_episodes, ds.num_frames) == (1, FRAMES)
        np.testing.assert_array_equal(ds.episode_column(0, STATE), state_before)
        for i in range(FRAMES):
            item = ds[i]
            assert item["frame_index"] == i and item["task"] == "the episode that fits"
            for role in ds.camera_roles:
                assert item[image_key(role)].shape == (*CAMERA[role], 3)

    # And life goes on: the dataset opens and takes the episode once there is room.
    with DatasetWriter.open(root) as writer:
        summary = add_episode(writer, 1, "the episode that does not fit").save()
    assert (summary.episode_index, summary.length) == (1, FRAMES)
    assert validate(root) == []
    assert DatasetReader(root).tasks == {0: "the episode that fits", 1: "the episode that does not fit"}
    assert (root / TASKS_PATH).is_file()


if __name__ == "__main__":  # the child: python tests/test_dataset_disk.py ROOT LIMIT MODE
    child(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
