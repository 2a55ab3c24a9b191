"""Hashes that say what a cache was computed from: a dataset's pixels (`pixel_fingerprint`), a
checkpoint file (`file_sha256`, memoised per cache root), weights in memory (`state_dict_sha256`)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from sf_policy.data.features import image_key
from sf_policy.data.reader import DatasetReader
from sf_policy.teacher.cache.store import _read_json, _write_json

HASH_MEMO = "checkpoint_hashes.json"  # in the cache root: (path, size, mtime_ns) -> sha256
EDGE_BYTES = 256 * 1024  # bytes hashed at each end of a video file (see pixel_fingerprint)


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
