"""The teacher at work: camera frames → Spatial Forcing targets on the VLA's patch grid.

`Teacher` wraps a frozen `Aggregator`. For one batch of synchronised camera frames it

1. resizes every view keeping its aspect ratio to `width` (518) px wide, the height rounded
   to a multiple of 14 (640×480 → 518×392 → a 28×37 patch grid), values in [0, 1];
2. runs the aggregator on all views of a sample together, in slot order (the first slot,
   cam_high, is VGGT's reference view), keeping one layer (default the last, index -1);
3. turns each view's patch tokens [h, w, 2048] into targets on the 16×16 VLA grid with the
   align package's `teacher_targets` (+0.1·sin-cos PE on the teacher grid, bilinear resample,
   align_corners=True, onto the camera's letterbox `PatchBox`; zeros elsewhere).

Why keep the aspect ratio instead of VGGT's square 518×518: the VLA letterboxes each camera
with its aspect ratio intact, and the targets are stretched onto exactly the letterbox's
content box. A squashed teacher input would distort the geometry the teacher sees (VGGT was
trained on undistorted pinhole images) while the mapping to the VLA grid stayed the same.

All views of one call must have the same size (the AgileX cameras all record 640×480):
VGGT attends across views, so they go through the model as one sequence, which the batched
implementation requires to share a patch grid.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sf_policy.align.grid import VLA_GRID, VLA_PATCH, PatchBox, box_mask, letterbox_geometry
from sf_policy.align.targets import PE_SCALE, teacher_targets
from sf_policy.teacher.checkpoint import load_aggregator
from sf_policy.teacher.vggt import Aggregator, AggregatorConfig

TEACHER_WIDTH = 518


def teacher_input_size(height: int, width: int, target_width: int = TEACHER_WIDTH, patch: int = 14) -> tuple[int, int]:
    """(H, W) the teacher sees for a height×width camera: W = target_width, H keeps the aspect, rounded to `patch`.

    640×480 → (392, 518); square → (518, 518). Rounding is half-up, at least one patch.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if target_width % patch:
        raise ValueError(f"teacher width {target_width} is not a multiple of the patch size {patch}")
    rows = math.floor(height * target_width / width / patch + 0.5)
    return max(1, rows) * patch, target_width


def _as_uint8_views(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [B, V, H, W, 3] (numpy or torch) → torch uint8, same layout; refuses anything else."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.uint8:
        raise TypeError(f"teacher images must be uint8 [B, V, H, W, 3], got {getattr(images, 'dtype', type(images))}")
    if tensor.ndim != 5 or tensor.shape[-1] != 3:
        raise ValueError(f"teacher images must be [B, V, H, W, 3], got {tuple(tensor.shape)}")
    return tensor


class Teacher:
    """Frozen VGGT aggregator → per-camera SF targets [B, V, 16, 16, 2C] and validity masks.

    `bf16`: run under bfloat16 autocast (weights stay as loaded; LayerNorms, the residual
    stream and the outputs stay float32, as in VGGT's own inference). Default: on for CUDA,
    off on CPU. `out_dtype` is the dtype of the returned targets (bfloat16 halves a cache).
    """

    def __init__(
        self,
        aggregator: Aggregator,
        *,
        width: int = TEACHER_WIDTH,
        layer: int = -1,
        bf16: bool | None = None,
        out_dtype: torch.dtype = torch.float32,
        pe_scale: float = PE_SCALE,
        grid: int = VLA_GRID,
    ):
        self.aggregator = aggregator.eval().requires_grad_(False)
        self.layer = aggregator.resolve_layers([layer])[0]
        self.width = width
        self.device = next(aggregator.parameters()).device
        self.bf16 = self.device.type == "cuda" if bf16 is None else bf16
        self.out_dtype = out_dtype
        self.pe_scale = pe_scale
        self.grid = grid
        if width % aggregator.config.patch_size:
            raise ValueError(
                f"teacher width {width} is not a multiple of the patch size {aggregator.config.patch_size}"
            )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        config: AggregatorConfig | None = None,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        **kwargs,
    ) -> Teacher:
        """Load VGGT's aggregator strictly from `model.pt` / `model.safetensors` and wrap it."""
        return cls(load_aggregator(path, config, dtype=dtype, device=device), **kwargs)

    @property
    def dim(self) -> int:
        return self.aggregator.config.out_dim

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        return teacher_input_size(height, width, self.width, self.aggregator.config.patch_size)

    def preprocess(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 [B, V, H, W, 3] → float32 [B, V, 3, Ht, Wt] in [0, 1] on the teacher's device.

        Bicubic with antialiasing (PIL-like, as VGGT's own loader) and clamped back to [0, 1].
        """
        x = _as_uint8_views(images).to(self.device)
        b, v, h, w, _ = x.shape
        ht, wt = self.input_size(h, w)
        x = x.reshape(b * v, h, w, 3).permute(0, 3, 1, 2).to(torch.float32) / 255.0
        if (ht, wt) != (h, w):
            x = F.interpolate(x, size=(ht, wt), mode="bicubic", antialias=True, align_corners=False).clamp_(0.0, 1.0)
        return x.reshape(b, v, 3, ht, wt)

    @torch.no_grad()
    def features(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The chosen layer's patch tokens per view, float32 [B, V, h, w, 2C] (special tokens dropped)."""
        x = self.preprocess(images)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            (tokens,), (h, w) = self.aggregator(x, layers=[self.layer])
        b, v = tokens.shape[:2]
        return tokens.float().reshape(b, v, h, w, -1)

    @torch.no_grad()
    def targets(
        self, images: np.ndarray | torch.Tensor, boxes: Sequence[PatchBox | None] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SF targets for a batch of camera frames.

        images: uint8 [B, V, H, W, 3], views in slot order (sf_policy.topics.CAMERA_ROLES).
        boxes: per view the camera's letterbox PatchBox on the VLA grid; None marks a slot with
            no camera (its view is left out of the teacher's input, its targets are zeros).
            Default: every view's box from its size (`letterbox_geometry`).
        Returns (targets [B, V, grid, grid, 2C] in `out_dtype`, valid [B, V, grid, grid] bool),
        both on the teacher's device. Samples whose frame is missing (black image) are not
        known here: the loss masks them with the per-sample camera-present flags.
        """
        x = _as_uint8_views(images)
        b, v, h, w, _ = x.shape
        if boxes is None:
            boxes = [letterbox_geometry(h, w, self.grid * VLA_PATCH, VLA_PATCH)[-1]] * v
        if len(boxes) != v:
            raise ValueError(f"got {len(boxes)} boxes for {v} views")
        present = [i for i, box in enumerate(boxes) if box is not None]

        targets = torch.zeros(b, v, self.grid, self.grid, self.dim, dtype=self.out_dtype, device=self.device)
        valid = torch.stack([box_mask(box, self.grid) for box in boxes]).to(self.device)
        if present:
            feats = self.features(x[:, present])  # [B, len(present), h, w, 2C]
            for j, i in enumerate(present):
                out = teacher_targets(feats[:, j], boxes[i], grid=self.grid, pe_scale=self.pe_scale)
                targets[:, i] = out.to(self.out_dtype)
        return targets, valid.unsqueeze(0).expand(b, -1, -1, -1).clone()
