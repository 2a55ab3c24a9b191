"""The alignment projector: VLA visual tokens → the teacher's feature space.

    y = W2 · GELU(W1 · norm(x) + b1) + b2,   norm ∈ {LayerNorm (default), BatchNorm}

The official Spatial Forcing code uses LayerNorm, the paper's text says BatchNorm; both are
here. LayerNorm normalises each token on its own. BatchNorm normalises each feature channel
over the tokens of the batch, and padding/missing-camera tokens must not enter those
statistics: when a mask is given, only the valid tokens are gathered (x[mask] → [M, D]),
pass through the MLP, and are scattered back; masked positions come out as zeros (the loss
ignores them). This also skips the MLP's work on padding.

The projector is a trained part of the policy's training state: it is an nn.Module so that
its parameters are in the optimiser, in gradient clipping and in the checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("layer", "batch")


class Projector(nn.Module):
    def __init__(self, vla_dim: int, teacher_dim: int = 2048, hidden_dim: int = 2048, norm: str = "layer") -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"projector norm must be one of {NORMS}, got {norm!r}")
        self.norm_kind = norm
        self.norm = nn.LayerNorm(vla_dim) if norm == "layer" else nn.BatchNorm1d(vla_dim)
        self.fc1 = nn.Linear(vla_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, teacher_dim)

    def _mlp(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [M, D] (already the valid ones) → [M, teacher_dim]."""
        if self.norm_kind == "batch" and self.training and tokens.shape[0] < 2:
            # BatchNorm cannot estimate a variance from one token; use the running statistics.
            norm = self.norm
            x = F.batch_norm(tokens, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)
        else:
            x = self.norm(tokens)
        return self.fc2(F.gelu(self.fc1(x)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, N, D_vla], mask [B, N] bool (None = all valid) → [B, N, teacher_dim]."""
        if mask is None:
            b, n, d = x.shape
            return self._mlp(x.reshape(b * n, d)).reshape(b, n, -1)
        mask = mask.to(device=x.device, dtype=torch.bool)
        valid = x[mask]  # [M, D]: only these tokens exist for BatchNorm's statistics
        projected = self._mlp(valid)
        out = projected.new_zeros(*mask.shape, projected.shape[-1])
        out[mask] = projected
        return out
