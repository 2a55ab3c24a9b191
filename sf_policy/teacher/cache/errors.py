"""What can go wrong with a teacher cache: `CacheError` and its kinds (not found, incomplete, stale)."""

from __future__ import annotations

from pathlib import Path


class CacheError(RuntimeError):
    """A teacher cache cannot be used or built as asked; the message says why and what to do."""


class CacheNotFoundError(CacheError, FileNotFoundError):
    """No cache at all for this dataset under the cache root."""


class IncompleteCacheError(CacheError):
    """The cache exists but some rows were never computed (an interrupted build)."""


class StaleCacheError(CacheError):
    """Only caches built for another version of this dataset / teacher / preprocessing exist.

    `parts` names the key parts that differ ("dataset", "teacher", "preprocessing"),
    `changes` holds one readable line per difference, `path` is the closest stale cache.
    """

    def __init__(self, message: str, parts: tuple[str, ...], changes: list[str], path: Path):
        super().__init__(message)
        self.parts, self.changes, self.path = parts, changes, path
