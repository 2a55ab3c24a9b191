"""The file locks of a build: `_build_lock` (one whole-cache builder, or shard builders of one
world size) and `_flocked` (an exclusive lock held a moment)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from sf_policy.teacher.cache.errors import CacheError
from sf_policy.teacher.cache.shards import _plan
from sf_policy.teacher.cache.store import BOOK_LOCK, LOCK, SHARD_LOCK


@contextmanager
def _flocked(path: Path) -> Iterator[None]:
    """An exclusive flock on `path`, waited for: only for locks held a moment."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the lock


class _build_lock:
    """The locks of one builder of <cache>: one whole-cache builder, or shard builders of one world size.

    A whole builder holds build.lock exclusively. A shard builder holds build.lock shared (shard
    builders coexist; they and a whole builder exclude each other) plus build.<rank>-of-<world>.lock
    exclusively (one process per shard). Each lock records its holder's pid for the error messages.
    Locks are tried without waiting, under build.book.lock: a joining shard builder then sees
    either no other builder or a settled plan. flock: the kernel drops a killed builder's locks.

    A shard builder also gets `owners`, the shard plan (rank of each episode, see `_plan`).
    """

    def __init__(self, path: Path, shard: tuple[int, int] | None = None, lengths: Sequence[int] = ()):
        self.dir, self.shard, self.lengths = path, shard, lengths
        self.owners: np.ndarray | None = None
        self.fds: list[int] = []

    def __enter__(self) -> _build_lock:
        with _flocked(self.dir / BOOK_LOCK):
            try:
                self._whole() if self.shard is None else self._join(*self.shard)
            except BaseException:
                self._release()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        for fd in self.fds:
            os.close(fd)  # drops the lock
        self.fds.clear()

    def _lock(self, name: str, mode: int) -> int | None:
        """An fd of <cache>/name locked with `mode`, or None if another process holds a conflicting lock."""
        fd = os.open(self.dir / name, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        self.fds.append(fd)
        return fd

    def _whole(self) -> None:
        fd = self._lock(LOCK, fcntl.LOCK_EX)
        if fd is None:
            raise CacheError(f"{self.dir} is being built by {_holders(self.dir)}")
        _write_pid(fd)

    def _join(self, rank: int, world: int) -> None:
        if self._lock(LOCK, fcntl.LOCK_SH) is None:  # a whole builder has it
            raise CacheError(f"{self.dir} is being built by {_holders(self.dir)}; shard {rank} of {world} "
                             f"cannot join it")
        running = _running_shards(self.dir)
        if any(w != world for _, w, _ in running):
            raise CacheError(f"{self.dir} is being built in shards of another world size by "
                             f"{_describe(running)}; shard {rank} of {world} cannot join them (use their "
                             f"world size, or wait until they finish)")
        name = f"build.{rank}-of-{world}.lock"
        fd = self._lock(name, fcntl.LOCK_EX)
        if fd is None:
            holder = [pid for r, _, pid in running if r == rank]
            raise CacheError(f"{self.dir}: shard {rank} of {world} is being built by another process "
                             f"(pid {holder[0] if holder else '?'})")
        _write_pid(fd)
        self.owners = _plan(self.dir, self.lengths, world, first=not running)


def _write_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)


def _read_pid(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip() or "?"
    except OSError:
        return "?"


def _running_shards(path: Path) -> list[tuple[int, int, str]]:
    """(rank, world, pid) of every shard builder of <cache> alive now (its shard lock is held)."""
    out = []
    for lock in sorted(path.glob("build.*-of-*.lock")):
        match = SHARD_LOCK.fullmatch(lock.name)
        if match is None:
            continue
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a probe: granted only if no one builds it
        except BlockingIOError:
            out.append((int(match[1]), int(match[2]), _read_pid(lock)))
        finally:
            os.close(fd)
    return out


def _describe(shards: list[tuple[int, int, str]]) -> str:
    return "other processes (" + "; ".join(f"pid {pid}, shard {r} of {w}" for r, w, pid in shards) + ")"


def _holders(path: Path) -> str:
    """Who holds <cache>/build.lock, for an error message: shard builders, or one whole builder."""
    shards = _running_shards(path)
    return _describe(shards) if shards else f"another process (pid {_read_pid(path / LOCK)})"
