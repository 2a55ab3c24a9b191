"""Editing datasets: delete or keep episodes, split, merge, recompute statistics, re-encode
videos (``sf dataset edit``; docs/datasets.md, "Editing"). LeRobot's ``lerobot-edit-dataset``
for our v3.0 datasets.

Crash safety. An edit never modifies a dataset: it builds a complete new one in a staging
folder next to its destination, ``<parent>/.<name>.sf-edit-<id>/``, validates it, and
publishes it with one rename (a new ``--output``) or one atomic exchange with the source
(``renameat2(RENAME_EXCHANGE)``, in place) before deleting the old tree. A kill at any instant
therefore leaves the source untouched and the destination absent or complete. The staging
folder holds the writer's lock (``.staging/lock``) while its process lives; a later edit next
to the same destination deletes staging folders whose lock is free (the leftovers of a killed
edit). The source's own lock is held too, so no recorder appends while it is copied.

What is copied and what is computed. Each episode owns its files (writer.py), so an edit
copies an episode's mp4s (and its geometry file) under its new number, hard-linking instead
when editing in place (the old tree is deleted right after, and our files are only ever
replaced, never modified). Data parquet files are rewritten only when renumbering changes
``episode_index``, ``index`` or ``task_index``. Tasks are renumbered by first appearance, as
the writer numbers them, so an edited dataset equals one written directly with the same
episodes: per-episode statistics of the low-dimensional columns are recomputed from the data
(renumbering changes those of the bookkeeping columns) and checked against the saved ones
first (a data file changed after writing is refused, as ``validate`` would flag it); image
statistics are kept from the source rows (taken from the raw frames while recording) unless
``recompute-stats --images`` decodes the videos; ``stats.json`` is computed as the writer does.
"""

from __future__ import annotations

import ctypes
import glob
import math
import os
import random
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import rates as rates_mod
from . import stats as stats_mod
from .commit import crash_point, fsync
from .features import (
    ACTION,
    CODEBASE_VERSION,
    EPISODE_INDEX,
    EPISODES_PATH,
    INDEX,
    INFO_PATH,
    STAMPS,
    STATE,
    STATS_PATH,
    TASK_INDEX,
    TASKS_PATH,
    DatasetError,
    episode_location,
    numeric_keys,
    role_of,
    video_keys,
)
from .reader import column_to_numpy, data_file, load_episode_rows, load_info, load_tasks, read_episode_table, video_file
from .video import VideoOptions, add_video_stream, check_codec, video_info
from .writer import (
    IMAGE_STATS_EVERY,
    SIM_SEED,
    encoder_info,
    lock_dataset,
    options_from_info,
    image_stats_sample,
    write_json,
    write_parquet,
    episode_schema,
    stats_features,
    tasks_table,
)

#: progress(what, done, total): called after each episode of each output.
Progress = Callable[[str, int, int], None]
STAGING_TAG = ".sf-edit-"
#: Test hook steps (commit.CRASH_ENV): SIGKILL after the first episode is staged, after the
#: whole output is staged, and (in place) after the exchange, before the old tree is deleted.
CRASH_POINTS = ("edit-episode", "edit-staged", "edit-swapped")
# The twin's geometry files (sf_policy/teacher/geometry.py, episode_path); not imported from
# there because that module loads torch.
GEOMETRY_FILE = "geometry/episode_{:06d}.safetensors"


# --------------------------------------------------------------------------------------------
# Sources and selections


@dataclass(frozen=True)
class Source:
    """A dataset read for an edit: its info, meta/episodes rows (with stats) and tasks."""

    root: Path
    info: dict
    rows: list[dict]
    tasks: dict[int, str]

    @property
    def features(self) -> dict:
        return self.info["features"]


@dataclass(frozen=True)
class Pick:
    """One episode of an output: which source row it is copied from."""

    source: Source
    row: dict


@dataclass(frozen=True)
class EditResult:
    root: Path
    episodes: int
    frames: int
    tasks: int
    origins: tuple[tuple[str, int], ...]  # (source root, source episode) of each output episode


def load_source(root: Path | str) -> Source:
    root = Path(root).absolute()
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder")
    info = load_info(root)
    if info["codebase_version"] != CODEBASE_VERSION:
        raise DatasetError(f"{root / INFO_PATH}: field 'codebase_version' is {info['codebase_version']!r}; "
                           f"only {CODEBASE_VERSION!r} datasets can be edited")
    rows = load_episode_rows(root, with_stats=True)
    _check_layout(root, info, rows)
    return Source(root, info, rows, load_tasks(root))


def _check_layout(root: Path, info: dict, rows: list[dict]) -> None:
    """Edits copy whole files, so every episode must own its files at its own location (ours
    do; LeRobot's writer concatenates episodes into shared files)."""
    owners = ["data"] + [f"videos/{key}" for key in video_keys(info["features"])]
    for position, row in enumerate(rows):
        where = root / row["_file"]
        if row["episode_index"] != position:
            raise DatasetError(f"{where}: field 'episode_index' is {row['episode_index']}, expected {position} "
                               "(episodes must be numbered 0..n-1; see sf dataset validate)")
        loc = episode_location(position, info["chunks_size"])
        for owner in owners:
            found = (row.get(f"{owner}/chunk_index"), row.get(f"{owner}/file_index"))
            if found != (loc["chunk_index"], loc["file_index"]):
                raise DatasetError(f"{where}: field '{owner}/file_index' is not episode {position}'s own file; "
                                   "edits work on datasets with one file per episode (ours, not LeRobot's)")
        for key in video_keys(info["features"]):
            if row.get(f"videos/{key}/from_timestamp") != 0:
                raise DatasetError(f"{where}: field 'videos/{key}/from_timestamp' is not 0: the video is shared")


def _check_selection(source: Source, episodes: Sequence[int], option: str) -> set[int]:
    n = len(source.rows)
    unknown = [e for e in episodes if not 0 <= e < n]
    if unknown:
        have = f"episodes 0..{n - 1}" if n else "no episodes"
        raise DatasetError(f"{option}: episode {unknown[0]} is not in {source.root} (it has {have})")
    return set(episodes)


# --------------------------------------------------------------------------------------------
# The operations


def delete_episodes(root: Path | str, episodes: Sequence[int], output: Path | str | None = None,
                    in_place: bool = False, progress: Progress | None = None) -> EditResult:
    """A dataset without ``episodes``; the others renumbered 0..n-1 in their order."""
    source = load_source(root)
    gone = _check_selection(source, episodes, "--episodes")
    picks = [Pick(source, row) for row in source.rows if row["episode_index"] not in gone]
    if not picks:
        raise DatasetError(f"--episodes: deleting them would leave no episode of {source.root}")
    return _edit([(picks, _target(source, output, in_place))], source.info, progress=progress)[0]


def keep_episodes(root: Path | str, episodes: Sequence[int], output: Path | str | None = None,
                  in_place: bool = False, progress: Progress | None = None) -> EditResult:
    """A dataset of ``episodes`` only, renumbered 0..n-1 in their order."""
    source = load_source(root)
    kept = _check_selection(source, episodes, "--episodes")
    picks = [Pick(source, row) for row in source.rows if row["episode_index"] in kept]
    return _edit([(picks, _target(source, output, in_place))], source.info, progress=progress)[0]


def split_dataset(root: Path | str, output: Path | str, rest: Path | str, episodes: Sequence[int] | None = None,
                  fraction: float | None = None, seed: int | None = None,
                  progress: Progress | None = None) -> tuple[EditResult, EditResult]:
    """Two datasets: ``episodes`` (or the first ``fraction`` of them, a random one with ``seed``)
    into ``output``, the others into ``rest``. Each is complete when it appears."""
    source = load_source(root)
    if episodes is not None:
        _check_selection(source, episodes, "--episodes")
    chosen = split_choice(len(source.rows), episodes, fraction, seed)
    first = [Pick(source, r) for r in source.rows if r["episode_index"] in chosen]
    second = [Pick(source, r) for r in source.rows if r["episode_index"] not in chosen]
    target_a, target_b = _target(source, output, False), _target(source, rest, False, option="--rest")
    if target_a.dest == target_b.dest:
        raise DatasetError(f"--rest {rest}: the same folder as --output")
    a, b = _edit([(first, target_a), (second, target_b)], source.info, progress=progress)
    return a, b


def split_choice(n: int, episodes: Sequence[int] | None = None, fraction: float | None = None,
                 seed: int | None = None) -> set[int]:
    """The episodes (of 0..n-1) that go to the first part of a split; both parts non-empty."""
    if (episodes is None) == (fraction is None):
        raise DatasetError("split: give either --episodes or --fraction")
    if episodes is not None:
        chosen = set(episodes)
    else:
        if not 0 < fraction < 1:
            raise DatasetError(f"--fraction: {fraction} must be between 0 and 1")
        order = list(range(n)) if seed is None else random.Random(seed).sample(range(n), n)
        chosen = set(order[:round(fraction * n)])
    if not chosen or len(chosen) >= n:
        raise DatasetError(f"split: {len(chosen)} of the {n} episodes go to --output; both parts need at least one")
    return chosen


def merge_datasets(roots: Sequence[Path | str], output: Path | str, progress: Progress | None = None) -> EditResult:
    """One dataset of every episode of ``roots``, in order; they must record the same features."""
    if len(roots) < 2:
        raise DatasetError("merge: give at least two datasets")
    sources = [load_source(r) for r in roots]
    for other in sources[1:]:
        problem = compatibility_problem(sources[0], other)
        if problem:
            raise DatasetError(f"merge: {problem}")
    picks = [Pick(s, row) for s in sources for row in s.rows]
    target = _target(sources[0], output, False, others=sources[1:])
    return _edit([(picks, target)], sources[0].info, progress=progress)[0]


def recompute_stats(root: Path | str, output: Path | str | None = None, in_place: bool = False,
                    images: bool = False, progress: Progress | None = None) -> EditResult:
    """Per-episode statistics and stats.json from the data as it is (images too with ``images``:
    decoded from the videos, every 10th frame, as the writer samples the raw frames)."""
    source = load_source(root)
    picks = [Pick(source, row) for row in source.rows]
    return _edit([(picks, _target(source, output, in_place))], source.info, trust_data=True,
                 image_stats=images, progress=progress)[0]


def reencode_videos(root: Path | str, changes: dict, output: Path | str | None = None, in_place: bool = False,
                    cameras: Sequence[str] | None = None, progress: Progress | None = None) -> EditResult:
    """Every video (or those of ``cameras``) decoded and encoded again with the source's
    VideoOptions updated by ``changes`` (codec, crf, gop, preset, pix_fmt); same frames, same times."""
    source = load_source(root)
    keys = video_keys(source.features)
    if not keys:
        raise DatasetError(f"{source.root / INFO_PATH}: field 'features': the dataset has no videos")
    roles = [role_of(k) for k in keys]
    unknown = [c for c in cameras or () if c not in roles]
    if unknown:
        raise DatasetError(f"--camera: {unknown[0]!r} is not a camera of {source.root} (it has {', '.join(roles)})")
    options = _video_options(source.info, changes)
    chosen = [k for k in keys if not cameras or role_of(k) in cameras]
    info = _info_with_video(source.info, chosen, options)
    picks = [Pick(source, row) for row in source.rows]
    return _edit([(picks, _target(source, output, in_place))], info, reencode=(options, chosen),
                 progress=progress)[0]


def compatibility_problem(a: Source, b: Source) -> str | None:
    """The first field in which ``b`` differs from ``a`` in a way a merge cannot mix, or None."""
    where = b.root / INFO_PATH
    for name in ("fps", "robot_type"):
        if a.info.get(name) != b.info.get(name):
            return f"{where}: field '{name}' is {b.info.get(name)!r}, {a.root} has {a.info.get(name)!r}"
    for key in a.features:
        if key not in b.features:
            return f"{where}: field 'features.{key}' missing ({a.root} has it)"
    for key in b.features:
        if key not in a.features:
            return f"{where}: field 'features.{key}' is not in {a.root}"
    for key, ft in a.features.items():
        for prop in ("dtype", "shape", "names"):
            if ft.get(prop) != b.features[key].get(prop):
                return (f"{where}: field 'features.{key}.{prop}' is {b.features[key].get(prop)!r}, "
                        f"{a.root} has {ft.get(prop)!r}")
        if ft["dtype"] == "video":  # the copied mp4s must match what the merged info.json says
            mine, theirs = ft.get("info") or {}, b.features[key].get("info") or {}
            for prop in ("video.codec", "video.pix_fmt"):
                if mine.get(prop) != theirs.get(prop):
                    return (f"{where}: field 'features.{key}.info.{prop}' is {theirs.get(prop)!r}, {a.root} has "
                            f"{mine.get(prop)!r} (sf dataset edit reencode one of them first)")
    return None


def _video_options(info: dict, changes: dict) -> VideoOptions:
    """The source's encoder settings, updated. A new codec drops the old one's preset and extra
    options (libx264's "veryfast" means nothing to libsvtav1)."""
    base = options_from_info(info)
    changes = {k: v for k, v in changes.items() if v is not None}
    if changes.get("codec", base.codec) != base.codec:
        base = replace(base, preset=VideoOptions().preset if changes["codec"] == "libx264" else None, extra={})
    try:
        options = replace(base, **changes)
        check_codec(options)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"--codec: {exc}") from None
    return options


def _info_with_video(info: dict, keys: list[str], options: VideoOptions) -> dict:
    features = {k: dict(ft) for k, ft in info["features"].items()}
    for key in keys:
        h, w, _ = features[key]["shape"]
        features[key]["info"] = video_info(options, h, w, info["fps"]) | encoder_info(options)
    return info | {"features": features}


# --------------------------------------------------------------------------------------------
# Destinations and staging


@dataclass(frozen=True)
class _Target:
    dest: Path
    swap: bool  # in place: exchange the staged dataset with dest (the source)


def _target(source: Source, output: Path | str | None, in_place: bool, option: str = "--output",
            others: Sequence[Source] = ()) -> _Target:
    if in_place == (output is not None):
        raise DatasetError(f"give either {option} OUT (a new dataset) or --in-place")
    if in_place:
        return _Target(source.root.resolve(), True)
    dest = Path(output).absolute()
    if dest.exists() or dest.is_symlink():
        raise DatasetError(f"{option} {dest}: exists; edits write a new folder and never overwrite one")
    for src in (source, *others):
        if dest.resolve().is_relative_to(src.root.resolve()):
            raise DatasetError(f"{option} {dest}: inside the source dataset {src.root}")
    return _Target(dest, False)


class _Staging:
    """``<parent>/.<name>.sf-edit-<id>/``: where an edit builds its output; locked while we live."""

    def __init__(self, target: _Target):
        self.target = target
        dest = target.dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(dest)
        self.path = dest.parent / f".{dest.name}{STAGING_TAG}{uuid.uuid4().hex[:12]}"
        self.path.mkdir()
        # The writer's lock: no DatasetWriter opens the output before it is complete, and a
        # killed edit's folder is recognisable (its lock is free).
        self._fd: int | None = lock_dataset(self.path)
        self.done = False

    def publish(self) -> None:
        """The commit point: one rename (new output) or one exchange (in place)."""
        _fsync_tree(self.path)
        dest = self.target.dest
        if not self.target.swap:
            if dest.exists():
                raise DatasetError(f"--output {dest}: appeared while the edit ran; nothing was written")
            os.rename(self.path, dest)
            fsync(dest.parent, directory=True)
            self.done = True
            return
        _exchange(self.path, dest)
        self.done = True  # dest is the edited dataset from here on
        fsync(dest.parent, directory=True)
        crash_point("edit-swapped")
        shutil.rmtree(self.path, ignore_errors=True)  # now the old tree; a leftover is removed next time

    def close(self) -> None:
        if not self.done:  # an error or Ctrl-C: the source and destination were never touched
            shutil.rmtree(self.path, ignore_errors=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def remove_stale_staging(dest: Path) -> list[Path]:
    """Delete the staging folders of killed edits next to ``dest`` (their lock is free): a
    partial output, or the old tree of an in-place edit whose new tree is already in place."""
    removed = []
    for path in dest.parent.glob(f".{glob.escape(dest.name)}{STAGING_TAG}*"):
        try:
            fd = lock_dataset(path)
        except (DatasetError, OSError):  # an edit still running holds it
            continue
        try:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def _exchange(a: Path, b: Path) -> None:
    """Swap two directories atomically (Linux renameat2 RENAME_EXCHANGE): at no instant is
    ``b`` missing or half of each."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise DatasetError(f"{b}: this system cannot swap folders atomically (no renameat2); use --output")
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
        err = ctypes.get_errno()
        raise DatasetError(f"{b}: atomic swap with {a.name} failed: {os.strerror(err)}; the dataset is "
                           "unchanged (use --output)")


def _fsync_tree(root: Path) -> None:
    """Every file and folder of the output on disk before it is published."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fsync(Path(dirpath) / name)
        fsync(Path(dirpath), directory=True)


def _lock_source(root: Path) -> int | None:
    """The source's writer lock for the edit's duration: a recorder appending meanwhile would
    be half copied. A read-only source needs none (nothing can append to it)."""
    try:
        return lock_dataset(root)
    except PermissionError:
        return None
    except OSError as exc:
        if exc.errno == 30:  # EROFS
            return None
        raise DatasetError(f"{root}: cannot lock it: {exc}") from None


def _place(src: Path, dst: Path, link: bool) -> None:
    """Copy a file, or hard-link it (in place: the old tree is deleted afterwards)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src, dst)
            return
        except FileNotFoundError:
            raise DatasetError(f"{src}: missing (named by meta/episodes)") from None
        except OSError:
            pass  # links not allowed here: copy
    try:
        shutil.copyfile(src, dst)
    except FileNotFoundError:
        raise DatasetError(f"{src}: missing (named by meta/episodes)") from None
    except OSError as exc:
        raise DatasetError(f"{dst}: copy failed: {exc} (is the disk full?)") from None


# --------------------------------------------------------------------------------------------
# Building an output


def _edit(jobs: list[tuple[list[Pick], _Target]], info: dict, *, trust_data: bool = False,
          image_stats: bool = False, reencode: tuple[VideoOptions, list[str]] | None = None,
          progress: Progress | None = None) -> list[EditResult]:
    """Build every output in its staging folder, then publish them one by one."""
    # One lock per dataset folder (merging a dataset with itself names it twice).
    sources = {p.source.root.resolve(): p.source for picks, _ in jobs for p in picks}
    locks: list[int] = []
    stagings: list[_Staging] = []
    try:
        for source in sources.values():
            fd = _lock_source(source.root)
            if fd is not None:
                locks.append(fd)
        results = []
        for picks, target in jobs:
            staging = _Staging(target)
            stagings.append(staging)
            builder = _Builder(staging.path, info, link=target.swap, trust_data=trust_data,
                               image_stats=image_stats, reencode=reencode)
            for j, pick in enumerate(picks):
                builder.add(pick)
                crash_point("edit-episode")
                if progress:
                    progress(target.dest.name, j + 1, len(picks))
            builder.finish(target.dest)
            results.append(EditResult(target.dest, len(picks), builder.from_index, len(builder.tasks),
                                      tuple((str(p.source.root), p.row["episode_index"]) for p in picks)))
        crash_point("edit-staged")
        for staging in stagings:
            staging.publish()
        return results
    except OSError as exc:  # a folder we cannot create, a full disk: a message, not a traceback
        published = [str(s.target.dest) for s in stagings if s.done]
        raise DatasetError(f"{exc}; {'published: ' + ', '.join(published) if published else 'nothing was written'}"
                           ) from None
    finally:
        for staging in stagings:
            staging.close()
        for fd in locks:
            os.close(fd)


class _Builder:
    """Writes the episodes of one output into its staging folder, numbering them 0..n-1."""

    def __init__(self, root: Path, info: dict, link: bool, trust_data: bool, image_stats: bool,
                 reencode: tuple[VideoOptions, list[str]] | None):
        self.root, self.info, self.link = root, info, link
        self.trust_data, self.image_stats, self.reencode = trust_data, image_stats, reencode
        self.features = info["features"]
        self.tasks: dict[str, int] = {}  # numbered by first appearance, as the writer does
        self.from_index = 0
        self.stats = stats_mod.DatasetStats(numeric_keys(self.features))  # stats.json, as the writer keeps it

    def add(self, pick: Pick) -> None:
        j = len(self.stats.episodes)
        loc = episode_location(j, self.info["chunks_size"])
        for task in pick.row["tasks"] or ():
            self.tasks.setdefault(task, len(self.tasks))
        columns = self._data(pick, j, loc)
        n = len(columns[INDEX])
        ep_stats = {k: stats_mod.vector_stats(v) for k, v in columns.items()}
        if not self.trust_data:
            _check_saved_stats(pick, ep_stats)
        self._videos(pick, loc, n)
        ep_stats |= {key: self._image_stats(pick, key) for key in video_keys(self.features)}
        self._geometry(pick, j)
        self._meta_row(pick, j, loc, n, ep_stats, columns)
        self.stats.add(ep_stats, n, columns)

    def _data(self, pick: Pick, j: int, loc: dict) -> dict[str, np.ndarray]:
        """The episode's data parquet under its new number; returns its numeric columns."""
        source, row = pick.source, pick.row
        src_path = source.root / data_file(source.info, row)
        table = read_episode_table(source.root, source.info, row)
        n = table.num_rows
        renumbered = {EPISODE_INDEX: np.full(n, j, dtype=np.int64),
                      INDEX: self.from_index + np.arange(n, dtype=np.int64),
                      TASK_INDEX: self._task_indices(source, table, src_path)}
        dst = self.root / self.info["data_path"].format(**loc)
        if all(np.array_equal(table.column(k).to_numpy(), v) for k, v in renumbered.items()):
            _place(src_path, dst, self.link)  # nothing to renumber: the same bytes
        else:
            for key, values in renumbered.items():
                i = table.schema.get_field_index(key)
                table = table.set_column(i, table.schema.field(i), pa.array(values, type=table.schema.field(i).type))
            dst.parent.mkdir(parents=True, exist_ok=True)
            write_parquet(dst, table)
        self.from_index += n
        return {k: column_to_numpy(table.column(k), self.features[k]) for k in numeric_keys(self.features)}

    def _task_indices(self, source: Source, table: pa.Table, path: Path) -> np.ndarray:
        old = table.column(TASK_INDEX).to_numpy()
        mapping = {}
        for value in np.unique(old):
            task = source.tasks.get(int(value))
            if task is None:
                raise DatasetError(f"{path}: field 'task_index' {int(value)} is not in {source.root / TASKS_PATH}")
            mapping[int(value)] = self.tasks.setdefault(task, len(self.tasks))
        return np.array([mapping[int(v)] for v in old], dtype=np.int64)

    def _videos(self, pick: Pick, loc: dict, n: int) -> None:
        source = pick.source
        for key in video_keys(self.features):
            src = source.root / video_file(source.info, pick.row, key)
            dst = self.root / self.info["video_path"].format(video_key=key, **loc)
            if self.reencode and key in self.reencode[1]:
                _reencode(src, dst, self.reencode[0], self.info["fps"], n)
            else:
                _place(src, dst, self.link)

    def _image_stats(self, pick: Pick, key: str) -> stats_mod.Stats:
        """The source row's (from the raw frames), or decoded (recompute-stats --images, or missing)."""
        saved = {s: pick.row.get(f"stats/{key}/{s}") for s in stats_mod.STAT_KEYS}
        if not self.image_stats and all(v is not None for v in saved.values()):
            return {s: np.asarray(v) for s, v in saved.items()}
        path = pick.source.root / video_file(pick.source.info, pick.row, key)
        return stats_mod.image_stats(np.stack(_decoded_samples(path, IMAGE_STATS_EVERY)))

    def _geometry(self, pick: Pick, j: int) -> None:
        src = pick.source.root / GEOMETRY_FILE.format(pick.row["episode_index"])
        if src.is_file():
            _place(src, self.root / GEOMETRY_FILE.format(j), self.link)

    def _meta_row(self, pick: Pick, j: int, loc: dict, n: int, ep_stats: dict, columns: dict) -> None:
        """The source row renumbered, with the recomputed statistics and measured rates."""
        row = {k: v for k, v in pick.row.items() if k != "_file" and not k.startswith("stats/")}
        row |= {"episode_index": j, "data/chunk_index": loc["chunk_index"], "data/file_index": loc["file_index"],
                "dataset_from_index": self.from_index - n, "dataset_to_index": self.from_index,
                "meta/episodes/chunk_index": loc["chunk_index"], "meta/episodes/file_index": loc["file_index"]}
        for key in video_keys(self.features):
            row |= {f"videos/{key}/chunk_index": loc["chunk_index"], f"videos/{key}/file_index": loc["file_index"]}
        for key in stats_features(self.features):
            row |= {f"stats/{key}/{stat}": np.asarray(v).tolist() for stat, v in ep_stats[key].items()}
        rates = STAMPS in columns  # as the writer: every row of a dataset with stamps has them
        if rates:
            roles = [role_of(k) for k in video_keys(self.features)]
            measured = rates_mod.measured_rates(columns[STAMPS], roles)
            row |= rates_mod.rate_columns({role: measured.get(role, math.nan) for role in roles})
        schema = episode_schema(self.features, sim=row.get(SIM_SEED) is not None, rates=rates)
        schema = _with_extra_fields(schema, pick)
        path = self.root / EPISODES_PATH.format(**loc)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_parquet(path, pa.Table.from_pylist([{f.name: row.get(f.name) for f in schema}], schema=schema))

    def finish(self, dest: Path) -> None:
        """tasks, stats.json, info.json; then the staged dataset must validate."""
        from .validate import validate

        write_parquet(self.root / TASKS_PATH, tasks_table(self.tasks))
        write_json(self.root / STATS_PATH, stats_mod.to_jsonable(self.stats.result(stats_features(self.features))))
        episodes = len(self.stats.episodes)
        info = self.info | {"total_episodes": episodes, "total_frames": self.from_index,
                            "total_tasks": len(self.tasks), "splits": {"train": f"0:{episodes}"}}
        write_json(self.root / INFO_PATH, info)
        problems = validate(self.root)
        if problems:
            listed = "; ".join(str(p) for p in problems[:3])
            raise DatasetError(f"{dest}: the edited dataset would have {len(problems)} problem(s), nothing was "
                               f"written: {listed}")


def _check_saved_stats(pick: Pick, ep_stats: dict) -> None:
    """Refuse to copy data that no longer match the statistics saved with the episode (a file
    changed after writing): re-numbering would hide it from validate. recompute-stats accepts it."""
    row = pick.row
    for key in (STATE, ACTION):
        for stat in ("min", "max", "mean"):
            saved = row.get(f"stats/{key}/{stat}")
            if key not in ep_stats or saved is None:
                continue
            saved = np.asarray(saved, dtype=np.float64).reshape(-1)
            computed = np.asarray(ep_stats[key][stat], dtype=np.float64)
            if saved.shape == computed.shape and not np.allclose(computed, saved, rtol=1e-5, atol=1e-6):
                path = pick.source.root / data_file(pick.source.info, row)
                raise DatasetError(f"{path}: field '{key}': episode {row['episode_index']}'s data no longer match "
                                   f"the {stat} saved with it (changed after writing?); check with sf dataset "
                                   "validate, or accept the data with sf dataset edit recompute-stats")


def _with_extra_fields(schema: pa.Schema, pick: Pick) -> pa.Schema:
    """Columns of the source row we do not write ourselves (LeRobot carries unknown ones along)."""
    source_schema = pq.read_schema(pick.source.root / pick.row["_file"])
    extra = [f for f in source_schema if f.name not in schema.names and not f.name.startswith("stats/")]
    for f in extra:
        schema = schema.append(f)
    return schema


# --------------------------------------------------------------------------------------------
# Videos


def _reencode(src: Path, dst: Path, options: VideoOptions, fps: int, n: int) -> None:
    """Decode and encode again; frame i keeps pts i in a 1/fps time base (docs/datasets.md)."""
    import av

    dst.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration otherwise (as video.py)
    count = 0
    try:
        with av.open(str(src)) as source, av.open(str(dst), "w") as out:
            stream_in = source.streams.video[0]
            stream = add_video_stream(out, options, stream_in.height, stream_in.width, fps)
            for frame in source.decode(stream_in):
                if frame.format.name != options.pix_fmt:
                    frame = frame.reformat(format=options.pix_fmt)
                frame.pts, frame.time_base = count, Fraction(1, fps)
                frame.pict_type = av.video.frame.PictureType.NONE  # the new gop decides keyframes
                out.mux(stream.encode(frame))
                count += 1
            out.mux(stream.encode(None))
    except DatasetError:
        raise
    except Exception as exc:  # PyAV's own error types
        raise DatasetError(f"{src}: re-encoding into {dst.name} failed: {exc}") from None
    if count != n:
        raise DatasetError(f"{src}: {count} frames decoded, its episode has {n} (field length)")


def _decoded_samples(path: Path, every: int) -> list[np.ndarray]:
    """Every ``every``-th decoded frame, downsampled as the writer samples the raw frames."""
    from .video import decode_frames

    try:
        samples = [image_stats_sample(image) for i, (_, image) in enumerate(decode_frames(path)) if i % every == 0]
    except Exception as exc:  # PyAV's own error types
        raise DatasetError(f"{path}: unreadable video: {exc}") from None
    if not samples:
        raise DatasetError(f"{path}: no frames to compute image statistics from")
    return samples
