"""Sharded builds: a cache's missing rows split, by whole episodes, between processes.

Several processes (one per GPU) can build one cache together: `cache_teacher(..., shard=(rank,
world))` computes only rank's share of the missing rows (whole episodes, `shard_rows`) into the
same files (disjoint rows) and returns None; after every rank returned (a barrier), `open_cache`
opens the complete cache. A killed sharded build resumes like any other (sharded or not).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sf_policy.teacher.cache.errors import CacheError
from sf_policy.teacher.cache.store import DONE, SHARD_PLAN, _read_json, _write_json


def episode_work(lengths: Sequence[int], todo: np.ndarray) -> np.ndarray:
    """Missing rows per episode: `todo` [N] bool summed over each episode's rows (episodes in row order)."""
    bounds = np.cumsum([0, *lengths])
    counts = np.concatenate([[0], np.cumsum(todo, dtype=np.int64)])
    return counts[bounds[1:]] - counts[bounds[:-1]]


def shard_episodes(work: Sequence[int], world: int) -> np.ndarray:
    """The rank (0..world-1) of each episode: contiguous runs, each rank ≈ sum(work) / world frames.

    Whole episodes, because a teacher build decodes each episode's videos sequentially: splitting
    one between ranks would decode its first part twice. Episode e goes to the rank whose equal
    share of the total holds e's midpoint, so every rank's load differs from total / world by at
    most the largest work[e]. Episodes with nothing to do get -1 (no rank opens them).
    """
    work = np.asarray(work, np.int64)
    total = int(work.sum())
    if total == 0:
        return np.full(len(work), -1, np.int64)
    twice_midpoint = 2 * np.cumsum(work) - work  # < 2 * total for any episode with work
    owners = twice_midpoint * world // (2 * total)
    owners[work == 0] = -1
    return owners


def shard_rows(lengths: Sequence[int], todo: np.ndarray, rank: int, world: int) -> np.ndarray:
    """The rows [N] bool rank `rank` of `world` computes: the missing rows (`todo`) of its episodes.

    lengths: frames per episode, in row order (sum = N). Every missing row falls in exactly one
    rank's rows; loads are balanced within one episode (`shard_episodes`).
    """
    owners = shard_episodes(episode_work(lengths, todo), world)
    return todo & np.repeat(owners == rank, lengths)


def _plan(path: Path, lengths: Sequence[int], world: int, first: bool) -> np.ndarray:
    """The shard plan of <cache> (shards.json): the rank of each episode, the same for every rank.

    Split over the rows missing when a build's first rank joins, then kept: a rank that joins
    late (its peers already wrote rows) must find the same split, or rows would fall between
    shards. A later build with the same world size keeps it too: after a kill every rank resumes
    its own episodes, and a rank that starts after its peers finished still finds its share. A
    build with another world size (joining while no shard builder runs) splits what is missing
    anew. Called under build.book.lock.
    """
    todo = ~np.fromfile(path / DONE, np.uint8).astype(bool)
    plan_path = path / SHARD_PLAN
    if plan_path.exists():
        plan = _read_json(plan_path)
        owners = np.asarray(plan["owners"], np.int64)
        # Rows only ever become done, so a plan that covered the missing rows still covers them.
        if (plan["world"] == world and len(owners) == len(lengths)
                and not (todo & np.repeat(owners < 0, lengths)).any()):
            return owners
    if not first:  # peers are building after a plan this one cannot see: never guess
        raise CacheError(f"{path}: shard builders are running but {plan_path} does not cover the missing rows "
                         f"for a world of {world}; stop them and run again")
    owners = shard_episodes(episode_work(lengths, todo), world)
    _write_json(plan_path, {"world": world, "owners": owners.tolist(), "missing": int(todo.sum()),
                            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return owners
