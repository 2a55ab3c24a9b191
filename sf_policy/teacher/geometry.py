"""A teacher that knows 3-D exactly: Spatial Forcing targets from the twin's own geometry.

SIMULATION ONLY. VGGT estimates, from RGB alone, each pixel's depth and 3-D point; the
MuJoCo twin knows them exactly. This teacher turns what the twin rendered into SF targets,
so a CPU-sized study can ask what SF is for (bench/sf_study.py) with a teacher whose
features certainly carry 3-D, where the random tiny VGGT carries none. A real robot has no
such teacher: there, `teacher.kind: vggt`.

Recording (``sf_policy.sim.record_without_ros.record_expert(geometry=True)``): per frame, every camera's
metric depth at 1/7 of its resolution (2×2 samples per 14-px patch; 32×32 for a 224 px
camera) and the camera's pose, one safetensors file per episode under
``<dataset>/geometry/`` (fp16 depth: 6 KiB a frame). A small depth-only renderer, so the
colour pass the dataset stores is untouched.

Targets, per camera and patch of its box on the VLA grid:

1. back-project each depth sample to its world point p (the twin's table frame, metres);
2. encode (p, depth) with random Fourier features φ(x) = [sin(Bx), cos(Bx)] (Rahimi & Recht
   2007; Tancik et al. 2020), B's rows random directions with wavelengths log-uniform in
   [2 cm, 1 m]: the inner product of two codes approximates a shift-invariant kernel of
   the distance between the points, so "cosine similarity to the target" means "where
   this patch is in 3-D", at every scale from a finger's width to the workspace;
3. average the codes of the patch's samples (a kernel mean embedding: a patch over a pot's
   rim and the table behind it is both, not a point in the air between them);
4. ``align.targets.teacher_targets`` as for VGGT (+0.1·sin-cos PE, placed on the box).

Why encode the exact geometry rather than train a small RGB → point-map network on twin
renders (closer to VGGT): the network's own errors would confound the study, and it would
need its own training and validation. The exact encoding is the best a geometry teacher
could do: if SF does not help with it, a learnt estimate would not either.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sf_policy.align.grid import VLA_GRID, PatchBox, box_mask
from sf_policy.align.targets import PE_SCALE, teacher_targets
from sf_policy.data.features import DatasetError
from sf_policy.topics import CAMERA_ROLES

GEOMETRY_DIR = "geometry"  # <dataset>/geometry/episode_000000.safetensors
DEPTH_STRIDE = 7  # camera pixels per depth sample along each axis: 2×2 samples per 14-px patch
ENCODING_VERSION = 1  # bump when the meaning of a target changes (enters the cache key)


def depth_size(height: int, width: int, stride: int = DEPTH_STRIDE) -> tuple[int, int]:
    """The depth image recorded for a height×width camera (same field of view)."""
    return max(1, round(height / stride)), max(1, round(width / stride))


def episode_path(root: str | os.PathLike, episode_index: int) -> Path:
    return Path(root) / GEOMETRY_DIR / f"episode_{episode_index:06d}.safetensors"


# --------------------------------------------------------------------------------------------
# Recording


class GeometryRecorder:
    """Collects one episode's depth and camera poses, frame by frame, and writes its file."""

    def __init__(self, roles: Sequence[str] = CAMERA_ROLES):
        self.roles = tuple(roles)
        self.depth: list[np.ndarray] = []
        self.pose: list[np.ndarray] = []
        self.focal: np.ndarray | None = None

    def add(self, cameras: dict) -> None:
        """``cameras``: role → ``sim.twin.CameraDepth`` (``Twin.camera_depths``)."""
        self.depth.append(np.stack([cameras[r].depth for r in self.roles]).astype(np.float16))
        self.pose.append(np.stack([cameras[r].pose for r in self.roles]).astype(np.float32))
        self.focal = np.array([cameras[r].focal for r in self.roles], np.float32)

    def __len__(self) -> int:
        return len(self.depth)

    def save(self, root: str | os.PathLike, episode_index: int, frames: int) -> Path:
        """Write ``<root>/geometry/episode_<index>.safetensors`` (atomically: a temporary file renamed)."""
        from safetensors.numpy import save_file

        if len(self) != frames:
            raise ValueError(f"episode {episode_index}: {len(self)} geometry frames for {frames} dataset frames")
        path = episode_path(root, episode_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"depth": np.stack(self.depth), "pose": np.stack(self.pose), "focal": self.focal},
                  str(tmp), metadata={"roles": json.dumps(self.roles), "stride": str(DEPTH_STRIDE)})
        os.replace(tmp, path)
        return path


# --------------------------------------------------------------------------------------------
# Reading


class GeometryFrames:
    """The recorded geometry of a dataset, by global frame index (what ``frame_batches`` is to videos)."""

    def __init__(self, reader):
        self.reader = reader
        self._first = reader.episodes[0].from_index if reader.episodes else 0
        self._loaded: dict[int, dict[str, np.ndarray]] = {}

    def episode(self, position: int) -> dict[str, np.ndarray]:
        """depth [T, V, h, w] float16, pose [T, V, 4, 4], focal [V], roles: episode ``position`` of the reader."""
        from safetensors import safe_open

        if position not in self._loaded:
            ep = self.reader.episodes[position]
            path = episode_path(self.reader.root, ep.index)
            if not path.is_file():
                raise DatasetError(f"{path}: no recorded geometry for episode {ep.index}; the geometry teacher "
                                   "needs a twin dataset recorded with depth (record_expert(geometry=True), "
                                   "bench/sf_study.py); a real robot's dataset has none: use teacher.kind vggt")
            with safe_open(str(path), framework="numpy") as f:
                data = {k: f.get_tensor(k) for k in f.keys()}
                roles = tuple(json.loads(f.metadata()["roles"]))
            if len(data["depth"]) != ep.length:
                raise DatasetError(f"{path}: {len(data['depth'])} frames of geometry, the episode has {ep.length}")
            missing = [r for r in self.reader.camera_roles if r not in roles]
            if missing:
                raise DatasetError(f"{path}: no geometry for cameras {missing}")
            self._loaded = {position: {**data, "roles": roles}}  # episodes are visited in order
        return self._loaded[position]

    def batches(self, todo: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, dict]]:
        """(global indices [B], {"depth": [B, V, h, w], "pose": [B, V, 4, 4], "focal": [V]}) for the rows in
        ``todo``, cameras in CAMERA_ROLES slot order (slots the dataset lacks: zeros)."""
        pending: list[tuple[int, np.ndarray, np.ndarray]] = []
        focal = None
        for e, ep in enumerate(self.reader.episodes):
            start = ep.from_index - self._first
            need = np.flatnonzero(todo[start:start + ep.length])
            if not len(need):
                continue
            data = self.episode(e)
            order = [data["roles"].index(r) if r in data["roles"] else -1 for r in CAMERA_ROLES]
            focal = np.array([data["focal"][i] if i >= 0 else 0.0 for i in order], np.float32)
            for k in need:
                depth = np.stack([data["depth"][k, i] if i >= 0 else np.zeros_like(data["depth"][k, 0])
                                  for i in order])
                pose = np.stack([data["pose"][k, i] if i >= 0 else np.eye(4, dtype=np.float32) for i in order])
                pending.append((start + int(k), depth, pose))
                if len(pending) == batch_size:
                    yield _batch(pending, focal)
                    pending = []
        if pending:
            yield _batch(pending, focal)


def _batch(rows: list, focal: np.ndarray) -> tuple[np.ndarray, dict]:
    return (np.array([r[0] for r in rows]), {"depth": np.stack([r[1] for r in rows]),
                                             "pose": np.stack([r[2] for r in rows]), "focal": focal})


# --------------------------------------------------------------------------------------------
# Targets


@dataclass(frozen=True)
class GeometryConfig:
    """The encoding's settings; with ENCODING_VERSION they are the teacher's identity in the cache key."""

    dim: int = 64  # target channels (= align.teacher_dim): dim/2 frequencies, sin and cos
    seed: int = 0  # the random frequencies
    min_wavelength: float = 0.02  # metres: a finger's width
    max_wavelength: float = 1.0  # metres: the workspace
    max_depth: float = 3.0  # farther (or no hit: the twin has no walls) reads as this depth

    def __post_init__(self) -> None:
        if self.dim < 4 or self.dim % 4:
            raise ValueError(f"geometry teacher dim must be a positive multiple of 4 (the PE's), got {self.dim}")
        if not 0 < self.min_wavelength <= self.max_wavelength:
            raise ValueError(f"geometry wavelengths must satisfy 0 < min <= max, got {self.min_wavelength}, "
                             f"{self.max_wavelength}")

    def describe(self) -> dict:
        return {"encoding": "random Fourier features of (world xyz, depth), mean over each patch",
                "version": ENCODING_VERSION, "depth_stride": DEPTH_STRIDE, **asdict(self)}

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()

    def frequencies(self) -> torch.Tensor:
        """B [dim/2, 4]: random unit directions in (x, y, z, depth), times 2π / wavelength (log-uniform)."""
        g = torch.Generator().manual_seed(self.seed)
        n = self.dim // 2
        directions = torch.randn(n, 4, generator=g, dtype=torch.float64)
        directions /= directions.norm(dim=1, keepdim=True)
        lo, hi = math.log(self.min_wavelength), math.log(self.max_wavelength)
        wavelengths = torch.exp(lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64))
        return (directions * (2 * math.pi / wavelengths)[:, None]).to(torch.float32)


def back_project(depth: torch.Tensor, pose: torch.Tensor, focal: float | torch.Tensor) -> torch.Tensor:
    """depth [..., h, w] (metres along the optical axis), pose [..., 4, 4] camera-to-world → world points [..., h, w, 3].

    Pixel centres, principal point at the image centre, MuJoCo/OpenGL camera frame (x right,
    y up, looking along −z): a sample at row v, column u is at ((u−cx)·d/f, −(v−cy)·d/f, −d).
    """
    h, w = depth.shape[-2:]
    focal = torch.as_tensor(focal, dtype=depth.dtype, device=depth.device)
    focal = focal.reshape(*focal.shape, 1, 1) if focal.ndim else focal
    u = (torch.arange(w, dtype=depth.dtype, device=depth.device) + 0.5 - w / 2)
    v = (torch.arange(h, dtype=depth.dtype, device=depth.device) + 0.5 - h / 2)
    camera = torch.stack([u[None, :] * depth / focal, -v[:, None] * depth / focal, -depth], dim=-1)
    rotation, translation = pose[..., :3, :3], pose[..., :3, 3]
    return torch.einsum("...ij,...hwj->...hwi", rotation, camera) + translation[..., None, None, :]


class GeometryTeacher:
    """Twin geometry → SF targets [B, V, grid, grid, dim], the same contract as ``Teacher.targets``
    but fed by ``input_batches`` (recorded depth and poses) instead of camera frames."""

    kind = "geometry"

    def __init__(self, config: GeometryConfig = GeometryConfig(), *, grid: int = VLA_GRID,
                 pe_scale: float = PE_SCALE, device: torch.device | str = "cpu"):
        self.config, self.grid, self.pe_scale = config, grid, pe_scale
        self.device = torch.device(device)
        self.B = config.frequencies().to(self.device)

    @property
    def dim(self) -> int:
        return self.config.dim

    def input_batches(self, reader, todo: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, dict]]:
        return GeometryFrames(reader).batches(todo, batch_size)

    def encode(self, depth: torch.Tensor, pose: torch.Tensor, focal: torch.Tensor) -> torch.Tensor:
        """One view: depth [B, h, w], pose [B, 4, 4], focal (scalar) → per-sample codes [B, h, w, dim]."""
        d = depth.float().clone()
        d[~torch.isfinite(d) | (d <= 0) | (d > self.config.max_depth)] = self.config.max_depth
        x = torch.cat([back_project(d, pose.float(), focal), d[..., None]], dim=-1)
        phase = x @ self.B.T
        return torch.cat([phase.sin(), phase.cos()], dim=-1)

    @torch.no_grad()
    def targets(self, inputs: dict, boxes: Sequence[PatchBox | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs: one ``input_batches`` batch; boxes: per slot its PatchBox on the VLA grid (None: no camera)."""
        depth = torch.as_tensor(inputs["depth"], device=self.device)
        pose = torch.as_tensor(inputs["pose"], device=self.device)
        b, v = depth.shape[:2]
        if len(boxes) != v:
            raise ValueError(f"got {len(boxes)} boxes for {v} views")
        out = torch.zeros(b, v, self.grid, self.grid, self.dim, device=self.device)
        for i, box in enumerate(boxes):
            if box is None or box.empty:
                continue
            codes = self.encode(depth[:, i], pose[:, i], float(inputs["focal"][i]))  # [B, h, w, D]
            pooled = F.adaptive_avg_pool2d(codes.permute(0, 3, 1, 2), (box.rows, box.cols)).permute(0, 2, 3, 1)
            out[:, i] = teacher_targets(pooled, box, grid=self.grid, pe_scale=self.pe_scale)
        valid = torch.stack([box_mask(box, self.grid) for box in boxes]).to(self.device)
        return out, valid.unsqueeze(0).expand(b, -1, -1, -1).clone()

