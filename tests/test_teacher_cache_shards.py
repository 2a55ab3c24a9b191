"""A teacher cache built by several processes at once: episodes split into shards, one cache, resumable.

Real files and real processes: the tiny 3-camera dataset of test_teacher_cache (episodes of 10
and 7 frames), the tiny random teacher, spawned builders that meet inside their builds.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re

import numpy as np
import pytest
from test_teacher_cache import LENGTHS, THREE, _write

from sf_policy.data.reader import DatasetReader
from sf_policy.teacher.cache.build import _create, build_cache
from sf_policy.teacher.cache.entry import cache_teacher, open_cache, tiny_teacher
from sf_policy.teacher.cache.errors import CacheError, IncompleteCacheError
from sf_policy.teacher.cache.fingerprint import state_dict_sha256
from sf_policy.teacher.cache.key import CacheKey, Preprocessing
from sf_policy.teacher.cache.locks import _build_lock
from sf_policy.teacher.cache.shards import episode_work, shard_episodes, shard_rows
from sf_policy.teacher.cache.store import BUILD_LOG, DONE, SHARD_PLAN, TARGETS

N = sum(LENGTHS)
TINY = dict(tiny=True, batch_size=4, device="cpu", progress=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "ds"
    _write(root, THREE, LENGTHS)
    return root


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """The cache built the plain way, by one process."""
    return cache_teacher(dataset, cache_root=tmp_path_factory.mktemp("reference"), **TINY)


def _sessions(cache_dir) -> list[tuple]:
    """(frames computed, outcome, (rank, world) or None) of each build session in build.json."""
    sessions = json.loads((cache_dir / BUILD_LOG).read_text())["sessions"]
    return [(s["frames_computed"], s["outcome"], (s["shard"]["rank"], s["shard"]["world"]) if "shard" in s else None)
            for s in sessions]


# --------------------------------------------------------------------------- the split


@pytest.mark.parametrize("world", [1, 2, 3, 5, 8, 60])
def test_every_missing_row_is_in_exactly_one_shard_of_whole_episodes_balanced(world):
    rng = np.random.default_rng(world)
    lengths = rng.integers(1, 40, size=50)
    n = int(lengths.sum())
    episode_of_row = np.repeat(np.arange(len(lengths)), lengths)
    partly_done = rng.random(n) < 0.5
    partly_done[episode_of_row % 7 == 3] = True  # some episodes with nothing to do at all
    for todo in (np.ones(n, bool), ~partly_done, np.arange(n) >= n // 3, np.zeros(n, bool)):
        shards = np.stack([shard_rows(lengths, todo, r, world) for r in range(world)])
        assert (shards.sum(0) == todo).all()  # every missing row exactly once, nothing else
        work = episode_work(lengths, todo)
        loads = shards.sum(1)
        assert np.abs(loads - todo.sum() / world).max() <= work.max()  # balanced within one episode
        owners = shard_episodes(work, world)
        for r in range(world):  # a rank has whole episodes, contiguous ones
            mine = np.unique(episode_of_row[shards[r]])
            assert (owners[mine] == r).all()
        assert (np.diff(owners[owners >= 0]) >= 0).all()
        assert (owners[work == 0] == -1).all()  # episodes with nothing to do: opened by no rank


def test_the_two_episode_dataset_splits_into_one_episode_per_rank():
    assert shard_episodes([10, 7], 2).tolist() == [0, 1]
    assert shard_episodes([0, 7], 2).tolist() == [-1, 1]
    assert shard_episodes([10, 7], 3).tolist() == [0, 2]


# --------------------------------------------------------------------------- real processes


def _build_shard(dataset, cache_root, rank: int, world: int, barrier) -> None:
    """One rank of a sharded build (a spawned process): waits for its peer after its first batch,
    so the two builds provably overlap (both hold their locks while writing into the same files)."""
    import torch

    import sf_policy.teacher.cache.store as store_module

    torch.set_num_threads(1)
    write = store_module._RowWriter.write

    def write_then_meet(self, indices, arrays):
        write(self, indices, arrays)
        if not getattr(self, "met", False):
            self.met = True
            barrier.wait(timeout=60)

    store_module._RowWriter.write = write_then_meet
    assert cache_teacher(dataset, cache_root=cache_root, shard=(rank, world), **TINY) is None


def test_two_processes_build_one_cache_identical_to_a_single_process_build(dataset, reference, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    ranks = [ctx.Process(target=_build_shard, args=(dataset, tmp_path, r, 2, barrier)) for r in range(2)]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(timeout=120)
    assert [p.exitcode for p in ranks] == [0, 0]

    cache = open_cache(dataset, cache_root=tmp_path, tiny=True)  # the step after the barrier
    assert cache.path.name == reference.path.name and cache.missing() == 0
    assert (cache.path / TARGETS).read_bytes() == (reference.path / TARGETS).read_bytes()
    assert np.fromfile(cache.path / DONE, np.uint8).tolist() == [1] * N
    sessions = json.loads((cache.path / BUILD_LOG).read_text())["sessions"]
    shards = sorted((s["shard"]["rank"], s["frames_computed"], s["shard"]["episodes"], s["outcome"]) for s in sessions)
    assert shards == [(0, 10, [0], "complete"), (1, 7, [1], "complete")]
    assert json.loads((cache.path / SHARD_PLAN).read_text())["owners"] == [0, 1]


# --------------------------------------------------------------------------- resume


def test_a_partial_sharded_build_is_finished_by_a_plain_build_computing_only_the_missing_rows(
        dataset, reference, tmp_path):
    assert cache_teacher(dataset, cache_root=tmp_path, shard=(0, 2), **TINY) is None  # rank 1 never ran
    path = tmp_path / reference.path.name
    assert np.fromfile(path / DONE, np.uint8).tolist() == [1] * 10 + [0] * 7
    with pytest.raises(IncompleteCacheError, match="7 of 17 frames missing"):
        open_cache(dataset, cache_root=tmp_path, tiny=True)  # rank 0 must not see it as complete

    cache = cache_teacher(dataset, cache_root=tmp_path, **TINY)
    assert cache.missing() == 0
    assert (path / TARGETS).read_bytes() == (reference.path / TARGETS).read_bytes()
    assert _sessions(path) == [(10, "complete", (0, 2)), (7, "complete", None)]
    assert cache_teacher(dataset, cache_root=tmp_path, shard=(1, 2), **TINY) is None  # complete: nothing to do
    assert len(_sessions(path)) == 2  # not even a build session


class Interrupt(Exception):
    pass


def _key(reader: DatasetReader):
    teacher = tiny_teacher()
    return teacher, CacheKey.create(reader, state_dict_sha256(teacher.aggregator), Preprocessing.from_teacher(teacher))


def _stop_after_one_batch(done: int, total: int) -> None:
    assert total == 10  # progress counts the shard's own rows
    raise Interrupt


def test_a_killed_shard_resumes_with_another_world_size(dataset, reference, tmp_path):
    reader = DatasetReader(dataset)
    teacher, key = _key(reader)
    path = tmp_path / key.short
    with pytest.raises(Interrupt):
        build_cache(reader, teacher, tmp_path, key, batch_size=4, progress=False, shard=(0, 2),
                    on_batch=_stop_after_one_batch)
    assert np.fromfile(path / DONE, np.uint8).tolist() == [1] * 4 + [0] * 13

    # Three ranks now (one after the other here): 13 rows missing, split anew, episode by episode.
    for rank in range(3):
        assert build_cache(reader, teacher, tmp_path, key, batch_size=4, progress=False, shard=(rank, 3)) is None
    assert json.loads((path / SHARD_PLAN).read_text())["owners"] == [0, 2]  # 6 + 7 missing rows; rank 1: none
    assert _sessions(path) == [(4, "interrupted: Interrupt", (0, 2)),
                               (6, "complete", (0, 3)), (0, "complete", (1, 3)), (7, "complete", (2, 3))]
    cache = open_cache(dataset, cache_root=tmp_path, tiny=True)
    assert (cache.path / TARGETS).read_bytes() == (reference.path / TARGETS).read_bytes()


def test_with_the_same_world_size_every_rank_keeps_its_episodes(dataset, reference, tmp_path):
    """Rank 0 was killed; rank 1 starts only now, with no peer running. It must still do episode 1,
    not split what is left anew (half of it would go to rank 0, which may have finished already)."""
    reader = DatasetReader(dataset)
    teacher, key = _key(reader)
    with pytest.raises(Interrupt):
        build_cache(reader, teacher, tmp_path, key, batch_size=4, progress=False, shard=(0, 2),
                    on_batch=_stop_after_one_batch)
    assert cache_teacher(dataset, cache_root=tmp_path, shard=(1, 2), **TINY) is None
    assert cache_teacher(dataset, cache_root=tmp_path, shard=(0, 2), **TINY) is None
    cache = open_cache(dataset, cache_root=tmp_path, tiny=True)
    assert _sessions(cache.path) == [(4, "interrupted: Interrupt", (0, 2)), (7, "complete", (1, 2)),
                                     (6, "complete", (0, 2))]
    assert (cache.path / TARGETS).read_bytes() == (reference.path / TARGETS).read_bytes()


# --------------------------------------------------------------------------- locks


def test_shard_builders_coexist_and_exclude_a_whole_builder(dataset, tmp_path):
    reader = DatasetReader(dataset)
    teacher = tiny_teacher()
    key = CacheKey.create(reader, state_dict_sha256(teacher.aggregator), Preprocessing.from_teacher(teacher))
    path = _create(tmp_path, key)
    pid = os.getpid()
    here = re.escape(str(path))
    with _build_lock(path, (0, 2), LENGTHS) as rank0, _build_lock(path, (1, 2), LENGTHS) as rank1:
        assert rank0.owners.tolist() == rank1.owners.tolist() == [0, 1]
        with pytest.raises(CacheError, match=rf"{here} is being built by other processes \(pid {pid}, shard 0 of 2; "
                                             rf"pid {pid}, shard 1 of 2\)"):
            build_cache(reader, teacher, tmp_path, key, progress=False)
        with pytest.raises(CacheError, match=rf"{here}: shard 1 of 2 is being built by another process \(pid {pid}\)"):
            build_cache(reader, teacher, tmp_path, key, progress=False, shard=(1, 2))
        with pytest.raises(CacheError, match=rf"{here} is being built in shards of another world size .*shard 0 of 3"):
            build_cache(reader, teacher, tmp_path, key, progress=False, shard=(0, 3))
    with _build_lock(path):
        with pytest.raises(CacheError, match=rf"{here} is being built by another process \(pid {pid}\); shard 0"):
            build_cache(reader, teacher, tmp_path, key, progress=False, shard=(0, 2))
    assert build_cache(reader, teacher, tmp_path, key, batch_size=8, progress=False).missing() == 0  # all free again
    with pytest.raises(ValueError, match=r"0 <= rank < world"):
        build_cache(reader, teacher, tmp_path, key, progress=False, shard=(2, 2))
