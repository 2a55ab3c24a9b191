"""The entry points (CLI, training): `cache_teacher` builds, finishes or finds the cache for a
teacher's settings, `open_cache` opens the complete one; `tiny_teacher`, the random teacher of
tests and CPU demos."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from sf_policy.align.grid import VLA_GRID
from sf_policy.data.reader import DatasetReader
from sf_policy.teacher.cache.build import build_cache
from sf_policy.teacher.cache.errors import CacheNotFoundError, IncompleteCacheError, StaleCacheError
from sf_policy.teacher.cache.fingerprint import file_sha256, state_dict_sha256
from sf_policy.teacher.cache.key import CacheKey, Preprocessing
from sf_policy.teacher.cache.reader import TeacherCache
from sf_policy.teacher.cache.store import default_cache_root
from sf_policy.teacher.features import TEACHER_WIDTH, Teacher
from sf_policy.teacher.geometry import GeometryConfig, GeometryTeacher
from sf_policy.teacher.vggt import Aggregator, AggregatorConfig

log = logging.getLogger(__name__)

TINY_WIDTH = 56  # teacher width for the tiny random aggregator (AggregatorConfig.tiny().img_size)


def tiny_teacher(seed: int = 0, width: int = TINY_WIDTH, layer: int = -1,
                 device: torch.device | str = "cpu", grid: int = VLA_GRID) -> Teacher:
    """A random AggregatorConfig.tiny() teacher, reproducible from `seed` (tests and CPU demos)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        aggregator = Aggregator(AggregatorConfig.tiny())
    return Teacher(aggregator.to(device), width=width, layer=layer, grid=grid)


def _key_and_loader(reader: DatasetReader, checkpoint: str | os.PathLike | None, cache_root: Path, *, dtype: str,
                    layer: int, width: int | None, tiny: bool, seed: int, aggregator: AggregatorConfig | None,
                    device: torch.device | str = "cpu", grid: int = VLA_GRID, geometry: GeometryConfig | None = None,
                    ) -> tuple[CacheKey, Callable[[], Teacher | GeometryTeacher]]:
    """The cache key for these settings, and a function that loads the teacher (only if needed)."""
    if sum((tiny, checkpoint is not None, geometry is not None)) != 1:
        raise ValueError("give exactly one teacher: a VGGT checkpoint, tiny=True (a random tiny aggregator) or "
                         "geometry (the twin's geometry teacher)")
    if geometry is not None:
        teacher = GeometryTeacher(geometry, grid=grid, device=device)
        key = CacheKey.create(reader, geometry.sha256, Preprocessing.from_teacher(teacher, dtype),
                              "twin geometry teacher (simulation only)")
        return key, lambda: teacher
    if tiny:
        teacher = tiny_teacher(seed, width or TINY_WIDTH, layer, device, grid)
        key = CacheKey.create(reader, state_dict_sha256(teacher.aggregator), Preprocessing.from_teacher(teacher, dtype),
                              f"tiny random aggregator (seed {seed})")
        return key, lambda: teacher
    checkpoint = Path(checkpoint).resolve()
    config = aggregator or AggregatorConfig()
    prep = Preprocessing(width=width or TEACHER_WIDTH, layer=layer, grid=grid, storage=dtype, aggregator=config)
    key = CacheKey.create(reader, file_sha256(checkpoint, memo_dir=cache_root), prep, str(checkpoint))
    return key, lambda: Teacher.from_checkpoint(checkpoint, config, device=device, layer=layer, width=prep.width,
                                                grid=grid)


def cache_teacher(
    dataset_root: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    cache_root: str | os.PathLike | None = None,
    *,
    batch_size: int = 8,
    dtype: str = "bf16",
    device: torch.device | str | None = None,
    layer: int = -1,
    tiny: bool = False,
    width: int | None = None,
    seed: int = 0,
    aggregator: AggregatorConfig | None = None,
    progress: bool = True,
    grid: int = VLA_GRID,
    geometry: GeometryConfig | None = None,
    shard: tuple[int, int] | None = None,
) -> TeacherCache | None:
    """`sf train cache-teacher`: build (or finish, or just find) the cache of a dataset.

    checkpoint: VGGT weights (`model.pt` / `model.safetensors`); or tiny=True for a random
        tiny aggregator (seeded; width defaults to 56) to try the pipeline on a CPU; or
        geometry: the twin's geometry teacher (a dataset recorded with depth; simulation only).
    A complete cache is returned without loading the teacher at all.

    shard: (rank, world) for one of `world` processes building the cache together (e.g. one
        per GPU, all with the same arguments): computes only this rank's share of the missing
        rows and returns None, always (also when the cache was complete already): the other
        ranks may still be writing. After every rank has returned (a barrier), each opens the
        cache with `open_cache(...)` (same arguments, no shard), which raises
        IncompleteCacheError if a rank failed; re-running then finishes the missing rows.
    """
    cache_root = Path(cache_root) if cache_root is not None else default_cache_root()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    with DatasetReader(dataset_root) as reader:
        key, load = _key_and_loader(reader, checkpoint, cache_root, dtype=dtype, layer=layer, width=width, tiny=tiny,
                                    seed=seed, aggregator=aggregator, device=device, grid=grid, geometry=geometry)
        try:
            cache = TeacherCache.open(cache_root, key)
            return cache if shard is None else None
        except StaleCacheError as exc:
            # The recorded data changed under a cache: worth a warning. Another teacher or other
            # settings: just another cache of the same dataset, built beside it.
            (log.warning if "dataset" in exc.parts else log.info)("%s", exc)
        except (CacheNotFoundError, IncompleteCacheError) as exc:
            log.info("%s", exc)
        return build_cache(reader, load(), cache_root, key, batch_size=batch_size, progress=progress, shard=shard)


def open_cache(
    dataset_root: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    cache_root: str | os.PathLike | None = None,
    *,
    dtype: str = "bf16",
    layer: int = -1,
    tiny: bool = False,
    width: int | None = None,
    seed: int = 0,
    aggregator: AggregatorConfig | None = None,
    grid: int = VLA_GRID,
    geometry: GeometryConfig | None = None,
) -> TeacherCache:
    """For training: the complete cache for these settings (same arguments as `cache_teacher`).

    Also the step after a sharded build's barrier (`cache_teacher(..., shard=...)` on every rank).

    Computes the key without loading the teacher (the checkpoint's hash is memoised) and
    raises CacheNotFoundError / StaleCacheError / IncompleteCacheError otherwise.
    """
    cache_root = Path(cache_root) if cache_root is not None else default_cache_root()
    with DatasetReader(dataset_root) as reader:
        key, _ = _key_and_loader(reader, checkpoint, cache_root, dtype=dtype, layer=layer, width=width, tiny=tiny,
                                 seed=seed, aggregator=aggregator, grid=grid, geometry=geometry)
    return TeacherCache.open(cache_root, key)
