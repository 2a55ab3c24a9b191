"""Gradient checkpointing of π0's SigLIP, VLM and expert layers (sf_policy/model/checkpointing.py).

A tiny real PI0ForConditionalGeneration; the un-checkpointed model (a deep copy) is the reference.
"""

from __future__ import annotations

import copy

import pytest
import torch

from sf_policy.align.aligner import AlignConfig, SpatialAligner, attach
from sf_policy.model.checkpointing import (
    activation_bytes,
    checkpointable_layers,
    disable_gradient_checkpointing,
    enable_gradient_checkpointing,
    is_checkpointed,
)
from sf_policy.model.policy import LoraSettings
from sf_policy.model.tokenizer import tiny_tokenizer
from test_model import _fixed, _policy, _samples


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer")
    tiny_tokenizer(path)
    return path


def _pair(tokenizer_dir, **config):
    """(reference policy, the same weights with checkpointing), both in training mode."""
    plain = _policy(tokenizer_dir, **config).train()
    checkpointed = copy.deepcopy(plain)
    names = enable_gradient_checkpointing(checkpointed)
    return plain, checkpointed, names


def _step(policy, batch, aligner=None, capture=None, targets=None, action=True):
    """Loss and the gradients of every trainable weight (the aligner's too) after one backward:
    L_action (+ α·L_align with an aligner; α·L_align alone with ``action=False``)."""
    modules = [policy] + ([aligner] if aligner is not None else [])
    for module in modules:
        module.zero_grad(set_to_none=True)
    loss, _ = policy.loss(batch, *_fixed(2))
    if aligner is not None:
        loss = aligner.combine(loss if action else torch.zeros(()), aligner(capture.outputs, *targets))
    loss.backward()
    grads = {f"{i}.{n}": p.grad for i, m in enumerate(modules) for n, p in m.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def _assert_same(reference, got):
    (ref_loss, ref_grads), (loss, grads) = reference, got
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    missing = [n for n, g in ref_grads.items() if g is not None and grads[n] is None]
    assert not missing, missing
    for name, g in ref_grads.items():
        if g is not None:
            scale = float(g.abs().max()) or 1.0
            torch.testing.assert_close(grads[name], g, rtol=1e-6, atol=1e-6 * scale, msg=name)


@pytest.mark.parametrize("lora", [None, LoraSettings(rank=4, alpha=8)], ids=["full", "lora"])
def test_checkpointed_gradients_equal_the_plain_ones(tokenizer_dir, lora):
    plain, checkpointed, names = _pair(tokenizer_dir, lora=lora)
    # 2 SigLIP + 4 VLM + 4 expert layers, named as in the PI0 model (peft wrapper looked through)
    assert sorted(names) == sorted([f"model.vlm.vision_tower.encoder.layers.{i}" for i in range(2)]
                                   + [f"model.vlm.language_model.layers.{i}" for i in range(4)]
                                   + [f"model.dit.layers.{i}" for i in range(4)])
    assert enable_gradient_checkpointing(checkpointed) == names  # idempotent
    batch = plain.processor(_samples())
    reference = _step(plain, batch)
    # the VLM's first layer is reached (through the keys/values the expert reads)
    assert any(g is not None and g.abs().sum() > 0 for n, g in reference[1].items() if "language_model.layers.0." in n)
    _assert_same(reference, _step(checkpointed, batch))
    # a deep copy checkpoints its own layers, not the original's
    clone = copy.deepcopy(checkpointed)
    assert all(layer.forward.__self__ is layer for layer in checkpointable_layers(clone).values())


def test_alignment_capture_keeps_its_gradients_under_checkpointing(tokenizer_dir):
    plain, checkpointed, _ = _pair(tokenizer_dir)
    config = AlignConfig(layer=2, teacher_dim=16, hidden_dim=32)
    aligner = SpatialAligner.for_model(plain.pi0, config)
    generator = torch.Generator().manual_seed(3)
    targets = (torch.randn(2, 768, 16, generator=generator), torch.ones(2, 768, dtype=torch.bool))
    batch = plain.processor(_samples())
    for action in (True, False):  # L_action + α·L_align, then α·L_align alone: the hook's path only
        results = []
        for policy in (plain, checkpointed):
            with attach(policy.model, config) as capture:
                results.append(_step(policy, batch, aligner, capture, targets, action))
                # the hook fired once: backward's replay of layers[1] runs its forward, not __call__
                assert capture.calls == {2: 1}
        assert results[0][0] > 0
        # the captured tokens carry the graph back into the VLM (layers 0 and 1 make hidden_states[2])
        assert results[0][1]["0.model.model.vlm.language_model.layers.0.mlp.down_proj.weight"].abs().sum() > 0
        _assert_same(*results)


def test_checkpointing_keeps_less_for_backward_and_sampling_is_unchanged(tokenizer_dir):
    plain, checkpointed, _ = _pair(tokenizer_dir)
    batch = plain.processor(_samples())
    # Bytes the forward leaves allocated (saved activations, checkpoint inputs, kept KV): see activation_bytes.
    full = activation_bytes(checkpointed, batch, checkpointing=False)
    kept = activation_bytes(checkpointed, batch, checkpointing=True)
    assert 0 < kept < full / 3, (kept, full)
    assert full == activation_bytes(plain, batch, checkpointing=False)
    assert all(is_checkpointed(layer) for layer in checkpointable_layers(checkpointed.model).values())  # restored
    # inference runs the layers as they are (no grad): the same chunk as the plain model, either sampler
    noise = _fixed(2)[0]
    for sampler in ("fast", "transformers"):
        for policy in (plain, checkpointed):
            policy.configure_inference(sampler=sampler)
        torch.testing.assert_close(checkpointed.sample(batch, num_steps=2, noise=noise),
                                   plain.sample(batch, num_steps=2, noise=noise), rtol=0, atol=0)
    disable_gradient_checkpointing(checkpointed)
    assert not any(is_checkpointed(layer) for layer in checkpointable_layers(checkpointed.model).values())


def test_transformers_own_checkpointing_is_refused(tokenizer_dir):
    policy = _policy(tokenizer_dir)
    policy.pi0.model.vlm.vision_tower.activation_checkpointing_enable()
    with pytest.raises(ValueError, match="drops the KV cache"):
        enable_gradient_checkpointing(policy)
