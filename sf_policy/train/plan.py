"""``sf train plan``: what a training config needs in GPU memory, and which setups fit.

Parameters are counted on π0 built on the **meta device** (no weights, no memory): the real
architecture (``lerobot/pi0_base``'s is transformers' ``PI0Config`` default, or the
``config.json`` of ``policy.checkpoint``), with the config's LoRA and frozen weights applied.

Activations are **computed on the meta device** too: one training forward of that model at batch
1 with the tensors a real batch has (3 cameras, the prompt length, the chunk), counting every
tensor autograd keeps for the backward (unique storages, weights excluded), attributed to the
layer that kept it. With per-layer gradient checkpointing a layer keeps only its input; the
recompute needs one layer's worth at a time. Two caveats, both stated in the output:

* attention is counted as eager attention computes it (its probabilities are kept); the fused
  SDPA / flash kernels a GPU uses keep only a row statistic, which ``attention`` reports apart;
* mixed precision is approximated by a bf16 model (norms and softmax in fp32 as Gemma and
  SigLIP compute them).

On the tiny model the same count equals the bytes measured after a real CPU forward with eager
attention (tests/test_train_plan.py), and the plan's π0 matches the published figures: openpi
states > 8 GB for inference, > 22.5 GB for LoRA and > 70 GB for full fine-tuning.

Memory per GPU, for AdamW with fp32 master weights (``policy.dtype: float32``, bf16 compute):
weights 4 B × all parameters and their bf16 copy (autocast caches one per forward), gradients
4 B and AdamW's two moments 8 B per trainable parameter, activations × samples per GPU, and
1 GiB of CUDA context and workspace. FSDP-N divides the fp32 weights, gradients and moments by
N and holds the whole bf16 weights during forward and backward (configs/accelerate/fsdp.yaml keeps
them gathered: the expert reads the VLM's keys and values through the cache).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import TrainConfig

GiB = 2**30
#: CUDA context, cuBLAS/cuDNN workspaces and the allocator's slack, per GPU.
OVERHEAD = 1 * GiB
GPU_SIZES_GB = (24, 48, 80, 141)
#: openpi's published needs for π0 (README, "Requirements"), in GB, for the check printed with a plan.
PUBLISHED_GB = {"inference": 8.0, "lora": 22.5, "full": 70.0}


@dataclass
class Activations:
    """Bytes one sample keeps for the backward (see the module docstring)."""

    total: int
    layers: list[int] = field(default_factory=list)  # kept inside each decoder / encoder layer
    layer_inputs: list[int] = field(default_factory=list)  # each layer's input: what checkpointing keeps
    attention: int = 0  # attention probabilities (kept by eager attention, not by fused kernels)

    @property
    def checkpointed(self) -> int:
        """With every layer checkpointed: everything outside the layers, their inputs, and one
        layer's internals at a time during the recompute."""
        return self.total - sum(self.layers) + sum(self.layer_inputs) + max(self.layers, default=0)


@dataclass
class Setup:
    name: str
    gpus: int
    per_gpu_batch: int
    bytes_per_gpu: int
    command: str


def architecture(cfg: TrainConfig):
    """The π0 config a run of ``cfg`` trains (no weights are read)."""
    from transformers import PI0Config

    from ..model.policy import tiny_pi0_config

    if cfg.policy.checkpoint:
        path = Path(cfg.policy.checkpoint).expanduser()
        if (path / "config.json").is_file():
            return PI0Config.from_pretrained(path)
    if cfg.policy.tiny:  # the vocabulary comes from a tokenizer made at training time: ~its size
        return tiny_pi0_config(512, 511, cfg.policy.chunk_size, cfg.policy.size)
    return PI0Config(chunk_size=cfg.policy.chunk_size)  # transformers' default is pi0_base's architecture


def meta_policy_model(cfg: TrainConfig, eager: bool = True):
    """``PI0ForConditionalGeneration`` of ``cfg`` on the meta device, LoRA and freezing applied."""
    from transformers import PI0ForConditionalGeneration

    from ..model.policy import apply_lora, freeze_unused

    config = architecture(cfg)
    if eager:
        for sub in (config, config.vlm_config, config.vlm_config.text_config, config.vlm_config.vision_config,
                    config.dit_config):
            sub._attn_implementation = "eager"
    with torch.device("meta"):
        model = PI0ForConditionalGeneration(config)
        if cfg.policy.lora is not None:
            model = apply_lora(model, cfg.policy.lora)
    if cfg.policy.freeze_unused:
        freeze_unused(model)
    return model


def parameter_counts(cfg: TrainConfig, model=None) -> dict[str, int]:
    """Total, trainable (policy + SF projector) and projector parameters."""
    from ..align.aligner import SpatialAligner
    from ..model.policy import unwrap

    model = model if model is not None else meta_policy_model(cfg)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    projector = 0
    if cfg.aligned:
        with torch.device("meta"):
            projector = sum(p.numel() for p in SpatialAligner.for_model(unwrap(model), cfg.align).parameters())
    return {"total": total + projector, "trainable": trainable + projector, "projector": projector}


def meta_batch(config, cameras: int = 3, prompt_tokens: int = 48, batch: int = 1) -> dict[str, torch.Tensor]:
    """Inputs shaped as the processor makes them (cameras × patches image tokens + the prompt)."""
    vision = config.vlm_config.vision_config
    tokens = cameras * (vision.image_size // vision.patch_size) ** 2 + prompt_tokens
    with torch.device("meta"):
        return {"input_ids": torch.zeros(batch, tokens, dtype=torch.long),
                "attention_mask": torch.ones(batch, tokens, dtype=torch.long),
                "pixel_values": torch.zeros(batch, cameras, 3, vision.image_size, vision.image_size),
                "pixel_attention_mask": torch.ones(batch, cameras, dtype=torch.bool),
                "state": torch.zeros(batch, config.max_state_dim),
                "noise": torch.zeros(batch, config.chunk_size, config.max_action_dim),
                "actions": torch.zeros(batch, config.chunk_size, config.max_action_dim),
                "timestep": torch.full((batch,), 0.5)}


class _SavedTensors:
    """Counts the storages autograd keeps (weights excluded), per layer, and the softmax outputs."""

    def __init__(self, model):
        from ..model.checkpointing import checkpointable_layers

        self.weights = {_storage(p) for p in model.parameters()}
        self.sizes: dict[int, int] = {}
        self.owner: dict[int, int] = {}  # storage → layer number
        self.softmax: set[int] = set()
        self.layers = list(checkpointable_layers(model).values())
        self.inputs = [0] * len(self.layers)
        self.current: int | None = None
        # Every counted storage is held until the count is done: a storage freed during the
        # forward (a discarded branch's graph) could otherwise hand its address, our key, to a
        # new one, and the two would count as one (a real CPU run once came out 128 bytes short).
        self._held: list = []

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = _storage(tensor)
        if key not in self.weights:
            self._held.append(tensor.untyped_storage())
            self.sizes[key] = max(self.sizes.get(key, 0), tensor.untyped_storage().nbytes())
            if self.current is not None:
                self.owner.setdefault(key, self.current)
        return tensor

    @contextlib.contextmanager
    def attribution(self):
        """Forward hooks that say which layer is running (and record its input's size)."""
        handles = []
        for k, layer in enumerate(self.layers):
            def enter(module, args, kwargs, k=k):
                self.current = k
                hidden = args[0] if args else next(iter(kwargs.values()))
                self.inputs[k] = hidden.numel() * hidden.element_size()

            def leave(module, args, output):
                self.current = None
            handles += [layer.register_forward_pre_hook(enter, with_kwargs=True), layer.register_forward_hook(leave)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata  # one id per storage, on the meta device too


class _SoftmaxOutputs(torch.overrides.TorchFunctionMode):
    """Notes the storages of 4-D softmax outputs: attention probabilities."""

    def __init__(self, found: set[int]):
        super().__init__()
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.softmax, torch.nn.functional.softmax, torch.Tensor.softmax) and out.dim() == 4:
            self.found.add(_storage(out))
        return out


def activation_profile(cfg: TrainConfig, model=None, dtype: torch.dtype = torch.bfloat16) -> Activations:
    """Bytes one training sample keeps for the backward, counted on the meta device."""
    from ..model.policy import unwrap

    model = copy.deepcopy(model) if model is not None else meta_policy_model(cfg)
    model.to(device="meta", dtype=dtype)  # buffers some initialisations compute on the CPU included
    inputs = meta_batch(unwrap(model).config, prompt_tokens=cfg.policy.max_prompt_tokens)
    return saved_for_backward(model, {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()})


def saved_for_backward(model, inputs: dict[str, torch.Tensor]) -> Activations:
    """What one forward of ``model(**inputs)`` (and a loss on its output) keeps for the backward,
    on any device: the meta device's count equals a CPU run's (tests/test_train_plan.py)."""
    saved = _SavedTensors(model)
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t), saved.attribution(), \
            _SoftmaxOutputs(saved.softmax):
        out = model(**inputs)
        out.logits.float().pow(2).mean()  # the loss's own few tensors
    layers = [0] * len(saved.layers)
    for key, size in saved.sizes.items():
        if key in saved.owner:
            layers[saved.owner[key]] += size
    attention = sum(saved.sizes.get(key, 0) for key in saved.softmax)
    return Activations(sum(saved.sizes.values()), layers, saved.inputs, attention)


@dataclass
class Plan:
    """The memory a config needs per GPU in each setup (bytes), and what fits.

    ``params``: of the config as it is, without LoRA (full fine-tuning, FSDP) and with LoRA (its
    own settings, or the defaults); the activations are the full model's for both (LoRA keeps the
    same layer inputs for its adapters' gradients, plus rank-sized tensors)."""

    cfg: TrainConfig
    params: dict[str, dict[str, int]]  # "full", "lora" → parameter_counts
    activations: Activations

    def fused_activations(self, checkpointing: bool) -> int:
        """Per sample, with a fused attention kernel (the GPU's): without the attention probabilities."""
        act = self.activations
        if checkpointing:  # only the recomputed layer's probabilities were ever kept
            return act.checkpointed - act.attention // max(len(act.layers), 1)
        return act.total - act.attention

    def bytes_per_gpu(self, setup: str, gpus: int, per_gpu_batch: int) -> int:
        """``setup``: full | lora | fsdp, each optionally +ckpt (gradient checkpointing)."""
        params = self.params["lora" if setup.startswith("lora") else "full"]
        total, trainable = params["total"], params["trainable"]
        shards = gpus if setup.startswith("fsdp") else 1
        weights = 4 * total / shards + 2 * total  # fp32 master (sharded by FSDP) + the whole bf16 compute copy
        states = (4 + 8) * trainable / shards  # gradients, AdamW moments
        act = self.fused_activations(checkpointing=setup.endswith("+ckpt")) * per_gpu_batch
        return int(weights + states + act + OVERHEAD)

    def inference_bytes(self) -> int:
        """bf16 weights, no gradients (a chunk's activations are small beside them)."""
        return int(2 * self.params["full"]["total"] + OVERHEAD)

    def setups(self, gpus: int) -> list[Setup]:
        batch, accum = self.cfg.optim.batch_size, self.cfg.optim.grad_accum
        per_gpu = max(batch // (accum * gpus), 1)
        names = ["full", "full+ckpt", "lora", "lora+ckpt"] + (["fsdp", "fsdp+ckpt"] if gpus > 1 else [])
        return [Setup(name, gpus, per_gpu, self.bytes_per_gpu(name, gpus, per_gpu), self.command(name, gpus))
                for name in names]

    def command(self, setup: str, gpus: int) -> str:
        extra = " optim.gradient_checkpointing=true" if setup.endswith("+ckpt") else ""
        if setup.startswith("lora") and self.cfg.policy.lora is None:
            extra = " 'policy.lora={rank: 16}'" + extra
        elif not setup.startswith("lora") and self.cfg.policy.lora is not None:
            extra = " policy.lora=null" + extra
        if gpus == 1:
            return f"sf train run {self.cfg.name} data.root=...{extra}"
        config = "fsdp" if setup.startswith("fsdp") else "ddp"
        return (f"accelerate launch --config_file sf_policy/train/configs/accelerate/{config}.yaml --num_processes "
                f"{gpus} -m sf_policy.cli.train run {self.cfg.name} data.root=...{extra}")

    def largest_batch(self, setup: str, gpus: int, memory: float) -> int:
        """The most samples per GPU that fit ``memory`` bytes (0: not even one)."""
        fixed = self.bytes_per_gpu(setup, gpus, 0)
        return max(int((memory - fixed) // self.fused_activations(setup.endswith("+ckpt"))), 0)


def make_plan(cfg: TrainConfig) -> Plan:
    from ..model.policy import LoraSettings

    full, lora = copy.deepcopy(cfg), copy.deepcopy(cfg)
    full.policy.lora = None
    lora.policy.lora = cfg.policy.lora or LoraSettings()
    model = meta_policy_model(full)
    params = {"full": parameter_counts(full, model), "lora": parameter_counts(lora)}
    return Plan(cfg, params, activation_profile(full, model))


def check_fits(plan: Plan, gpus: int, memory_gb: float) -> None:
    """Raise ValueError naming the fields and what would fit when no setup of ``plan`` fits."""
    memory = memory_gb * 1e9
    setups = plan.setups(gpus)
    if any(s.bytes_per_gpu <= memory for s in setups):
        return
    cfg = plan.cfg
    options = []
    for s in setups:
        fits = plan.largest_batch(s.name, gpus, memory)
        if fits:
            accum = -(-cfg.optim.batch_size // (fits * gpus))
            options.append(f"{s.name} with optim.grad_accum={accum} ({cfg.optim.batch_size // (accum * gpus) or 1} "
                           f"per GPU)")
    hint = "; ".join(options) if options else "none at any batch: use LoRA (policy.lora) or more GPUs with FSDP"
    smallest = min(s.bytes_per_gpu for s in setups)
    raise ValueError(f"optim.batch_size {cfg.optim.batch_size} with optim.grad_accum {cfg.optim.grad_accum} on {gpus} "
                     f"GPU(s) of {memory_gb:g} GB: the leanest setup needs {smallest / 1e9:.1f} GB per GPU. "
                     f"What fits: {hint}")
