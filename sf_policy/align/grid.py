"""Letterbox geometry and visual-token masks on the VLA's patch grid.

The VLA sees every camera as a 224×224 letterboxed image: resized keeping its aspect ratio
so that the longer side is 224, centred, the rest black. SigLIP cuts it into 14-px patches,
a 16×16 grid (256 tokens) per camera slot; the prefix holds the 3 slots back to back, so
slot c owns token positions c*256 .. c*256+255 in row-major order.

Only patches that show the image carry information the 3-D teacher can be compared with,
so the alignment loss uses a mask built here. The rule is one line: a patch is valid iff
its centre lies inside the content rectangle. Everything is in integer pixels and patch
indices so that the image pipeline, the teacher cache and the loss agree bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

VLA_IMAGE_SIZE = 224
VLA_PATCH = 14
VLA_GRID = VLA_IMAGE_SIZE // VLA_PATCH  # 16
NUM_SLOTS = 3  # camera slots in the prefix (sf_policy.topics.CAMERA_ROLES order)
TOKENS_PER_SLOT = VLA_GRID * VLA_GRID  # 256
NUM_VISUAL_TOKENS = NUM_SLOTS * TOKENS_PER_SLOT  # 768


@dataclass(frozen=True)
class PatchBox:
    """The valid patches of one letterboxed image: rows [row0, row1) × cols [col0, col1)."""

    row0: int
    row1: int
    col0: int
    col1: int

    def __post_init__(self) -> None:
        if not (0 <= self.row0 <= self.row1 and 0 <= self.col0 <= self.col1):
            raise ValueError(f"PatchBox bounds must satisfy 0 <= row0 <= row1 and 0 <= col0 <= col1, got {self}")

    @property
    def rows(self) -> int:
        return self.row1 - self.row0

    @property
    def cols(self) -> int:
        return self.col1 - self.col0

    @property
    def empty(self) -> bool:
        return self.rows == 0 or self.cols == 0

    @classmethod
    def full(cls, grid: int = VLA_GRID) -> PatchBox:
        return cls(0, grid, 0, grid)


def _round_half_up(x: float) -> int:
    # Python's round() rounds half to even; image libraries don't. Be explicit.
    return int(math.floor(x + 0.5))


def _valid_range(offset: int, length: int, grid: int, patch: int) -> tuple[int, int]:
    """Half-open range of patch indices whose centre (i*patch + patch/2) is in [offset, offset+length)."""
    # Work in doubled pixels so that the half-pixel centre stays an integer.
    valid = [i for i in range(grid) if 2 * offset <= 2 * i * patch + patch < 2 * (offset + length)]
    if not valid:
        return 0, 0
    return valid[0], valid[-1] + 1


def letterbox_geometry(
    height: int, width: int, size: int = VLA_IMAGE_SIZE, patch: int = VLA_PATCH
) -> tuple[float, int, int, int, int, PatchBox]:
    """Where an image of `height`×`width` lands inside a `size`×`size` letterbox.

    Returns (scale, new_h, new_w, top, left, box): the image is resized by `scale` to
    new_h×new_w (longer side exactly `size`, the other rounded half-up, at least 1 px) and
    pasted at (top, left), centred with the odd pixel going to the bottom/right. `box` is
    its valid-patch rectangle on the (size // patch)² grid.

    Example: 480×640 (h×w) → scale 0.35, 168×224 at top 28 → patch rows 2..13, all 16 cols.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if size % patch:
        raise ValueError(f"letterbox size {size} is not a multiple of the patch size {patch}")
    scale = size / max(height, width)
    new_h = size if height >= width else max(1, min(size, _round_half_up(height * scale)))
    new_w = size if width >= height else max(1, min(size, _round_half_up(width * scale)))
    top = (size - new_h) // 2
    left = (size - new_w) // 2
    grid = size // patch
    row0, row1 = _valid_range(top, new_h, grid, patch)
    col0, col1 = _valid_range(left, new_w, grid, patch)
    return scale, new_h, new_w, top, left, PatchBox(row0, row1, col0, col1)


def box_mask(box: PatchBox | None, grid: int = VLA_GRID) -> torch.Tensor:
    """Bool [grid, grid]: True on the patches inside `box` (all False for None)."""
    mask = torch.zeros(grid, grid, dtype=torch.bool)
    if box is not None:
        if box.row1 > grid or box.col1 > grid:
            raise ValueError(f"{box} does not fit a {grid}x{grid} grid")
        mask[box.row0 : box.row1, box.col0 : box.col1] = True
    return mask


def visual_token_mask(
    boxes: Sequence[PatchBox | None], camera_present: torch.Tensor, grid: int = VLA_GRID
) -> torch.Tensor:
    """Bool [B, n_slots*grid²] over the prefix's visual tokens: which ones the alignment loss uses.

    `boxes` has one entry per camera slot (the same for every sample: the cameras' sizes are
    fixed per dataset); None marks a slot with no image at all. `camera_present` [B, n_slots]
    says per sample whether that camera's frame exists (a missing frame is fed as a black
    image whose tokens are also attention-masked). A token is valid iff its slot's camera is
    present and its patch lies in the slot's box.
    """
    camera_present = torch.as_tensor(camera_present, dtype=torch.bool)
    if camera_present.ndim != 2 or camera_present.shape[1] != len(boxes):
        raise ValueError(f"camera_present must be [B, {len(boxes)}], got {tuple(camera_present.shape)}")
    per_slot = torch.stack([box_mask(box, grid).flatten() for box in boxes])  # [S, grid²]
    mask = per_slot.unsqueeze(0).to(camera_present.device) & camera_present.unsqueeze(-1)  # [B, S, grid²]
    return mask.flatten(1)
