"""Robot samples → the tensors ``PI0ForConditionalGeneration`` takes, and model actions → joint targets.

One sample is a dict::

    {"images": {"cam_high": uint8 HxWx3 or None, "cam_left_wrist": ..., "cam_right_wrist": ...},
     "state": [14] (rad / m), "prompt": str, "actions": [T<=50, 14] (optional, absolute)}

and a batch comes out laid out as the contract fixes (docs/training/model.md):

    prefix = [256 tokens of slot 0][256 of slot 1][256 of slot 2][bos, prompt, "\\n", pad...]

* Every camera slot is always present in ``pixel_values`` and ``pixel_attention_mask`` is all
  True: transformers' ``embed_prefix`` gives image tokens to cameras by rank, so dropping a
  slot would shift later cameras onto the wrong tokens. A missing camera is a black image
  whose 256 tokens get ``attention_mask`` 0 (nothing attends to them) and are not valid for
  the alignment loss (``visual_valid``).
* Images are letterboxed (``sf_policy.align.grid.letterbox_geometry``): resized keeping the
  aspect ratio so the longer side is 224, centred, black padding. Resizing is bilinear with
  antialiasing (``torch.nn.functional.interpolate(..., antialias=True)``), like PIL's
  bilinear that openpi uses, so that downscaling 640 px → 224 px does not alias. Values are
  then mapped to [−1, 1] (SigLIP's normalisation, mean = std = 0.5), so padding is −1.
* The prompt is tokenized as PaliGemma's: ``bos + prompt + "\\n"`` (transformers'
  PI0Processor and openpi do the same), after collapsing whitespace and turning ``_`` into
  spaces (openpi's cleaning), right-padded to ``max_prompt_tokens``; a longer prompt is cut
  (keeping the final ``"\\n"``) with a warning. The image token id is the model's
  ``vlm_config.image_token_id``, not looked up in the tokenizer.
* State and actions are normalised (``Normalizer``) after converting the actions to the
  model's representation (``actions.to_model``), then zero-padded from 14 to 32 dims. A
  chunk shorter than 50 steps (end of episode) repeats its last action; ``action_pad``
  marks those steps so the loss can ignore them.
"""

from __future__ import annotations

import collections
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from sf_policy.align.grid import PatchBox, letterbox_geometry, visual_token_mask
from sf_policy.data.features import ACTION, STATE
from sf_policy.embodiment import STATE_DIM
from sf_policy.model.actions import check_representation, from_model, to_model
from sf_policy.model.normalize import Normalizer
from sf_policy.topics import CAMERA_ROLES

#: The batch entries ``PI0ForConditionalGeneration.forward`` / ``sample_actions`` take.
#: How many distinct over-long prompts a processor remembers having warned about (each warns once).
WARNED_PROMPTS = 256

MODEL_INPUTS: tuple[str, ...] = ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask", "state")
SAMPLE_KEYS: tuple[str, ...] = ("images", "state", "prompt", "actions")


def check_fields(cls, data: Mapping, what: str) -> None:
    """Refuse keys a dataclass does not have, naming them (a saved config from another version)."""
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {what} field(s): {', '.join(sorted(unknown))}")


@dataclass(frozen=True)
class ProcessorConfig:
    image_size: int = 224
    patch_size: int = 14
    max_prompt_tokens: int = 48
    chunk_size: int = 50
    max_state_dim: int = 32
    max_action_dim: int = 32
    representation: str = "delta"
    camera_roles: tuple[str, ...] = CAMERA_ROLES
    # False: the model input ``state`` is blanked (0, the normalised mean) for every sample, so the
    # policy reads the arms' pose from the cameras. Demonstrations that move along fixed-time paths
    # from one home pose let a policy read where the arm is going from where it is, and never learn
    # to look for the object (docs/results/learn.md). ``raw_state`` (for delta actions) is kept.
    state_input: bool = True

    def __post_init__(self) -> None:
        check_representation(self.representation)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.max_prompt_tokens < 2:
            raise ValueError(f"max_prompt_tokens must hold at least bos and '\\n', got {self.max_prompt_tokens}")
        if self.max_state_dim < STATE_DIM or self.max_action_dim < STATE_DIM:
            raise ValueError(f"max_state_dim/max_action_dim must be >= {STATE_DIM}")

    @property
    def tokens_per_camera(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_visual_tokens(self) -> int:
        return len(self.camera_roles) * self.tokens_per_camera

    def to_dict(self) -> dict:
        data = asdict(self)
        data["camera_roles"] = list(self.camera_roles)
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> ProcessorConfig:
        check_fields(cls, data, "processor config")
        data = dict(data)
        if "camera_roles" in data:
            data["camera_roles"] = tuple(data["camera_roles"])
        return cls(**data)


class PolicyProcessor:
    """Turns a list of robot samples into a π0 batch (see the module docstring for the layout)."""

    def __init__(self, tokenizer, normalizer: Normalizer, image_token_id: int,
                 config: ProcessorConfig | None = None):
        self.tokenizer = tokenizer
        self.normalizer = normalizer
        self.image_token_id = int(image_token_id)
        self.config = config or ProcessorConfig()
        self.bos_id = tokenizer.bos_token_id
        if self.bos_id is None:
            raise ValueError("the tokenizer has no bos token; π0's prompt starts with one")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.newline_ids = self._encode("\n")
        # Over-long prompts already warned about: a bounded memory (a server sees any number of them)
        self._warned_prompts: collections.OrderedDict[str, None] = collections.OrderedDict()

    # -- the batch

    def __call__(self, samples: Sequence[Mapping], device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Samples → a batch. ``device``: where the images are resized and the batch ends up
        (deployment passes the model's GPU: the uint8 images travel, not float copies)."""
        if isinstance(samples, Mapping):
            raise TypeError("PolicyProcessor takes a list of samples; wrap a single sample in a list")
        if len(samples) == 0:
            raise ValueError("PolicyProcessor got an empty list of samples")
        with_actions = ["actions" in s and s["actions"] is not None for s in samples]
        if any(with_actions) and not all(with_actions):
            raise ValueError("either every sample or none has 'actions' (samples "
                             f"{[i for i, w in enumerate(with_actions) if not w]} have none)")
        rows = [self._sample(i, s, device) for i, s in enumerate(samples)]
        batch = {key: torch.stack([r[key].to(device) if device is not None else r[key] for r in rows])
                 for key in rows[0]}
        batch["pixel_attention_mask"] = torch.ones(len(rows), len(self.config.camera_roles), dtype=torch.bool,
                                                   device=device)
        return batch

    def _sample(self, index: int, sample: Mapping, device=None) -> dict[str, torch.Tensor]:
        where = f"sample {index}"
        unknown = set(sample) - set(SAMPLE_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; "
                             f"a sample has {', '.join(SAMPLE_KEYS)}")
        for key in ("images", "state", "prompt"):
            if key not in sample:
                raise ValueError(f"{where}: missing field {key!r}")
        pixels, present, boxes = self.images(sample["images"], where, device)
        ids, text_mask = self.tokenize(sample["prompt"], where)
        cfg = self.config
        image_mask = present.repeat_interleave(cfg.tokens_per_camera).long()
        row = {
            "input_ids": torch.cat([torch.full((cfg.num_visual_tokens,), self.image_token_id), ids]),
            "attention_mask": torch.cat([image_mask, text_mask]),
            "pixel_values": pixels,
            "camera_present": present,
            "visual_valid": visual_token_mask(boxes, present[None], cfg.image_size // cfg.patch_size)[0],
        }
        state = _vector(sample["state"], f"{where}: state", (STATE_DIM,))
        row["raw_state"] = torch.from_numpy(state).float()
        row["state"] = _pad(torch.from_numpy(self.normalizer.normalize(state, STATE)).float(), cfg.max_state_dim)
        if not cfg.state_input:
            row["state"] = torch.zeros_like(row["state"])
        if sample.get("actions") is not None:
            row["actions"], row["action_pad"] = self.actions(sample["actions"], state, where)
        return row

    # -- pieces

    def images(self, images: Mapping, where: str = "sample", device=None) -> tuple[torch.Tensor, torch.Tensor, list]:
        """{role: uint8 HxWx3 | None} → pixels [n_cams, 3, S, S] in [−1, 1], present [n_cams], boxes."""
        if not isinstance(images, Mapping):
            raise TypeError(f"{where}: images must be a dict {{role: HxWx3 uint8 array or None}}, "
                            f"got {type(images).__name__}")
        unknown = set(images) - set(self.config.camera_roles)
        if unknown:
            raise ValueError(f"{where}: images{sorted(unknown)}: unknown camera role(s); "
                             f"expected {', '.join(self.config.camera_roles)}")
        pixels, present, boxes = [], [], []
        for role in self.config.camera_roles:
            image = images.get(role)
            if image is None:
                size = self.config.image_size
                pixels.append(torch.full((3, size, size), -1.0, device=device))
                present.append(False)
                boxes.append(None)
            else:
                canvas, box = self.letterbox(image, f"{where}: images[{role!r}]", device)
                pixels.append(canvas)
                present.append(True)
                boxes.append(box)
        return torch.stack(pixels), torch.tensor(present), boxes

    def letterbox(self, image: np.ndarray, field: str = "image", device=None) -> tuple[torch.Tensor, PatchBox]:
        """uint8 HxWx3 → [3, S, S] float in [−1, 1] (black padding = −1) and its valid PatchBox."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            got = (f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray)
                   else type(image).__name__)
            raise ValueError(f"{field}: expected HxWx3 uint8, got {got}")
        height, width = image.shape[:2]
        if height == 0 or width == 0:
            raise ValueError(f"{field}: expected HxWx3 uint8, got an empty image {image.shape}")
        size = self.config.image_size
        _, new_h, new_w, top, left, box = letterbox_geometry(height, width, size, self.config.patch_size)
        x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float() / 255.0
        if (new_h, new_w) != (height, width):
            x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
        canvas = torch.zeros(3, size, size, device=x.device)
        canvas[:, top:top + new_h, left:left + new_w] = x[0].clamp_(0.0, 1.0)
        return canvas * 2.0 - 1.0, box

    def tokenize(self, prompt: str, where: str = "sample") -> tuple[torch.Tensor, torch.Tensor]:
        """bos + cleaned prompt + "\\n", right-padded: (ids [P], mask [P])."""
        if not isinstance(prompt, str):
            raise TypeError(f"{where}: prompt must be a str, got {type(prompt).__name__}")
        cleaned = " ".join(prompt.replace("_", " ").split())
        body = self._encode(cleaned) if cleaned else []
        room = self.config.max_prompt_tokens - 1 - len(self.newline_ids)
        if len(body) > room:
            if prompt not in self._warned_prompts:
                self._warned_prompts[prompt] = None
                if len(self._warned_prompts) > WARNED_PROMPTS:
                    self._warned_prompts.popitem(last=False)
                shown = prompt if len(prompt) <= 120 else f"{prompt[:120]}... ({len(prompt)} characters)"
                warnings.warn(f"{where}: prompt has {len(body)} tokens, more than the {room} that fit in "
                              f"max_prompt_tokens={self.config.max_prompt_tokens}; cut to {room}: {shown!r}",
                              stacklevel=3)
            body = body[:room]
        ids = [self.bos_id, *body, *self.newline_ids]
        if self.image_token_id in ids:
            raise ValueError(f"{where}: prompt contains the image token (id {self.image_token_id}): {prompt!r}")
        pad = self.config.max_prompt_tokens - len(ids)
        return (torch.tensor(ids + [self.pad_id] * pad, dtype=torch.long),
                torch.tensor([1] * len(ids) + [0] * pad, dtype=torch.long))

    def actions(self, actions, state: np.ndarray, where: str = "sample") -> tuple[torch.Tensor, torch.Tensor]:
        """Absolute [T<=chunk, 14] → normalised model actions [chunk, max_action_dim] and pad mask [chunk]."""
        chunk = self.config.chunk_size
        actions = _vector(actions, f"{where}: actions")
        if actions.ndim != 2 or actions.shape[1] != STATE_DIM or not 1 <= actions.shape[0] <= chunk:
            raise ValueError(f"{where}: actions: expected [T, {STATE_DIM}] with 1 <= T <= {chunk}, "
                             f"got shape {actions.shape}")
        steps = len(actions)
        padded = np.concatenate([actions, np.repeat(actions[-1:], chunk - steps, axis=0)])
        model = to_model(padded, state, self.config.representation)
        normed = torch.from_numpy(self.normalizer.normalize(model, ACTION)).float()
        pad = torch.arange(chunk) >= steps
        return _pad(normed, self.config.max_action_dim), pad

    def postprocess(self, model_actions: torch.Tensor, raw_state: torch.Tensor) -> torch.Tensor:
        """Model output [B, chunk, max_action_dim] (normalised) → absolute joint targets [B, chunk, 14]."""
        actions = self.normalizer.unnormalize(model_actions[..., :STATE_DIM].float(), ACTION)
        return from_model(actions, raw_state.float().to(actions.device), self.config.representation)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))


def _vector(value, field: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A finite float64 array (of the given shape, if one is given); errors name the field."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{field}: expected an array of numbers, got {type(value).__name__}") from exc
    if shape is not None and array.shape != tuple(shape):
        raise ValueError(f"{field}: expected shape {tuple(shape)}, got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{field}: contains NaN or inf")
    return array


def _pad(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad the last dimension to ``size``."""
    return F.pad(x, (0, size - x.shape[-1]))
