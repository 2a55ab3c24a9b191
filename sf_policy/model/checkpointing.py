"""Gradient (activation) checkpointing for π0: every SigLIP, VLM and action-expert layer.

Why transformers' own switch (``pi0.gradient_checkpointing_enable()``, 5.24) breaks π0: the
action expert reads the VLM only through the KV cache that the VLM's decoder layers fill
(``cache.update`` in each attention), and that switch drops the cache wherever it checkpoints.
``GradientCheckpointingLayer`` replaces ``cache=`` by ``None`` (a layer replayed in backward would
otherwise append its keys a second time), and ``merge_with_config_defaults`` turns the VLM's
``use_cache=True`` into ``False``. The VLM then returns no cache and ``PI0Model.forward`` fails
on ``None.get_seq_length()``; with the switch on the layers alone the cache stays empty and the
expert silently attends to no prefix (another loss, no error: tried on the tiny model).

What is done here instead: each layer's ``forward`` runs inside
``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`` with the real cache behind a
per-call stand-in (``_ReplayCache``). On the first run the stand-in forwards ``update`` to the
cache, so the cache is written (VLM) and read (expert) exactly as without checkpointing, and
it remembers what the cache held before this layer. When backward replays the layer, the
cache has moved on (the expert appended its suffix to every VLM layer's entry), so the
stand-in does not touch it and returns what ``update`` returned the first time, rebuilt from
the remembered past and the recomputed keys/values. Non-reentrant checkpointing only needs
the replay to reproduce the saved tensors' values; the gradients flow through the graph of
the first run, which includes the cache entries the expert attended to.

Why a per-instance ``forward`` wrapper and not a patch of transformers' classes: it touches
only the modules asked for (no other model in the process changes), it can be undone
(``disable_gradient_checkpointing``), ``copy.deepcopy`` rebinds it to the copy, parameter names
and state dicts stay the same (LoRA patterns, checkpoints), and module hooks stay outside the
checkpoint: ``nn.Module.__call__`` runs them around ``forward``, so the SF capture's forward hook
fires once, on the real output that carries the graph, never during the replay. Without
gradients (``Policy.sample``, evaluation) or in eval mode the wrapper calls the layer as is.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import types
from collections.abc import Mapping

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .policy import unwrap

#: The names under which a decoder layer receives the KV cache (``past_key_values``: the deprecated one).
CACHE_KWARGS = ("cache", "past_key_values")


class _ReplayCache:
    """The KV cache as one checkpointed layer call sees it.

    First run: ``update`` writes to the real cache and returns its result (past ‖ new keys and
    values, ``DynamicCache``'s concatenation along the sequence); the past part is kept (empty for
    a VLM layer, the VLM's prefix for an expert layer). Replay in backward: the same
    concatenation from the kept past and the recomputed keys/values, and the cache is left alone.
    Everything else is the real cache's.
    """

    def __init__(self, cache) -> None:
        self._cache = cache
        self._past: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, keys: torch.Tensor, values: torch.Tensor, *args, **kwargs):
        if self._past is None:
            full_keys, full_values = self._cache.update(keys, values, *args, **kwargs)
            past = full_keys.shape[-2] - keys.shape[-2]
            # An empty past gets its own zero-size tensor, not a view, so that a VLM layer keeps
            # no storage alive; the replay then concatenates exactly as the cache did.
            self._past = (full_keys[..., :past, :], full_values[..., :past, :]) if past else \
                (keys.new_empty(*keys.shape[:-2], 0, keys.shape[-1]),
                 values.new_empty(*values.shape[:-2], 0, values.shape[-1]))
            return full_keys, full_values
        past_keys, past_values = self._past
        return torch.cat([past_keys, keys], dim=-2), torch.cat([past_values, values], dim=-2)

    def __getattr__(self, name: str):
        return getattr(self._cache, name)


def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    """Installed as ``layer.forward``: the class's forward, checkpointed when training with grad."""
    forward = functools.partial(type(self).forward, self)
    if not (self.training and torch.is_grad_enabled()):
        return forward(*args, **kwargs)
    for name in CACHE_KWARGS:
        if kwargs.get(name) is not None:
            kwargs[name] = _ReplayCache(kwargs[name])
    return checkpoint(functools.partial(forward, **kwargs), *args, use_reentrant=False)


def _pi0(model: nn.Module) -> nn.Module:
    """The PI0ForConditionalGeneration of a Policy, of a peft wrapper, or the model itself."""
    pi0 = getattr(model, "pi0", None)
    return pi0 if pi0 is not None else unwrap(model)


def checkpointable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """name → layer (names as in the PI0 model) for SigLIP's encoder layers, the VLM's decoder
    layers and the action expert's layers."""
    pi0 = _pi0(model)
    stacks = (pi0.model.vlm.vision_tower.encoder.layers, pi0.model.vlm.language_model.layers, pi0.model.dit.layers)
    wanted = {id(layer) for stack in stacks for layer in stack}
    return {name: module for name, module in pi0.named_modules() if id(module) in wanted}


def enable_gradient_checkpointing(model: nn.Module) -> list[str]:
    """Checkpoint every SigLIP, VLM and expert layer of a PI0ForConditionalGeneration (bare, in a
    peft wrapper or in a ``Policy``); returns the layers' names in the PI0 model. Idempotent."""
    on = [name for name, m in _pi0(model).named_modules() if getattr(m, "gradient_checkpointing", False)]
    if on:
        raise ValueError(f"transformers' gradient checkpointing is on ({on[0]}, ...): it drops the KV cache the "
                         "action expert reads; call gradient_checkpointing_disable() first")
    layers = checkpointable_layers(model)
    for layer in layers.values():
        layer.forward = types.MethodType(_checkpointed_forward, layer)  # deepcopy rebinds bound methods
    return list(layers)


def disable_gradient_checkpointing(model: nn.Module) -> None:
    """Undo ``enable_gradient_checkpointing``: the layers run their class's forward again."""
    for layer in checkpointable_layers(model).values():
        if is_checkpointed(layer):
            del layer.forward


def is_checkpointed(layer: nn.Module) -> bool:
    forward = layer.__dict__.get("forward")
    return getattr(forward, "__func__", None) is _checkpointed_forward


@contextlib.contextmanager
def _checkpointing(model: nn.Module, on: bool):
    """Checkpointing on or off for a while, then back as it was."""
    was = any(is_checkpointed(layer) for layer in checkpointable_layers(model).values())
    (enable_gradient_checkpointing if on else disable_gradient_checkpointing)(model)
    try:
        yield
    finally:
        (enable_gradient_checkpointing if was else disable_gradient_checkpointing)(model)


def activation_bytes(policy, batch: Mapping[str, torch.Tensor], checkpointing: bool) -> int:
    """Bytes that one training forward of ``policy.loss`` on ``batch`` leaves allocated: what
    backward will need (tensors autograd saved, checkpoint inputs and the KV past kept for the
    replay, tokens captured by attached hooks) plus the loss itself, for the batch as given
    (bytes per sample: divide by its size). Parameters, gradients and
    the batch existed before and are not counted; nothing freed during the forward is counted
    (this is not the peak inside the forward or the backward).

    Measured as the net change of the allocator's live bytes: ``torch.cuda.memory_allocated`` on
    a GPU, on the CPU the allocation and free events of ``torch.profiler`` (``profile_memory``).
    Hooks on saved tensors could not do it: non-reentrant checkpointing keeps its inputs in a
    closure, and installs hooks of its own that hide what it saves from outer ones.
    Checkpointing is switched on or off for the measurement and restored afterwards; the policy
    is put in training mode meanwhile. It runs under the caller's autocast, if any. No backward is
    run, so no gradient changes (a capture attached to the policy keeps its tokens, and with them
    the graph, until its next forward).
    """
    device = policy.device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}  # copies not counted
    generator = torch.Generator(device=device).manual_seed(0)
    was_training = policy.training
    policy.train()
    try:
        with _checkpointing(policy.model, checkpointing), torch.enable_grad():
            gc.collect()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                before = torch.cuda.memory_allocated(device)
                loss = policy.loss(batch, generator=generator)
                gc.collect()
                torch.cuda.synchronize(device)
                kept = torch.cuda.memory_allocated(device) - before
            else:
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                            profile_memory=True) as prof:
                    loss = policy.loss(batch, generator=generator)
                    gc.collect()  # reference cycles freed now, not counted as kept
                kept = sum(event.self_cpu_memory_usage for event in prof.events())
            del loss
    finally:
        policy.train(was_training)
    return int(kept)


__all__ = ["activation_bytes", "checkpointable_layers", "disable_gradient_checkpointing",
           "enable_gradient_checkpointing", "is_checkpointed"]
