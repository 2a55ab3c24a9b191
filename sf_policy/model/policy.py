"""The π0 policy: transformers' ``PI0ForConditionalGeneration`` plus our processor, loss and sampler.

The model is used as transformers ships it (no fork). What this module adds:

* ``build_pi0``: the model from a local checkpoint directory (``lerobot/pi0_base`` layout,
  never a download) or a tiny random configuration for tests, optionally with LoRA.
* ``Policy.loss``: the flow-matching velocity MSE restricted to the 14 real action dims and
  to the chunk steps inside the episode. The model's own ``loss`` averages over all 32 padded
  dims and every step, so we pass ``noise`` and ``timestep`` explicitly, take its predicted
  velocity (``logits``) and compare it with ``noise − actions`` ourselves.
* ``Policy.sample``: 10 Euler steps, then unnormalised and converted back to absolute joint
  targets [B, 50, 14]. By default through ``sampling.FastSampler`` (the same integration as
  ``sample_actions``, equal results, with the step-invariant work done once and optionally
  compiled / CUDA-graph captured); ``configure_inference(sampler="transformers")`` calls
  ``sample_actions`` itself.

For Spatial Forcing the lead hooks ``policy.pi0.model.vlm.language_model.layers[k - 1]``; one
``Policy.loss`` call runs the VLM once, so the hook sees the visual tokens of that step.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sf_policy.embodiment import STATE_DIM
from sf_policy.model.actions import check_representation
from sf_policy.model.normalize import Normalizer
from sf_policy.model.processor import MODEL_INPUTS, PolicyProcessor, ProcessorConfig, check_fields
from sf_policy.model.rtc import MAX_GUIDANCE, Guidance, prefix_weights
from sf_policy.model.sampling import FastSampler
from sf_policy.model.tokenizer import IMAGE_TOKEN, load_tokenizer

#: What a sample may carry for real-time chunking, beside what the processor reads.
GUIDANCE_KEYS = ("prefix_actions", "inference_delay")

#: LoRA goes on every attention and MLP projection of the VLM's Gemma (2B) and of the action
#: expert (Gemma 300M): q/k/v/o_proj and gate/up/down_proj of ``model.vlm.language_model.layers.N``
#: and ``model.dit.layers.N``. SigLIP (``model.vlm.vision_tower``) and the multimodal projector
#: stay frozen. A regex, matched by peft against full module names.
DEFAULT_LORA_TARGETS = (r"model\.(vlm\.language_model|dit)\.layers\.\d+\."
                        r"(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)")
#: Small, freshly adapted heads that stay fully trainable next to the LoRA weights.
DEFAULT_TRAINABLE_MODULES: tuple[str, ...] = ("embed_action_time", "action_out_proj")
SAMPLERS = ("fast", "transformers")
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
NORMALIZER_FILE = "normalizer.json"
POLICY_FILE = "policy.json"


@dataclass
class LoraSettings:
    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str | list[str] = DEFAULT_LORA_TARGETS
    trainable_modules: tuple[str, ...] = DEFAULT_TRAINABLE_MODULES


@dataclass
class PolicyConfig:
    """What to build. ``checkpoint``: a local directory (config.json + safetensors); ``tiny``:
    a random tiny model instead. ``tokenizer`` defaults to the checkpoint directory."""

    checkpoint: str | None = None
    tokenizer: str | None = None
    tiny: bool = False  # a π0 from scratch (random weights) of SCRATCH_SIZES[size], instead of a checkpoint
    size: str = "tiny"  # tiny (CI) | small (the CPU recipe)
    representation: str = "delta"  # "absolute" | "delta" (arm joints relative, grippers absolute)
    norm_mode: str = "zscore"  # "zscore" | "quantile"
    gripper_norm: str = "range"  # "range" (physical 0..0.07 m) | "stats"
    # False: the model never sees the joint state (it is blanked, in training and deployment
    # alike); actions stay relative to it. See ProcessorConfig.state_input.
    state_input: bool = True
    # A π0 from scratch: its SigLIP patch positions start at 2-D sine-cosine codes ("sincos") or at
    # transformers' random default ("random"); see init_patch_positions. A checkpoint keeps its own.
    patch_positions: str = "sincos"
    chunk_size: int = 50
    max_prompt_tokens: int = 48
    lora: LoraSettings | None = None
    dtype: str = "float32"  # "float32" | "bfloat16" | "float16"
    freeze_unused: bool = True  # freeze the weights no loss reaches (see freeze_unused)

    def __post_init__(self) -> None:
        check_representation(self.representation)
        if isinstance(self.lora, Mapping):
            lora = dict(self.lora)
            lora["trainable_modules"] = tuple(lora.get("trainable_modules", DEFAULT_TRAINABLE_MODULES))
            self.lora = LoraSettings(**lora)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.patch_positions not in ("sincos", "random"):
            raise ValueError(f"patch_positions must be sincos or random, got {self.patch_positions!r}")
        if self.size not in SCRATCH_SIZES:
            raise ValueError(f"size must be one of {', '.join(SCRATCH_SIZES)}, got {self.size!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> PolicyConfig:
        check_fields(cls, data, "policy config")
        return cls(**data)


# --------------------------------------------------------------------------------------------
# Building the model


@dataclass(frozen=True)
class ScratchSize:
    """The sizes of a π0 trained from scratch (``PolicyConfig.tiny``): no weights to download.

    Widths/layers/MLP widths of SigLIP (``vision``), the VLM's Gemma (``vlm``) and the action
    expert (``expert``); ``heads`` × ``head_dim`` is shared by the VLM and the expert (the
    expert attends to the VLM's cached keys/values layer by layer, so both need the same
    layer count, KV heads and head_dim). The processor letterboxes every camera to
    ``image_size`` and the alignment grid is ``image_size / patch_size`` per side."""

    vision: tuple[int, int, int]
    vlm: tuple[int, int, int]
    expert: tuple[int, int, int]
    heads: int = 2
    head_dim: int = 32
    image_size: int = 224
    patch_size: int = 14


SCRATCH_SIZES: dict[str, ScratchSize] = {
    # CI and the plumbing: every interface of the real model at the smallest cost.
    "tiny": ScratchSize(vision=(32, 2, 64), vlm=(64, 4, 128), expert=(32, 4, 64)),
    # The CPU recipe (bench/learn.py, docs/results/learn.md): wider encoders that can localise an
    # object, on 112 px cameras (8 × 8 patches each) so a 2-core step stays near 0.1 s at batch 8.
    "small": ScratchSize(vision=(128, 4, 256), vlm=(128, 4, 256), expert=(64, 4, 128), heads=4, image_size=112),
    # The consistency check in CI (tests/test_learn.py): fits one demonstration in about a minute;
    # 56 px cameras (4 × 4 patches) are enough to replay a scene, not to generalise.
    "micro": ScratchSize(vision=(64, 2, 128), vlm=(64, 4, 128), expert=(64, 4, 128), image_size=56),
}


def tiny_pi0_config(vocab_size: int, image_token_id: int, chunk_size: int = 50, size: str = "tiny"):
    """A π0 small enough for a CPU (``SCRATCH_SIZES[size]``; ``tiny``: 4+4 layers, widths 64
    (VLM) / 32 (expert), SigLIP 2 layers).

    Everything the real model's interfaces depend on is kept: 14 px patches, 32-d
    state/actions, head_dim shared by VLM and expert.
    """
    from transformers import PI0Config

    if size not in SCRATCH_SIZES:
        raise ValueError(f"unknown model size {size!r}; known: {', '.join(SCRATCH_SIZES)}")
    z = SCRATCH_SIZES[size]
    if z.vlm[1] != z.expert[1]:
        raise ValueError(f"size {size!r}: the VLM and the expert need the same number of layers")
    attention = {"num_attention_heads": z.heads, "num_key_value_heads": 1, "head_dim": z.head_dim}
    return PI0Config(
        vlm_config={
            "text_config": {"hidden_size": z.vlm[0], "num_hidden_layers": z.vlm[1], "intermediate_size": z.vlm[2],
                            **attention, "vocab_size": vocab_size},
            "vision_config": {"hidden_size": z.vision[0], "intermediate_size": z.vision[2],
                              "num_hidden_layers": z.vision[1], "num_attention_heads": 2, "patch_size": z.patch_size,
                              "image_size": z.image_size, "vision_use_head": False},
            "projection_dim": z.vlm[0],
            "image_token_id": image_token_id,
        },
        dit_config={"hidden_size": z.expert[0], "num_hidden_layers": z.expert[1], "intermediate_size": z.expert[2],
                    **attention},
        chunk_size=chunk_size,
    )


def sincos_positions(grid: int, width: int) -> torch.Tensor:
    """[grid², width] 2-D sine-cosine position codes (MAE's): half the channels code the row,
    half the column, each at geometrically spaced frequencies."""
    if width % 4:
        raise ValueError(f"2-D sine-cosine positions need a width divisible by 4, got {width}")
    freqs = 1.0 / 10000 ** (torch.arange(width // 4, dtype=torch.float64) / (width // 4))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")
    codes = [f(axis.reshape(-1, 1) * freqs) for axis in (rows, cols) for f in (torch.sin, torch.cos)]
    return torch.cat(codes, dim=1).float()


def init_patch_positions(model: nn.Module) -> None:
    """Start a from-scratch SigLIP's patch positions at 2-D sine-cosine codes.

    Its default start (N(0, 1/width)) is about a tenth of the patch embeddings' size, and the
    policy has to learn from the action loss alone where on the table each patch lies: the
    `small` recipe's policies reached for the average grasp pose whatever the scene, their
    chunk at the first frame uncorrelated with the demonstration's (docs/results/learn.md).
    Codes that already say where a patch is make "where is the object" a readout. They stay
    trainable. A pretrained checkpoint keeps its own."""
    for module in model.modules():
        if type(module).__name__ == "SiglipVisionEmbeddings":
            grid = module.image_size // module.patch_size
            with torch.no_grad():
                module.position_embedding.weight.copy_(sincos_positions(grid, module.embed_dim))


def image_token_id_of(tokenizer) -> tuple[int, int]:
    """(image token id, vocabulary size) for a tiny model sized to ``tokenizer``."""
    vocab = tokenizer.get_vocab()
    if IMAGE_TOKEN in vocab:
        return vocab[IMAGE_TOKEN], len(tokenizer)
    return len(tokenizer), len(tokenizer) + 1  # PaliGemma style: one id past the text vocabulary


def build_pi0(config: PolicyConfig, tokenizer=None) -> nn.Module:
    """``PI0ForConditionalGeneration`` from ``config.checkpoint`` (local only) or a tiny random one.

    With ``config.lora`` the result is a peft ``PeftModel`` around it (see ``apply_lora``);
    ``unwrap(model)`` gives the PI0 model either way.
    """
    from transformers import PI0ForConditionalGeneration

    dtype = DTYPES[config.dtype]
    if config.checkpoint is not None:
        path = Path(config.checkpoint)
        if not path.is_dir():
            raise FileNotFoundError(f"π0 checkpoint directory {path} does not exist (PolicyConfig.checkpoint); "
                                    "download lerobot/pi0_base there first (docs/training/model.md)")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"π0 checkpoint directory {path} has no config.json")
        model = PI0ForConditionalGeneration.from_pretrained(path, local_files_only=True, dtype=dtype)
    elif config.tiny:
        if tokenizer is None:
            if config.tokenizer is None:
                raise ValueError("a tiny π0 needs a tokenizer to size its vocabulary: set PolicyConfig.tokenizer")
            tokenizer = load_tokenizer(config.tokenizer)
        image_token_id, vocab_size = image_token_id_of(tokenizer)
        model = PI0ForConditionalGeneration(tiny_pi0_config(vocab_size, image_token_id, config.chunk_size,
                                                            config.size))
        if config.patch_positions == "sincos":
            init_patch_positions(model)
        model.to(dtype)
    else:
        raise ValueError("PolicyConfig needs a checkpoint directory or tiny=True")
    if model.config.chunk_size != config.chunk_size:
        raise ValueError(f"the model predicts chunks of {model.config.chunk_size} steps but PolicyConfig.chunk_size "
                         f"is {config.chunk_size}")
    if config.lora is not None:
        model = apply_lora(model, config.lora)
    if config.freeze_unused:
        freeze_unused(model)
    return model


class CheckpointError(ValueError):
    """A checkpoint's weight file cannot be read; the message names the file."""


def check_weights(directory: str | Path) -> None:
    """Open every ``*.safetensors`` in ``directory`` (its header and its length: cheap) and raise
    CheckpointError naming the file if one is damaged or incomplete, before transformers reports
    it without the file's name."""
    from safetensors import SafetensorError, safe_open

    for file in sorted(Path(directory).glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as weights:
                weights.keys()
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{file}: cannot be read ({exc}): the file is damaged or incomplete (an "
                                  "interrupted copy or save?); copy it again or use another checkpoint") from None


def unused_parameter_patterns(pi0_config) -> list[str]:
    """Regexes of the π0 weights that no action loss can reach.

    The action expert reads the VLM only through each layer's keys and values, so the last
    VLM layer's query/output projections, post-attention norm and MLP, and the VLM's final
    norm, compute outputs nobody uses; the expert's token embedding (vocab × width, 263 M
    parameters at full size) is never used either, since the expert gets embeddings directly.
    """
    last = pi0_config.vlm_config.text_config.num_hidden_layers - 1
    return [
        r"(^|\.)model\.dit\.embed_tokens\.",
        (rf"(^|\.)model\.vlm\.language_model\.layers\.{last}\."
         r"(self_attn\.(q_proj|o_proj)|post_attention_layernorm|mlp)\."),
        r"(^|\.)model\.vlm\.language_model\.norm\.",
    ]


def freeze_unused(model: nn.Module) -> list[str]:
    """Set requires_grad=False on the weights no loss reaches (``unused_parameter_patterns``),
    LoRA adapters on them included; returns their names.

    They would get no gradient anyway; frozen, they cost no optimizer state, and DDP does not
    need ``find_unused_parameters``. Alignment on the last VLM layer would need them: keep the
    aligned layer below the last one (SF uses 12 of 18), or set ``PolicyConfig.freeze_unused=False``.
    """
    patterns = [re.compile(p) for p in unused_parameter_patterns(unwrap(model).config)]
    frozen = []
    for name, param in model.named_parameters():
        if param.requires_grad and any(p.search(name) for p in patterns):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def apply_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Freeze ``model`` and add LoRA adapters (peft) on ``settings.targets``; the heads in
    ``settings.trainable_modules`` stay fully trainable (peft ``modules_to_save``)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=settings.targets, modules_to_save=list(settings.trainable_modules))
    with warnings.catch_warnings():  # peft asks a deprecated transformers property; not ours to fix
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(model, lora)


def unwrap(model: nn.Module) -> nn.Module:
    """The ``PI0ForConditionalGeneration`` inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if is_peft(model) else model


def is_peft(model: nn.Module) -> bool:
    """True for a peft wrapper (``PeftModel``), without importing peft."""
    return type(model).__module__.startswith("peft.")


# --------------------------------------------------------------------------------------------
# The policy


class Policy(nn.Module):
    """π0 + processor: ``loss`` for training, ``sample`` / ``predict`` for acting."""

    def __init__(self, model: nn.Module, processor: PolicyProcessor, config: PolicyConfig | None = None):
        super().__init__()
        self.model = model
        self.processor = processor
        self.config = config or PolicyConfig(representation=processor.config.representation)
        _check_compatible(unwrap(model).config, processor)
        self.configure_inference()

    def configure_inference(self, sampler: str = "fast", compile: bool = False, cuda_graph: bool = True,
                            noise_scale: float = 1.0, max_guidance: float = MAX_GUIDANCE) -> None:
        """How ``sample`` integrates: ``fast`` (``FastSampler``; ``compile`` / ``cuda_graph`` as
        there) or ``transformers`` (``sample_actions`` as shipped, the reference).

        ``noise_scale`` multiplies the initial noise of the flow (a sampling temperature): 1 is
        π0's sampler; 0 integrates the flow from the noise distribution's mean, one deterministic
        chunk per observation. A model that has not learnt to remove the noise passes it into the
        chunk as step-to-step jitter (docs/eval_sim.md, "Why a policy is rate-limited").

        ``max_guidance``: β of real-time chunking (rtc.py), used for samples that carry
        ``prefix_actions``."""
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if not (math.isfinite(noise_scale) and noise_scale >= 0.0):
            raise ValueError(f"noise_scale must be a number >= 0, got {noise_scale}")
        if not (math.isfinite(max_guidance) and max_guidance >= 0.0):
            raise ValueError(f"max_guidance must be a number >= 0, got {max_guidance}")
        self._inference = {"sampler": sampler, "compile": compile, "cuda_graph": cuda_graph,
                           "noise_scale": float(noise_scale), "max_guidance": float(max_guidance)}
        self._fast_sampler = None  # built on first use, for the model as it is then

    @classmethod
    def build(cls, config: PolicyConfig, stats: Mapping | None = None, normalizer: Normalizer | None = None,
              tokenizer=None) -> Policy:
        """Model, tokenizer and processor from ``config``; normalisation from ``stats``
        (``actions.policy_stats``: computed in ``config.representation``) or a ready ``normalizer``."""
        if (stats is None) == (normalizer is None):
            raise ValueError("Policy.build needs exactly one of stats or normalizer")
        if tokenizer is None:
            source = config.tokenizer or config.checkpoint
            if source is None:
                raise ValueError("no tokenizer: set PolicyConfig.tokenizer (or checkpoint)")
            tokenizer = load_tokenizer(source)
        if normalizer is None:
            normalizer = Normalizer(stats, mode=config.norm_mode, gripper_mode=config.gripper_norm)
        model = build_pi0(config, tokenizer)
        return cls(model, processor_for(unwrap(model).config, tokenizer, normalizer, config), config)

    @property
    def pi0(self) -> nn.Module:
        """The ``PI0ForConditionalGeneration`` (LoRA layers, if any, are injected into it)."""
        return unwrap(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # -- training

    def sample_time(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Flow-matching times t ~ Beta(α, β)·scale + offset (π0: Beta(1.5, 1)·0.999 + 0.001), float32.

        For β = 1 (π0's value) the Beta is sampled by inverse CDF, u^(1/α), so that ``generator``
        makes it reproducible; torch's Beta distribution takes no generator.
        """
        cfg = self.pi0.config
        alpha, beta = cfg.time_sampling_beta_alpha, cfg.time_sampling_beta_beta
        if beta == 1.0:
            u = torch.rand(batch_size, generator=generator, device=self.device)
            t = u.pow(1.0 / alpha)
        else:
            t = torch.distributions.Beta(torch.tensor(alpha), torch.tensor(beta)).sample((batch_size,)).to(self.device)
        return (t * cfg.time_sampling_scale + cfg.time_sampling_offset).float()

    def noise_like(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        cfg = self.pi0.config
        return torch.randn(batch_size, cfg.chunk_size, cfg.max_action_dim, generator=generator, device=self.device)

    def loss(self, batch: Mapping[str, torch.Tensor], noise: torch.Tensor | None = None,
             timestep: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean action loss, per-sample loss [B]) of one flow-matching step on a processed batch.

        Velocity MSE over the 14 real dims, averaged over the chunk steps that are not
        ``action_pad``. ``noise`` [B, 50, 32] and ``timestep`` [B] default to fresh samples
        (``generator`` must live on the model's device).
        """
        if "actions" not in batch:
            raise ValueError("Policy.loss needs a batch with 'actions' (processor samples with actions)")
        inputs = self._inputs(batch)
        size = inputs["state"].shape[0]
        actions = batch["actions"].to(self.device).float()
        noise = self.noise_like(size, generator) if noise is None else noise.to(self.device).float()
        timestep = self.sample_time(size, generator) if timestep is None else timestep.to(self.device).float()
        out = self.model(**inputs, noise=noise.to(self.dtype), timestep=timestep, actions=actions.to(self.dtype))
        predicted = out.logits[..., :STATE_DIM].float()
        target = (noise - actions)[..., :STATE_DIM]
        error = (predicted - target).pow(2).mean(-1)  # [B, chunk]
        valid = (~batch["action_pad"].to(self.device)).float() if "action_pad" in batch else torch.ones_like(error)
        per_sample = (error * valid).sum(-1) / valid.sum(-1).clamp(min=1.0)
        return per_sample.mean(), per_sample

    def forward(self, batch: Mapping[str, torch.Tensor], noise: torch.Tensor | None = None,
                timestep: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``loss``: a wrapped policy (DDP, FSDP) must be called, not reached into."""
        return self.loss(batch, noise, timestep, generator)

    # -- acting

    @torch.no_grad()
    def sample(self, batch: Mapping[str, torch.Tensor], num_steps: int = 10,
               generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
               guide: Guidance | None = None) -> torch.Tensor:
        """Absolute joint targets [B, chunk, 14] (float32, rad / m) for a processed batch;
        ``guide``: real-time chunking toward the previous chunk (``guidance``)."""
        inputs = self._inputs(batch)
        size = inputs["state"].shape[0]
        if noise is None:
            noise = self.noise_like(size, generator) * self._inference["noise_scale"]
        noise = noise.to(self.device, self.dtype)
        if self._inference["sampler"] == "transformers":
            if guide is not None:
                raise ValueError("real-time chunking (prefix_actions) needs sampler 'fast', not 'transformers'")
            model_actions = self.pi0.sample_actions(**inputs, noise=noise, num_steps=num_steps)
        else:
            if self._fast_sampler is None or self._fast_sampler.pi0 is not self.pi0:
                self._fast_sampler = FastSampler(self.pi0, cuda_graph=self._inference["cuda_graph"],
                                                 compile=self._inference["compile"])
            model_actions = self._fast_sampler.sample(inputs, noise, num_steps, guide=guide)
        return self.processor.postprocess(model_actions, batch["raw_state"].to(self.device))

    def predict(self, samples: Sequence[Mapping], num_steps: int = 10,
                generator: torch.Generator | None = None) -> np.ndarray:
        """Robot samples (images, state, prompt; for real-time chunking also ``prefix_actions``
        and ``inference_delay``) → absolute action chunks [B, chunk, 14] as numpy."""
        observations = [{k: v for k, v in sample.items() if k not in GUIDANCE_KEYS} for sample in samples]
        return self.sample(self.processor(observations, device=self.device), num_steps, generator,
                           guide=self.guidance(samples)).cpu().numpy()

    def guidance(self, samples: Sequence[Mapping]) -> Guidance | None:
        """Real-time chunking's target from the samples that carry ``prefix_actions`` [n <= chunk, 14]
        (absolute targets of the chunk being executed, from the sample's own tick on) and
        ``inference_delay`` (control ticks until the new chunk can take over); None if none does."""
        chunk, width = self.processor.config.chunk_size, self.processor.config.max_action_dim
        target = torch.zeros(len(samples), chunk, width)
        weights = torch.zeros(len(samples), chunk, width)
        guided = False
        for b, sample in enumerate(samples):
            prefix = sample.get("prefix_actions")
            if prefix is None or len(prefix) == 0:
                continue
            delay = sample.get("inference_delay", 0)
            if isinstance(delay, bool) or not isinstance(delay, (int, np.integer)) or delay < 0:
                raise ValueError(f"sample {b}: inference_delay must be an integer >= 0 (control ticks), got {delay!r}")
            prefix = prefix[:chunk]  # beyond the new chunk's horizon it cannot guide anything
            target[b], _ = self.processor.actions(prefix, np.asarray(sample["state"], np.float64),
                                                  where=f"sample {b}: prefix_actions")
            weights[b, :, :STATE_DIM] = torch.from_numpy(prefix_weights(chunk, int(delay), len(prefix)))[:, None]
            guided = True
        return Guidance(target, weights, self._inference["max_guidance"]) if guided else None

    def _inputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [k for k in MODEL_INPUTS if k not in batch]
        if missing:
            raise ValueError(f"batch lacks {', '.join(missing)} (build it with the policy's processor)")
        inputs = {k: batch[k].to(self.device) for k in MODEL_INPUTS}
        for key in ("pixel_values", "state"):
            inputs[key] = inputs[key].to(self.dtype)
        return inputs

    # -- saving

    def merge_lora(self) -> None:
        """Fold the LoRA adapters into the weights (in place; do it once training is over)."""
        if is_peft(self.model):
            self.model = self.model.merge_and_unload()
            self.config.lora = None

    def save_pretrained(self, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """A self-contained directory: π0 weights + config, tokenizer, normalizer.json, policy.json;
        ``state_dict`` (π0's keys) instead of the live weights (FSDP gathers them)."""
        if is_peft(self.model):
            raise ValueError("the policy still has LoRA adapters; call merge_lora() before save_pretrained()")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.pi0.save_pretrained(path, state_dict=state_dict)
        self.processor.tokenizer.save_pretrained(path)
        (path / NORMALIZER_FILE).write_text(json.dumps(self.processor.normalizer.to_dict(), indent=1))
        config = self.config.to_dict() | {"checkpoint": None, "tokenizer": None, "tiny": False}
        policy = {"policy": config, "processor": self.processor.config.to_dict()}
        (path / POLICY_FILE).write_text(json.dumps(policy, indent=1))

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: str | None = None) -> Policy:
        """Load what ``save_pretrained`` wrote (local directory only)."""
        path = Path(path)
        for name in (POLICY_FILE, NORMALIZER_FILE):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path} is not a saved policy: {name} is missing")
        check_weights(path)
        saved = json.loads((path / POLICY_FILE).read_text())
        config = PolicyConfig.from_dict(saved["policy"] | {"checkpoint": str(path), "tokenizer": str(path)})
        if dtype is not None:
            config.dtype = dtype
        normalizer = Normalizer.from_dict(json.loads((path / NORMALIZER_FILE).read_text()))
        tokenizer = load_tokenizer(path)
        model = build_pi0(config, tokenizer)
        processor = PolicyProcessor(tokenizer, normalizer, unwrap(model).config.vlm_config.image_token_id,
                                    ProcessorConfig.from_dict(saved["processor"]))
        return cls(model, processor, config)


def processor_for(pi0_config, tokenizer, normalizer: Normalizer, config: PolicyConfig) -> PolicyProcessor:
    """A processor whose sizes come from the model's config (image size, patch, chunk, padded dims)."""
    vision = pi0_config.vlm_config.vision_config
    processor_config = ProcessorConfig(
        image_size=vision.image_size, patch_size=vision.patch_size, max_prompt_tokens=config.max_prompt_tokens,
        chunk_size=pi0_config.chunk_size, max_state_dim=pi0_config.max_state_dim,
        max_action_dim=pi0_config.max_action_dim, representation=config.representation,
        state_input=config.state_input)
    return PolicyProcessor(tokenizer, normalizer, pi0_config.vlm_config.image_token_id, processor_config)


def _check_compatible(pi0_config, processor: PolicyProcessor) -> None:
    vision = pi0_config.vlm_config.vision_config
    pc = processor.config
    expected = {"chunk_size": pi0_config.chunk_size, "max_state_dim": pi0_config.max_state_dim,
                "max_action_dim": pi0_config.max_action_dim, "image_size": vision.image_size,
                "patch_size": vision.patch_size}
    wrong = {k: (getattr(pc, k), v) for k, v in expected.items() if getattr(pc, k) != v}
    if wrong:
        raise ValueError("processor and model disagree: " + ", ".join(f"{k} {p} vs model {m}"
                                                                      for k, (p, m) in wrong.items()))
    if processor.image_token_id != pi0_config.vlm_config.image_token_id:
        raise ValueError(f"processor image token id {processor.image_token_id} is not the model's "
                         f"{pi0_config.vlm_config.image_token_id}")


__all__ = ["DEFAULT_LORA_TARGETS", "DEFAULT_TRAINABLE_MODULES", "LoraSettings", "Policy", "PolicyConfig",
           "apply_lora", "build_pi0", "freeze_unused", "is_peft", "processor_for", "tiny_pi0_config", "unwrap"]
