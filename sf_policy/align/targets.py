"""Teacher targets on the VLA patch grid: VGGT patch tokens + 2-D sin-cos PE, resampled.

The teacher (VGGT) sees each camera at its own resolution (e.g. 37×28 patches for a 4:3
image at 518 px wide), the VLA sees the same camera letterboxed on a 16×16 grid. To compare
them token by token the teacher's patch grid is stretched bilinearly onto the part of the
VLA grid that shows the image (the camera's `PatchBox`); the rest of the VLA grid is padding
and gets zeros (masked out of the loss).

The positional embedding is added on the teacher's own grid, BEFORE resampling (as in the
official Spatial Forcing code): the target then encodes "where in the image" with the same
frequencies whatever the camera's aspect ratio, and interpolation blends it like the features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sf_policy.align.grid import VLA_GRID, PatchBox

PE_SCALE = 0.1
PE_BASE = 10000.0


def _sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """[n] positions → [n, dim]: first dim/2 channels sin(p·ω_i), last dim/2 cos(p·ω_i)."""
    i = torch.arange(dim // 2, dtype=torch.float64)
    omega = 1.0 / PE_BASE ** (i / (dim // 2))  # ω_i = 10000^(-i / (dim/2)), i = 0 .. dim/2-1
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """MAE-style 2-D sin-cos positional embedding, float32 [h, w, dim].

    With q = dim/4 and ω_i = 10000^(-i/q), i = 0..q-1, for the patch at row r, column c:
        pe[r, c,    0 :  q] = sin(r·ω)     pe[r, c, 2q : 3q] = sin(c·ω)
        pe[r, c,   q : 2q] = cos(r·ω)     pe[r, c, 3q : 4q] = cos(c·ω)
    i.e. the first half of the channels encodes the row, the second half the column, each
    as [sin | cos] of the integer patch index (0-based, unnormalised, as in MAE).
    """
    if dim % 4:
        raise ValueError(f"sincos_2d needs dim divisible by 4, got {dim}")
    rows = _sincos_1d(torch.arange(h), dim // 2)  # [h, dim/2]
    cols = _sincos_1d(torch.arange(w), dim // 2)  # [w, dim/2]
    pe = torch.cat([rows[:, None, :].expand(h, w, -1), cols[None, :, :].expand(h, w, -1)], dim=-1)
    return pe.to(torch.float32)


def teacher_targets(
    patch_tokens: torch.Tensor, box: PatchBox, grid: int = VLA_GRID, pe_scale: float = PE_SCALE
) -> torch.Tensor:
    """Teacher patch tokens [N, h, w, D] → alignment targets [N, grid, grid, D].

    target = resize_bilinear(tokens + pe_scale · sincos_2d(h, w, D), size=(box.rows, box.cols),
    align_corners=True) placed at box's rows/cols, zeros elsewhere. With align_corners=True
    the four corner patches of the box equal the teacher's corner tokens (+PE) exactly.
    Computed in float32; returned in the input dtype (bf16 caches stay bf16).
    """
    if patch_tokens.ndim != 4:
        raise ValueError(f"patch_tokens must be [N, h, w, D], got {tuple(patch_tokens.shape)}")
    if box.row1 > grid or box.col1 > grid:
        raise ValueError(f"{box} does not fit a {grid}x{grid} grid")
    n, h, w, d = patch_tokens.shape
    out = torch.zeros(n, grid, grid, d, dtype=torch.float32, device=patch_tokens.device)
    if not box.empty:
        x = patch_tokens.to(torch.float32)
        if pe_scale:
            x = x + pe_scale * sincos_2d(h, w, d).to(x.device)
        x = x.permute(0, 3, 1, 2)  # [N, D, h, w] for interpolate
        x = F.interpolate(x, size=(box.rows, box.cols), mode="bilinear", align_corners=True)
        out[:, box.row0 : box.row1, box.col0 : box.col1] = x.permute(0, 2, 3, 1)
    return out.to(patch_tokens.dtype)
