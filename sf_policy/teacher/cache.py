"""The teacher feature cache: Spatial Forcing targets computed once per dataset, read by training.

Why: the teacher (VGGT's aggregator, ~10 TFLOP for three 518-px views) costs 65-90 % of a
π0 training step, yet its targets are a fixed function of the recorded, un-augmented frames.
`build_cache` runs it once over a dataset (batched, on the GPU, resumable) and stores the
targets already resampled to the VLA's 16×16 patch grid; training reads them with memmap
slicing (`TeacherCache.get`). The twin's geometry teacher (geometry.py) is cached the same
way; it reads the depth and poses recorded with the dataset instead of the videos.

Layout of `<cache_root>/<key digest[:16]>/`:

    meta.json     the full key (dataset / teacher / preprocessing) and the storage layout
    targets.bin   [N, T, D] raw 16-bit bf16 patterns (int16) or fp8 e4m3 bytes (uint8)
    scales.bin    [N, T] float32 per-token scales (fp8 only)
    done.bin      [N] uint8: 1 once the row's data is on disk (written after the data, so a
                  kill at any moment leaves every row marked done complete)
    build.lock    held (flock) while a process builds; build.json: when and how it was built
    build.<r>-of-<w>.lock, shards.json   a sharded build's locks and its split (see below)
    build.book.lock   held for moments around lock changes and build.json / shards.json writes

Only the valid patches are stored: each camera's letterbox `PatchBox` is fixed per dataset,
so a frame is T = Σ box.rows·box.cols tokens (3 × 12 × 16 = 576 for 640×480 cameras instead
of 768; 25 % less disk). `get` scatters them back onto [B, 3, 16, 16, D] with zeros outside
the boxes and returns the validity mask, which is the same for every frame of a dataset.

Several processes (one per GPU) can build one cache together: `cache_teacher(..., shard=(rank,
world))` computes only rank's share of the missing rows (whole episodes, `shard_rows`) into the
same files (disjoint rows) and returns None; after every rank returned (a barrier), `open_cache`
opens the complete cache. A killed sharded build resumes like any other (sharded or not).

A cache is keyed by (dataset fingerprint, teacher checkpoint hash, preprocessing); opening
with a key for which only other caches of the same dataset exist raises `StaleCacheError`
naming what changed, so a stale cache is never used silently.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from sf_policy.align.grid import VLA_GRID, VLA_PATCH, PatchBox, box_mask, letterbox_geometry
from sf_policy.align.targets import PE_SCALE
from sf_policy.data.features import DatasetError, image_key
from sf_policy.data.reader import DatasetReader
from sf_policy.teacher.features import TEACHER_WIDTH, Teacher
from sf_policy.teacher.geometry import GeometryConfig, GeometryTeacher
from sf_policy.teacher.vggt import Aggregator, AggregatorConfig
from sf_policy.topics import CAMERA_ROLES

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the stored layout or the meaning of a target changes
STORAGE_DTYPES = ("bf16", "fp8")
FP8_MAX = 448.0  # largest finite float8_e4m3fn
META, TARGETS, SCALES, DONE = "meta.json", "targets.bin", "scales.bin", "done.bin"
LOCK, BUILD_LOG = "build.lock", "build.json"
BOOK_LOCK, SHARD_PLAN = "build.book.lock", "shards.json"
SHARD_LOCK = re.compile(r"build\.(\d+)-of-(\d+)\.lock")  # one per shard: build.<rank>-of-<world>.lock
HASH_MEMO = "checkpoint_hashes.json"  # in the cache root: (path, size, mtime_ns) -> sha256
EDGE_BYTES = 256 * 1024  # bytes hashed at each end of a video file (see pixel_fingerprint)
TINY_WIDTH = 56  # teacher width for the tiny random aggregator (AggregatorConfig.tiny().img_size)


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


def default_cache_root() -> Path:
    """$SF_CACHE_DIR, else $XDG_CACHE_HOME/sf_policy/teacher, else ~/.cache/sf_policy/teacher.

    Not inside the dataset: a cache is 30-70 GB for 30k frames and must not travel with it.
    """
    if os.environ.get("SF_CACHE_DIR"):
        return Path(os.environ["SF_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sf_policy" / "teacher"


# --------------------------------------------------------------------------- hashing


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _sha256(obj: object) -> str:
    return hashlib.sha256(_canonical(obj)).hexdigest()


def _edge_digest(path: Path) -> dict:
    """Size + sha256 of the first and last EDGE_BYTES of a file: a cheap proxy for its content.

    An mp4 keeps its sample table (every frame's byte size) at one end, so any re-encode
    changes these bytes, while a dataset's videos (tens of GB) need not be read in full.
    """
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(EDGE_BYTES))
        if size > EDGE_BYTES:
            f.seek(max(EDGE_BYTES, size - EDGE_BYTES))
            h.update(f.read())
    return {"size": size, "edges_sha256": h.hexdigest()}


def pixel_fingerprint(reader: DatasetReader) -> str:
    """sha256 over everything that decides which pixels land at which global frame index.

    That is: fps and the camera features of meta/info.json; per episode (meta/episodes,
    the source of truth) its index, length, global range and video segments; the frames'
    timestamp column; per referenced video file its relative path, size and the hash of its
    two ends. Deliberately NOT the data parquet bytes or the per-episode statistics: fixing a
    state/action column or recomputing stats does not change a single target and must not
    throw away an hour of GPU work. Appending, deleting or re-encoding episodes does.
    """
    root = reader.root

    def rel(path: Path) -> str:
        return str(Path(path).relative_to(root))

    episodes = [
        [ep.index, ep.length, ep.from_index, ep.to_index,
         {role: [rel(seg.path), seg.from_timestamp, seg.to_timestamp] for role, seg in sorted(ep.videos.items())}]
        for ep in reader.episodes
    ]  # fmt: skip
    videos = sorted({seg.path for ep in reader.episodes for seg in ep.videos.values()})
    timestamps = reader.column("timestamp") if reader.num_frames else np.zeros(0, np.float32)
    manifest = {
        "fps": reader.fps,
        "video_path": reader.info.get("video_path"),
        "cameras": {role: reader.features[image_key(role)]["shape"] for role in reader.camera_roles},
        "episodes": episodes,
        "timestamps_sha256": hashlib.sha256(np.ascontiguousarray(timestamps, np.float32).tobytes()).hexdigest(),
        "videos": {rel(p): _edge_digest(p) for p in videos},
    }
    return _sha256(manifest)


def file_sha256(path: str | os.PathLike, memo_dir: str | os.PathLike | None = None) -> str:
    """sha256 of a file's bytes, memoised in `memo_dir`/checkpoint_hashes.json.

    The memo is keyed by (resolved path, size, mtime_ns): a 5 GB checkpoint is hashed once
    (~10 s), later runs only stat it. Replacing or touching the file re-hashes it.
    """
    path = Path(path).resolve()
    stat = path.stat()
    memo_path = Path(memo_dir) / HASH_MEMO if memo_dir is not None else None
    memo = _read_json(memo_path) if memo_path is not None and memo_path.exists() else {}
    entry = memo.get(str(path))
    if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return entry["sha256"]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    digest = h.hexdigest()
    if memo_path is not None:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        memo[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        _write_json(memo_path, memo)
    return digest


def state_dict_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes, bytes): for teachers without a file."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- the key


@dataclass(frozen=True)
class Preprocessing:
    """Everything besides the dataset and the weights that shapes a stored target."""

    width: int = TEACHER_WIDTH  # teacher input width (height keeps the aspect)
    layer: int = -1  # aggregator layer; normalised to 0..depth-1 so -1 and 23 are the same key
    pe_scale: float = PE_SCALE
    grid: int = VLA_GRID
    storage: str = "bf16"  # "bf16" or "fp8" (e4m3 with a float32 scale per token)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    # The twin's geometry teacher instead of an aggregator (width, layer and aggregator unused).
    geometry: GeometryConfig | None = None

    def __post_init__(self) -> None:
        if self.storage not in STORAGE_DTYPES:
            raise ValueError(f"cache storage must be one of {STORAGE_DTYPES}, got {self.storage!r}")
        if self.geometry is not None:
            return
        depth = self.aggregator.depth
        layer = self.layer + depth if self.layer < 0 else self.layer
        if not 0 <= layer < depth:
            raise ValueError(f"teacher layer {self.layer} out of range for an aggregator of depth {depth}")
        object.__setattr__(self, "layer", layer)

    @classmethod
    def from_teacher(cls, teacher: Teacher | GeometryTeacher, storage: str = "bf16") -> Preprocessing:
        if isinstance(teacher, GeometryTeacher):
            return cls(pe_scale=teacher.pe_scale, grid=teacher.grid, storage=storage, geometry=teacher.config)
        return cls(teacher.width, teacher.layer, teacher.pe_scale, teacher.grid, storage, teacher.aggregator.config)

    def boxes(self, reader: DatasetReader) -> list[PatchBox | None]:
        """Per camera slot (CAMERA_ROLES order) its letterbox box on the VLA grid; None if the dataset lacks it."""
        boxes: list[PatchBox | None] = []
        for role in CAMERA_ROLES:
            if role not in reader.camera_roles:
                boxes.append(None)
                continue
            h, w = reader.features[image_key(role)]["shape"][:2]
            boxes.append(letterbox_geometry(h, w, self.grid * VLA_PATCH, VLA_PATCH)[-1])
        return boxes

    def teacher_settings(self) -> dict:
        """What the teacher itself must follow (``_check_teacher``): a VGGT key keeps exactly its
        old fields (existing caches stay valid); a geometry key names the encoding instead."""
        own = ({"teacher": "geometry", "geometry": self.geometry.describe()} if self.geometry is not None else
               {"width": self.width, "layer": self.layer, "aggregator": asdict(self.aggregator)})
        return own | {"pe_scale": self.pe_scale, "grid": self.grid}

    def describe(self, reader: DatasetReader) -> dict:
        """The key's preprocessing part: these settings plus the camera layout they imply."""
        boxes = self.boxes(reader)
        return {
            "format": FORMAT_VERSION,
            **self.teacher_settings(),
            "letterbox": self.grid * VLA_PATCH,
            "storage": self.storage,
            "camera_roles": list(CAMERA_ROLES),
            "boxes": [None if b is None else [b.row0, b.row1, b.col0, b.col1] for b in boxes],
        }


@dataclass(frozen=True)
class CacheKey:
    """(dataset, teacher, preprocessing), each a readable dict.

    Only dataset["fingerprint"], teacher["sha256"] and the whole preprocessing dict enter
    the digest; the dataset root, frame counts and the checkpoint path are there to write
    useful error messages (a dataset that moved keeps its cache).
    """

    dataset: dict
    teacher: dict
    preprocessing: dict

    @classmethod
    def create(cls, reader: DatasetReader, teacher_sha256: str, preprocessing: Preprocessing,
               teacher_source: str = "") -> CacheKey:
        dataset = {
            "root": str(reader.root.resolve()),
            "fingerprint": pixel_fingerprint(reader),
            "frames": reader.num_frames,
            "episodes": reader.num_episodes,
        }
        return cls(dataset, {"sha256": teacher_sha256, "source": teacher_source}, preprocessing.describe(reader))

    @property
    def digest(self) -> str:
        return _sha256([self.dataset["fingerprint"], self.teacher["sha256"], self.preprocessing])

    @property
    def short(self) -> str:
        return self.digest[:16]

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "teacher": self.teacher, "preprocessing": self.preprocessing}

    @classmethod
    def from_dict(cls, data: dict) -> CacheKey:
        return cls(data["dataset"], data["teacher"], data["preprocessing"])

    def changes_since(self, old: CacheKey) -> list[tuple[str, str]]:
        """(part, readable line) for each way `old` (a cache's key) differs from this key."""
        out = []
        a, b = old.dataset, self.dataset
        if a["fingerprint"] != b["fingerprint"]:
            out.append(("dataset", f"dataset changed: {b['root']} had {a['frames']} frames in {a['episodes']} "
                                   f"episodes (fingerprint {a['fingerprint'][:12]}) when cached, now "
                                   f"{b['frames']} frames in {b['episodes']} episodes ({b['fingerprint'][:12]})"))
        a, b = old.teacher, self.teacher
        if a["sha256"] != b["sha256"]:
            out.append(("teacher", f"teacher checkpoint changed: cached from {a['source'] or '?'} (sha256 "
                                   f"{a['sha256'][:12]}), now {b['source'] or '?'} (sha256 {b['sha256'][:12]})"))
        old_prep, new_prep = _flatten(old.preprocessing), _flatten(self.preprocessing)
        kinds = [_teacher_kind(k.preprocessing) for k in (old, self)]
        if kinds[0] != kinds[1]:  # another kind of teacher: its own settings are not "changes"
            out.append(("preprocessing", f"teacher changed: {kinds[0]} in the cache, {kinds[1]} now"))
            own = ("geometry.", "aggregator.", "width", "layer", "teacher")
            old_prep, new_prep = ({k: v for k, v in d.items() if not k.startswith(own)} for d in (old_prep, new_prep))
        for name in sorted(old_prep.keys() | new_prep.keys()):
            if old_prep.get(name) != new_prep.get(name):
                out.append(("preprocessing", f"preprocessing changed: {name} = {old_prep.get(name)!r} in the "
                                             f"cache, {new_prep.get(name)!r} now"))
        return out


def _teacher_kind(preprocessing: dict) -> str:
    return "the twin's geometry teacher" if "geometry" in preprocessing else "a VGGT aggregator"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


# --------------------------------------------------------------------------- storage layout


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


def encode(tokens: torch.Tensor, storage: str) -> dict[str, np.ndarray]:
    """float tokens [B, T, D] (any device) → the numpy arrays stored for them (file name -> array).

    fp8: per-token scale = max|x| / 448 so the token's largest value maps to e4m3's largest
    finite number; every element then keeps e4m3's 3 mantissa bits (≈ 2-4 % relative error)
    whatever the token's magnitude. A plain cast would clip everything beyond ±448 (torch
    saturates) and flush values below 2^-9 to zero; the scale costs 4 bytes per 2048.
    """
    x = tokens.float()
    if storage == "bf16":
        return {TARGETS: x.to(torch.bfloat16).view(torch.int16).cpu().numpy()}
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30) / FP8_MAX
    q = (x / scale).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return {TARGETS: q.view(torch.uint8).cpu().numpy(), SCALES: scale.squeeze(-1).cpu().numpy()}


def decode(arrays: dict[str, np.ndarray], storage: str) -> torch.Tensor:
    """Inverse of `encode`: bf16 tokens for bf16 storage, float32 for fp8."""
    raw = torch.from_numpy(np.ascontiguousarray(arrays[TARGETS]))
    if storage == "bf16":
        return raw.view(torch.bfloat16)
    scale = torch.from_numpy(np.ascontiguousarray(arrays[SCALES]))
    return raw.view(torch.float8_e4m3fn).float() * scale.unsqueeze(-1)


# --------------------------------------------------------------------------- reading


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


# --------------------------------------------------------------------------- building


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


# --------------------------------------------------------------------------- sharded builds


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


def _camera_size(reader: DatasetReader) -> tuple[int, int]:
    """The (height, width) shared by the dataset's cameras (the teacher batches views of one size)."""
    sizes = {role: tuple(reader.features[image_key(role)]["shape"][:2]) for role in reader.camera_roles}
    if not sizes:
        raise DatasetError(f"{reader.root}: no camera streams, nothing for the teacher to see")
    if len(set(sizes.values())) > 1:
        raise DatasetError(f"{reader.root}: cameras of different sizes {sizes}; the teacher runs all views of a "
                           "frame together, which needs one size (resize the recordings or extend Teacher)")
    return next(iter(sizes.values()))


def frame_batches(reader: DatasetReader, todo: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(global indices [B], uint8 frames [B, 3, H, W, 3] in CAMERA_ROLES slot order) for the rows in `todo`.

    Decodes each episode's videos sequentially (far cheaper than seeking per frame); episodes
    with nothing to do are not opened. Slots the dataset lacks stay black (the teacher leaves
    them out anyway). Batches may span episodes: all frames have one size.
    """
    h, w = _camera_size(reader)
    slots = [(s, role) for s, role in enumerate(CAMERA_ROLES) if role in reader.camera_roles]
    first = reader.episodes[0].from_index if reader.episodes else 0
    indices: list[int] = []
    images = np.zeros((batch_size, len(CAMERA_ROLES), h, w, 3), np.uint8)
    for e, ep in enumerate(reader.episodes):
        start = ep.from_index - first
        need = todo[start:start + ep.length]
        if not need.any():
            continue
        streams = [reader.episode_frames(e, role) for _, role in slots]
        count = 0
        for k, views in enumerate(zip(*streams)):
            count += 1
            if not need[k]:
                continue
            for (s, _), image in zip(slots, views):
                images[len(indices), s] = image
            indices.append(start + k)
            if len(indices) == batch_size:
                yield np.array(indices), images.copy()
                indices.clear()
        if count != ep.length:
            raise DatasetError(f"{reader.root}: episode {ep.index} has {ep.length} frames but its videos "
                               f"decode to {count}")
    if indices:
        yield np.array(indices), images[:len(indices)].copy()


def _prefetch(items: Iterator, depth: int = 2) -> Iterator:
    """Run `items` in a background thread, `depth` ahead: video decoding overlaps the GPU's work."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put((end, exc))

    thread = threading.Thread(target=produce, name="teacher-cache-decode", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if exc is not None:
                raise exc
            if item is end:
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)


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


# --------------------------------------------------------------------------- entry points (CLI, training)


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


# --------------------------------------------------------------------------- small helpers


def _read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)
