"""Building a cache: `build_cache` creates its directory (meta.json, preallocated files) and computes
its missing rows with the teacher, resumably, alone or as one shard of several builders."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from sf_policy.data.features import DatasetError
from sf_policy.data.reader import DatasetReader
from sf_policy.teacher.cache.codec import encode
from sf_policy.teacher.cache.errors import CacheError
from sf_policy.teacher.cache.fingerprint import state_dict_sha256
from sf_policy.teacher.cache.frames import _prefetch, frame_batches
from sf_policy.teacher.cache.key import CacheKey, Preprocessing
from sf_policy.teacher.cache.locks import _build_lock, _flocked
from sf_policy.teacher.cache.reader import TeacherCache
from sf_policy.teacher.cache.store import (
    BOOK_LOCK,
    BUILD_LOG,
    FORMAT_VERSION,
    META,
    Layout,
    _RowWriter,
    _read_json,
    _write_json,
)
from sf_policy.teacher.features import Teacher
from sf_policy.teacher.geometry import GeometryTeacher

log = logging.getLogger(__name__)


def build_cache(
    reader: DatasetReader,
    teacher: Teacher,
    cache_root: str | os.PathLike,
    key: CacheKey | None = None,
    *,
    batch_size: int = 8,
    dtype: str = "bf16",
    progress: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
    shard: tuple[int, int] | None = None,
) -> TeacherCache | None:
    """Compute every missing row of the cache for (reader, teacher) and return the complete cache.

    key: defaults to one with the hash of the teacher's weights in memory (`cache_teacher`
        passes the checkpoint file's hash instead, which is cheap to recompute at training).
    dtype: storage, "bf16" or "fp8" (ignored when `key` is given: the key says).
    on_batch(done, total): called after each batch is durably on disk (progress hooks, tests);
        with a shard, done and total count the shard's own rows.
    shard: (rank, world): compute only this rank's share of the missing rows (`shard_rows`;
        settled once per build in shards.json, see `_plan`) and return None, since the other
        ranks may still be working: once all returned, `TeacherCache.open` / `open_cache`.
    Resumable: rows already marked done are skipped, so re-running after a crash or Ctrl-C
    finishes the job, sharded or not, with any world size. One builder per cache at a time, or
    any number of shard builders of one world size (file locks say so, `_build_lock`).
    """
    if key is None:
        key = CacheKey.create(reader, state_dict_sha256(teacher.aggregator), Preprocessing.from_teacher(teacher, dtype),
                              "in-memory aggregator")
    _check_teacher(key, teacher)
    if key.dataset["frames"] != reader.num_frames or key.dataset["root"] != str(reader.root.resolve()):
        raise ValueError(f"the key is for {key.dataset['root']} ({key.dataset['frames']} frames), "
                         f"not {reader.root} ({reader.num_frames} frames)")
    if reader.num_frames == 0:
        raise DatasetError(f"{reader.root}: no frames to cache")
    if shard is not None and not (len(shard) == 2 and 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard}")
    path = _create(Path(cache_root), key)
    lengths = [ep.length for ep in reader.episodes]
    with _build_lock(path, shard, lengths) as lock:
        cache = TeacherCache(path, key)
        # Read after the plan is settled; only this process writes the rows it owns.
        owned = np.ones(cache.num_frames, bool) if shard is None else np.repeat(lock.owners == shard[0], lengths)
        todo = owned & ~cache.done_mask()
        started, outcome = time.time(), "complete"
        try:
            if todo.any():
                _fill(cache, reader, teacher, todo, owned, batch_size, progress, on_batch, shard)
        except BaseException as exc:
            outcome = f"interrupted: {type(exc).__name__}"
            raise
        finally:
            computed = int((todo & cache.done_mask()).sum())
            episodes = None if shard is None else [reader.episodes[e].index
                                                   for e in np.flatnonzero(lock.owners == shard[0])]
            _log_build(path, teacher, started, computed, outcome, shard, episodes)
    return None if shard is not None else TeacherCache.open(cache_root, key)


def _check_teacher(key: CacheKey, teacher: Teacher | GeometryTeacher) -> None:
    """Refuse to write targets under a key whose preprocessing the teacher does not follow."""
    mine = Preprocessing.from_teacher(teacher).teacher_settings()
    wrong = [f"{k} = {v!r} (key: {key.preprocessing.get(k)!r})" for k, v in mine.items()
             if key.preprocessing.get(k) != v]
    if wrong:
        raise ValueError("the teacher does not match the cache key: " + ", ".join(wrong))


def _create(cache_root: Path, key: CacheKey) -> Path:
    """The cache directory for `key`, created with meta.json and preallocated files if new.

    Built under a dot-named temporary directory and renamed into place, so a directory with
    a meta.json always has all its files. Space is reserved up front (posix_fallocate): a
    full disk fails here with a clear message instead of mid-build. The ranks of a sharded
    build arrive together: one creates, the others wait for it (.<digest>.create.lock) rather
    than each reserving the whole size (N × 66 GB at once can exceed the disk).
    """
    path = cache_root / key.short
    if (path / META).exists():
        TeacherCache(path, key)  # checks that the stored key is this one
        return path
    cache_root.mkdir(parents=True, exist_ok=True)
    with _flocked(cache_root / f".{key.short}.create.lock"):
        if (path / META).exists():  # created while this process waited
            TeacherCache(path, key)
            return path
        return _create_new(cache_root, key, path)


def _create_new(cache_root: Path, key: CacheKey, path: Path) -> Path:
    layout = Layout.of(key)
    tmp = cache_root / f".{key.short}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, (t, shape) in layout.files().items():
            _allocate(tmp / name, int(np.prod(shape)) * np.dtype(t).itemsize, layout, cache_root)
        meta = {"format": FORMAT_VERSION, "digest": key.digest, "key": key.to_dict(),
                "layout": {"frames": layout.num_frames, "tokens": layout.tokens, "dim": layout.dim,
                           "storage": layout.storage, "slot_tokens": layout.slot_tokens, "offsets": layout.offsets,
                           "files": {n: [np.dtype(t).name, list(s)] for n, (t, s) in layout.files().items()}},
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _write_json(tmp / META, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (path / META).exists():
            raise
        TeacherCache(path, key)  # another process created it first
    log.info("teacher cache %s: %d frames × %d tokens × %d (%s), %.2f GiB", path, layout.num_frames,
             layout.tokens, layout.dim, layout.storage, layout.nbytes() / 2**30)
    return path


def _allocate(path: Path, size: int, layout: Layout, cache_root: Path) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        if size == 0:
            return
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                free = shutil.disk_usage(cache_root).free
                raise CacheError(f"not enough disk space for the teacher cache under {cache_root}: it needs "
                                 f"{layout.nbytes() / 2**30:.1f} GiB, {free / 2**30:.1f} GiB are free "
                                 f"(fp8 storage needs half as much)") from exc
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            os.ftruncate(fd, size)  # a filesystem without fallocate: sparse file
    finally:
        os.close(fd)


def _fill(cache: TeacherCache, reader: DatasetReader, teacher: Teacher | GeometryTeacher, todo: np.ndarray,
          owned: np.ndarray, batch_size: int, progress: bool, on_batch: Callable[[int, int], None] | None,
          shard: tuple[int, int] | None = None) -> None:
    """Compute the rows in `todo`; progress counts the rows this builder `owned` (all, or its shard's)."""
    layout = cache.layout
    boxes = list(layout.boxes)
    total, done = int(owned.sum()), int((owned & ~todo).sum())
    writer = _RowWriter(cache.path, layout)
    desc = "teacher cache" if shard is None else f"teacher cache {shard[0]}/{shard[1]}"
    bar = tqdm(total=total, initial=done, unit="frame", desc=desc, disable=not progress, smoothing=0.1)
    # VGGT reads the decoded camera frames; the geometry teacher the recorded depth and poses.
    inputs = teacher.input_batches if isinstance(teacher, GeometryTeacher) else frame_batches
    batches = _prefetch(inputs(reader, todo, batch_size))
    try:
        for indices, batch in batches:
            targets, _ = teacher.targets(batch, boxes)
            writer.write(indices, encode(layout.compact(targets), layout.storage))
            done += len(indices)
            bar.update(len(indices))
            if on_batch is not None:
                on_batch(done, total)
    finally:
        batches.close()  # stops the decoding thread now, not when the traceback is collected
        bar.close()
        writer.close()


def _log_build(path: Path, teacher: Teacher | GeometryTeacher, started: float, computed: int, outcome: str,
               shard: tuple[int, int] | None = None, episodes: list[int] | None = None) -> None:
    """Append this session to build.json (informational: device and precision do not enter the key).

    A shard's session names its rank, world size and episodes (its outcome is its shard's). The
    read-modify-write runs under build.book.lock: the ranks of a sharded build finish together.
    """
    session = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
               "seconds": round(time.time() - started, 3), "frames_computed": computed, "outcome": outcome,
               "pid": os.getpid(), "device": str(teacher.device), "autocast_bf16": getattr(teacher, "bf16", False),
               "torch": torch.__version__}
    if shard is not None:
        session["shard"] = {"rank": shard[0], "world": shard[1], "episodes": episodes}
    log_path = path / BUILD_LOG
    with _flocked(path / BOOK_LOCK):
        sessions = _read_json(log_path)["sessions"] if log_path.exists() else []
        _write_json(log_path, {"sessions": [*sessions, session]})
