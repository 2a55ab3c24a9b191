"""The alignment loss: 1 − cosine similarity, averaged over valid tokens, then over samples.

    cos_bt   = <p_bt, t_bt> / (max(|p_bt|, eps) · max(|t_bt|, eps))        (float32)
    L_b      = mean_{t : mask_bt} (1 − cos_bt)                              per sample
    L_align  = mean_{b : any(mask_b)} L_b

Each sample weighs the same whatever its number of valid tokens (a sample with a missing
camera is not down-weighted), as in the paper. A sample with no valid token contributes
nothing, its per-sample value is reported as 0, and a batch with none at all gives a loss of
exactly 0 that is still connected to the graph (backward works, gradients are zero).

NaN safety: masked tokens are replaced by constants with torch.where BEFORE any arithmetic,
so garbage (even inf/NaN) on padding can neither reach the value nor the gradients, and norms
are clamped under the square root so zero vectors have finite derivatives.
"""

from __future__ import annotations

import torch

EPS = 1e-6


def token_cosine(pred: torch.Tensor, target: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Cosine similarity along the last dim in float32, finite (value and gradient) for zero vectors."""
    p, t = pred.float(), target.float()
    p_norm = p.square().sum(-1).clamp_min(eps * eps).sqrt()
    t_norm = t.square().sum(-1).clamp_min(eps * eps).sqrt()
    return (p * t).sum(-1) / (p_norm * t_norm)


def alignment_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, eps: float = EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """pred, target [B, N, D], mask [B, N] bool → (loss scalar, per_sample [B]), both float32."""
    if pred.shape != target.shape or pred.shape[:2] != mask.shape:
        raise ValueError(f"shapes disagree: pred {tuple(pred.shape)}, target {tuple(target.shape)}, mask {tuple(mask.shape)}")
    mask = mask.to(device=pred.device, dtype=torch.bool)
    target = target.to(pred.device)
    keep = mask.unsqueeze(-1)
    # Constant stand-ins on masked tokens: where() routes exactly zero gradient to them.
    pred = torch.where(keep, pred.float(), torch.ones((), device=pred.device))
    target = torch.where(keep, target.float(), torch.ones((), device=pred.device))
    per_token = torch.where(mask, 1.0 - token_cosine(pred, target, eps), torch.zeros((), device=pred.device))
    count = mask.sum(-1)  # [B]
    per_sample = per_token.sum(-1) / count.clamp_min(1)
    has_tokens = count > 0
    loss = (per_sample * has_tokens).sum() / has_tokens.sum().clamp_min(1)
    return loss, per_sample
