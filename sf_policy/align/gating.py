"""Adaptive layer gating (Spatial Forcing, appendix G): let training pick the layer mix.

For candidate layers l = 1..L with visual tokens x_l [B, N, D]:
    P_l  = masked mean of x_l over the sample's valid tokens          [B, D]
    s_l  = M_g[l] · P_l                                                [B]
    w    = softmax_l(s)                                                [B, L]  (per sample)
    x̄   = Σ_l w_l · x_l                                               [B, N, D]
x̄ then goes through the projector instead of a single fixed layer. M_g ∈ R^{L×D} starts at
zero, so training starts from the uniform mix 1/L and moves from there. Scores and softmax
are computed in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class LayerGate(nn.Module):
    def __init__(self, num_layers: int, dim: int, init_std: float = 0.0) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.gate = nn.Parameter(torch.zeros(num_layers, dim))  # M_g
        if init_std:
            nn.init.normal_(self.gate, std=init_std)
        self.last_weights: torch.Tensor | None = None  # detached [B, L] of the latest forward, for logging

    def forward(self, layers: Sequence[torch.Tensor] | torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """layers: L tensors [B, N, D] (or one [B, L, N, D]); mask [B, N] bool → fused tokens [B, N, D]."""
        x = torch.stack(list(layers), dim=1) if not isinstance(layers, torch.Tensor) else layers  # [B, L, N, D]
        if x.shape[1] != self.num_layers:
            raise ValueError(f"gate built for {self.num_layers} layers, got {x.shape[1]}")
        xf = x.float()
        if mask is None:
            pooled = xf.mean(dim=2)
        else:
            m = mask.to(device=x.device, dtype=torch.float32)[:, None, :, None]  # [B, 1, N, 1]
            pooled = (xf * m).sum(dim=2) / m.sum(dim=2).clamp_min(1.0)  # [B, L, D]; no valid token → 0
        scores = (pooled * self.gate.float()).sum(-1)  # [B, L]
        weights = scores.softmax(dim=-1)
        self.last_weights = weights.detach()
        fused = (weights[:, :, None, None] * xf).sum(dim=1)
        return fused.to(x.dtype)

    def mean_weights(self) -> torch.Tensor | None:
        """Batch-mean layer weights [L] of the latest forward (None before the first)."""
        return None if self.last_weights is None else self.last_weights.mean(0)
