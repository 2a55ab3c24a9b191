"""Chunk latency: the deployed inference path vs. transformers' own ``sample_actions``.

All variants run on the same processed inputs (three cameras, a prompt, the state) with the
same noise and number of flow-matching steps, interleaved round by round so that load on the
machine hits them alike:

* ``transformers``: ``PI0ForConditionalGeneration.sample_actions`` alone on pre-processed tensors;
* ``fast``: our ``FastSampler`` on the same tensors (model-only, the like-for-like ratio);
* ``ours``: what the policy node calls per chunk (``Policy.predict``: processor + fast sampler +
  un-normalisation), end to end from uint8 camera images;
* ``compiled`` (``--compile``): ``ours`` with the denoising loop ``torch.compile``d (CPU and GPU)
  and, on a GPU, captured as one CUDA graph (``fast`` and ``ours`` capture a graph on a GPU too).

The tiny config runs on CPU; ``--preset full`` builds a random full-size π0 in bf16 on CUDA (no
weights needed) and refuses to run without a GPU.

  .venv/bin/python bench/inference.py [--preset tiny|full] [--repeats 20] [--steps 10] [--compile]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

from sf_policy.topics import CAMERA_ROLES  # noqa: E402


def build_policy(preset: str, workdir: Path):
    from sf_policy.model.policy import Policy, PolicyConfig
    from sf_policy.model.tokenizer import tiny_tokenizer

    tokenizer = tiny_tokenizer(workdir / "tokenizer")
    stats = {key: {"mean": np.zeros(14, np.float32), "std": np.ones(14, np.float32)}
             for key in ("observation.state", "action")}
    if preset == "tiny":
        return Policy.build(PolicyConfig(tiny=True), stats=stats, tokenizer=tokenizer)
    if not torch.cuda.is_available():
        raise SystemExit("--preset full needs a CUDA GPU (a random 3.5 B π0 in bf16); use --preset tiny on CPU")
    import sf_policy.model.policy as policy_mod
    from transformers import PI0Config, PI0ForConditionalGeneration

    # A random full-size π0 with the tiny tokenizer's vocabulary ids in range (the shapes and
    # the compute are π0's; the weights are not needed to time it).
    def full_pi0(config, tokenizer=None):
        cfg = PI0Config()
        cfg.vlm_config.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
        with torch.device("cuda"):
            return PI0ForConditionalGeneration(cfg).to(torch.bfloat16)

    original, policy_mod.build_pi0 = policy_mod.build_pi0, full_pi0
    try:
        return Policy.build(PolicyConfig(dtype="bfloat16"), stats=stats, tokenizer=tokenizer)
    finally:
        policy_mod.build_pi0 = original


def run(preset: str, repeats: int, warmup: int, steps: int, compile: bool) -> dict:
    import copy

    from sf_policy.model.sampling import FastSampler

    with tempfile.TemporaryDirectory() as tmp:
        policy = build_policy(preset, Path(tmp)).eval()
        device = policy.device
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        rng = np.random.default_rng(0)
        sample = {"images": {r: rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for r in CAMERA_ROLES},
                  "state": np.zeros(14, np.float32), "prompt": "lift the pot by both handles"}
        inputs = policy._inputs(policy.processor([sample]))
        noise = policy.noise_like(1).to(policy.dtype)
        fast = FastSampler(policy.pi0)
        variants = {
            "transformers": lambda: policy.pi0.sample_actions(**inputs, noise=noise, num_steps=steps),
            "fast": lambda: fast.sample(inputs, noise, steps),
            "ours": lambda: policy.predict([sample], num_steps=steps),
        }
        reference = variants["transformers"]()
        max_diff = float((fast.sample(inputs, noise, steps) - reference).abs().max())
        if compile:
            compiled = copy.copy(policy)  # same modules, its own sampler settings
            compiled.configure_inference(compile=True)
            t0 = time.perf_counter()
            compiled.predict([sample], num_steps=steps)
            compile_s = time.perf_counter() - t0
            variants["compiled"] = lambda: compiled.predict([sample], num_steps=steps)
        times = {name: [] for name in variants}
        with torch.no_grad():
            for round_ in range(warmup + repeats):  # interleaved: load hits every variant alike
                for name, fn in variants.items():
                    sync()
                    t0 = time.perf_counter()
                    fn()
                    sync()
                    if round_ >= warmup:
                        times[name].append((time.perf_counter() - t0) * 1e3)
    ms = {name: np.array(t) for name, t in times.items()}
    spread = {name: {"p50": round(float(np.percentile(t, 50)), 2), "p99": round(float(np.percentile(t, 99)), 2)}
              for name, t in ms.items()}
    base = float(np.median(ms["transformers"]))
    result = {"preset": preset, "device": str(device), "dtype": str(policy.dtype), "steps": steps,
              "repeats": repeats, "cameras": "3 x 640x480 (letterboxed to 224)", "latency_ms": spread,
              "speedup_p50_vs_transformers": {name: round(base / float(np.median(t)), 3)
                                              for name, t in ms.items() if name != "transformers"},
              "fast_vs_transformers_max_abs_diff": max_diff,
              "note": "transformers and fast: model call on processed tensors; ours and compiled: uint8 images in, "
                      "absolute joint targets out (processor + sampler + un-normalisation)"}
    if compile:
        result["compile_seconds"] = round(compile_s, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile'd denoising loop "
                                                                "(compiles first: ~100 s on 2 CPU cores)")
    parser.add_argument("--seconds", type=float, default=None, help="(ignored; accepted like the other benches)")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args()
    result = run(args.preset, args.repeats, args.warmup, args.steps, args.compile)
    print(f"chunk inference, {result['preset']} on {result['device']} ({result['dtype']}), {args.steps} steps:")
    for name, t in result["latency_ms"].items():
        ratio = result["speedup_p50_vs_transformers"].get(name)
        print(f"  {name:13s} p50 {t['p50']:7.1f} ms  p99 {t['p99']:7.1f} ms" + (f"  {ratio:.2f}x" if ratio else ""))
    print(f"  fast vs transformers: max |difference| {result['fast_vs_transformers_max_abs_diff']:.2e}")
    print(f"written: {write_results('inference', result, args.results_dir)}")


if __name__ == "__main__":
    main()
