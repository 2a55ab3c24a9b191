"""Reading a LeRobot v3.0 dataset: metadata, low-dimensional columns, decoded video frames.

``meta/episodes`` is the source of truth: an episode exists when its row does, and only the
data and video files its row names are read (a file left by an interrupted commit is
ignored). Training and evaluation use :class:`DatasetReader`; the writer and the validator
share the loading functions below.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import stats as stats_mod
from .features import (
    EPISODES_DIR,
    INFO_PATH,
    STATS_PATH,
    TASKS_PATH,
    TOLERANCE_S,
    DatasetError,
    role_of,
    video_keys,
)
from .video import FrameReader, decode_frames

REQUIRED_INFO_FIELDS = ("codebase_version", "fps", "features", "data_path", "video_path", "chunks_size",
                        "total_episodes", "total_frames", "total_tasks")


# --------------------------------------------------------------------------------------------
# Loading functions (shared with the writer and the validator)


def load_info(root: Path) -> dict:
    path = Path(root) / INFO_PATH
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing (not a LeRobot dataset?)") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable JSON: {exc}") from None
    missing = [f for f in REQUIRED_INFO_FIELDS if f not in info]
    if missing:
        raise DatasetError(f"{path}: field(s) {', '.join(missing)} missing")
    if not isinstance(info["features"], dict) or not isinstance(info["fps"], int) or info["fps"] <= 0:
        raise DatasetError(f"{path}: field 'features' must be an object and 'fps' a positive integer")
    return info


def episode_files(root: Path) -> list[Path]:
    return sorted((Path(root) / EPISODES_DIR).glob("*/*.parquet"))


def load_episode_rows(root: Path, with_stats: bool = False) -> list[dict]:
    """Every row of meta/episodes/*/*.parquet, sorted by episode_index; '_file' names its file."""
    rows = []
    for path in episode_files(root):
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            raise DatasetError(f"{path}: unreadable parquet: {exc}") from None
        if not with_stats:
            table = table.select([c for c in table.column_names if not c.startswith("stats/")])
        for row in table.to_pylist():
            row["_file"] = str(path.relative_to(root))
            rows.append(row)
    for row in rows:
        if not isinstance(row.get("episode_index"), int):
            raise DatasetError(f"{Path(root) / row['_file']}: field 'episode_index' missing or not an integer")
    return sorted(rows, key=lambda r: r["episode_index"])


def _read_parquet(path: Path, where: str = "") -> pa.Table:
    """A parquet table, or a DatasetError naming the file (and ``where`` it was expected)."""
    try:
        return pq.read_table(path)
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing{where}") from None
    except (OSError, pa.ArrowException) as exc:
        raise DatasetError(f"{path}: unreadable parquet: {exc}") from None


def load_tasks(root: Path) -> dict[int, str]:
    """task_index -> task, from meta/tasks.parquet (the task string is the pandas index there)."""
    path = Path(root) / TASKS_PATH
    table = _read_parquet(path)
    names = table.column_names
    task_col = "task" if "task" in names else next((n for n in names if n.startswith("__index_level")), None)
    if task_col is None or "task_index" not in names:
        raise DatasetError(f"{path}: fields 'task' and 'task_index' expected, found {names}")
    return dict(zip(table.column("task_index").to_pylist(), table.column(task_col).to_pylist()))


def load_stats(root: Path) -> dict[str, dict[str, np.ndarray]] | None:
    path = Path(root) / STATS_PATH
    if not path.exists():
        return None
    try:
        return stats_mod.from_jsonable(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable JSON: {exc}") from None


def data_file(info: dict, row: dict) -> str:
    return info["data_path"].format(chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])


def video_file(info: dict, row: dict, key: str) -> str:
    return info["video_path"].format(video_key=key, chunk_index=row[f"videos/{key}/chunk_index"],
                                     file_index=row[f"videos/{key}/file_index"])


def column_to_numpy(column: pa.ChunkedArray | pa.Array, feature: dict) -> np.ndarray:
    """(N,) for scalar features (shape [1], stored as scalars as LeRobot does), (N, D) for vectors."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_fixed_size_list(array.type) or pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        width = int(np.prod(feature["shape"]))
        values = array.flatten().to_numpy(zero_copy_only=False)
        return values.reshape(len(array), width).astype(feature["dtype"], copy=False)
    return array.to_numpy(zero_copy_only=False).astype(feature["dtype"], copy=False)


def read_episode_table(root: Path, info: dict, row: dict) -> pa.Table:
    """The data rows of one episode (its file may hold other episodes when LeRobot wrote it)."""
    path = Path(root) / data_file(info, row)
    table = _read_parquet(path, f" (episode {row['episode_index']}, field data/file_index)")
    episode = table.column("episode_index").to_numpy()
    if not (episode == row["episode_index"]).all():
        table = table.filter(pa.array(episode == row["episode_index"]))
    if table.num_rows != row["length"]:
        raise DatasetError(f"{path}: {table.num_rows} rows of episode {row['episode_index']}, "
                           f"but its meta/episodes row says length {row['length']}")
    return table


# --------------------------------------------------------------------------------------------
# The reader


@dataclass(frozen=True)
class VideoSegment:
    path: Path
    from_timestamp: float
    to_timestamp: float


@dataclass(frozen=True)
class EpisodeInfo:
    index: int
    tasks: tuple[str, ...]
    length: int
    from_index: int
    to_index: int
    data_file: Path
    videos: dict[str, VideoSegment] = field(default_factory=dict)  # camera role -> segment
    sim_seed: int | None = None  # the twin's scene, for an episode recorded in simulation

    @property
    def task(self) -> str:
        return self.tasks[0] if self.tasks else ""


class DatasetReader:
    """A dataset on disk: ``reader[i]`` is frame i (global index), columns come as numpy."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.info = load_info(self.root)
        self.fps: int = self.info["fps"]
        self.features: dict = self.info["features"]
        self.video_keys = video_keys(self.features)
        self.camera_roles = [role_of(k) for k in self.video_keys]
        self.tasks = load_tasks(self.root)
        self._rows = load_episode_rows(self.root)
        self.episodes = [self._episode_info(row) for row in self._rows]
        self._starts = np.array([ep.from_index for ep in self.episodes], dtype=np.int64)
        self._table: pa.Table | None = None
        self._columns: dict[str, np.ndarray] = {}
        self._frames = FrameReader(tolerance_s=TOLERANCE_S)

    def _episode_info(self, row: dict) -> EpisodeInfo:
        videos = {role_of(k): VideoSegment(self.root / video_file(self.info, row, k),
                                           float(row[f"videos/{k}/from_timestamp"]),
                                           float(row[f"videos/{k}/to_timestamp"]))
                  for k in self.video_keys}
        return EpisodeInfo(index=row["episode_index"], tasks=tuple(row.get("tasks") or ()), length=row["length"],
                           from_index=row["dataset_from_index"], to_index=row["dataset_to_index"],
                           data_file=self.root / data_file(self.info, row), videos=videos,
                           sim_seed=row.get("sim/seed"))

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def num_frames(self) -> int:
        return sum(ep.length for ep in self.episodes)

    @property
    def stats(self) -> dict[str, dict[str, np.ndarray]] | None:
        return load_stats(self.root)

    def __len__(self) -> int:
        return self.num_frames

    # -- low-dimensional data

    @property
    def table(self) -> pa.Table:
        """All frames' rows, in episode order (read once, on first use)."""
        if self._table is None:
            tables = [read_episode_table(self.root, self.info, row) for row in self._rows]
            self._table = pa.concat_tables(tables) if tables else pa.table({})
        return self._table

    def column(self, key: str) -> np.ndarray:
        """One feature for all frames: (N,) for scalar features, (N, D) for vectors."""
        if key not in self._columns:
            feature = self.features.get(key)
            if feature is None or feature["dtype"] in ("video", "image"):
                raise KeyError(f"{key!r} is not a low-dimensional feature of {self.root}")
            if self.num_frames == 0:
                shape = (0,) if feature["shape"] == [1] else (0, *feature["shape"])
                return np.zeros(shape, dtype=feature["dtype"])
            self._columns[key] = column_to_numpy(self.table.column(key), feature)
        return self._columns[key]

    def episode_column(self, episode: int, key: str) -> np.ndarray:
        ep = self.episodes[episode]
        start = ep.from_index - self.episodes[0].from_index
        return self.column(key)[start:start + ep.length]

    # -- frames

    def locate(self, index: int) -> tuple[EpisodeInfo, int]:
        """(episode, frame_index) of a global frame index."""
        if not 0 <= index < self.num_frames:
            raise IndexError(f"frame {index} out of range (dataset has {self.num_frames})")
        first = self.episodes[0].from_index
        ep = self.episodes[int(np.searchsorted(self._starts, index + first, side="right")) - 1]
        return ep, index + first - ep.from_index

    def __getitem__(self, index: int) -> dict:
        ep, frame_index = self.locate(int(index))
        row = ep.from_index - self.episodes[0].from_index + frame_index
        item: dict = {}
        for key, feature in self.features.items():
            if feature["dtype"] in ("video", "image"):
                continue
            item[key] = self.column(key)[row]
        for key in self.video_keys:
            segment = ep.videos[role_of(key)]
            item[key] = self._frames.read(segment.path, segment.from_timestamp + frame_index / self.fps)
        item["task"] = self.tasks.get(int(item["task_index"]), ep.task)
        return item

    def episode_frames(self, episode: int, role: str) -> Iterator[np.ndarray]:
        """Decoded HxWx3 uint8 frames of one camera over one episode, in order."""
        ep = self.episodes[episode]
        segment = ep.videos[role]
        end = segment.from_timestamp + ep.length / self.fps
        for _, image in decode_frames(segment.path, segment.from_timestamp, end, TOLERANCE_S):
            yield image

    def close(self) -> None:
        self._frames.close()

    def __enter__(self) -> DatasetReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
