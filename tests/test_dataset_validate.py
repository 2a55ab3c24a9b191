"""validate() and ``sf dataset validate``: each kind of damage is reported with its file and field.

A small valid dataset (2 episodes, 2 cameras of 32x48) is written once; each case corrupts a
copy of it in one way and expects a Problem naming the damaged file and field, and the CLI to
exit 1 and print that file and field.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_dataset_support import FPS, frame_images, write_dataset
from typer.testing import CliRunner

from sf_policy.cli.main import app
from sf_policy.data.features import STATE
from sf_policy.data.validate import Problem, validate
from sf_policy.data.writer import tasks_table

CAMERAS = {"cam_high": (32, 48), "cam_left_wrist": (32, 48)}
LENGTHS = (12, 9)
TASKS = ("pick up the red cup", "put the cup on the plate")
HIGH = "observation.images.cam_high"
DATA_0, DATA_1 = "data/chunk-000/file-000.parquet", "data/chunk-000/file-001.parquet"
EPISODE_1 = "meta/episodes/chunk-000/file-001.parquet"
VIDEO_0 = f"videos/{HIGH}/chunk-000/file-000.mp4"

runner = CliRunner()


@pytest.fixture(scope="module")
def valid_root(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("valid") / "ds", CAMERAS, LENGTHS, TASKS)


@pytest.fixture
def root(valid_root, tmp_path) -> Path:
    copy = tmp_path / "ds"
    shutil.copytree(valid_root, copy)
    return copy


def sf(*args: str):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "400"})  # no folding of long paths


# -- corruptions ------------------------------------------------------------------------------

def edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=4))


def edit_column(path: Path, name: str, edit: Callable[[np.ndarray], np.ndarray]) -> None:
    table = pq.read_table(path)
    i = table.schema.get_field_index(name)
    original = table.column(name).to_numpy()
    values = edit(original.copy()).astype(original.dtype)
    table = table.set_column(i, table.schema.field(i), pa.array(values, type=table.schema.field(i).type))
    pq.write_table(table, path)


def edit_episode_row(path: Path, edit: Callable[[dict], None]) -> None:
    table = pq.read_table(path)
    rows = table.to_pylist()
    edit(rows[0])
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)


def encode_video(path: Path, images: list[np.ndarray]) -> None:
    """Replace a video by one encoded from these frames, with the project's own encoder."""
    h, w, _ = images[0].shape
    cmd = [sys.executable, "-m", "sf_policy.data.video", "encode", str(path), "--height", str(h), "--width", str(w),
           "--fps", str(FPS)]
    subprocess.run(cmd, input=b"".join(img.tobytes() for img in images), check=True, capture_output=True)


def drop_fps(root: Path) -> None:
    edit_json(root / "meta/info.json", lambda info: info.pop("fps"))


def fps_as_string(root: Path) -> None:
    edit_json(root / "meta/info.json", lambda info: info.update(fps="30"))


def wrong_to_index(root: Path) -> None:
    edit_episode_row(root / EPISODE_1, lambda row: row.update(dataset_to_index=row["dataset_to_index"] + 1))


def frame_index_gap(root: Path) -> None:
    edit_column(root / DATA_0, "frame_index", lambda v: np.where(v >= 5, v + 1, v))


def timestamp_off(root: Path) -> None:
    edit_column(root / DATA_1, "timestamp", lambda v: v + np.float32(0.01) * (np.arange(len(v)) == 3))


def video_too_short(root: Path) -> None:
    encode_video(root / VIDEO_0, [frame_images(i, CAMERAS)["cam_high"] for i in range(LENGTHS[0] - 2)])


def video_truncated(root: Path) -> None:
    path = root / VIDEO_0
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def stats_without_q99(root: Path) -> None:
    edit_json(root / "meta/stats.json", lambda stats: stats[STATE].pop("q99"))


def orphan_data_file(root: Path) -> None:
    shutil.copy(root / DATA_1, root / "data/chunk-000/file-002.parquet")


def orphan_video_file(root: Path) -> None:
    shutil.copy(root / VIDEO_0, root / f"videos/{HIGH}/chunk-000/file-007.mp4")


def task_missing(root: Path) -> None:
    pq.write_table(tasks_table({TASKS[0]: 0}), root / "meta/tasks.parquet")


def edit_states(path: Path, edit: Callable[[np.ndarray], None]) -> None:
    """Change the state values of a data file in place (the file still reads: the damage is silent)."""
    table = pq.read_table(path)
    i = table.schema.get_field_index(STATE)
    states = np.stack(table.column(STATE).to_numpy(zero_copy_only=False)).astype(np.float32)
    edit(states)
    column = pa.array(list(states), type=table.schema.field(i).type)
    pq.write_table(table.set_column(i, table.schema.field(i), column), path)


def states_changed(root: Path) -> None:  # 76 values, as a disk error was seen to change them
    edit_states(root / DATA_0, lambda s: s.reshape(-1).__setitem__(slice(10, 86), s.reshape(-1)[10:86] + 0.05))


def state_nan(root: Path) -> None:
    edit_states(root / DATA_1, lambda s: s.__setitem__((4, 2), np.nan))


def action_feature_removed(root: Path) -> None:
    edit_json(root / "meta/info.json", lambda info: info["features"].pop("action"))


CASES = {  # corruption -> (file, field) a Problem must name
    "info.json without fps": (drop_fps, ("meta/info.json", "fps")),
    "fps as a string": (fps_as_string, ("meta/info.json", "fps")),
    "wrong dataset_to_index": (wrong_to_index, (EPISODE_1, "dataset_to_index")),
    "frame_index gap": (frame_index_gap, (DATA_0, "frame_index")),
    "timestamp not frame_index / fps": (timestamp_off, (DATA_1, "timestamp")),
    "video with fewer frames": (video_too_short, (VIDEO_0, f"videos/{HIGH}/to_timestamp")),
    "truncated video": (video_truncated, (VIDEO_0, HIGH)),
    "stats.json without q99": (stats_without_q99, ("meta/stats.json", f"{STATE}.q99")),
    "orphan data file": (orphan_data_file, ("data/chunk-000/file-002.parquet", "episode_index")),
    "orphan video file": (orphan_video_file, (f"videos/{HIGH}/chunk-000/file-007.mp4", HIGH)),
    "task missing from tasks.parquet": (task_missing, ("meta/tasks.parquet", "task")),
    "state values changed after writing": (states_changed, (DATA_0, STATE)),
    "NaN in the state": (state_nan, (DATA_1, STATE)),
    "action removed from info.json": (action_feature_removed, ("meta/info.json", "features.action")),
}


# -- tests ------------------------------------------------------------------------------------

def test_a_valid_dataset_has_no_problems(valid_root):
    assert validate(valid_root) == []
    result = sf("dataset", "validate", valid_root)
    assert result.exit_code == 0, result.output
    assert "valid" in result.output


@pytest.mark.parametrize("case", list(CASES))
def test_damage_is_named_by_file_and_field(root, case):
    corrupt, (path, field) = CASES[case]
    corrupt(root)
    problems = validate(root)
    assert all(isinstance(p, Problem) for p in problems)
    assert (path, field) in {(p.path, p.field) for p in problems}, "\n".join(map(str, problems))
    result = sf("dataset", "validate", root)
    assert result.exit_code == 1, result.output
    assert path in result.output and field in result.output, result.output
    assert f"{len(problems)} problem(s)" in result.output


def test_a_missing_task_is_also_reported_where_it_is_used(root):
    task_missing(root)
    named = {(p.path, p.field) for p in validate(root)}
    assert {("meta/tasks.parquet", "task"), ("meta/info.json", "total_tasks"), (DATA_1, "task_index")} <= named


def test_videos_false_skips_the_video_checks(root):
    video_too_short(root)
    assert validate(root, videos=False) == []
    assert sf("dataset", "validate", root, "--no-videos").exit_code == 0


def test_info_prints_the_summary(valid_root):
    result = sf("dataset", "info", valid_root)
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"episodes {len(LENGTHS)}" in out and f"frames {sum(LENGTHS)}" in out and f"fps {FPS}" in out
    for text in (*CAMERAS, "h264", "yuv420p", "48x32", *TASKS):
        assert text in out, f"{text!r} not in:\n{out}"


def test_info_on_a_missing_dataset_exits_2(tmp_path):
    result = sf("dataset", "info", tmp_path / "nothing")
    assert result.exit_code == 2
    assert "meta/info.json" in result.output
