"""The deployment sampler against transformers' ``sample_actions`` (tiny real π0 on CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sf_policy.model.policy import LoraSettings, Policy, PolicyConfig
from sf_policy.model.sampling import FastSampler, SuffixKV
from sf_policy.model.tokenizer import tiny_tokenizer
from sf_policy.model.actions import action_stats
from sf_policy.data.features import ACTION, STATE
from sf_policy.data.stats import vector_stats


def _stats() -> dict:
    rng = np.random.default_rng(0)
    states = np.cumsum(rng.normal(size=(300, 14)) * 0.02, axis=0)
    actions = np.roll(states, -3, axis=0)
    return {STATE: vector_stats(states), ACTION: action_stats(actions, states, "delta", 50)}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer")
    tiny_tokenizer(path)
    return path


def _policy(tokenizer_dir, **config) -> Policy:
    torch.manual_seed(0)
    return Policy.build(PolicyConfig(tiny=True, tokenizer=str(tokenizer_dir), **config), stats=_stats()).eval()


def _samples() -> list[dict]:
    """Two samples that differ in every way the prefix can: prompt length, a missing camera,
    image aspect (letterbox rows), state."""
    rng = np.random.default_rng(1)
    return [
        {"images": {"cam_high": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
                    "cam_left_wrist": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
                    "cam_right_wrist": rng.integers(0, 256, (30, 64, 3), dtype=np.uint8)},
         "state": rng.normal(size=14).astype(np.float32) * 0.1, "prompt": "lift the pot by both handles"},
        {"images": {"cam_high": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), "cam_left_wrist": None,
                    "cam_right_wrist": rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)},
         "state": rng.normal(size=14).astype(np.float32) * 0.1, "prompt": "go"},
    ]


@pytest.mark.parametrize("num_steps", [1, 3, 10])
def test_fast_sampler_equals_sample_actions(tokenizer_dir, num_steps):
    policy = _policy(tokenizer_dir)
    inputs = policy._inputs(policy.processor(_samples()))
    noise = torch.randn(2, 50, 32, generator=torch.Generator().manual_seed(num_steps))
    reference = policy.pi0.sample_actions(**inputs, noise=noise, num_steps=num_steps)
    fast = FastSampler(policy.pi0).sample(inputs, noise, num_steps)
    assert fast.shape == reference.shape == (2, 50, 32)
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-5)
    assert not torch.equal(fast[0], fast[1])  # the two prefixes really differ


def test_one_sample_of_a_batch_equals_it_alone(tokenizer_dir):
    """Padding in the prompt and a masked camera must not leak between samples."""
    policy = _policy(tokenizer_dir)
    samples = _samples()
    noise = torch.randn(2, 50, 32, generator=torch.Generator().manual_seed(5))
    both = FastSampler(policy.pi0).sample(policy._inputs(policy.processor(samples)), noise, 4)
    alone = FastSampler(policy.pi0).sample(policy._inputs(policy.processor(samples[1:])), noise[1:], 4)
    torch.testing.assert_close(both[1:], alone, rtol=0, atol=1e-5)


def test_policy_sample_defaults_to_the_fast_sampler_with_the_same_result(tokenizer_dir):
    policy = _policy(tokenizer_dir)
    batch = policy.processor(_samples())
    noise = torch.randn(2, 50, 32, generator=torch.Generator().manual_seed(2))
    fast = policy.sample(batch, num_steps=5, noise=noise)
    assert policy._fast_sampler is not None
    policy.configure_inference(sampler="transformers")
    reference = policy.sample(batch, num_steps=5, noise=noise)
    assert policy._fast_sampler is None
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="sampler must be one of fast, transformers"):
        policy.configure_inference(sampler="euler")


def test_fast_sampler_follows_lora_adapters(tokenizer_dir):
    """Training's held-out evaluation samples through a peft-wrapped model."""
    policy = _policy(tokenizer_dir, lora=LoraSettings(rank=4))
    for name, parameter in policy.named_parameters():
        if "lora_B" in name:  # non-zero adapters, so that they matter
            torch.nn.init.normal_(parameter, std=0.5)
    batch = policy.processor(_samples())
    noise = torch.randn(2, 50, 32, generator=torch.Generator().manual_seed(3))
    fast = policy.sample(batch, num_steps=3, noise=noise)
    policy.configure_inference(sampler="transformers")
    torch.testing.assert_close(fast, policy.sample(batch, num_steps=3, noise=noise), rtol=0, atol=1e-5)


def test_bfloat16_fast_sampler_stays_close_to_sample_actions(tokenizer_dir):
    policy = _policy(tokenizer_dir, dtype="bfloat16")
    assert policy.dtype == torch.bfloat16
    inputs = policy._inputs(policy.processor(_samples()))
    noise = torch.randn(2, 50, 32, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    reference = policy.pi0.sample_actions(**inputs, noise=noise, num_steps=3).float()
    fast = FastSampler(policy.pi0).sample(inputs, noise, 3).float()
    assert torch.isfinite(fast).all()
    assert (fast - reference).abs().max() <= 0.05 * reference.abs().max()


def test_predict_resizes_on_the_model_device_and_returns_numpy(tokenizer_dir):
    policy = _policy(tokenizer_dir)
    samples = [{k: v for k, v in s.items()} for s in _samples()]
    chunk = policy.predict(samples, num_steps=2, generator=torch.Generator().manual_seed(0))
    assert isinstance(chunk, np.ndarray) and chunk.shape == (2, 50, 14) and np.isfinite(chunk).all()
    on_cpu = policy.processor(samples, device="cpu")
    assert on_cpu["pixel_values"].device.type == "cpu"
    torch.testing.assert_close(on_cpu["pixel_values"], policy.processor(samples)["pixel_values"])


def test_suffix_buffers_refuse_a_prefix_of_another_length():
    keys = [torch.zeros(1, 1, 10, 4)]
    kv = SuffixKV.allocate(keys, keys, suffix_length=3)
    assert kv.keys[0].shape == (1, 1, 13, 4) and kv.get_seq_length() == 10
    new, value = torch.ones(1, 1, 3, 4), torch.full((1, 1, 3, 4), 2.0)
    k, v = kv.update(new, value, 0)
    assert torch.equal(k[:, :, 10:], new) and torch.equal(v[:, :, 10:], value) and k.data_ptr() == kv.keys[0].data_ptr()
    with pytest.raises(ValueError, match="prefix length changed from 10 to 12"):
        kv.load_prefix([torch.zeros(1, 1, 12, 4)], [torch.zeros(1, 1, 12, 4)])
