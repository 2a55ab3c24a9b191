"""Evaluation of trained checkpoints: depth probing (``depth_probe``); more to come (open-loop replay,
closed-loop twin episodes).

Heavy imports (torch, transformers, MuJoCo, matplotlib) happen inside the submodules, so that
``import sf_policy.eval`` stays cheap.
"""

from __future__ import annotations
