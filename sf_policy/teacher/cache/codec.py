"""The stored form of the tokens: raw bf16 bit patterns, or fp8 e4m3 with a float32 scale per token."""

from __future__ import annotations

import numpy as np
import torch

from sf_policy.teacher.cache.store import SCALES, TARGETS

FP8_MAX = 448.0  # largest finite float8_e4m3fn


def encode(tokens: torch.Tensor, storage: str) -> dict[str, np.ndarray]:
    """float tokens [B, T, D] (any device) → the numpy arrays stored for them (file name -> array).

    fp8: per-token scale = max|x| / 448 so the token's largest value maps to e4m3's largest
    finite number; every element then keeps e4m3's 3 mantissa bits (≈ 2-4 % relative error)
    whatever the token's magnitude. A plain cast would clip everything beyond ±448 (torch
    saturates) and flush values below 2^-9 to zero; the scale costs 4 bytes per 2048.
    """
    x = tokens.float()
    if storage == "bf16":
        return {TARGETS: x.to(torch.bfloat16).view(torch.int16).cpu().numpy()}
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30) / FP8_MAX
    q = (x / scale).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return {TARGETS: q.view(torch.uint8).cpu().numpy(), SCALES: scale.squeeze(-1).cpu().numpy()}


def decode(arrays: dict[str, np.ndarray], storage: str) -> torch.Tensor:
    """Inverse of `encode`: bf16 tokens for bf16 storage, float32 for fp8."""
    raw = torch.from_numpy(np.ascontiguousarray(arrays[TARGETS]))
    if storage == "bf16":
        return raw.view(torch.bfloat16)
    scale = torch.from_numpy(np.ascontiguousarray(arrays[SCALES]))
    return raw.view(torch.float8_e4m3fn).float() * scale.unsqueeze(-1)
