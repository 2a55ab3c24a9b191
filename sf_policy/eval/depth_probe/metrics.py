"""The probe's metrics: AbsRel, RMSE and δ<1.25 over valid pixels, per camera and overall, and the
constant per-camera predictor that says what "no depth information" scores."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def depth_metrics(pred: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor) -> dict[str, float | int | None]:
    """AbsRel, RMSE (m) and δ<1.25 over the valid pixels (pooled); None where there are none."""
    p, d = pred[valid].double(), depth[valid].double()
    if p.numel() == 0:
        return {"abs_rel": None, "rmse": None, "delta1": None, "pixels": 0}
    ratio = torch.maximum(p / d, d / p)
    return {"abs_rel": _finite(((p - d).abs() / d).mean()), "rmse": _finite((p - d).pow(2).mean().sqrt()),
            "delta1": _finite((ratio < 1.25).double().mean()), "pixels": int(p.numel())}


def metrics_by_camera(pred: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor,
                      roles: Sequence[str]) -> dict[str, dict]:
    """pred/depth/valid [N, C, S, S] → {"overall": ..., role: ...}."""
    result = {"overall": depth_metrics(pred, depth, valid)}
    for c, role in enumerate(roles):
        result[role] = depth_metrics(pred[:, c], depth[:, c], valid[:, c])
    return result


def mean_log_depth(depth: torch.Tensor, valid: torch.Tensor, idx: np.ndarray) -> list[float]:
    """Per camera, the mean log-depth over the valid pixels of frames ``idx`` (all cameras' where one has none)."""
    overall = torch.log(depth[idx][valid[idx]]).mean()
    means = []
    for c in range(depth.shape[1]):
        d, m = depth[idx, c], valid[idx, c]
        means.append(float(torch.log(d[m]).mean() if m.any() else overall))
    return means


def constant_prediction(depth: torch.Tensor, valid: torch.Tensor, train_idx: np.ndarray,
                        test_idx: np.ndarray) -> torch.Tensor:
    """The no-information reference: per camera, the train set's geometric mean depth, everywhere
    (what the untrained probe predicts)."""
    pred = torch.ones(len(test_idx), *depth.shape[1:])
    for c, mean in enumerate(mean_log_depth(depth, valid, train_idx)):
        pred[:, c] = math.exp(mean)
    return pred


def _finite(value: float) -> float | None:
    """JSON has no NaN: a diverged loss is reported as null."""
    value = float(value)
    return value if math.isfinite(value) else None
