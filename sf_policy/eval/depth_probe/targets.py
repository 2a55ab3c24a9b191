"""The probe's targets: each depth map as the VLA sees its image, letterboxed and sampled (nearest)
on an ``out_size``² canvas, with the mask of the pixels that have a depth reading."""

from __future__ import annotations

import numpy as np
import torch

from ...align.grid import VLA_IMAGE_SIZE, VLA_PATCH, letterbox_geometry
from .frames import DepthFrames

#: Depths at or beyond this many metres are "no reading" (sky, far clip plane, sensor limit).
MAX_DEPTH = 10.0


def letterbox_nearest(array: np.ndarray, out_size: int = 64, fill: float = 0,
                      image_size: int = VLA_IMAGE_SIZE, patch: int = VLA_PATCH) -> tuple[np.ndarray, np.ndarray]:
    """``array`` [H, W, ...] as the VLA sees it: letterboxed into ``image_size``², then sampled
    (nearest) at the centres of an ``out_size``² grid of pixels over that canvas.

    Returns (values [out, out, ...], content mask [out, out] bool); padding pixels are ``fill``.
    The geometry is ``letterbox_geometry``'s, so the content mask agrees with the PatchBox
    wherever patch edges fall on output pixel edges (e.g. 480×640 at 64²: rows 8..55).
    """
    height, width = array.shape[:2]
    _, new_h, new_w, top, left, _ = letterbox_geometry(height, width, image_size, patch)
    centres = (np.arange(out_size) + 0.5) * (image_size / out_size)  # canvas pixel coordinates
    ys, xs = centres - top, centres - left
    inside_y, inside_x = (ys >= 0) & (ys < new_h), (xs >= 0) & (xs < new_w)
    rows = np.clip(np.floor(ys * height / new_h), 0, height - 1).astype(np.int64)
    cols = np.clip(np.floor(xs * width / new_w), 0, width - 1).astype(np.int64)
    values = array[rows[:, None], cols[None, :]].copy()
    mask = inside_y[:, None] & inside_x[None, :]
    values[~mask] = fill
    return values, mask


def depth_targets(frames: DepthFrames, out_size: int = 64,
                  max_depth: float = MAX_DEPTH) -> tuple[torch.Tensor, torch.Tensor]:
    """(depth [N, C, S, S] float32 metres, valid [N, C, S, S] bool) on the letterbox canvas."""
    n, c = frames.depth.shape[:2]
    depth = np.zeros((n, c, out_size, out_size), np.float32)
    valid = np.zeros((n, c, out_size, out_size), bool)
    for i in range(n):
        for k in range(c):
            d, content = letterbox_nearest(frames.depth[i, k], out_size)
            depth[i, k] = d
            valid[i, k] = content & (d > 0) & (d < max_depth) & np.isfinite(d)
    return torch.from_numpy(depth), torch.from_numpy(valid)
