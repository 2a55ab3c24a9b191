"""Evaluation of trained checkpoints: open-loop replay of datasets and bags (``replay``),
closed-loop episodes in the twin (``sim``, with per-tick ``trace``s), the learning check
(``learn``), what a policy reads of a scene (``scene_reading``) and depth probing
(``depth_probe``).

Heavy imports (torch, transformers, MuJoCo, matplotlib) happen inside the submodules, so that
``import sf_policy.eval`` stays cheap.
"""

from __future__ import annotations
