"""Writing a LeRobot v3.0 dataset episode by episode, crash-safe (docs/datasets.md says why).

Each episode gets its own data parquet, one mp4 per camera and one
``meta/episodes/chunk-XXX/file-YYY.parquet`` (file index = episode index within the chunk),
so committing an episode never rewrites another one's files. An episode is staged in
``<root>/.staging/<uuid>/``; every file of the commit is written and fsynced there first, and
the commit itself is a sequence of renames, done by a committer process of its own session
(commit.py) so that killing the recorder cannot stop it half way:

    data + videos  ->  meta/tasks.parquet  ->  meta/episodes row (THE commit point)
    ->  meta/stats.json  ->  meta/info.json

``meta/episodes`` is the source of truth. A kill of the writer's process at any instant
leaves the dataset valid; a power cut inside the renames leaves earlier episodes intact, and
:meth:`DatasetWriter.open` removes what the interrupted commit left (staging, data or
video files no episode row names) and recomputes stale totals and statistics.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import rates as rates_mod
from . import stats as stats_mod
from .features import (
    ACTION,
    CHUNKS_SIZE,
    CODEBASE_VERSION,
    DATA_DIR,
    DATA_FILES_SIZE_IN_MB,
    DATA_PATH,
    EPISODE_INDEX,
    EPISODES_PATH,
    FRAME_INDEX,
    INDEX,
    INFO_PATH,
    SKEW,
    STAGING_DIR,
    STAMPS,
    STATE,
    STATS_PATH,
    TASK_INDEX,
    TASKS_PATH,
    TIMESTAMP,
    TOLERANCE_S,
    VIDEO_DIR,
    VIDEO_FILES_SIZE_IN_MB,
    VIDEO_PATH,
    DatasetError,
    episode_location,
    frame_keys,
    image_key,
    numeric_keys,
    robot_features,
    role_of,
    video_keys,
)
from .reader import column_to_numpy, data_file, load_episode_rows, load_info, load_tasks, read_episode_table, video_file
from .commit import CRASH_ENV, CommitError, crash_point, fsync, move, publish_detached  # noqa: F401 (CRASH_ENV re-exported)
from .video import CameraEncoder, EncoderError, VideoOptions, check_codec, probe, video_info

__all__ = ["DatasetError", "DatasetWriter", "Episode", "EpisodeSummary", "VideoOptions",
           "STATE", "ACTION", "STAMPS", "SKEW"]

ROBOT_TYPE = "agilex_piper_bimanual"
#: Test hook (CRASH_ENV): the process doing that step of the commit is SIGKILLed right after it.
CRASH_POINTS = ("staged", "data", "videos", "tasks", "meta", "stats", "info")
#: Image statistics sample every n-th frame, downsampled to ~150 px as LeRobot does.
IMAGE_STATS_EVERY = 10


@dataclass(frozen=True)
class EpisodeSummary:
    episode_index: int
    length: int
    task: str
    from_index: int
    to_index: int
    duration_s: float
    #: Cameras that delivered less than the dataset's rate (sf_policy/data/rates.py), in words.
    rate_warnings: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------
# The episode being recorded


class Episode:
    """Frames of one episode; encoders run while it records. Save or discard it exactly once."""

    def __init__(self, writer: DatasetWriter, task: str, staging: Path, sim_seed: int | None = None):
        self.task = task
        self.sim_seed = sim_seed
        self.staging = staging
        self._writer = writer
        features = writer.features
        self._specs = {k: (np.dtype(features[k]["dtype"]), tuple(features[k]["shape"])) for k in frame_keys(features)}
        self._image_shapes = {role_of(k): tuple(features[k]["shape"]) for k in video_keys(features)}
        self._buffers: dict[str, list[np.ndarray]] = {k: [] for k in self._specs}
        self._samples: dict[str, list[np.ndarray]] = {role: [] for role in self._image_shapes}
        self._lock = threading.Lock()
        self._state = "recording"  # -> saving -> saved | failed; or -> discarded
        self._done = threading.Event()
        self.num_frames = 0
        self._encoders: dict[str, CameraEncoder] = {}
        try:
            for role, (h, w, _) in self._image_shapes.items():
                self._encoders[role] = CameraEncoder(staging / f"{role}.mp4", h, w, writer.fps, writer.video,
                                                     log=staging / f"{role}.log")
        except BaseException:
            self._abort()
            raise

    @property
    def backlog(self) -> int:
        """Frames queued but not yet handed to the encoders, all cameras together."""
        return sum(e.backlog for e in self._encoders.values())

    @property
    def state(self) -> str:
        return self._state

    def add_frame(self, frame: dict[str, np.ndarray], images: dict[str, np.ndarray]) -> None:
        """Append one frame. Copies the arrays; the encoding happens in other processes."""
        with self._lock:
            if self._state != "recording":
                raise DatasetError(f"episode {self.task!r} is {self._state}: no add_frame after save() or discard()")
            values = self._checked_values(frame)
            pictures = self._checked_images(images)
            failed = [(role, e) for role, e in self._encoders.items() if e.error]
            if failed:
                role, encoder = failed[0]
                raise DatasetError(f"{encoder.out}: camera {role}: video encoding failed: {encoder.error} "
                                   "(is the disk full?)")
            for role, encoder in self._encoders.items():
                encoder.put(pictures[role])
            for key, value in values.items():
                self._buffers[key].append(value)
            if self.num_frames % self._writer.image_stats_every == 0:
                for role, picture in pictures.items():
                    self._samples[role].append(image_stats_sample(picture))
            self.num_frames += 1

    def _checked_values(self, frame: dict) -> dict[str, np.ndarray]:
        missing = [k for k in self._specs if k not in frame]
        unknown = [k for k in frame if k not in self._specs]
        if missing or unknown:
            raise ValueError(f"frame keys: missing {missing}, unknown {unknown} (expected {list(self._specs)})")
        out = {}
        for key, (dtype, shape) in self._specs.items():
            value = frame[key]
            if not isinstance(value, np.ndarray) or value.dtype != dtype or value.shape != shape:
                got = f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
                raise ValueError(f"feature {key!r}: expected a {dtype} array of shape {shape}, got {got}")
            out[key] = value.copy()
        return out

    def _checked_images(self, images: dict) -> dict[str, np.ndarray]:
        if set(images) != set(self._image_shapes):
            raise ValueError(f"images: expected cameras {sorted(self._image_shapes)}, got {sorted(images)}")
        out = {}
        for role, shape in self._image_shapes.items():
            image = images[role]
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.shape != shape:
                got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
                raise ValueError(f"feature {image_key(role)!r}: expected a uint8 array of shape {shape}, got {got}")
            out[role] = image.copy(order="C")
        return out

    def save(self, timeout: float | None = None) -> EpisodeSummary:
        """Wait for the encoders, check every file, commit. Any thread may call it."""
        with self._lock:
            if self._state != "recording":
                raise DatasetError(f"episode {self.task!r} is {self._state}: save() needs a recording episode")
            self._state = "saving"
        try:
            if self.num_frames == 0:
                raise DatasetError(f"episode {self.task!r} has no frames; discard it instead")
            self._finish_videos(timeout)
            summary = self._writer._commit(self)
            self._state = "saved"
            return summary
        except BaseException:
            self._state = "failed"
            self._abort()
            raise
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)
            self._writer._forget(self)
            self._done.set()

    def discard(self) -> None:
        """Drop the episode and its staging files."""
        with self._lock:
            if self._state in ("saving", "saved"):
                raise DatasetError(f"episode {self.task!r} is {self._state}: too late to discard it")
            already = self._state == "discarded"
            self._state = "discarded"
        if already:
            return
        self._abort()
        shutil.rmtree(self.staging, ignore_errors=True)
        self._writer._forget(self)
        self._done.set()

    def _abort(self) -> None:
        for encoder in self._encoders.values():
            encoder.abort()

    def _finish_videos(self, timeout: float | None) -> None:
        for role, encoder in self._encoders.items():
            try:
                written = encoder.finish(timeout)
            except EncoderError as exc:
                raise DatasetError(f"{encoder.out}: camera {role}: {exc} (is the disk full?)") from None
            if written != self.num_frames:
                raise DatasetError(f"{encoder.out}: camera {role}: encoder wrote {written} frames, "
                                   f"episode has {self.num_frames}")
            self._check_video(role, encoder.out)

    def _check_video(self, role: str, path: Path) -> None:
        try:
            found = probe(path)
        except Exception as exc:  # PyAV raises its own error types for damaged files
            raise DatasetError(f"{path}: camera {role}: unreadable video: {exc}") from None
        expected = np.arange(self.num_frames) / self._writer.fps
        if found.frames != self.num_frames or np.abs(np.array(found.times_s) - expected).max() > TOLERANCE_S:
            raise DatasetError(f"{path}: camera {role}: {found.frames} frames with times not at i/fps "
                               f"(expected {self.num_frames})")

    # -- used by the commit

    def build_table(self, episode_index: int, from_index: int, task_index: int) -> pa.Table:
        n = self.num_frames
        frame_index = np.arange(n, dtype=np.int64)
        columns = {key: np.stack(values) for key, values in self._buffers.items()}
        columns.update({
            TIMESTAMP: (frame_index / self._writer.fps).astype(np.float32),
            FRAME_INDEX: frame_index,
            EPISODE_INDEX: np.full(n, episode_index, dtype=np.int64),
            INDEX: from_index + frame_index,
            TASK_INDEX: np.full(n, task_index, dtype=np.int64),
        })
        schema = data_schema(self._writer.features)
        return pa.table([_arrow_column(columns[f.name], f.type) for f in schema], schema=schema)

    def image_stats(self) -> dict[str, stats_mod.Stats]:
        return {image_key(role): stats_mod.image_stats(np.stack(samples)) for role, samples in self._samples.items()}

    def video_paths(self) -> dict[str, Path]:
        return {role: e.out for role, e in self._encoders.items()}


def image_stats_sample(image: np.ndarray) -> np.ndarray:
    """The frame downsampled to ~150 px on its long side (LeRobot's auto_downsample_height_width)."""
    h, w = image.shape[:2]
    step = max(1, int(max(h, w) / 150)) if max(h, w) >= 300 else 1
    return image[::step, ::step].copy()


# --------------------------------------------------------------------------------------------
# Arrow schemas


def data_schema(features: dict) -> pa.Schema:
    """The data parquet: shape-[1] features as scalars, vectors as fixed-size lists (as LeRobot)."""
    fields = []
    for key in numeric_keys(features):
        ft = features[key]
        if len(ft["shape"]) != 1:
            raise DatasetError(f"features.{key}: only 1-D low-dimensional features are supported, got {ft['shape']}")
        value_type = pa.from_numpy_dtype(np.dtype(ft["dtype"]))
        fields.append(pa.field(key, value_type if ft["shape"] == [1] else pa.list_(value_type, ft["shape"][0])))
    return pa.schema(fields)


#: meta/episodes column of an episode recorded in the twin: its scene's seed (ours, not LeRobot's;
#: LeRobot carries unknown columns along).
SIM_SEED = "sim/seed"


def episode_schema(features: dict, sim: bool = False, rates: bool = False) -> pa.Schema:
    """A meta/episodes row, with the columns LeRobot writes, in its order, then ours: each
    camera's measured rate (``rates``) and ``sim/seed`` for an episode recorded in the twin."""
    i64, f64 = pa.int64(), pa.float64()
    fields = [("episode_index", i64), ("tasks", pa.list_(pa.string())), ("length", i64),
              ("data/chunk_index", i64), ("data/file_index", i64), ("dataset_from_index", i64),
              ("dataset_to_index", i64)]
    for key in video_keys(features):
        fields += [(f"videos/{key}/chunk_index", i64), (f"videos/{key}/file_index", i64),
                   (f"videos/{key}/from_timestamp", f64), (f"videos/{key}/to_timestamp", f64)]
    for key in stats_features(features):
        fields += [(f"stats/{key}/{stat}", _stat_type(features[key], stat)) for stat in stats_mod.STAT_KEYS]
    fields += [("meta/episodes/chunk_index", i64), ("meta/episodes/file_index", i64)]
    if rates:
        fields += [(rates_mod.COLUMN.format(role=role_of(key)), f64) for key in video_keys(features)]
    if sim:
        fields.append((SIM_SEED, i64))
    return pa.schema(fields)


def stats_features(features: dict) -> list[str]:
    """Features that get statistics: everything stored (LeRobot skips only strings), in order."""
    return [k for k, ft in features.items() if ft["dtype"] != "string"]


def _stat_type(feature: dict, stat: str) -> pa.DataType:
    if stat == "count":
        return pa.list_(pa.int64())
    if feature["dtype"] in ("video", "image"):
        return pa.list_(pa.list_(pa.list_(pa.float64())))
    integer = np.issubdtype(np.dtype(feature["dtype"]), np.integer)
    return pa.list_(pa.int64() if integer and stat in ("min", "max") else pa.float64())


def _arrow_column(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    if pa.types.is_fixed_size_list(type_):
        flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=type_.value_type)
        return pa.FixedSizeListArray.from_arrays(flat, type_.list_size)
    return pa.array(values.reshape(-1), type=type_)


def tasks_table(tasks: dict[str, int]) -> pa.Table:
    """meta/tasks.parquet as pandas writes LeRobot's DataFrame: task_index column, task as the index."""
    ordered = sorted(tasks.items(), key=lambda kv: kv[1])
    table = pa.table({"task_index": pa.array([i for _, i in ordered], pa.int64()),
                      "task": pa.array([t for t, _ in ordered], pa.string())})
    # The pandas metadata makes pd.read_parquet restore "task" as the index, which LeRobot's
    # loader relies on (tasks.index holds the strings, tasks.loc[task].task_index the ids).
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                     "numpy_type": "int64", "metadata": None},
                    {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
                     "metadata": None}],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


# --------------------------------------------------------------------------------------------
# Files: staged writes, fsync, renames


def _write_file(path: Path, write) -> None:
    """Write through ``write(path)`` and fsync; a full disk becomes a DatasetError naming the file."""
    try:
        write(path)
        fsync(path)
    except (OSError, pa.ArrowException) as exc:
        raise DatasetError(f"{path}: write failed: {exc} (is the disk full?)") from None


def write_json(path: Path, data: dict) -> None:
    _write_file(path, lambda p: p.write_text(json.dumps(data, indent=4, ensure_ascii=False) + "\n"))


def write_parquet(path: Path, table: pa.Table) -> None:
    _write_file(path, lambda p: pq.write_table(table, p, compression="snappy"))


# --------------------------------------------------------------------------------------------
# The writer


class DatasetWriter:
    """Appends episodes to one dataset; one writer per dataset at a time (a file lock says so)."""

    def __init__(self, root: Path, info: dict, video: VideoOptions, lock_fd: int,
                 image_stats_every: int = IMAGE_STATS_EVERY):
        self.root = root
        self.info = info
        self.video = video
        self.image_stats_every = image_stats_every
        self._lock_fd: int | None = lock_fd
        self._commit_lock = threading.Lock()
        self._active: set[Episode] = set()
        self._active_lock = threading.Lock()
        self._rows: list[dict] = []  # committed meta/episodes rows, without stats
        self._stats = stats_mod.DatasetStats(numeric_keys(self.features))
        self._tasks: dict[str, int] = {}

    # -- construction

    @classmethod
    def create(cls, root: Path | str, fps: int = 30, cameras: dict[str, tuple[int, int]] | None = None,
               robot_type: str = ROBOT_TYPE, video: VideoOptions | None = None, chunks_size: int = CHUNKS_SIZE,
               image_stats_every: int = IMAGE_STATS_EVERY) -> DatasetWriter:
        """A new, empty dataset at root (which must not exist or be empty)."""
        root = Path(root)
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise DatasetError(f"{root}: exists and is not empty; DatasetWriter.open() appends to a dataset")
        if not isinstance(fps, int) or fps <= 0:
            raise ValueError(f"fps must be a positive integer, got {fps!r}")
        video = video or VideoOptions()
        check_codec(video)
        features = robot_features(cameras or {})
        for key in video_keys(features):
            h, w, _ = features[key]["shape"]
            features[key]["info"] = video_info(video, h, w, fps) | encoder_info(video)
        info = {
            "codebase_version": CODEBASE_VERSION, "robot_type": robot_type, "total_episodes": 0, "total_frames": 0,
            "total_tasks": 0, "chunks_size": chunks_size, "data_files_size_in_mb": DATA_FILES_SIZE_IN_MB,
            "video_files_size_in_mb": VIDEO_FILES_SIZE_IN_MB, "fps": fps, "splits": {}, "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if video_keys(features) else None, "features": features,
        }
        (root / "meta").mkdir(parents=True, exist_ok=True)
        lock_fd = lock_dataset(root)
        try:
            staging = _staging_dir(root)
            write_parquet(staging / "tasks.parquet", tasks_table({}))
            write_json(staging / "info.json", info)
            move(staging / "tasks.parquet", root / TASKS_PATH)
            move(staging / "info.json", root / INFO_PATH)
            shutil.rmtree(staging)
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(root, info, video, lock_fd, image_stats_every)

    @classmethod
    def open(cls, root: Path | str, video: VideoOptions | None = None,
             image_stats_every: int = IMAGE_STATS_EVERY) -> DatasetWriter:
        """Append to an existing dataset, first cleaning up after an interrupted commit."""
        root = Path(root)
        info = load_info(root)
        if info["codebase_version"] != CODEBASE_VERSION:
            raise DatasetError(f"{root / INFO_PATH}: field 'codebase_version' is {info['codebase_version']!r}, "
                               f"only {CODEBASE_VERSION!r} can be appended to")
        lock_fd = lock_dataset(root)
        try:
            writer = cls(root, info, video or options_from_info(info), lock_fd, image_stats_every)
            writer._recover()
        except BaseException:
            os.close(lock_fd)
            raise
        return writer

    # -- properties

    @property
    def fps(self) -> int:
        return self.info["fps"]

    @property
    def features(self) -> dict:
        return self.info["features"]

    @property
    def camera_roles(self) -> list[str]:
        return [role_of(k) for k in video_keys(self.features)]

    @property
    def num_episodes(self) -> int:
        return len(self._rows)

    @property
    def num_frames(self) -> int:
        return self._rows[-1]["dataset_to_index"] if self._rows else 0

    @property
    def tasks(self) -> list[str]:
        return sorted(self._tasks, key=self._tasks.get)

    # -- episodes

    def begin_episode(self, task: str, sim_seed: int | None = None) -> Episode:
        """A new episode of ``task``. ``sim_seed``: the twin's scene it was recorded in, kept in
        its meta/episodes row (``sim/seed``) so an evaluation can refuse scenes a policy was
        trained on; ``None`` for the robot."""
        if self._lock_fd is None:
            raise DatasetError(f"{self.root}: writer is closed")
        if not isinstance(task, str) or not task.strip():
            raise ValueError("task must be a non-empty string")
        if sim_seed is not None and (isinstance(sim_seed, bool) or not isinstance(sim_seed, (int, np.integer))):
            raise ValueError(f"sim_seed must be an integer (the twin's seed) or None, got {sim_seed!r}")
        staging = _staging_dir(self.root)
        episode = Episode(self, task, staging, None if sim_seed is None else int(sim_seed))
        with self._active_lock:
            self._active.add(episode)
        return episode

    def _forget(self, episode: Episode) -> None:
        with self._active_lock:
            self._active.discard(episode)

    def close(self) -> None:
        """Wait for episodes being saved; discard episodes never saved; release the dataset."""
        with self._active_lock:
            active = list(self._active)
        for episode in active:
            if episode.state == "recording":
                episode.discard()
            episode._done.wait()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the commit

    def _commit(self, episode: Episode) -> EpisodeSummary:
        with self._commit_lock:
            index, from_index = self.num_episodes, self.num_frames
            tasks = dict(self._tasks)
            new_task = episode.task not in tasks
            task_index = tasks.setdefault(episode.task, len(tasks))
            table = episode.build_table(index, from_index, task_index)
            columns = {k: column_to_numpy(table.column(k), self.features[k]) for k in numeric_keys(self.features)}
            ep_stats = {k: stats_mod.vector_stats(v) for k, v in columns.items()} | episode.image_stats()
            rates = rates_mod.measured_rates(columns[STAMPS], self.camera_roles) if STAMPS in columns else {}
            row = self._episode_row(index, from_index, episode, ep_stats, rates)
            info = self._info_with(index + 1, from_index + episode.num_frames, len(tasks))
            dataset_stats = self._dataset_stats(columns, ep_stats)
            targets = self._stage(episode, table, row, tasks if new_task else None, dataset_stats, info)
            self._publish(targets, episode.staging)
            self._remember(row, ep_stats, columns, tasks, info)
        return EpisodeSummary(episode_index=index, length=episode.num_frames, task=episode.task,
                              from_index=from_index, to_index=from_index + episode.num_frames,
                              duration_s=episode.num_frames / self.fps,
                              rate_warnings=tuple(rates_mod.shortfalls(rates, self.fps)))

    def _stage(self, episode: Episode, table: pa.Table, row: dict, tasks: dict[str, int] | None,
               dataset_stats: dict, info: dict) -> list[tuple[str, Path, Path]]:
        """Write and fsync every file of the commit in staging; return (step, staged, final) in order."""
        staged = episode.staging
        loc = episode_location(row["episode_index"], info["chunks_size"])
        write_parquet(staged / "data.parquet", table)
        targets = [("data", staged / "data.parquet", self.root / data_file(info, row))]
        for role, path in episode.video_paths().items():
            _write_file(path, lambda p: None)  # nothing to write: fsync the encoder's file
            targets.append(("videos", path, self.root / video_file(info, row, image_key(role))))
        if tasks is not None:
            write_parquet(staged / "tasks.parquet", tasks_table(tasks))
            targets.append(("tasks", staged / "tasks.parquet", self.root / TASKS_PATH))
        schema = episode_schema(self.features, sim=SIM_SEED in row, rates=self._keeps_rates)
        write_parquet(staged / "episode.parquet", pa.Table.from_pylist([row], schema=schema))
        targets.append(("meta", staged / "episode.parquet", self.root / EPISODES_PATH.format(**loc)))
        write_json(staged / "stats.json", stats_mod.to_jsonable(dataset_stats))
        targets.append(("stats", staged / "stats.json", self.root / STATS_PATH))
        write_json(staged / "info.json", info)
        targets.append(("info", staged / "info.json", self.root / INFO_PATH))
        crash_point("staged")
        return targets

    def _publish(self, targets: list[tuple[str, Path, Path]], staging: Path) -> None:
        """The renames, done by a committer process that killing us cannot interrupt (commit.py)."""
        plan = staging / "commit.json"
        try:
            publish_detached(targets, plan)
        except CommitError as exc:
            raise DatasetError(str(exc)) from None
        except OSError as exc:  # writing the plan or starting the committer: no rename was done
            raise DatasetError(f"{plan}: {exc}; nothing was committed (is the disk full?)") from None

    @property
    def _keeps_rates(self) -> bool:
        """Measured rates go into every meta/episodes row of a dataset that has stamps, except
        when appending to one whose episodes were written without them (one schema per dataset)."""
        column = rates_mod.COLUMN.format(role=rates_mod.PIVOT)
        return STAMPS in self.features and (not self._rows or column in self._rows[0])

    def _episode_row(self, index: int, from_index: int, episode: Episode, ep_stats: dict,
                     rates: dict[str, float]) -> dict:
        loc = episode_location(index, self.info["chunks_size"])
        n = episode.num_frames
        row = {"episode_index": index, "tasks": [episode.task], "length": n,
               "data/chunk_index": loc["chunk_index"], "data/file_index": loc["file_index"],
               "dataset_from_index": from_index, "dataset_to_index": from_index + n}
        for key in video_keys(self.features):
            row |= {f"videos/{key}/chunk_index": loc["chunk_index"], f"videos/{key}/file_index": loc["file_index"],
                    f"videos/{key}/from_timestamp": 0.0, f"videos/{key}/to_timestamp": n / self.fps}
        for key in stats_features(self.features):
            row |= {f"stats/{key}/{stat}": np.asarray(v).tolist() for stat, v in ep_stats[key].items()}
        row |= {"meta/episodes/chunk_index": loc["chunk_index"], "meta/episodes/file_index": loc["file_index"]}
        if self._keeps_rates:  # NaN where it cannot be told (one frame, a camera left out)
            row |= rates_mod.rate_columns({role: rates.get(role, math.nan) for role in self.camera_roles})
        if episode.sim_seed is not None:
            row[SIM_SEED] = episode.sim_seed
        return row

    def _info_with(self, episodes: int, frames: int, tasks: int) -> dict:
        return self.info | {"total_episodes": episodes, "total_frames": frames, "total_tasks": tasks,
                            "splits": {"train": f"0:{episodes}"} if episodes else {}}

    def _dataset_stats(self, columns: dict[str, np.ndarray] | None, ep_stats: dict | None) -> dict:
        """stats.json, with the episode being committed (its columns and stats) if given."""
        pending = (ep_stats, columns or {}) if ep_stats else None
        return self._stats.result(stats_features(self.features), pending)

    def _remember(self, row: dict, ep_stats: dict, columns: dict, tasks: dict, info: dict) -> None:
        self._rows.append({k: v for k, v in row.items() if not k.startswith("stats/")})
        self._stats.add(ep_stats, len(next(iter(columns.values()))), columns)
        self._tasks = tasks
        self.info = info

    # -- recovery (open)

    def _recover(self) -> None:
        """Clean up after an interrupted commit; refuse a dataset damaged in other ways."""
        _clear_staging(self.root)
        rows = load_episode_rows(self.root, with_stats=True)
        self._check_rows(rows)
        self._remove_orphans(rows)
        tasks = load_tasks(self.root)
        self._tasks = {task: index for index, task in tasks.items()}
        for row in rows:
            unknown = [t for t in row["tasks"] if t not in self._tasks]
            if unknown:
                raise DatasetError(f"{self.root / TASKS_PATH}: task {unknown[0]!r} of episode {row['episode_index']} "
                                   f"missing (field 'task')")
            self._load_episode(row)
        self._repair_meta()

    def _check_rows(self, rows: list[dict]) -> None:
        expected_from = 0
        for position, row in enumerate(rows):
            where = self.root / row["_file"]
            if row["episode_index"] != position:
                raise DatasetError(f"{where}: field 'episode_index' is {row['episode_index']}, expected {position} "
                                   "(episodes must be numbered 0..n-1)")
            if row["dataset_from_index"] != expected_from or row["dataset_to_index"] != expected_from + row["length"]:
                raise DatasetError(f"{where}: fields 'dataset_from_index'/'dataset_to_index' of episode {position} "
                                   f"are not contiguous (expected from {expected_from})")
            loc = episode_location(position, self.info["chunks_size"])
            if (row["data/chunk_index"], row["data/file_index"]) != (loc["chunk_index"], loc["file_index"]):
                raise DatasetError(f"{where}: field 'data/file_index': episode {position} shares a file; "
                                   "appending works on datasets with one file per episode (ours)")
            files = [("data/file_index", self.root / data_file(self.info, row))]
            files += [(f"videos/{k}/file_index", self.root / video_file(self.info, row, k))
                      for k in video_keys(self.features)]
            for field_name, path in files:
                if not path.is_file():
                    raise DatasetError(f"{path}: missing, named by {where} field '{field_name}'")
            expected_from += row["length"]

    def _remove_orphans(self, rows: list[dict]) -> None:
        """Files under data/ and videos/ that no episode row names come from an interrupted commit."""
        keep = {self.root / data_file(self.info, r) for r in rows}
        keep |= {self.root / video_file(self.info, r, k) for r in rows for k in video_keys(self.features)}
        for path in [*(self.root / DATA_DIR).glob("*/*.parquet"), *(self.root / VIDEO_DIR).glob("*/*/*.mp4")]:
            if path not in keep:
                path.unlink()

    def _load_episode(self, row: dict) -> None:
        ep_stats: dict[str, stats_mod.Stats] = {}
        for key in stats_features(self.features):
            ep_stats[key] = {s: np.atleast_1d(np.asarray(row[f"stats/{key}/{s}"])) for s in stats_mod.STAT_KEYS
                             if f"stats/{key}/{s}" in row}
        self._rows.append({k: v for k, v in row.items() if not k.startswith("stats/")})
        self._stats.add(ep_stats, row["length"], lambda: self._read_columns(row))

    def _read_columns(self, row: dict) -> dict[str, np.ndarray]:
        table = read_episode_table(self.root, self.info, row)
        return {key: column_to_numpy(table.column(key), self.features[key]) for key in numeric_keys(self.features)}

    def _repair_meta(self) -> None:
        """Rewrite info.json and stats.json if an interrupted commit left them behind the episodes."""
        info = self._info_with(self.num_episodes, self.num_frames, len(self._tasks))
        on_disk = load_info(self.root)
        stats_path = self.root / STATS_PATH
        try:
            stats_count = json.loads(stats_path.read_text())[INDEX]["count"][0] if self._rows else None
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            stats_count = -1
        staging = _staging_dir(self.root)
        try:
            if self._rows and stats_count != self.num_frames:
                write_json(staging / "stats.json", stats_mod.to_jsonable(self._dataset_stats(None, None)))
                move(staging / "stats.json", stats_path)
            if on_disk != info:
                write_json(staging / "info.json", info)
                move(staging / "info.json", self.root / INFO_PATH)
            self.info = info
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def encoder_info(video: VideoOptions) -> dict:
    """Encoder settings next to LeRobot's video info (newer LeRobot records them as video.<field>)."""
    return {"video.encoder": video.codec, "video.g": video.gop, "video.crf": video.crf, "video.preset": video.preset,
            "video.extra_options": dict(video.extra)}


def options_from_info(info: dict) -> VideoOptions:
    for key in video_keys(info["features"]):
        block = info["features"][key].get("info") or {}
        if "video.encoder" in block:
            return VideoOptions(codec=block["video.encoder"], pix_fmt=block.get("video.pix_fmt", "yuv420p"),
                                gop=block.get("video.g", 2), crf=block.get("video.crf", 23),
                                preset=block.get("video.preset"), extra=block.get("video.extra_options") or {})
    return VideoOptions()


def lock_dataset(root: Path) -> int:
    """Hold an exclusive lock on <root>/.staging/lock for the writer's lifetime (released on death)."""
    (root / STAGING_DIR).mkdir(parents=True, exist_ok=True)
    fd = os.open(root / STAGING_DIR / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatasetError(f"{root}: another DatasetWriter has it open (lock {root / STAGING_DIR / 'lock'})") from None
    return fd


def _staging_dir(root: Path) -> Path:
    path = root / STAGING_DIR / uuid.uuid4().hex
    path.mkdir(parents=True)
    return path


def _clear_staging(root: Path) -> None:
    for entry in (root / STAGING_DIR).iterdir():
        if entry.name == "lock":
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
