"""Reading a built cache: `TeacherCache` (memmap lookups), `find_caches`, and the error that says
why a key has no cache (none, or only stale ones)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sf_policy.align.grid import PatchBox
from sf_policy.teacher.cache.codec import decode
from sf_policy.teacher.cache.errors import CacheError, CacheNotFoundError, IncompleteCacheError, StaleCacheError
from sf_policy.teacher.cache.key import CacheKey
from sf_policy.teacher.cache.store import DONE, META, Layout, _read_json


class TeacherCache:
    """A built cache: `get(indices)` → (targets [B, 3, 16, 16, D], valid [B, 3, 16, 16]).

    Reads are memmap slices (the page cache does the rest). The memmaps are opened lazily
    and dropped when pickled, so a cache object can be handed to DataLoader workers (each
    maps the files itself, fork or spawn).
    """

    def __init__(self, path: str | os.PathLike, key: CacheKey | None = None):
        self.path = Path(path)
        meta = _read_json(self.path / META)
        stored = CacheKey.from_dict(meta["key"])
        if key is not None and stored.digest != key.digest:
            raise CacheError(f"{self.path / META} holds key {stored.digest[:16]}, not {key.digest[:16]}")
        self.key = stored
        self.layout = Layout.of(stored)
        self._valid = self.layout.valid()
        self._maps: dict[str, np.memmap] | None = None
        self._complete = False

    @classmethod
    def open(cls, cache_root: str | os.PathLike, key: CacheKey) -> TeacherCache:
        """The complete cache for `key`; a clear error if it is missing, stale or incomplete."""
        cache_root = Path(cache_root)
        path = cache_root / key.short
        if not (path / META).exists():
            _raise_missing_or_stale(cache_root, key)
        cache = cls(path, key)
        missing = cache.missing()
        if missing:
            raise IncompleteCacheError(
                f"teacher cache {path} is incomplete: {missing} of {cache.num_frames} frames missing "
                f"(an interrupted build); run `sf train cache-teacher` to finish it (it resumes)")
        cache._complete = True
        return cache

    # -- properties

    @property
    def num_frames(self) -> int:
        return self.layout.num_frames

    def __len__(self) -> int:
        return self.num_frames

    @property
    def storage(self) -> str:
        return self.layout.storage

    @property
    def dim(self) -> int:
        return self.layout.dim

    @property
    def boxes(self) -> tuple[PatchBox | None, ...]:
        return self.layout.boxes

    def done_mask(self) -> np.ndarray:
        return np.fromfile(self.path / DONE, dtype=np.uint8).astype(bool)

    def missing(self) -> int:
        return int((~self.done_mask()).sum())

    def __repr__(self) -> str:
        return (f"TeacherCache({str(self.path)!r}, frames={self.num_frames}, tokens={self.layout.tokens}, "
                f"dim={self.dim}, storage={self.storage!r})")

    # -- lookups

    def _files(self) -> dict[str, np.memmap]:
        if self._maps is None:
            self._maps = {name: np.memmap(self.path / name, dtype=t, mode="r", shape=shape)
                          for name, (t, shape) in self.layout.files().items() if name != DONE}
        return self._maps

    def _indices(self, indices: np.ndarray | Sequence[int] | int) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_frames):
            raise IndexError(f"frame indices must lie in [0, {self.num_frames}), got {idx.min()}..{idx.max()}")
        if not self._complete:  # only during a build: never hand out rows that were not computed
            undone = idx[~self.done_mask()[idx]]
            if undone.size:
                raise IncompleteCacheError(f"{self.path}: frames {undone[:10].tolist()} are not computed yet")
        return idx

    def tokens(self, indices: np.ndarray | Sequence[int]) -> torch.Tensor:
        """The stored tokens [B, T, D] of these frames, any order (bf16, or float32 for fp8).

        The compact form is 25 % smaller than the grid for 4:3 cameras: the cheapest thing to
        move through a DataLoader; `to_grid` expands it (e.g. on the GPU).
        """
        idx = self._indices(indices)
        return decode({name: m[idx] for name, m in self._files().items()}, self.storage)

    def to_grid(self, tokens: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored tokens [B, T, D] → (targets [B, 3, grid, grid, D] in `dtype`, valid [B, 3, grid, grid])."""
        valid = self._valid.to(tokens.device).unsqueeze(0).expand(tokens.shape[0], -1, -1, -1)
        return self.layout.expand(tokens, dtype), valid

    def get(self, indices: np.ndarray | Sequence[int], dtype: torch.dtype = torch.float32
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """(targets [B, 3, grid, grid, D] in `dtype`, valid [B, 3, grid, grid] bool) for frame indices."""
        return self.to_grid(self.tokens(indices), dtype)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        targets, valid = self.get([index])
        return targets[0], valid[0]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = None  # each process maps the files itself
        return state


def find_caches(cache_root: str | os.PathLike, dataset_root: str | os.PathLike | None = None) -> list[TeacherCache]:
    """Every cache under `cache_root` (only those of `dataset_root` if given), newest first."""
    out = []
    root = str(Path(dataset_root).resolve()) if dataset_root is not None else None
    for meta in Path(cache_root).glob(f"*/{META}"):
        if meta.parent.name.startswith("."):
            continue  # a cache being created
        try:
            cache = TeacherCache(meta.parent)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if root is None or cache.key.dataset.get("root") == root:
            out.append(cache)
    return sorted(out, key=lambda c: (c.path / META).stat().st_mtime_ns, reverse=True)


def _raise_missing_or_stale(cache_root: Path, key: CacheKey) -> None:
    others = find_caches(cache_root, key.dataset["root"]) if cache_root.is_dir() else []
    if not others:
        raise CacheNotFoundError(f"no teacher cache for {key.dataset['root']} under {cache_root}; "
                                 f"run `sf train cache-teacher` first")
    # The closest one (fewest differing parts, then newest) explains the mismatch best.
    best = min(others, key=lambda c: len({part for part, _ in key.changes_since(c.key)}))
    changes = key.changes_since(best.key)
    parts = tuple(dict.fromkeys(part for part, _ in changes))
    also = f" ({len(others) - 1} other cache(s) of this dataset do not match either)" if len(others) > 1 else ""
    size = _disk_usage(best.path) / 2**30
    raise StaleCacheError(
        f"stale teacher cache for {key.dataset['root']} at {best.path}: " + "; ".join(line for _, line in changes)
        + f"{also}. A stale cache is never used: rebuild with `sf train cache-teacher` "
        f"(delete {best.path} to free {size:.1f} GiB if it is no longer needed)",
        parts, [line for _, line in changes], best.path)


def _disk_usage(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.iterdir() if p.is_file())
