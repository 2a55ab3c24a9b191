"""Fitting the probe: its settings (`ProbeConfig`), the SILog loss, training on the train frames'
(frame, camera) maps, and predicting depth with the trained head."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .head import DepthProbeHead
from .metrics import mean_log_depth
from .targets import MAX_DEPTH


def silog_loss(log_pred: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor, lam: float = 0.85) -> torch.Tensor:
    """Scale-invariant log loss (Eigen et al.): sqrt(mean(g²) − λ·mean(g)²), g = log pred − log true,
    over the valid pixels of the batch. λ < 1 keeps part of the scale error, so depth stays metric."""
    g = log_pred[valid] - torch.log(depth[valid])
    if g.numel() == 0:
        return log_pred.sum() * 0.0
    return (g.pow(2).mean() - lam * g.mean().pow(2)).clamp(min=1e-8).sqrt()


@dataclass
class ProbeConfig:
    steps: int = 300
    batch_size: int = 16  # (frame, camera) maps per step
    lr: float = 1e-3
    weight_decay: float = 1e-4
    channels: int = 128
    out_size: int = 64  # depth resolution on the 224² letterbox canvas (16 × 2^n)
    silog_lambda: float = 0.85
    max_depth: float = MAX_DEPTH
    seed: int = 0
    feature_batch: int = 8  # frames per VLM forward when extracting features
    log_every: int = 10  # loss-curve resolution in the report

    def to_dict(self) -> dict:
        return asdict(self)


def _slot_tokens(features: torch.Tensor, frame: torch.Tensor, camera: torch.Tensor, n_cams: int) -> torch.Tensor:
    """[B, grid², D]: the tokens of camera slot ``camera[b]`` of frame ``frame[b]`` (slot c owns c*256..)."""
    n, tokens, dim = features.shape
    return features.view(n, n_cams, tokens // n_cams, dim)[frame, camera]


def train_probe(features: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor, train_idx: np.ndarray,
                config: ProbeConfig, device: str | torch.device = "cpu") -> tuple[DepthProbeHead, list[float]]:
    """Fit a ``DepthProbeHead`` on the (frame, camera) maps of ``train_idx``; returns it and the per-step loss."""
    n_cams = depth.shape[1]
    grid = math.isqrt(features.shape[1] // n_cams)
    pairs = torch.tensor([(i, c) for i in train_idx for c in range(n_cams) if valid[i, c].any()], dtype=torch.long)
    if len(pairs) == 0:
        raise ValueError("no training frame has valid depth")
    init = mean_log_depth(depth, valid, train_idx)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # the same head initialisation for every checkpoint of a width
        head = DepthProbeHead(features.shape[-1], grid, config.out_size, config.channels, init).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(config.steps, 1), eta_min=config.lr * 0.05)
    generator = torch.Generator().manual_seed(config.seed)  # the same batches for every checkpoint
    losses = []
    head.train()
    for _ in range(config.steps):
        pick = pairs[torch.randint(len(pairs), (config.batch_size,), generator=generator)]
        tokens = _slot_tokens(features, pick[:, 0], pick[:, 1], n_cams).to(device)
        target, mask = depth[pick[:, 0], pick[:, 1]].to(device), valid[pick[:, 0], pick[:, 1]].to(device)
        loss = silog_loss(head(tokens, pick[:, 1].to(device)), target, mask, config.silog_lambda)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    head.eval()
    return head, losses


@torch.no_grad()
def predict_depth(head: DepthProbeHead, features: torch.Tensor, frames: Sequence[int], cameras: Sequence[int],
                  n_cams: int, batch_size: int = 32) -> torch.Tensor:
    """Predicted depth (metres) [len, S, S] for the (frame, camera) pairs, on the CPU."""
    device = next(head.parameters()).device
    frame_t, camera_t = torch.as_tensor(frames, dtype=torch.long), torch.as_tensor(cameras, dtype=torch.long)
    out = []
    for s in range(0, len(frame_t), batch_size):
        tokens = _slot_tokens(features, frame_t[s:s + batch_size], camera_t[s:s + batch_size], n_cams)
        out.append(head(tokens.to(device), camera_t[s:s + batch_size].to(device)).exp().cpu())
    return torch.cat(out) if out else torch.zeros(0)
