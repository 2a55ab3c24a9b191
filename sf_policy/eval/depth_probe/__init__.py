"""Depth probe: how much metric depth can a small head read from a frozen VLA's visual tokens?

The Spatial Forcing paper (figure 3) freezes a VLA, trains a DPT-style depth head on its
visual tokens and shows that an SF-trained model's tokens carry far more depth than the
baseline's. This package does the same for our checkpoints, on frames of the MuJoCo twin,
whose renderer gives exact metric depth per camera:

1. Frames: the task's scripted expert plays a few seeded episodes in ``Twin(depth=True)``;
   one frame every ``every`` ticks keeps the three cameras' RGB, their depth maps and the
   puppet state. The split is by episode (the last seeds are held out), so the probe is
   tested on scenes it never saw. (Datasets keep at most a coarse depth for the geometry
   teacher, ``record_expert(geometry=True)``: the probe renders its own at full size.)
2. Targets: each depth map goes through the VLA's own letterbox geometry
   (``align.grid.letterbox_geometry``) and is sampled, nearest neighbour, at the pixel
   centres of an ``out_size``² canvas (64² by default: 4×4 pixels per 14-px patch).
   Nearest, not bilinear, so no depth is invented across object edges. A pixel is valid
   iff it lies inside the letterboxed content and 0 < depth < ``max_depth`` (the twin has
   no walls: rays that miss everything report the far clip plane, ~81 m).
3. Features: the checkpoint's policy, frozen, in eval mode. Its processor builds the usual
   prefix (3 letterboxed cameras + the task prompt); we run SigLIP, the prefix embedding
   and the VLM decoder with π0's prefix attention (exactly what ``sample_actions`` does
   before denoising) and copy ``hidden_states[k][:, :768]`` with ``align.LayerCapture``.
   The forward is cut right after layer k: later layers and the action expert are never run.
   Tokens are kept on the CPU in bfloat16 (768 × D per frame), computed once per checkpoint.
4. Probe: ``DepthProbeHead``, a small DPT-style head shared by the three cameras: a
   per-token LayerNorm + Linear "reassemble" to a 16×16 feature map, then residual conv
   units and ×2 bilinear upsampling to ``out_size``, predicting log-depth, plus a learned
   per-camera offset; untrained, it is exactly the constant reference below. Loss: the
   scale-invariant log loss (SILog) over valid pixels. AdamW with cosine decay for
   ``steps`` steps on batches of (frame, camera) maps.
5. Report: AbsRel, RMSE (m) and δ<1.25 over the held-out episodes' valid pixels (pooled),
   per camera and overall, next to a constant per-camera predictor (the train set's mean
   log-depth) that says what "no depth information" scores. Every checkpoint is probed on
   the same frames, split, layer, head initialisation and batch order, so differences come
   from the features alone.

The modules follow these steps: frames (1), targets (2), features (3), head and train (4),
metrics (5); probe runs steps 3 to 5 for one checkpoint, run does it for every checkpoint
and writes the report and the figures (plots).
"""

from __future__ import annotations

from .frames import collect_twin_frames, load_or_collect
from .run import run_depth_probe
from .train import ProbeConfig

__all__ = ["ProbeConfig", "collect_twin_frames", "load_or_collect", "run_depth_probe"]
