"""``sf dataset edit``: delete, keep, split, merge, recompute-stats, reencode (sf_policy/data/edit.py).

A source dataset (4 episodes of 3 tasks, 2 cameras of 32x48) and a dataset written directly
with its episodes 1 and 3 are recorded once. Edits of copies must validate cleanly, carry the
source's frames and video bytes, and give the statistics the writer gives the same episodes; a
failure or a SIGKILL at any step must leave the source untouched and no output at the
destination.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_dataset_support import FPS, psnr, record
from typer.testing import CliRunner

from sf_policy.cli.main import app
from sf_policy.data import edit
from sf_policy.data.commit import CRASH_ENV
from sf_policy.data.episode_ranges import parse_episodes
from sf_policy.data.features import STATE, DatasetError, numeric_keys
from sf_policy.data.reader import DatasetReader, load_episode_rows, load_stats
from sf_policy.data.validate import validate
from sf_policy.data.video import probe
from sf_policy.data.writer import DatasetWriter

CAMERAS = {"cam_high": (32, 48), "cam_left_wrist": (32, 48)}
LENGTHS = (8, 11, 6, 9)
TASKS = ("pick up the cup", "place the cup", "pick up the cup", "wipe the table")
HIGH, WRIST = "observation.images.cam_high", "observation.images.cam_left_wrist"
REPO = Path(__file__).resolve().parents[1]

runner = CliRunner()


def write(root: Path, episodes: list[int]) -> Path:
    """A dataset of the given source episodes, written directly by the writer."""
    with DatasetWriter.create(root, fps=FPS, cameras=CAMERAS) as writer:
        for e in episodes:
            ep = writer.begin_episode(TASKS[e])
            record(ep, LENGTHS[e], CAMERAS, episode_seed=e)
            ep.save()
    return root


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("source") / "ds", [0, 1, 2, 3])


@pytest.fixture(scope="module")
def direct(tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("direct") / "ds", [1, 3])


@pytest.fixture
def source(recorded, tmp_path) -> Path:
    copy = tmp_path / "ds"
    shutil.copytree(recorded, copy)
    return copy


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file of a dataset (the writer's .staging lock aside)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".staging" not in p.parts}


def video(root: Path, key: str, episode: int) -> Path:
    return root / "videos" / key / "chunk-000" / f"file-{episode:03d}.mp4"


def first_frame(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def assert_same_stats(a: dict, b: dict, skip_images: bool = False) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if skip_images and key.startswith("observation.images."):
            continue
        for stat in a[key]:
            np.testing.assert_allclose(np.asarray(a[key][stat], dtype=np.float64),
                                       np.asarray(b[key][stat], dtype=np.float64), rtol=1e-9, atol=1e-9,
                                       err_msg=f"{key}.{stat}")


def assert_equals_direct(out: Path, direct: Path) -> None:
    """Same columns, tasks, per-episode and dataset statistics as the writer's own dataset."""
    with DatasetReader(out) as got, DatasetReader(direct) as want:
        assert got.tasks == want.tasks
        for key in numeric_keys(want.features):
            np.testing.assert_array_equal(got.column(key), want.column(key), err_msg=key)
        assert_same_stats(got.stats, want.stats)
    got_rows, want_rows = load_episode_rows(out, with_stats=True), load_episode_rows(direct, with_stats=True)
    for g, w in zip(got_rows, want_rows, strict=True):
        for name in w:
            if name.startswith(("stats/", "sync/")):
                np.testing.assert_allclose(np.asarray(g[name], float), np.asarray(w[name], float), err_msg=name)
            elif name != "_file":
                assert g[name] == w[name], name


def sf(*args):
    return runner.invoke(app, ["dataset", "edit", *map(str, args)], env={"COLUMNS": "400"})


# -- the operations ---------------------------------------------------------------------------

def test_keep_equals_the_dataset_written_with_those_episodes(source, direct, tmp_path):
    before = digest(source)
    result = edit.keep_episodes(source, [1, 3], output=tmp_path / "kept")
    out = tmp_path / "kept"
    assert validate(out) == []
    assert (result.episodes, result.frames, result.tasks) == (2, LENGTHS[1] + LENGTHS[3], 2)
    assert [e for _, e in result.origins] == [1, 3]
    assert_equals_direct(out, direct)
    # Videos are copied, never re-encoded: the same bytes under the new numbers.
    for new, old in ((0, 1), (1, 3)):
        for key in (HIGH, WRIST):
            assert video(out, key, new).read_bytes() == video(source, key, old).read_bytes()
    assert digest(source) == before
    assert not list(tmp_path.glob(".kept.sf-edit-*"))


def test_delete_renumbers_everything_and_the_writer_can_append(source, tmp_path):
    (source / "geometry").mkdir()
    (source / "geometry" / "episode_000002.safetensors").write_bytes(b"depth of episode 2")
    edit.delete_episodes(source, [1], output=tmp_path / "out")
    out = tmp_path / "out"
    assert validate(out) == []
    info = json.loads((out / "meta/info.json").read_text())
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 8 + 6 + 9, 2)
    with DatasetReader(out) as got, DatasetReader(source) as src:
        assert got.tasks == {0: TASKS[0], 1: TASKS[3]}  # "place the cup" went with episode 1
        assert [ep.from_index for ep in got.episodes] == [0, 8, 14]
        np.testing.assert_array_equal(got.column("index"), np.arange(23))
        np.testing.assert_array_equal(got.column("task_index"), [0] * 14 + [1] * 9)
        for new, old in ((0, 0), (1, 2), (2, 3)):
            np.testing.assert_array_equal(got.episode_column(new, STATE), src.episode_column(old, STATE))
            np.testing.assert_array_equal(got.column("episode_index")[got.episodes[new].from_index], new)
            frame = got[got.episodes[new].from_index + 3]
            np.testing.assert_array_equal(frame[HIGH], src[src.episodes[old].from_index + 3][HIGH])
    assert (out / "geometry/episode_000001.safetensors").read_bytes() == b"depth of episode 2"
    with DatasetWriter.open(out) as writer:  # an edited dataset is an ordinary one to append to
        ep = writer.begin_episode("stack the cups")
        record(ep, 4, CAMERAS, episode_seed=9)
        assert ep.save().episode_index == 3
    assert validate(out) == []


def test_split_then_merge_gives_back_the_source(source, tmp_path):
    a, b = edit.split_dataset(source, tmp_path / "a", tmp_path / "b", fraction=0.5)
    assert [e for _, e in a.origins] == [0, 1] and [e for _, e in b.origins] == [2, 3]
    assert validate(tmp_path / "a") == [] and validate(tmp_path / "b") == []
    merged = edit.merge_datasets([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    assert merged.episodes == 4 and validate(tmp_path / "m") == []
    assert_equals_direct(tmp_path / "m", source)
    for e in range(4):
        assert video(tmp_path / "m", HIGH, e).read_bytes() == video(source, HIGH, e).read_bytes()


def test_split_choice():
    assert edit.split_choice(10, fraction=0.3) == {0, 1, 2}
    assert edit.split_choice(10, episodes=[4, 7]) == {4, 7}
    random_part = edit.split_choice(10, fraction=0.3, seed=3)
    assert random_part == edit.split_choice(10, fraction=0.3, seed=3) != {0, 1, 2} and len(random_part) == 3
    for kwargs, message in (({"fraction": 0.01}, "both parts"), ({"episodes": [0, 1]}, "both parts"),
                            ({"fraction": 1.5}, "--fraction"), ({}, "either --episodes or --fraction")):
        with pytest.raises(DatasetError, match=message):
            edit.split_choice(2, **kwargs)


def test_merge_names_the_first_differing_field(source, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(source, other)
    info_path = other / "meta/info.json"
    info = json.loads(info_path.read_text())
    info["features"][STATE]["names"] = [f"j{i}" for i in range(14)]
    info_path.write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"field 'features\.observation\.state\.names'"):
        edit.merge_datasets([source, other], tmp_path / "m")
    info["fps"] = 15
    info_path.write_text(json.dumps(info))
    result = sf("merge", source, other, "--output", tmp_path / "m")
    assert result.exit_code == 2 and "field 'fps' is 15" in result.output and "info.json" in result.output
    assert not (tmp_path / "m").exists()


def test_recompute_stats_on_an_edited_set_equals_the_writers(source, direct, tmp_path):
    out = tmp_path / "kept"
    edit.keep_episodes(source, [1, 3], output=out)
    stats_path = out / "meta/stats.json"
    stale = json.loads(stats_path.read_text())
    stale[STATE]["mean"] = [0.0] * 14
    stale["index"]["count"] = [1]
    stats_path.write_text(json.dumps(stale))
    assert any(p.field == "index.count" for p in validate(out))
    edit.recompute_stats(out, in_place=True, images=True)
    assert validate(out) == []
    got, want = load_stats(out), load_stats(direct)
    assert_same_stats(got, want, skip_images=True)
    for key in (HIGH, WRIST):  # decoded frames vs the raw ones the writer sampled
        assert got[key]["count"] == want[key]["count"]
        np.testing.assert_allclose(got[key]["mean"], want[key]["mean"], atol=0.02)
        np.testing.assert_allclose(got[key]["std"], want[key]["std"], atol=0.02)


def test_reencode_keeps_frames_and_times(source, tmp_path):
    out = tmp_path / "re"
    edit.reencode_videos(source, {"crf": 30, "gop": 4}, output=out, cameras=["cam_high"])
    assert validate(out) == []
    block = json.loads((out / "meta/info.json").read_text())["features"][HIGH]["info"]
    assert (block["video.crf"], block["video.g"], block["video.codec"]) == (30, 4, "h264")
    for e, n in enumerate(LENGTHS):
        found = probe(video(out, HIGH, e))
        assert found.frames == n and np.allclose(found.times_s, np.arange(n) / FPS)
        assert video(out, WRIST, e).read_bytes() == video(source, WRIST, e).read_bytes()
    with av.open(str(video(out, HIGH, 1))) as c:  # 11 frames, a keyframe every 4th: 0, 4, 8
        assert sum(p.is_keyframe for p in c.demux(video=0) if p.size) == 3
    assert psnr(first_frame(video(out, HIGH, 1)), first_frame(video(source, HIGH, 1))) > 30
    with DatasetReader(out) as ds:
        assert ds[ds.episodes[2].from_index + 5][HIGH].shape == (32, 48, 3)


# -- refusals ---------------------------------------------------------------------------------

def test_parse_episodes():
    assert parse_episodes("3-5, 1,4") == [1, 3, 4, 5]
    for bad in ("x", "5-3", "-1", "2-", ""):
        with pytest.raises(DatasetError, match="--episodes"):
            parse_episodes(bad)


def test_changed_data_is_refused_unless_stats_are_recomputed(source, tmp_path):
    path = source / "data/chunk-000/file-002.parquet"
    table = pq.read_table(path)
    i = table.schema.get_field_index(STATE)
    values = np.stack(table.column(STATE).to_numpy(zero_copy_only=False)) + 0.5
    column = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), pa.float32()), 14)
    pq.write_table(table.set_column(i, table.schema.field(i), column), path)
    with pytest.raises(DatasetError, match=r"file-002\.parquet: field 'observation\.state': episode 2"):
        edit.delete_episodes(source, [0], output=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    edit.recompute_stats(source, output=tmp_path / "fixed")
    assert validate(tmp_path / "fixed") == []


def test_a_dataset_being_recorded_is_refused(source, tmp_path):
    with DatasetWriter.open(source):
        with pytest.raises(DatasetError, match="another DatasetWriter"):
            edit.keep_episodes(source, [0], output=tmp_path / "out")


def test_cli_exit_codes_and_messages(source, tmp_path):
    cases = [
        (("delete", source, "--episodes", "1,9", "--output", tmp_path / "o"), "episode 9 is not in"),
        (("delete", source, "--episodes", "0-3", "--output", tmp_path / "o"), "would leave no episode"),
        (("keep", source, "--episodes", "a", "--output", tmp_path / "o"), "--episodes: 'a'"),
        (("keep", source, "--episodes", "1", "--output", source), "--output"),
        (("keep", source, "--episodes", "1"), "either --output OUT"),
        (("keep", tmp_path / "none", "--episodes", "1", "--output", tmp_path / "o"), "no such dataset folder"),
        (("keep", tmp_path, "--episodes", "1", "--output", tmp_path / "o"), "meta/info.json: missing"),
        (("split", source, "--fraction", "0.1", "--output", tmp_path / "o", "--rest", tmp_path / "r"),
         "both parts need at least one"),
        (("reencode", source, "--codec", "nosuch", "--output", tmp_path / "o"), "--codec"),
        (("reencode", source, "--camera", "cam_right_wrist", "--output", tmp_path / "o"), "--camera"),
    ]
    for args, message in cases:
        result = sf(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output, (args, result.output)
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()
    result = sf("delete", source, "-e", "0,2", "--in-place")
    assert result.exit_code == 0 and "2 episodes" in result.output
    assert validate(source) == [] and DatasetReader(source).num_episodes == 2


# -- crash safety -----------------------------------------------------------------------------

@pytest.mark.parametrize("in_place", [False, True])
def test_a_failure_mid_edit_leaves_the_source_and_no_output(source, tmp_path, monkeypatch, in_place):
    before = digest(source)
    real, calls = edit._place, []

    def failing(src, dst, link):
        calls.append(dst)
        if len(calls) == 5:
            raise DatasetError(f"{dst}: copy failed (simulated)")
        real(src, dst, link)

    monkeypatch.setattr(edit, "_place", failing)
    output = None if in_place else tmp_path / "out"
    with pytest.raises(DatasetError, match="simulated"):
        edit.delete_episodes(source, [0], output=output, in_place=in_place)
    assert digest(source) == before and validate(source) == []
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # the staging folder is gone too


def _killed_edit(args: str, crash_at: str) -> None:
    """Run an edit in a child process that SIGKILLs itself at ``crash_at``."""
    code = f"from sf_policy.data import edit; edit.{args}"
    env = dict(os.environ, **{CRASH_ENV: crash_at})
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == -9, proc.stderr


def test_sigkill_before_publishing_leaves_no_output(source, tmp_path):
    before = digest(source)
    _killed_edit(f"delete_episodes({str(source)!r}, [1], output={str(tmp_path / 'out')!r})", "edit-staged")
    assert digest(source) == before and validate(source) == []
    assert not (tmp_path / "out").exists() and validate(tmp_path / "out")  # nothing that looks like a dataset
    leftovers = list(tmp_path.glob(".out.sf-edit-*"))
    assert len(leftovers) == 1  # hidden, and its lock is free: the next edit removes it
    edit.delete_episodes(source, [1], output=tmp_path / "out")
    assert not leftovers[0].exists() and validate(tmp_path / "out") == []


@pytest.mark.parametrize("crash_at, edited", [
    pytest.param("edit-episode", False, marks=pytest.mark.slow),  # the monkeypatched failure covers it
    ("edit-swapped", True)])
def test_sigkill_in_place_leaves_the_old_or_the_new_dataset(source, tmp_path, crash_at, edited):
    before = digest(source)
    _killed_edit(f"delete_episodes({str(source)!r}, [1], in_place=True)", crash_at)
    assert validate(source) == []
    assert DatasetReader(source).num_episodes == (3 if edited else 4)
    if not edited:
        assert digest(source) == before
    assert edit.remove_stale_staging(source)  # the killed edit's staging folder (or the old tree)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
