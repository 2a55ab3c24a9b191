"""Real-time chunking (sf_policy/model/rtc.py) against a direct implementation of the paper's
equations, on the tiny real π0: the fast sampler's guided loop (cached prefix, in-place suffix
keys/values, one vector-Jacobian product per step) must equal Algorithm 1 computed with
transformers' own forward (the prefix recomputed at every step) and the weights written out
from Eq. 5."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sf_policy.model.rtc import Guidance, guidance_weight, prefix_weights
from sf_policy.model.sampling import FastSampler
from test_sampling import _policy, _samples, tokenizer_dir  # noqa: F401 (fixture)


def eq5(horizon: int, d: int, available: int) -> list[float]:
    """Eq. 5 of Black et al. 2025, one step at a time."""
    out = []
    for i in range(horizon):
        if i < d:
            out.append(1.0)
        elif i < available:
            c = (available - i) / (available - d + 1)
            out.append(c * (math.exp(c) - 1) / (math.e - 1))
        else:
            out.append(0.0)
    return out


@pytest.mark.parametrize("d, available", [(0, 0), (3, 20), (5, 5), (0, 50), (10, 35)])
def test_soft_mask_is_eq_5(d, available):
    np.testing.assert_allclose(prefix_weights(50, d, available), eq5(50, d, available), rtol=0, atol=1e-12)


def test_guidance_weight_is_clipped_and_follows_the_schedule():
    assert guidance_weight(1.0, 5.0) == 5.0  # pure noise: infinite, clipped
    for t in (0.9, 0.5, 0.3, 0.1):
        tau = 1 - t
        r2 = (1 - tau) ** 2 / (tau ** 2 + (1 - tau) ** 2)
        assert guidance_weight(t, 100.0) == pytest.approx((1 - tau) / (tau * r2))
        assert guidance_weight(t, 0.5) == 0.5


def direct_rtc(pi0, inputs, noise, target, weights, beta, num_steps):
    """Algorithm 1 with transformers' PI0 forward as v: with noise = actions = x the model's
    x_t is x itself, so its logits are the velocity at x (the prefix is recomputed each call)."""
    x = noise.clone()
    for k in range(num_steps):
        t = 1.0 - k / num_steps
        with torch.enable_grad():
            xg = x.clone().requires_grad_(True)
            v = pi0(**inputs, noise=xg, timestep=torch.full((x.shape[0],), t), actions=xg).logits
            predicted = xg - t * v
            error = (weights * (target - predicted)).detach()
            (g,) = torch.autograd.grad((error * predicted).sum(), xg)
        tau = 1.0 - t
        w = beta if tau == 0 else min(beta, (1 - tau) / (tau * ((1 - tau) ** 2 / (tau ** 2 + (1 - tau) ** 2))))
        x = x + (-1.0 / num_steps) * (v.detach() - w * g)
    return x


def test_fast_guided_sampler_equals_the_direct_implementation(tokenizer_dir):  # noqa: F811
    policy = _policy(tokenizer_dir)
    inputs = policy._inputs(policy.processor(_samples()))
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 50, 32, generator=gen)
    target = torch.randn(2, 50, 32, generator=gen)
    weights = torch.zeros(2, 50, 32)
    weights[0, :, :14] = torch.from_numpy(prefix_weights(50, 4, 30))[:, None]
    weights[1, :, :14] = torch.from_numpy(prefix_weights(50, 8, 20))[:, None]
    fast = FastSampler(policy.pi0).sample(inputs, noise, 5, guide=Guidance(target, weights, 5.0))
    direct = direct_rtc(policy.pi0, inputs, noise, target, weights, 5.0, 5)
    torch.testing.assert_close(fast, direct, rtol=0, atol=2e-5)
    # And the guidance does something: without it the chunk is another one.
    plain = FastSampler(policy.pi0).sample(inputs, noise, 5)
    assert (fast - plain).abs().max() > 1e-2
    zero = FastSampler(policy.pi0).sample(inputs, noise, 5, guide=Guidance(target, torch.zeros_like(weights), 5.0))
    torch.testing.assert_close(zero, plain, rtol=0, atol=1e-5)  # W = 0: the plain sampler


def test_a_guided_chunk_follows_the_old_one_where_it_will_still_execute(tokenizer_dir):  # noqa: F811
    """Through Policy.predict with absolute prefix_actions: over the first d steps the new
    chunk is much closer to the old chunk than the unguided one (the paper's point)."""
    policy = _policy(tokenizer_dir)
    samples = _samples()[:1]
    gen = torch.Generator().manual_seed(3)
    old = policy.predict(samples, num_steps=10, generator=gen)[0]
    old = old + 0.05  # a previous chunk the model would not produce by itself
    guided = [dict(samples[0], prefix_actions=old[:30], inference_delay=6)]
    new = policy.predict(guided, num_steps=10, generator=torch.Generator().manual_seed(4))[0]
    free = policy.predict(samples, num_steps=10, generator=torch.Generator().manual_seed(4))[0]
    gap_guided, gap_free = np.abs(new[:6] - old[:6]).max(), np.abs(free[:6] - old[:6]).max()
    assert gap_guided < 0.2 * gap_free, (gap_guided, gap_free)


@pytest.mark.parametrize("bad, message", [
    ({"inference_delay": -1}, "inference_delay must be an integer >= 0"),
    ({"inference_delay": 2.5}, "inference_delay must be an integer >= 0"),
    ({"prefix_actions": np.full((5, 14), np.nan)}, "prefix_actions: actions: contains NaN"),
    ({"prefix_actions": np.zeros((5, 13))}, r"prefix_actions: actions: expected \[T, 14\]"),
])
def test_bad_guidance_inputs_are_named(tokenizer_dir, bad, message):  # noqa: F811
    policy = _policy(tokenizer_dir)
    sample = dict(_samples()[0], prefix_actions=np.zeros((5, 14)), inference_delay=2) | bad
    with pytest.raises(ValueError, match=message):
        policy.predict([sample], num_steps=1)


@pytest.mark.slow  # 20 s
def test_the_rtc_bench_runs_every_mode_and_latency(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from test_policy_node import tiny_checkpoint

    checkpoint = tiny_checkpoint(tmp_path)
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "bench" / "rtc.py"), "--checkpoint", str(checkpoint),
                           "--episodes", "1", "--max-ticks", "30", "--inpainting-scenes", "1",
                           "--results-dir", str(tmp_path), "--report",
                           str(tmp_path), "--no-progress"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    figures = json.loads((tmp_path / "rtc.json").read_text())
    rows = figures["closed_loop"]["rows"]
    assert {(r["mode"], r["latency_ms"]) for r in rows} == {(m, ms) for m in ("replace", "blend", "rtc")
                                                             for ms in (100, 200, 300)}
    assert all(r["boundaries"] > 0 and r["jerk_rms_rad_s3"] > 0 for r in rows)
    assert figures["cost"]["guided_s"] > figures["cost"]["plain_s"] > 0
    assert set(figures["inpainting"]["guided"]) == {"5.0", "20.0", "100.0"}
    assert "| 200 ms | rtc |" in (tmp_path / "rtc.md").read_text()
