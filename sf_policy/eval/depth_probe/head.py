"""The probe head: `DepthProbeHead`, a small DPT-style head from one camera's tokens to log-depth."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ResidualConvUnit(nn.Module):
    """DPT's fusion unit: x + conv(relu(conv(relu(x))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class DepthProbeHead(nn.Module):
    """Visual tokens of one camera [B, grid², D] + its slot [B] → log-depth [B, out_size, out_size].

    DPT-style, one scale: reassemble the tokens into a feature map (LayerNorm + Linear per
    token), then (residual conv unit, ×2 bilinear upsample, 3×3 conv) per octave, halving
    the channels (not below 32), and a small conv head, shared by the cameras. Each camera
    slot adds a learned log-depth offset, initialised to the train set's mean log-depth of
    that camera (``init_log_depth``), and the last conv starts at zero: before training the
    probe IS the constant per-camera predictor of the report, and every gain over it comes
    from the tokens. (Which slot a map belongs to is known without looking at the tokens.)
    """

    def __init__(self, dim: int, grid: int = 16, out_size: int = 64, channels: int = 128,
                 init_log_depth: Sequence[float] = (0.0, 0.0, 0.0)) -> None:
        super().__init__()
        octaves = math.log2(out_size / grid)
        if octaves < 0 or octaves != int(octaves):
            raise ValueError(f"out_size must be grid × a power of two (grid {grid}), got {out_size}")
        self.grid = grid
        self.reassemble = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, channels))
        stages: list[nn.Module] = []
        ch = channels
        for _ in range(int(octaves)):
            nxt = max(ch // 2, min(ch, 32))
            stages += [ResidualConvUnit(ch), nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       nn.Conv2d(ch, nxt, 3, padding=1)]
            ch = nxt
        self.fuse = nn.Sequential(*stages, ResidualConvUnit(ch))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU(), nn.Conv2d(ch, 1, 1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        self.camera_offset = nn.Parameter(torch.tensor([float(v) for v in init_log_depth]))

    def forward(self, tokens: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        b, n, _ = tokens.shape
        if n != self.grid * self.grid:
            raise ValueError(f"expected {self.grid ** 2} tokens per camera, got {n}")
        x = self.reassemble(tokens.float())  # [B, g², C]
        x = x.transpose(1, 2).reshape(b, -1, self.grid, self.grid)
        return self.head(self.fuse(x))[:, 0] + self.camera_offset[camera][:, None, None]
