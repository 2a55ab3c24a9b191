"""The on-disk form of a teacher cache: where caches live, a cache directory's files, where a
frame's tokens lie in them (`Layout`), and how rows are written durably (`_RowWriter`).

Layout of `<cache_root>/<key digest[:16]>/`:

    meta.json     the full key (dataset / teacher / preprocessing) and the storage layout
    targets.bin   [N, T, D] raw 16-bit bf16 patterns (int16) or fp8 e4m3 bytes (uint8)
    scales.bin    [N, T] float32 per-token scales (fp8 only)
    done.bin      [N] uint8: 1 once the row's data is on disk (written after the data, so a
                  kill at any moment leaves every row marked done complete)
    build.lock    held (flock) while a process builds; build.json: when and how it was built
    build.<r>-of-<w>.lock, shards.json   a sharded build's locks and its split (shards.py)
    build.book.lock   held for moments around lock changes and build.json / shards.json writes

Only the valid patches are stored: each camera's letterbox `PatchBox` is fixed per dataset,
so a frame is T = Σ box.rows·box.cols tokens (3 × 12 × 16 = 576 for 640×480 cameras instead
of 768; 25 % less disk). `TeacherCache.get` scatters them back onto [B, 3, 16, 16, D] with zeros
outside the boxes and returns the validity mask, which is the same for every frame of a dataset.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from sf_policy.align.grid import PatchBox, box_mask

if TYPE_CHECKING:
    from sf_policy.teacher.cache.key import CacheKey

FORMAT_VERSION = 1  # bump when the stored layout or the meaning of a target changes
STORAGE_DTYPES = ("bf16", "fp8")
META, TARGETS, SCALES, DONE = "meta.json", "targets.bin", "scales.bin", "done.bin"
LOCK, BUILD_LOG = "build.lock", "build.json"
BOOK_LOCK, SHARD_PLAN = "build.book.lock", "shards.json"
SHARD_LOCK = re.compile(r"build\.(\d+)-of-(\d+)\.lock")  # one per shard: build.<rank>-of-<world>.lock


def default_cache_root() -> Path:
    """$SF_CACHE_DIR, else $XDG_CACHE_HOME/sf_policy/teacher, else ~/.cache/sf_policy/teacher.

    Not inside the dataset: a cache is 30-70 GB for 30k frames and must not travel with it.
    """
    if os.environ.get("SF_CACHE_DIR"):
        return Path(os.environ["SF_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sf_policy" / "teacher"


@dataclass(frozen=True)
class Layout:
    """Where a frame's tokens live: slot s's box occupies tokens [offsets[s], offsets[s] + box area)."""

    num_frames: int
    dim: int
    grid: int
    storage: str
    boxes: tuple[PatchBox | None, ...]

    @classmethod
    def of(cls, key: CacheKey) -> Layout:
        p = key.preprocessing
        boxes = tuple(None if b is None else PatchBox(*b) for b in p["boxes"])
        dim = p["geometry"]["dim"] if "geometry" in p else 2 * p["aggregator"]["embed_dim"]
        return cls(key.dataset["frames"], dim, p["grid"], p["storage"], boxes)

    @property
    def slot_tokens(self) -> list[int]:
        return [0 if b is None else b.rows * b.cols for b in self.boxes]

    @property
    def offsets(self) -> list[int]:
        return np.cumsum([0, *self.slot_tokens])[:-1].tolist()

    @property
    def tokens(self) -> int:
        return sum(self.slot_tokens)

    @property
    def itemtype(self) -> type:
        return np.int16 if self.storage == "bf16" else np.uint8  # numpy has no bf16 / fp8

    def files(self) -> dict[str, tuple[type, tuple[int, ...]]]:
        """name -> (numpy dtype, shape) of every data file."""
        files = {TARGETS: (self.itemtype, (self.num_frames, self.tokens, self.dim))}
        if self.storage == "fp8":
            files[SCALES] = (np.float32, (self.num_frames, self.tokens))
        files[DONE] = (np.uint8, (self.num_frames,))
        return files

    def nbytes(self) -> int:
        return sum(int(np.prod(shape)) * np.dtype(t).itemsize for t, shape in self.files().values())

    def valid(self) -> torch.Tensor:
        """Bool [3, grid, grid]: the boxes (the same for every frame of the dataset)."""
        return torch.stack([box_mask(b, self.grid) for b in self.boxes])

    def compact(self, targets: torch.Tensor) -> torch.Tensor:
        """[B, 3, grid, grid, D] → the stored tokens [B, T, D] (box contents, slot by slot)."""
        parts = [targets[:, s, b.row0:b.row1, b.col0:b.col1].reshape(targets.shape[0], -1, targets.shape[-1])
                 for s, b in enumerate(self.boxes) if b is not None]
        return torch.cat(parts, dim=1) if parts else targets.new_zeros(targets.shape[0], 0, targets.shape[-1])

    def expand(self, tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Stored tokens [B, T, D] → [B, 3, grid, grid, D] with zeros outside the boxes (inverse of compact)."""
        b, _, d = tokens.shape
        out = torch.zeros(b, len(self.boxes), self.grid, self.grid, d, dtype=dtype, device=tokens.device)
        for s, (box, offset, n) in enumerate(zip(self.boxes, self.offsets, self.slot_tokens)):
            if box is not None:
                out[:, s, box.row0:box.row1, box.col0:box.col1] = tokens[:, offset:offset + n].reshape(
                    b, box.rows, box.cols, d).to(dtype)
        return out


class _RowWriter:
    """Writes rows with pwrite + fdatasync, data first, then their done flags."""

    def __init__(self, path: Path, layout: Layout):
        self.layout = layout
        self.fds = {name: os.open(path / name, os.O_WRONLY) for name in layout.files()}

    def write(self, indices: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
        runs = np.split(np.arange(len(indices)), np.flatnonzero(np.diff(indices) != 1) + 1)
        for name, array in arrays.items():
            row_bytes = array[0].nbytes
            for run in runs:
                rows = np.ascontiguousarray(array[run[0]:run[-1] + 1])
                _pwrite_all(self.fds[name], rows, int(indices[run[0]]) * row_bytes)
            os.fdatasync(self.fds[name])
        for run in runs:  # only now: a row marked done has all its data on disk
            _pwrite_all(self.fds[DONE], np.ones(len(run), np.uint8), int(indices[run[0]]))
        os.fdatasync(self.fds[DONE])

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)


def _pwrite_all(fd: int, array: np.ndarray, offset: int) -> None:
    view = memoryview(array).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


# --------------------------------------------------------------------------- small helpers


def _read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)
