"""Loading a checkpoint for acting: one place that picks device, dtype and sampler, shared by
the policy node and ``sf serve`` so both run the model the same way."""

from __future__ import annotations

from pathlib import Path


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine (use auto or cpu)")
    return device


def load_for_inference(checkpoint: str | Path, *, device: str = "auto", dtype: str | None = None,
                       sampler: str = "fast", compile: bool = False, cuda_graph: bool = True,
                       noise_scale: float = 1.0, max_guidance: float | None = None):
    """The checkpoint's policy in eval mode on ``device``: bfloat16 on a GPU and float32 on CPU
    unless ``dtype`` says otherwise; ``sampler``/``compile``/``cuda_graph``/``noise_scale``/
    ``max_guidance`` (real-time chunking's β; None: the paper's) as in
    ``Policy.configure_inference``. Imports no teacher code."""
    from sf_policy.train.checkpoint import load_policy

    target = resolve_device(device)
    chosen = dtype or ("bfloat16" if target.startswith("cuda") else "float32")
    policy = load_policy(checkpoint, dtype=chosen).to(target).eval()
    guidance = {} if max_guidance is None else {"max_guidance": max_guidance}
    policy.configure_inference(sampler=sampler, compile=compile, cuda_graph=cuda_graph, noise_scale=noise_scale,
                               **guidance)
    return policy
