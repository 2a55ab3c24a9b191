"""Spatial Forcing alignment: token masks, teacher targets, projector, loss, layer capture, gating.

Names are re-exported lazily: the policy's processor imports ``sf_policy.align.grid`` (the
letterbox contract) on the robot, and that must not load the training-only modules.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "aligner": ("AlignConfig", "AlignOutput", "SpatialAligner", "attach"),
    "capture": ("LayerCapture",),
    "gating": ("LayerGate",),
    "grid": ("NUM_VISUAL_TOKENS", "TOKENS_PER_SLOT", "VLA_GRID", "PatchBox", "box_mask", "letterbox_geometry",
             "visual_token_mask"),
    "loss": ("alignment_loss",),
    "projector": ("Projector",),
    "targets": ("sincos_2d", "teacher_targets"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
