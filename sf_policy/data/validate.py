"""Check a dataset against the LeRobot v3.0 layout and our invariants; every problem names a
file and a field. ``sf dataset validate ROOT`` prints them.

What LeRobot's loader relies on is checked (info.json, path templates, episode rows, the
global index, timestamps vs. video frame times within its 1e-4 s tolerance, stats.json), and
so are leftovers a loader would trip on, such as a data file that no episode row names (LeRobot
reads every file under data/).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import stats as stats_mod
from .features import (
    ACTION,
    CODEBASE_VERSION,
    DATA_DIR,
    DEFAULT_FEATURES,
    INDEX,
    INFO_PATH,
    STATE,
    STAMPS,
    STATS_PATH,
    TASKS_PATH,
    TOLERANCE_S,
    VIDEO_DIR,
    DatasetError,
    numeric_keys,
    role_of,
    video_keys,
)
from .rates import measured_rates, shortfalls
from .reader import REQUIRED_INFO_FIELDS, data_file, episode_files, load_episode_rows, load_tasks, video_file
from .video import probe

VIDEO_INFO_KEYS = ("video.height", "video.width", "video.codec", "video.pix_fmt", "video.fps", "video.channels",
                   "has_audio")
EPISODE_FIELDS = ("episode_index", "tasks", "length", "data/chunk_index", "data/file_index",
                  "dataset_from_index", "dataset_to_index", "meta/episodes/chunk_index", "meta/episodes/file_index")


@dataclass(frozen=True)
class Problem:
    path: str  # file, relative to the dataset root
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path} [{self.field}]: {self.message}"


def validate(root: Path | str, videos: bool = True) -> list[Problem]:
    """Every problem found (empty: valid). ``videos=False`` skips opening the mp4 files."""
    return _Checker(Path(root), videos).run()


def validate_with_warnings(root: Path | str, videos: bool = True) -> tuple[list[Problem], list[Problem]]:
    """(problems, warnings). A warning is data that loads and trains but is not what its
    metadata says: an episode recorded below the dataset's rate (sf_policy/data/rates.py)."""
    checker = _Checker(Path(root), videos)
    return checker.run(), checker.warnings


class _Checker:
    def __init__(self, root: Path, videos: bool):
        self.root, self.videos = root, videos
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []

    def add(self, path: str | Path, field: str, message: str, warning: bool = False) -> None:
        path = Path(path)
        rel = path.relative_to(self.root) if path.is_absolute() and path.is_relative_to(self.root) else path
        (self.warnings if warning else self.problems).append(Problem(str(rel), field, message))

    def run(self) -> list[Problem]:
        self.info = self.load_info()
        if self.info is None:
            return self.problems
        self.features = self.info["features"]
        self.fps = self.info["fps"]
        self.check_info()
        self.tasks = self.load(load_tasks, TASKS_PATH, {})
        rows = self.load(lambda root: load_episode_rows(root, with_stats=True), "meta/episodes", [])
        self.check_rows(rows)
        self.check_totals(rows)
        self.check_data(rows)
        if self.videos:
            self.check_videos(rows)
        self.check_leftovers(rows)
        self.check_stats(rows)
        return self.problems

    def load_info(self) -> dict | None:
        """info.json, or None after adding a problem per missing or unusable field."""
        try:
            info = json.loads((self.root / INFO_PATH).read_text())
        except (OSError, ValueError) as exc:
            self.add(INFO_PATH, "", f"missing or unreadable: {exc}")
            return None
        missing = [f for f in REQUIRED_INFO_FIELDS if f not in info]
        for name in missing:
            self.add(INFO_PATH, name, "missing")
        if not missing and not (type(info["fps"]) is int and info["fps"] > 0):
            self.add(INFO_PATH, "fps", f"{info['fps']!r} is not a positive integer")
            return None
        if not missing and not isinstance(info["features"], dict):
            self.add(INFO_PATH, "features", "not an object")
            return None
        return None if missing else info

    def load(self, loader, path: str, default):
        try:
            return loader(self.root)
        except DatasetError as exc:
            self.add(path, "", str(exc))
            return default

    # -- info.json

    def check_info(self) -> None:
        info = self.info
        if info["codebase_version"] != CODEBASE_VERSION:
            self.add(INFO_PATH, "codebase_version", f"{info['codebase_version']!r}, expected {CODEBASE_VERSION!r}")
        for name in ("chunks_size", "total_episodes", "total_frames", "total_tasks"):
            if not isinstance(info[name], int) or info[name] < (1 if name == "chunks_size" else 0):
                self.add(INFO_PATH, name, f"{info[name]!r} is not a valid count")
        if "{chunk_index" not in str(info["data_path"]) or "{file_index" not in str(info["data_path"]):
            self.add(INFO_PATH, "data_path", f"{info['data_path']!r} lacks {{chunk_index}} or {{file_index}}")
        if video_keys(self.features) and "{video_key}" not in str(info["video_path"]):
            self.add(INFO_PATH, "video_path", f"{info['video_path']!r} lacks {{video_key}}")
        for key, ft in self.features.items():
            self.check_feature(key, ft)
        for key, ft in DEFAULT_FEATURES.items():
            if key not in self.features:
                self.add(INFO_PATH, f"features.{key}", "missing (LeRobot needs it)")
        for key in (STATE, ACTION):
            if key not in self.features:
                self.add(INFO_PATH, f"features.{key}", "missing (a policy trains on the state and the action)")

    def check_feature(self, key: str, ft: dict) -> None:
        where = f"features.{key}"
        if "/" in key:
            self.add(INFO_PATH, where, "feature names must not contain '/'")
        if not isinstance(ft, dict) or not {"dtype", "shape"} <= set(ft):
            self.add(INFO_PATH, where, "needs 'dtype' and 'shape'")
            return
        shape = ft["shape"]
        if not isinstance(shape, list) or not shape or not all(isinstance(s, int) and s > 0 for s in shape):
            self.add(INFO_PATH, f"{where}.shape", f"{shape!r} is not a list of positive integers")
            return
        if ft["dtype"] == "video":
            self.check_video_feature(where, ft)
        elif ft["dtype"] not in ("image", "string"):
            try:
                np.dtype(ft["dtype"])
            except TypeError:
                self.add(INFO_PATH, f"{where}.dtype", f"{ft['dtype']!r} is not a numpy dtype")
        names = ft.get("names")
        if isinstance(names, list) and ft["dtype"] != "video" and len(names) != math.prod(shape):
            self.add(INFO_PATH, f"{where}.names", f"{len(names)} names for shape {shape}")

    def check_video_feature(self, where: str, ft: dict) -> None:
        if len(ft["shape"]) != 3 or ft["shape"][2] != 3 or ft.get("names") != ["height", "width", "channels"]:
            self.add(INFO_PATH, where, "a video feature is [height, width, 3] named height, width, channels")
        block = ft.get("info") or {}
        missing = [k for k in VIDEO_INFO_KEYS if k not in block]
        if "is_depth_map" not in block and "video.is_depth_map" not in block:
            missing.append("is_depth_map")
        if missing:
            self.add(INFO_PATH, f"{where}.info", f"missing {', '.join(missing)}")
        elif [block["video.height"], block["video.width"]] != ft["shape"][:2] or block["video.fps"] != self.fps:
            self.add(INFO_PATH, f"{where}.info", "video.height/width/fps disagree with the feature's shape or fps")

    # -- meta/episodes

    def check_rows(self, rows: list[dict]) -> None:
        expected_from = 0
        for position, row in enumerate(rows):
            where = row["_file"]
            missing = [f for f in EPISODE_FIELDS if f not in row]
            missing += [f"videos/{k}/{s}" for k in video_keys(self.features)
                        for s in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")
                        if f"videos/{k}/{s}" not in row]
            if missing:
                self.add(where, missing[0], f"missing field(s) {', '.join(missing)}")
                continue
            if row["episode_index"] != position:
                self.add(where, "episode_index", f"{row['episode_index']} where {position} was expected "
                                                 "(episodes must be numbered 0..n-1)")
            if row["length"] <= 0:
                self.add(where, "length", f"{row['length']} frames")
            if row["dataset_from_index"] != expected_from:
                self.add(where, "dataset_from_index", f"{row['dataset_from_index']} does not continue the global "
                                                      f"index at {expected_from}")
            if row["dataset_to_index"] != row["dataset_from_index"] + row["length"]:
                self.add(where, "dataset_to_index", f"{row['dataset_to_index']} is not dataset_from_index + length "
                                                    f"= {row['dataset_from_index'] + row['length']}")
            expected_from = row["dataset_from_index"] + row["length"]
            self.check_row_tasks(where, row)
            self.check_row_location(where, row)

    def check_row_tasks(self, where: str, row: dict) -> None:
        if not row["tasks"]:
            self.add(where, "tasks", "empty")
        for task in row["tasks"] or ():
            if task not in self.tasks.values():  # the row is the source of truth: the task table lacks it
                self.add(TASKS_PATH, "task", f"{task!r} missing (episode {row['episode_index']} uses it, {where})")

    def check_row_location(self, where: str, row: dict) -> None:
        own = f"meta/episodes/chunk-{row['meta/episodes/chunk_index']:03d}/file-{row['meta/episodes/file_index']:03d}"
        if where != own + ".parquet":
            self.add(where, "meta/episodes/file_index", f"says {own}.parquet")

    def check_totals(self, rows: list[dict]) -> None:
        frames = sum(r.get("length", 0) for r in rows)
        for name, actual in (("total_episodes", len(rows)), ("total_frames", frames), ("total_tasks", len(self.tasks))):
            if self.info[name] != actual:
                self.add(INFO_PATH, name, f"{self.info[name]} but the dataset has {actual}")
        splits = self.info.get("splits") or {}
        if rows and splits.get("train") != f"0:{len(rows)}":
            self.add(INFO_PATH, "splits", f"{splits!r}, expected {{'train': '0:{len(rows)}'}}")
        if sorted(self.tasks) != list(range(len(self.tasks))):
            self.add(TASKS_PATH, "task_index", f"{sorted(self.tasks)} is not 0..{len(self.tasks) - 1}")

    # -- data

    def check_data(self, rows: list[dict]) -> None:
        by_file: dict[str, list[dict]] = defaultdict(list)
        for row in rows:
            if "data/file_index" in row:
                by_file[data_file(self.info, row)].append(row)
        for rel, file_rows in by_file.items():
            table = self.read_table(rel)
            if table is not None:
                for row in file_rows:
                    self.check_episode_data(rel, table, row)

    def read_table(self, rel: str) -> pa.Table | None:
        path = self.root / rel
        if not path.is_file():
            self.add(rel, "data/file_index", "missing (named by meta/episodes)")
            return None
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            self.add(rel, "", f"unreadable parquet: {exc}")
            return None
        missing = [k for k in numeric_keys(self.features) if k not in table.column_names]
        if missing:
            self.add(rel, missing[0], f"column(s) {', '.join(missing)} missing")
            return None
        return table

    def check_episode_data(self, rel: str, table: pa.Table, row: dict) -> None:
        ep = row["episode_index"]
        mask = table.column("episode_index").to_numpy() == ep
        n = int(mask.sum())
        if n != row["length"]:
            self.add(rel, "episode_index", f"{n} rows of episode {ep}, its meta/episodes row says {row['length']}")
            return
        col = {k: table.column(k).to_numpy()[mask] for k in ("index", "frame_index", "timestamp", "task_index")}
        if not np.array_equal(col["index"], np.arange(row["dataset_from_index"], row["dataset_to_index"])):
            self.add(rel, "index", f"episode {ep}: not {row['dataset_from_index']}..{row['dataset_to_index'] - 1}")
        if not np.array_equal(col["frame_index"], np.arange(n)):
            self.add(rel, "frame_index", f"episode {ep}: not 0..{n - 1}")
        elif np.abs(col["timestamp"].astype(np.float64) - col["frame_index"] / self.fps).max() > TOLERANCE_S:
            self.add(rel, "timestamp", f"episode {ep}: not frame_index / fps (within {TOLERANCE_S} s)")
        names = {self.tasks.get(int(t)) for t in np.unique(col["task_index"])}
        if None in names or not names <= set(row.get("tasks") or ()):
            self.add(rel, "task_index", f"episode {ep}: task indices {np.unique(col['task_index']).tolist()} "
                                        f"do not match its tasks {row.get('tasks')}")
        for key in (k for k in (STATE, ACTION) if k in table.column_names):
            self.check_values(rel, key, np.stack(table.column(key).to_numpy(zero_copy_only=False)[mask]), row)
        if STAMPS in table.column_names:
            self.check_rate(rel, np.stack(table.column(STAMPS).to_numpy(zero_copy_only=False)[mask]), ep)

    def check_rate(self, rel: str, stamps: np.ndarray, ep: int) -> None:
        """From the header stamps, not the stored rates: datasets written before them are checked too."""
        cameras = [role_of(k) for k in video_keys(self.features)]
        for message in shortfalls(measured_rates(stamps, cameras), self.fps):
            self.add(rel, STAMPS, f"episode {ep}: {message}", warning=True)

    def check_values(self, rel: str, key: str, values: np.ndarray, row: dict) -> None:
        """Finite, and equal to the statistics saved with the episode: the data of a file whose bytes
        changed after writing (a disk or copy error, a parquet still readable) no longer are."""
        ep = row["episode_index"]
        values = values.astype(np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            frames = np.flatnonzero(bad.any(axis=1))
            self.add(rel, key, f"episode {ep}: NaN or inf at {int(bad.sum())} value(s), frames "
                               f"{frames[:5].tolist()}{' ...' if len(frames) > 5 else ''}")
            return
        for stat, computed in (("min", values.min(axis=0)), ("max", values.max(axis=0)),
                               ("mean", values.mean(axis=0))):
            saved = row.get(f"stats/{key}/{stat}")
            if saved is None:
                continue
            saved = np.asarray(saved, dtype=np.float64).reshape(-1)
            if saved.shape == computed.shape and not np.allclose(computed, saved, rtol=1e-5, atol=1e-6):
                changed = np.flatnonzero(~np.isclose(computed, saved, rtol=1e-5, atol=1e-6))
                self.add(rel, key, f"episode {ep}: the data no longer match the {stat} saved with the episode "
                                   f"(dimensions {changed[:5].tolist()}): the file changed after it was written")
                return

    # -- videos

    def check_videos(self, rows: list[dict]) -> None:
        for key in video_keys(self.features):
            by_file: dict[str, list[dict]] = defaultdict(list)
            for row in rows:
                if f"videos/{key}/file_index" in row:
                    by_file[video_file(self.info, row, key)].append(row)
            for rel, file_rows in by_file.items():
                self.check_video_file(key, rel, file_rows)

    def check_video_file(self, key: str, rel: str, rows: list[dict]) -> None:
        path = self.root / rel
        if not path.is_file():
            self.add(rel, f"videos/{key}/file_index", "missing (named by meta/episodes)")
            return
        try:
            found = probe(path)
        except Exception as exc:  # PyAV's own error types
            self.add(rel, key, f"unreadable video: {exc}")
            return
        block = self.features[key].get("info") or {}
        h, w, _ = self.features[key]["shape"]
        if (found.height, found.width) != (h, w) or (block.get("video.codec") not in (None, found.codec)):
            self.add(rel, key, f"{found.codec} {found.width}x{found.height}, info.json says "
                               f"{block.get('video.codec')} {w}x{h}")
        times = np.array(found.times_s)
        for row in rows:
            self.check_video_episode(key, rel, times, row)

    def check_video_episode(self, key: str, rel: str, times: np.ndarray, row: dict) -> None:
        start, end = row[f"videos/{key}/from_timestamp"], row[f"videos/{key}/to_timestamp"]
        n, ep = row["length"], row["episode_index"]
        inside = times[(times >= start - TOLERANCE_S) & (times < end - TOLERANCE_S)]
        if len(inside) != n:
            self.add(rel, f"videos/{key}/to_timestamp", f"episode {ep}: {len(inside)} frames in "
                                                        f"[{start:.4f}, {end:.4f}) s, expected {n}")
            return
        if np.abs(inside - (start + np.arange(n) / self.fps)).max() > TOLERANCE_S:
            self.add(rel, f"videos/{key}/from_timestamp", f"episode {ep}: frame times are not from_timestamp + "
                                                          f"frame_index / fps (within {TOLERANCE_S} s)")
        if abs(end - start - n / self.fps) > TOLERANCE_S:
            self.add(rel, f"videos/{key}/to_timestamp", f"episode {ep}: spans {end - start:.4f} s for {n} frames")

    # -- leftovers and stats

    def check_leftovers(self, rows: list[dict]) -> None:
        named = {data_file(self.info, r) for r in rows if "data/file_index" in r}
        named |= {video_file(self.info, r, k) for r in rows for k in video_keys(self.features)
                  if f"videos/{k}/file_index" in r}
        for path in sorted((self.root / DATA_DIR).glob("*/*.parquet")):
            if str(path.relative_to(self.root)) not in named:
                self.add(path, "episode_index", "data file no episode names (LeRobot would load its rows)")
        for path in sorted((self.root / VIDEO_DIR).glob("*/*/*.mp4")):
            if str(path.relative_to(self.root)) not in named:
                self.add(path, path.parts[-3], "video file no episode names")
        if rows and len(episode_files(self.root)) == 0:
            self.add("meta/episodes", "", "no episode files")

    def check_stats(self, rows: list[dict]) -> None:
        path = self.root / STATS_PATH
        if not rows:
            return
        try:
            stats = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            self.add(STATS_PATH, "", f"missing or unreadable: {exc}")
            return
        for key, ft in self.features.items():
            if ft["dtype"] == "string":
                continue
            if key not in stats:
                self.add(STATS_PATH, key, "no statistics")
                continue
            self.check_feature_stats(key, ft, stats[key])
        total = sum(r.get("length", 0) for r in rows)
        count = (stats.get(INDEX) or {}).get("count")
        if count != [total]:
            self.add(STATS_PATH, f"{INDEX}.count", f"{count}, but the dataset has {total} frames (stale)")

    def check_feature_stats(self, key: str, ft: dict, values: dict) -> None:
        for stat in stats_mod.STAT_KEYS:
            if stat not in values:
                self.add(STATS_PATH, f"{key}.{stat}", "missing")
                continue
            array = np.asarray(values[stat], dtype=np.float64)
            if array.shape != stats_mod.expected_shape(ft, stat):
                self.add(STATS_PATH, f"{key}.{stat}", f"shape {array.shape}, expected "
                                                      f"{stats_mod.expected_shape(ft, stat)}")
            elif not np.isfinite(array).all():
                self.add(STATS_PATH, f"{key}.{stat}", "not finite")
