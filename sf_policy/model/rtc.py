"""Real-time chunking: the next chunk inpainted toward the part of the current one that will
still execute (Black, Galliker, Levine 2025, "Real-Time Execution of Action Chunking Flow
Policies", Algorithm 1). Training-free: only the sampler changes.

While the next chunk is computed the robot keeps executing the current one. The first ``d``
steps of the new chunk (``d`` = the inference delay in control ticks) will never run: the old
chunk's steps run instead. RTC denoises the new chunk so that it agrees with the old one there
(weight 1), blends toward its own prediction over the rest of the old chunk (a weight decaying
exponentially to 0), and is free beyond it. Consecutive chunks then join without the jump a
switch or a linear cross-fade of two disagreeing plans makes.

Conventions. π0 integrates from noise at t = 1 to actions at t = 0: x_t = t·ε + (1 − t)·a,
velocity v = ε − a, x ← x − v/n. The paper's τ = 1 − t runs the other way, with velocity
a − ε = −v. Its guided step, in π0's terms:

    â = x − t·v(x, t)                           the chunk the model predicts from x
    g = ((Y − â) ⊙ W)ᵀ ∂â/∂x                     one vector-Jacobian product (a backward pass)
    v' = v − min(β, (1 − τ)/(τ·r²))·g,  τ = 1 − t, r² = (1 − τ)²/(τ² + (1 − τ)²)
    x ← x − v'/n

with Y the old chunk aligned to the new one's steps (model space: normalised, the new
observation's representation) and W the soft mask of Eq. 5:

    W_i = 1                                       i < d
    W_i = c_i (e^{c_i} − 1)/(e − 1),  c_i = (H − s − i)/(H − s − d + 1)     d ≤ i < H − s
    W_i = 0                                       i ≥ H − s

where H − s is how many steps of the old chunk are left from the new observation on. The
guidance weight is clipped at β (the paper uses β = 5; at t = 1 it is infinite unclipped).
``tests/test_rtc.py`` checks the sampler against a direct implementation of these equations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

#: The paper's clip on the guidance weight (its ablations: 5 works across its tasks).
MAX_GUIDANCE = 5.0


def prefix_weights(horizon: int, delay: int, available: int) -> np.ndarray:
    """W [horizon]: 1 over the first ``delay`` steps, decaying exponentially to 0 at ``available``
    (the old chunk's steps left from the new observation on; ``H − s`` in the paper), 0 after."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    available = int(min(max(available, 0), horizon))
    delay = int(min(max(delay, 0), available))
    weights = np.zeros(horizon, dtype=np.float64)
    weights[:delay] = 1.0
    steps = np.arange(delay, available)
    c = (available - steps) / (available - delay + 1)
    weights[delay:available] = c * np.expm1(c) / (math.e - 1.0)
    return weights


def guidance_weight(t: float, max_guidance: float = MAX_GUIDANCE) -> float:
    """min(β, (1 − τ)/(τ r²)) at π0's flow time t (τ = 1 − t)."""
    tau = 1.0 - t
    if tau <= 0.0:
        return float(max_guidance)
    r2 = (1.0 - tau) ** 2 / (tau ** 2 + (1.0 - tau) ** 2)
    if r2 <= 0.0:  # t = 0: the last step is never taken, but the formula must not divide by 0
        return float(max_guidance)
    return float(min(max_guidance, (1.0 - tau) / (tau * r2)))


@dataclass
class Guidance:
    """What the sampler inpaints toward: ``target`` [B, H, D] model-space actions (the old chunk
    aligned to the new one), ``weights`` [B, H, D] (W per step, 0 on padded action dims and
    where a sample has no old chunk), ``max_guidance`` β."""

    target: torch.Tensor
    weights: torch.Tensor
    max_guidance: float = MAX_GUIDANCE

    def to(self, device, dtype) -> Guidance:
        return Guidance(self.target.to(device, dtype), self.weights.to(device, dtype), self.max_guidance)


def guided_step(velocity, x: torch.Tensor, t: float, dt: float, guide: Guidance) -> torch.Tensor:
    """One Euler step of the guided flow. ``velocity(x) -> v`` must be differentiable in x."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        v = velocity(xg)
        predicted = xg - t * v
        residual = (guide.target - predicted) * guide.weights
        (g,) = torch.autograd.grad(predicted, xg, grad_outputs=residual)
    return (x + dt * (v.detach() - guidance_weight(t, guide.max_guidance) * g)).detach()
