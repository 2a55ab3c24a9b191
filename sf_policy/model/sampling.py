"""Deployment sampler: the same flow-matching integration as transformers' ``sample_actions``,
with the per-step work that does not change between steps done once.

``PI0ForConditionalGeneration.sample_actions`` already computes the prefix (three images +
prompt) once and keeps its KV cache. Each of its 10 Euler steps then still rebuilds the
block attention mask, the DiT position ids and their rotary embeddings, appends the 51 suffix
keys/values to a growing ``DynamicCache`` (a ``torch.cat`` of the whole prefix per layer) and
crops them again. None of that depends on the step: the mask, positions and rotary tables are
functions of the prefix padding only, and the prefix keys/values are fixed.

``FastSampler`` therefore

* runs the prefix once into **preallocated** per-layer key/value buffers sized
  prefix + suffix (the processor's layout is fixed: 3 × 256 image tokens + 48 prompt tokens),
  so each step writes the suffix keys/values in place instead of concatenating;
* builds the mask (with transformers' own ``create_causal_mask``, the call ``PI0Model`` makes),
  the positions and the rotary tables once per chunk;
* calls the DiT's decoder layers directly (transformers' modules, unchanged) for each step;
* on CUDA, optionally captures the whole denoising loop in one CUDA graph: every buffer has a
  fixed address and shape, so a chunk is one prefix pass plus one graph replay (no Python or
  kernel-launch cost per layer and step, which dominates a 300 M expert at batch 1).

The result equals ``sample_actions`` (``tests/test_sampling.py`` compares them); a failed
graph capture falls back to the eager loop with a warning rather than stopping the robot.

With a ``Guidance`` (real-time chunking, ``sf_policy/model/rtc.py``) each step also takes a
vector-Jacobian product through the expert, so that loop runs eagerly with gradients on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers.masking_utils import create_causal_mask

from .rtc import Guidance, guided_step

log = logging.getLogger(__name__)


class SuffixKV:
    """Per-layer key/value buffers [B, kv_heads, prefix + suffix, head_dim] with the prefix
    filled in. Gemma's attention calls ``update`` with the suffix keys/values of the current
    step; they overwrite the tail in place and the whole buffer is returned."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], prefix_length: int):
        self.keys, self.values, self.prefix_length = keys, values, prefix_length

    @classmethod
    def allocate(cls, prefix_keys: list[torch.Tensor], prefix_values: list[torch.Tensor],
                 suffix_length: int) -> SuffixKV:
        def grown(t: torch.Tensor) -> torch.Tensor:
            buffer = t.new_zeros(*t.shape[:2], t.shape[2] + suffix_length, t.shape[3])
            buffer[:, :, : t.shape[2]] = t
            return buffer

        return cls([grown(k) for k in prefix_keys], [grown(v) for v in prefix_values], prefix_keys[0].shape[2])

    def load_prefix(self, prefix_keys: list[torch.Tensor], prefix_values: list[torch.Tensor]) -> None:
        """Copy a new prefix into the same buffers (their addresses must not change: CUDA graph)."""
        p = self.prefix_length
        for buffer, new in zip(self.keys + self.values, list(prefix_keys) + list(prefix_values), strict=True):
            if new.shape[2] != p:
                raise ValueError(f"prefix length changed from {p} to {new.shape[2]}; the processor's layout is fixed")
            buffer[:, :, :p].copy_(new)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        p = self.prefix_length
        self.keys[layer_idx][:, :, p:].copy_(key_states)
        self.values[layer_idx][:, :, p:].copy_(value_states)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.prefix_length

    def detach_(self) -> None:
        """Cut the buffers from the previous step's autograd graph (guided sampling writes
        grad-carrying suffix keys/values into them; the next step must not backprop into those)."""
        self.keys = [k.detach() for k in self.keys]
        self.values = [v.detach() for v in self.values]


@dataclass
class _Prefix:
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor | None
    rotary: tuple[torch.Tensor, torch.Tensor]


class FastSampler:
    """``sample(inputs, noise, num_steps)`` → model-space actions [B, chunk, max_action_dim],
    numerically what ``pi0.sample_actions`` returns for the same noise.

    ``cuda_graph``: capture the denoising loop on CUDA (per batch size and step count; the
    first call of each captures, later calls replay). Ignored on CPU.
    ``compile``: ``torch.compile`` the denoising loop (fixed shapes). Costs a compilation on
    the first call of each shape (≈ 100 s for the tiny model on 2 CPU cores; do it while the
    node configures, never on the control path) and fuses the many small elementwise kernels
    of a step: ≈ 3× on the tiny model's loop on CPU (``bench/inference.py``).
    """

    def __init__(self, pi0: nn.Module, cuda_graph: bool = True, compile: bool = False):
        self.pi0 = pi0
        self.cuda_graph = cuda_graph
        self.compile = compile
        self._denoise = torch.compile(self.denoise, dynamic=False) if compile else self.denoise
        self._graphs: dict[tuple, _GraphedLoop] = {}
        self._graph_failed = False

    # -- the pieces

    @torch.no_grad()
    def prefix(self, inputs: dict[str, torch.Tensor], suffix_length: int) -> _Prefix:
        """Prefix keys/values, the suffix's attention mask and rotary tables (once per chunk)."""
        model = self.pi0.model
        attention_mask = inputs.get("attention_mask")
        position_ids = attention_mask.cumsum(-1) - 1 if attention_mask is not None else None
        embeds = model.embed_prefix(inputs["input_ids"], inputs["pixel_values"], inputs["pixel_attention_mask"])
        cache = model.vlm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                          token_type_ids=torch.zeros_like(embeds)[:, :, 0], use_cache=True).cache
        prefix_length = cache.get_seq_length()
        batch = embeds.shape[0]
        suffix = embeds.new_zeros(batch, suffix_length, model.dit.config.hidden_size)

        # The mask and positions PI0Model.forward builds for the DiT (prefix block, state
        # block, bidirectional action block), computed once instead of per step.
        dit_positions = dit_attention = None
        if attention_mask is not None:
            dit_attention = torch.cat([attention_mask, attention_mask.new_ones(batch, suffix_length)], dim=1)
            dit_positions = (dit_attention.cumsum(1) - 1)[:, -suffix_length:]
        blocks = torch.cat([torch.zeros(prefix_length + 1, dtype=torch.long, device=embeds.device),
                            torch.ones(suffix_length - 1, dtype=torch.long, device=embeds.device)])
        mask = create_causal_mask(config=model.dit.config, inputs_embeds=suffix, attention_mask=dit_attention,
                                  cache=cache, block_sequence_ids=blocks[None].repeat(batch, 1))
        if dit_positions is None:
            dit_positions = torch.arange(prefix_length, prefix_length + suffix_length, device=embeds.device)[None]
        rotary = model.dit.rotary_emb(suffix, position_ids=dit_positions)
        keys = [layer.keys for layer in cache.layers]
        values = [layer.values for layer in cache.layers]
        return _Prefix(keys, values, mask, rotary)

    def velocity(self, state: torch.Tensor, x: torch.Tensor, time: torch.Tensor, kv: SuffixKV,
                 mask: torch.Tensor | None, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """One DiT pass over [state, actions] attending to the prefix: the predicted velocity."""
        pi0 = self.pi0
        dit = pi0.model.dit
        hidden = pi0.embed_action_time(state, x, time)
        for layer in dit.layers[: dit.config.num_hidden_layers]:
            hidden = layer(hidden, attention_mask=mask, cache=kv, use_cache=True, position_embeddings=rotary)
        hidden = dit.norm(hidden)
        return pi0.action_out_proj(hidden[:, -pi0.config.chunk_size:])

    def denoise_guided(self, state, noise, kv, mask, rotary, num_steps: int, guide: Guidance) -> torch.Tensor:
        """``denoise`` with real-time chunking's guidance toward ``guide`` (rtc.py)."""
        dt = -1.0 / num_steps
        x = noise
        for step in range(num_steps):
            t = 1.0 + step * dt
            time = torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device)
            kv.detach_()
            x = guided_step(lambda xg: self.velocity(state, xg, time, kv, mask, rotary), x, t, dt, guide)
        return x

    def denoise(self, state, noise, kv, mask, rotary, num_steps: int) -> torch.Tensor:
        dt = -1.0 / num_steps
        x = noise
        for step in range(num_steps):
            time = torch.full((x.shape[0],), 1.0 + step * dt, dtype=torch.float32, device=x.device)
            x = x + dt * self.velocity(state, x, time, kv, mask, rotary)
        return x

    # -- the sampler

    @torch.no_grad()
    def sample(self, inputs: dict[str, torch.Tensor], noise: torch.Tensor, num_steps: int = 10,
               guide: Guidance | None = None) -> torch.Tensor:
        suffix_length = self.pi0.config.chunk_size + 1
        prefix = self.prefix(inputs, suffix_length)
        state = inputs["state"]
        if guide is not None:
            kv = SuffixKV.allocate(prefix.keys, prefix.values, suffix_length)
            return self.denoise_guided(state, noise, kv, prefix.mask, prefix.rotary, num_steps,
                                       guide.to(noise.device, noise.dtype))
        if self.cuda_graph and noise.is_cuda and not self._graph_failed:
            loop = self._graph_for(prefix, state, noise, num_steps)
            if loop is not None:
                return loop.run(prefix, state, noise)
        kv = SuffixKV.allocate(prefix.keys, prefix.values, suffix_length)
        return self._denoise(state, noise, kv, prefix.mask, prefix.rotary, num_steps)

    def _graph_for(self, prefix: _Prefix, state, noise, num_steps: int) -> _GraphedLoop | None:
        key = (tuple(noise.shape), tuple(prefix.keys[0].shape), num_steps, noise.dtype)
        if key not in self._graphs:
            try:
                self._graphs[key] = _GraphedLoop(self, prefix, state, noise, num_steps)
            except Exception as exc:  # a capture problem must not stop inference: eager still works
                log.warning("CUDA graph capture of the denoising loop failed (%s: %s); using the eager loop",
                            type(exc).__name__, exc)
                self._graph_failed = True
                return None
        return self._graphs[key]


class _GraphedLoop:
    """The denoising loop captured once on static buffers; ``run`` copies the new chunk's
    prefix, mask, rotary tables, state and noise in and replays."""

    def __init__(self, sampler: FastSampler, prefix: _Prefix, state, noise, num_steps: int):
        suffix_length = sampler.pi0.config.chunk_size + 1
        self.kv = SuffixKV.allocate(prefix.keys, prefix.values, suffix_length)
        self.mask = prefix.mask.clone() if isinstance(prefix.mask, torch.Tensor) else prefix.mask
        self.rotary = tuple(t.clone() for t in prefix.rotary)
        self.state, self.noise = state.clone(), noise.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():  # warm-up outside the graph (allocator, kernels)
            for _ in range(2):
                sampler._denoise(self.state, self.noise, self.kv, self.mask, self.rotary, num_steps)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.out = sampler._denoise(self.state, self.noise, self.kv, self.mask, self.rotary, num_steps)

    def run(self, prefix: _Prefix, state, noise) -> torch.Tensor:
        self.kv.load_prefix(prefix.keys, prefix.values)
        if isinstance(self.mask, torch.Tensor):
            self.mask.copy_(prefix.mask)
        for static, new in zip(self.rotary, prefix.rotary, strict=True):
            static.copy_(new)
        self.state.copy_(state)
        self.noise.copy_(noise)
        self.graph.replay()
        return self.out.clone()
