"""Where a training step's teacher targets come from: the cache (default) or VGGT online.

Both give the same thing for a batch: targets [B, 3, g, g, D] on the VLA grid (g = the
policy's image size / patch size: 16 for π0's 224 px) and the valid mask [B, 3, g, g]
(tests/test_teacher_cache.py shows cached == online).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..align.grid import VLA_GRID, VLA_PATCH, letterbox_geometry
from ..model.policy import PolicyConfig
from ..data.features import image_key
from ..data.reader import DatasetReader
from ..topics import CAMERA_ROLES
from .config import TeacherConfig


def cache_arguments(teacher: TeacherConfig, grid: int = VLA_GRID, dim: int | None = None) -> dict:
    """The settings that make up a cache's key (sf_policy.teacher.cache.entry.cache_teacher/open_cache);
    ``grid``: the policy's patch grid per side (``vla_grid``); ``dim``: the geometry teacher's
    width (``align.teacher_dim``; VGGT's is its own)."""
    common = {"cache_root": teacher.cache_root, "dtype": teacher.dtype, "grid": grid}
    if teacher.kind == "geometry":
        from ..teacher.geometry import GeometryConfig

        if dim is None:
            raise ValueError("the geometry teacher needs its width (align.teacher_dim)")
        return common | {"geometry": GeometryConfig(dim=dim, seed=teacher.seed)}
    return common | {"checkpoint": teacher.checkpoint, "layer": teacher.layer, "tiny": teacher.kind == "random",
                     "width": teacher.width, "seed": teacher.seed}


def vla_grid(policy: PolicyConfig) -> int:
    """Patches per side of the policy's camera images (16 for π0's 224 px / 14 px patches)."""
    if policy.tiny:
        from ..model.policy import SCRATCH_SIZES

        size = SCRATCH_SIZES[policy.size]
        return size.image_size // size.patch_size
    return VLA_GRID


def build_cache(root: str | Path, teacher: TeacherConfig, device: str = "auto", progress: bool = True,
                grid: int = VLA_GRID, dim: int | None = None, shard: tuple[int, int] | None = None):
    """Compute (or finish, or just open) the cache of ``root`` for these teacher settings.

    ``shard=(rank, world)``: one of ``world`` processes building it together; computes only this
    rank's share and returns None. Once every rank has returned (a barrier), open the cache with
    ``open_cache`` (same settings) on each rank.
    """
    from ..teacher.cache.entry import cache_teacher

    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    return cache_teacher(root, batch_size=teacher.batch_size, device=device, progress=progress, shard=shard,
                         **cache_arguments(teacher, grid, dim))


def open_cache(root: str | Path, teacher: TeacherConfig, grid: int = VLA_GRID, dim: int | None = None):
    """The complete cache of ``root`` for these teacher settings, without loading the teacher
    (after a sharded ``build_cache``'s barrier); IncompleteCacheError if some rank's rows are missing."""
    from ..teacher.cache.entry import open_cache

    return open_cache(root, **cache_arguments(teacher, grid, dim))


class TargetSource:
    """``source(batch) -> (targets, valid)``: a cache lookup by the batch's dataset indices, or
    the teacher run on the batch's raw frames (``mode: online``)."""

    def __init__(self, teacher: TeacherConfig, root: str | Path, device: torch.device, grid: int = VLA_GRID,
                 dim: int | None = None):
        self.mode = teacher.mode
        if self.mode == "cache":
            from ..teacher.cache.entry import open_cache

            self.cache = open_cache(root, **cache_arguments(teacher, grid, dim))
            return
        from ..teacher.cache.entry import tiny_teacher
        from ..teacher.features import Teacher

        if teacher.kind == "random":
            self.teacher = tiny_teacher(teacher.seed, width=teacher.width, layer=teacher.layer, device=device,
                                        grid=grid)
        else:
            if not teacher.checkpoint:
                raise ValueError("teacher.mode online needs teacher.checkpoint (VGGT model.pt) or teacher.kind random")
            self.teacher = Teacher.from_checkpoint(teacher.checkpoint, device=device, width=teacher.width,
                                                   layer=teacher.layer, grid=grid)
        reader = DatasetReader(root)
        sizes = {role: tuple(reader.features[image_key(role)]["shape"][:2]) for role in reader.camera_roles}
        reader.close()
        self.boxes = [letterbox_geometry(*sizes[r], grid * VLA_PATCH, VLA_PATCH)[-1] if r in sizes else None
                      for r in CAMERA_ROLES]

    def __call__(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "online":
            return self.teacher.targets(batch["frames"], self.boxes)
        # The DataLoader workers read the compact stored tokens (Collate); they are expanded to the
        # grid where the step runs: at full size the float32 grid is ~4x the bytes to move.
        tokens = batch.get("teacher_tokens")
        if tokens is None:
            tokens = self.cache.tokens(batch["index"].cpu().numpy())
        return self.cache.to_grid(tokens.to(batch["index"].device, non_blocking=True))
