"""Loading VGGT's aggregator weights from the released checkpoint, strictly.

`facebook/VGGT-1B` ships `model.pt` (a bare state dict, torch.save) and `model.safetensors`
holding the whole model: `aggregator.*` (909 M parameters) plus `camera_head.*`,
`depth_head.*`, `point_head.*`, `track_head.*`. Spatial Forcing only needs the aggregator, so
we read just the `aggregator.` entries, strip the prefix and load them with strict=True into
our own `Aggregator`. Any missing, unexpected or mis-shaped key is an error that names the
file and the keys: a silently half-loaded teacher would give plausible-looking but wrong
targets, which is the worst failure a training run can have.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from sf_policy.teacher.vggt import Aggregator, AggregatorConfig

AGGREGATOR_PREFIX = "aggregator."
_SHOW = 20  # keys listed per category in error messages


class CheckpointMismatch(ValueError):
    """The checkpoint's aggregator weights do not fit the model (names the file and the keys)."""


def _keys_summary(what: str, keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_SHOW])
    more = f", ... ({len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return f"{len(keys)} {what}: {shown}{more}"


def read_state_dict(path: str | os.PathLike, keep: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file or a torch.save'd state dict (`.pt`, `.pth`, `.bin`), on CPU.

    `keep(name)` filters entries; for safetensors the others are never read. torch files are
    memory-mapped where their format allows, so the 5 GB VGGT-1B file is not copied into RAM
    just to drop its heads.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    keep = keep or (lambda name: True)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys() if keep(k)}
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) torch files cannot be memory-mapped
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and len(obj) == 1 and next(iter(obj)) in ("model", "state_dict"):
        obj = next(iter(obj.values()))  # tolerate {"model": state_dict} wrappers
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointMismatch(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    return {k: v for k, v in obj.items() if keep(k)}


def load_aggregator_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The aggregator's entries of a VGGT checkpoint, `aggregator.` prefix stripped.

    Accepts the full official checkpoint (heads are ignored) or a file that already holds
    only the aggregator, without the prefix.
    """
    state = read_state_dict(path)
    ours = {k[len(AGGREGATOR_PREFIX) :]: v for k, v in state.items() if k.startswith(AGGREGATOR_PREFIX)}
    if ours:
        return ours
    if "camera_token" in state:  # already stripped
        return state
    raise CheckpointMismatch(
        f"{path}: no aggregator weights (no 'aggregator.*' keys and no 'camera_token'); "
        + _keys_summary("keys found", state)
    )


def check_state(state: Mapping[str, torch.Tensor], model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Raise CheckpointMismatch unless `state` has exactly the model's keys with the same shapes."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = expected.keys() - state.keys()
    unexpected = state.keys() - expected.keys()
    shapes = [
        f"{k} {tuple(state[k].shape)} in file vs {expected[k]} in model"
        for k in sorted(expected.keys() & state.keys())
        if tuple(state[k].shape) != expected[k]
    ]
    if not (missing or unexpected or shapes):
        return
    problems = []
    if missing:
        problems.append(_keys_summary("missing keys", missing))
    if unexpected:
        problems.append(_keys_summary("unexpected keys", unexpected))
    if shapes:
        problems.append(_keys_summary("shape mismatches", shapes))
    config = getattr(model, "config", None)
    raise CheckpointMismatch(
        f"{path}: aggregator weights do not match {config!r} (keys without the 'aggregator.' prefix): "
        + "; ".join(problems)
    )


def load_aggregator(
    path: str | os.PathLike,
    config: AggregatorConfig | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Aggregator:
    """A frozen (eval, requires_grad False) Aggregator with the checkpoint's weights, loaded strictly.

    `config` defaults to VGGT-1B's. The model is built on the meta device and the checkpoint
    tensors are assigned to it, so the 909 M random parameters are never allocated.
    """
    cfg = config or AggregatorConfig()
    state = load_aggregator_state(path)
    with torch.device("meta"):
        model = Aggregator(cfg)
    check_state(state, model, path)
    model.load_state_dict(state, strict=True, assign=True)
    model.reset_buffers(device="cpu")  # non-persistent buffers stayed on meta
    model.to(device=device, dtype=dtype)
    return model.eval().requires_grad_(False)


# --------------------------------------------------------------------------- writing (tests, tools)

_DUMMY_HEADS = {  # a few entries of the real heads' layout, to prove they are ignored
    "camera_head.trunk.0.norm1.weight": (2, 4),
    "camera_head.embed_pose.weight": (2, 9),
    "depth_head.norm.weight": (8,),
    "depth_head.projects.0.weight": (4, 8, 1, 1),
    "point_head.norm.weight": (8,),
    "track_head.feature_extractor.norm.weight": (8,),
}


def official_state_dict(model: Aggregator) -> dict[str, torch.Tensor]:
    """The model's weights laid out as in the released VGGT checkpoint: `aggregator.*` + head entries."""
    state = {AGGREGATOR_PREFIX + k: v.detach().clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state.update({k: torch.randn(shape, generator=generator) for k, shape in _DUMMY_HEADS.items()})
    return state


def save_state_dict(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write `state` as safetensors (`.safetensors`) or torch.save (anything else), atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(tmp))
    else:
        torch.save(tensors, tmp)
    os.replace(tmp, path)
    return path
