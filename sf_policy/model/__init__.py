"""The π0 policy: normalisation, action representations, the processor and the model wrapper.

transformers is imported lazily (only ``policy`` needs it at call time), so importing
``sf_policy.model`` stays cheap for tools that only normalise or process data.
"""

from __future__ import annotations

from sf_policy.model.actions import REPRESENTATIONS, action_stats, delta_mask, from_model, policy_stats, to_model
from sf_policy.model.normalize import GRIPPER_RANGE, Normalizer
from sf_policy.model.policy import (
    DEFAULT_LORA_TARGETS,
    LoraSettings,
    Policy,
    PolicyConfig,
    apply_lora,
    build_pi0,
    tiny_pi0_config,
    unwrap,
)
from sf_policy.model.processor import MODEL_INPUTS, PolicyProcessor, ProcessorConfig
from sf_policy.model.tokenizer import load_tokenizer, tiny_tokenizer

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "GRIPPER_RANGE",
    "MODEL_INPUTS",
    "REPRESENTATIONS",
    "LoraSettings",
    "Normalizer",
    "Policy",
    "PolicyConfig",
    "PolicyProcessor",
    "ProcessorConfig",
    "action_stats",
    "apply_lora",
    "build_pi0",
    "delta_mask",
    "from_model",
    "load_tokenizer",
    "policy_stats",
    "tiny_pi0_config",
    "tiny_tokenizer",
    "to_model",
    "unwrap",
]
