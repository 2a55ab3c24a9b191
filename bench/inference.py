"""Chunk latency: the deployed inference path vs. transformers' own ``sample_actions``.

Both run on the same processed inputs (three cameras, a prompt, the state) with the same
noise and number of flow-matching steps; "ours" is what the policy node calls per chunk
(``Policy.predict``: processor + ``sample`` + un-normalisation), "transformers" is
``PI0ForConditionalGeneration.sample_actions`` alone on pre-processed tensors. The tiny
config runs on CPU; ``--preset full`` builds a random full-size π0 in bf16 on CUDA (no
weights needed) and refuses to run without a GPU.

  .venv/bin/python bench/inference.py [--preset tiny|full] [--repeats 20] [--steps 10]
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


def timed(fn, repeats: int, sync) -> np.ndarray:
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return np.array(times)


def run(preset: str, repeats: int, warmup: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        policy = build_policy(preset, Path(tmp)).eval()
        device = policy.device
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        rng = np.random.default_rng(0)
        sample = {"images": {r: rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for r in CAMERA_ROLES},
                  "state": np.zeros(14, np.float32), "prompt": "lift the pot by both handles"}
        batch = {k: v.to(device) for k, v in policy.processor([sample]).items()}
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask",
                                        "state")}
        inputs["pixel_values"] = inputs["pixel_values"].to(policy.dtype)
        inputs["state"] = inputs["state"].to(policy.dtype)
        noise = policy.noise_like(1).to(policy.dtype)

        def theirs():
            with torch.no_grad():
                policy.pi0.sample_actions(**inputs, noise=noise, num_steps=steps)

        def ours():
            policy.predict([sample], num_steps=steps)

        for fn in (theirs, ours):
            timed(fn, warmup, sync)
        t_theirs, t_ours = timed(theirs, repeats, sync), timed(ours, repeats, sync)
    spread = lambda t: {"p50": round(float(np.percentile(t, 50)), 2), "p99": round(float(np.percentile(t, 99)), 2)}  # noqa: E731
    return {"preset": preset, "device": str(device), "dtype": str(policy.dtype), "steps": steps, "repeats": repeats,
            "cameras": "3 x 640x480 (letterboxed to 224)", "ours_ms": spread(t_ours),
            "transformers_sample_actions_ms": spread(t_theirs),
            "speedup_p50": round(float(np.median(t_theirs) / np.median(t_ours)), 3),
            "note": "ours includes preprocessing and un-normalisation; transformers' is the model call alone"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=None, help="(ignored; accepted like the other benches)")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args()
    result = run(args.preset, args.repeats, args.warmup, args.steps)
    print(f"chunk inference, {result['preset']} on {result['device']} ({result['dtype']}), {args.steps} steps:")
    print(f"  ours p50/p99 {result['ours_ms']['p50']:.1f}/{result['ours_ms']['p99']:.1f} ms   "
          f"transformers sample_actions p50/p99 {result['transformers_sample_actions_ms']['p50']:.1f}/"
          f"{result['transformers_sample_actions_ms']['p99']:.1f} ms   speed-up {result['speedup_p50']:.2f}x")
    print(f"written: {write_results('inference', result, args.results_dir)}")


if __name__ == "__main__":
    main()
