"""SpatialAligner: the whole Spatial Forcing alignment head in one nn.Module.

    x      = hidden_states[layer][:, :768]           (or the gated mix of several layers)
    pred   = Projector(x)                            [B, 768, T]
    L_align= alignment_loss(pred, targets, valid)
    L      = L_action + α · L_align                  (α = 0.5 by default; `combine`)

It is a plain nn.Module owned by the trainer: its parameters (projector, optional gate) go
into the optimiser AND into gradient clipping, and its state_dict is saved with the
checkpoint. The official code did neither (the projector was missing from checkpoints and
from clipping); here a run can be resumed exactly and the clip bounds every trained weight.
The aligner is used only for training: the deployed policy never needs it or the teacher.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from sf_policy.align.capture import LayerCapture
from sf_policy.align.gating import LayerGate
from sf_policy.align.grid import NUM_VISUAL_TOKENS
from sf_policy.align.loss import alignment_loss
from sf_policy.align.projector import NORMS, Projector


@dataclass
class AlignConfig:
    alpha: float = 0.5  # weight of L_align in the total loss (paper default)
    layer: int = 12  # hidden_states index to align (0 = embeddings); π0 recipe: 12 of 18
    norm: str = "layer"  # projector input norm: "layer" (official code) or "batch" (paper text)
    teacher_dim: int = 2048  # VGGT aggregator width (frame ‖ global)
    hidden_dim: int = 2048
    pe_scale: float = 0.1  # sin-cos PE added to the teacher tokens (used when targets are built)
    adaptive: bool = False  # appendix G: learn a softmax mix over `adaptive_layers` instead of `layer`
    adaptive_layers: tuple[int, ...] = field(default_factory=lambda: tuple(range(1, 19)))

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"align.norm must be one of {NORMS}, got {self.norm!r}")
        if self.alpha < 0:
            raise ValueError(f"align.alpha must be >= 0, got {self.alpha}")
        self.adaptive_layers = tuple(int(k) for k in self.adaptive_layers)
        if self.adaptive and not self.adaptive_layers:
            raise ValueError("align.adaptive needs at least one layer in adaptive_layers")

    @property
    def capture_layers(self) -> tuple[int, ...]:
        """The hidden_states indices the aligner reads."""
        return self.adaptive_layers if self.adaptive else (self.layer,)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AlignOutput:
    loss: torch.Tensor  # scalar, float32, in the graph (unweighted: multiply by α or use combine)
    per_sample: torch.Tensor  # [B] float32; 0 for samples without valid tokens
    cosine_mean: torch.Tensor  # detached scalar = 1 − loss, for logging
    layer_weights: torch.Tensor | None  # detached batch-mean gate weights [L] (adaptive), else None


class SpatialAligner(nn.Module):
    def __init__(self, config: AlignConfig, vla_dim: int) -> None:
        super().__init__()
        self.config = config
        self.projector = Projector(vla_dim, config.teacher_dim, config.hidden_dim, config.norm)
        self.gate = LayerGate(len(config.adaptive_layers), vla_dim) if config.adaptive else None

    @classmethod
    def for_model(cls, model: nn.Module, config: AlignConfig) -> SpatialAligner:
        """An aligner sized for a PI0ForConditionalGeneration's VLM width."""
        return cls(config, model.config.vlm_config.text_config.hidden_size)

    def _tokens(self, captured: dict[int, torch.Tensor], valid: torch.Tensor) -> torch.Tensor:
        missing = [k for k in self.config.capture_layers if k not in captured]
        if missing:
            raise KeyError(f"no captured tokens for hidden_states {missing} (is the LayerCapture attached?)")
        if self.gate is None:
            return captured[self.config.layer]
        return self.gate([captured[k] for k in self.config.adaptive_layers], valid)

    def forward(self, captured: dict[int, torch.Tensor], targets: torch.Tensor, valid: torch.Tensor) -> AlignOutput:
        """captured: k → [B, 768, D]; targets [B, 3, 16, 16, T] or [B, 768, T]; valid same layout, bool."""
        b = targets.shape[0]
        targets = targets.reshape(b, -1, targets.shape[-1])
        valid = valid.reshape(b, -1).to(torch.bool)
        if targets.shape[1] != valid.shape[1]:
            raise ValueError(f"targets have {targets.shape[1]} tokens, valid mask {valid.shape[1]}")
        x = self._tokens(captured, valid.to(targets.device))
        if x.shape[1] != targets.shape[1]:
            raise ValueError(f"captured {x.shape[1]} visual tokens but targets cover {targets.shape[1]}")
        valid = valid.to(x.device)
        pred = self.projector(x, valid)
        loss, per_sample = alignment_loss(pred, targets.to(x.device), valid)
        weights = self.gate.mean_weights() if self.gate is not None else None
        return AlignOutput(loss, per_sample, (1.0 - loss).detach(), weights)

    def combine(self, action_loss: torch.Tensor, out: AlignOutput) -> torch.Tensor:
        """L = L_action + α · L_align."""
        return action_loss + self.config.alpha * out.loss


def attach(model: nn.Module, config: AlignConfig, n_visual: int = NUM_VISUAL_TOKENS) -> LayerCapture:
    """Hook the layers `config` aligns on a transformers PI0ForConditionalGeneration.

    The capture clears itself at the start of each language-model forward, so after
    `model(...)` its `.outputs` hold exactly this step's tokens. Call `.remove()` to detach.
    A peft wrapper is looked through (the hooks go on the wrapped model's layers).
    """
    if hasattr(model, "get_base_model"):  # a peft.PeftModel wrapping the policy (LoRA)
        model = model.get_base_model()
    lm = model.model.vlm.language_model
    return LayerCapture(lm.layers, config.capture_layers, n_visual=n_visual, final_norm=lm.norm, root=lm)
