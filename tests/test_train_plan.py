"""sf train plan: the meta-device count is a real forward's, π0's plan meets the published figures,
and a plan that cannot fit says what would."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sf_policy.data.features import ACTION, STATE
from sf_policy.data.stats import vector_stats
from sf_policy.model.actions import action_stats
from sf_policy.topics import CAMERA_ROLES
from sf_policy.train.config import load_config
from sf_policy.train.plan import PUBLISHED_GB, check_fits, make_plan, saved_for_backward


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    from sf_policy.model.policy import Policy, PolicyConfig
    from sf_policy.model.tokenizer import tiny_tokenizer

    tokenizer = str(tmp_path_factory.mktemp("tok"))
    tiny_tokenizer(tokenizer)
    states = np.cumsum(np.random.default_rng(0).normal(size=(200, 14)) * 0.02, axis=0)
    stats = {STATE: vector_stats(states), ACTION: action_stats(np.roll(states, -3, axis=0), states, "delta", 50)}
    policy = Policy.build(PolicyConfig(tiny=True, tokenizer=tokenizer), stats=stats)
    config = policy.pi0.config  # eager attention: what the meta device's count describes
    for sub in (config, config.vlm_config, config.vlm_config.text_config, config.vlm_config.vision_config,
                config.dit_config):
        sub._attn_implementation = "eager"
    rng = np.random.default_rng(1)
    samples = [{"images": {r: rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for r in CAMERA_ROLES},
                "state": np.zeros(14, np.float32), "actions": np.zeros((50, 14), np.float32), "prompt": "lift the pot"}
               for _ in range(2)]
    return policy, dict(policy.processor(samples))


def test_the_meta_device_count_is_a_real_cpu_forwards_and_bounds_what_it_leaves_allocated(tiny_policy):
    from sf_policy.model.checkpointing import activation_bytes

    policy, batch = tiny_policy
    g = torch.Generator().manual_seed(0)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask", "state")}
    inputs |= {"noise": policy.noise_like(2, g), "timestep": policy.sample_time(2, g), "actions": batch["actions"]}
    real = saved_for_backward(policy.pi0, inputs)
    meta = saved_for_backward(copy.deepcopy(policy.pi0).to("meta"), {k: v.to("meta") for k, v in inputs.items()})
    assert meta.total == pytest.approx(real.total, abs=1024)  # measured: 256 bytes apart (of 94 MB)
    assert meta.layers == real.layers and meta.attention == real.attention and len(meta.layers) == 10
    # The allocator's view (torch.profiler, checkpointing.activation_bytes) after the forward stays
    # under the plan's counts, with and without checkpointing (measured 76 vs 94 MB, 11 vs 26 MB).
    assert activation_bytes(policy, batch, checkpointing=False) <= real.total
    assert activation_bytes(policy, batch, checkpointing=True) <= real.checkpointed < real.total / 2


def test_the_pi0_plan_meets_the_published_figures():
    plan = make_plan(load_config("pi0_sf"))
    full = plan.params["full"]
    assert 3.4e9 < full["total"] < 3.6e9 and 3.0e9 < full["trainable"] < full["total"]  # pi0_base: 3.5 B
    assert 0 < plan.params["lora"]["trainable"] < 1e8
    # openpi: inference > 8 GB, LoRA > 22.5 GB, full fine-tuning > 70 GB; ours at small batches
    inference = plan.inference_bytes()
    lora, full_ft = plan.bytes_per_gpu("lora", 1, 1), plan.bytes_per_gpu("full", 1, 2)
    assert PUBLISHED_GB["inference"] * 1e9 <= inference < 1.25 * PUBLISHED_GB["inference"] * 1e9
    assert PUBLISHED_GB["lora"] * 1e9 <= lora < 1.5 * PUBLISHED_GB["lora"] * 1e9
    assert PUBLISHED_GB["full"] * 1e9 * 0.9 <= full_ft < 1.25 * PUBLISHED_GB["full"] * 1e9
    # what each setup saves
    assert plan.bytes_per_gpu("full+ckpt", 1, 16) < plan.bytes_per_gpu("full", 1, 16) / 1.5
    assert plan.bytes_per_gpu("fsdp", 8, 2) < plan.bytes_per_gpu("full", 8, 2) / 2


def test_a_plan_that_cannot_fit_names_the_fields_and_what_would():
    plan = make_plan(load_config("pi0_sf"))
    check_fits(plan, 1, 141)  # full fine-tuning at batch 16 fits an H200
    with pytest.raises(ValueError, match=r"optim.batch_size 16 with optim.grad_accum 1 on 1 GPU\(s\) of 24 GB.*"
                                         r"What fits: lora\+ckpt with optim.grad_accum="):
        check_fits(plan, 1, 24)


@pytest.mark.slow
def test_sf_train_plan_prints_the_table_and_exits_2_when_nothing_fits():
    sf = str(Path(sys.executable).parent / "sf")
    done = subprocess.run([sf, "train", "plan", "pi0_sf", "--gpus", "4"], capture_output=True, text=True, timeout=120,
                          env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    for text in ("3.51 B parameters", "fsdp+ckpt", "configs/accelerate/fsdp.yaml --num_processes 4", "openpi"):
        assert text in done.stdout
    refused = subprocess.run([sf, "train", "plan", "pi0_sf", "--gpu-memory", "24"], capture_output=True, text=True,
                             timeout=120, env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"})
    assert refused.returncode == 2 and "does not fit" in refused.stdout and "optim.grad_accum=" in refused.stdout
