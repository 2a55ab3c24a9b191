"""Per-dimension normalisation of the robot state and the actions, saved in every checkpoint.

Every normalisation here is one affine map per dimension, ``y = (x - offset) / scale``, so
that ``unnormalize`` is its exact inverse and the whole thing fits in a small JSON dict.
What differs is where offset and scale come from:

* ``"zscore"``: offset = mean, scale = std + eps (π0 / openpi default; FACTS.md: the SF
  real-robot recipe uses z-scores of your own data).
* ``"quantile"``: [q01, q99] → [−1, 1], i.e. offset = (q01 + q99) / 2, scale =
  (q99 − q01) / 2 + eps. Not clipped: values beyond the 1 % tails map a little outside
  [−1, 1]. Clipping would make ``unnormalize`` lossy, and the flow-matching targets are
  unbounded anyway (openpi does not clip either).
* Grippers (``GRIPPER_INDICES``): by default ("range") mapped from their physical range
  [0, 0.07 m] to [−1, 1], never from data statistics. A task that never opens a gripper
  has a gripper std ≈ 0; z-scoring that dimension turns sensor noise into huge inputs
  and makes the model's gripper output explode when unnormalised (openpi #405, #830).
  ``gripper_mode="stats"`` treats them like the joints instead.

A dimension whose spread (std, or q99 − q01) is below ``min_spread`` is degenerate (an arm
that never moves in the task's demonstrations): it is centred and gets ``degenerate_scale``
(0.01, i.e. 0.6° for a joint) and a warning naming it. Neither extreme works: openpi's
``std + 1e-6`` turns a 0.1 rad deviation of the state at run time into an input of 10⁵, and
scale 1 (our first choice) lets an imperfect model's output noise of order 1 in normalised
space move that idle arm by a radian — the tiny demo policy's idle left arm jittered by ±60°
in the replay plots. With 0.01 a deviation of 0.1 rad is an input of 10 and an output error
of 1 is 0.01 rad.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from sf_policy.data.features import ACTION, STATE
from sf_policy.embodiment import GRIPPER_INDICES, JOINT_NAMES, PIPER_LIMITS

NORM_MODES: tuple[str, ...] = ("zscore", "quantile")
GRIPPER_MODES: tuple[str, ...] = ("range", "stats")
#: The gripper's physical opening range in metres (embodiment's limit, 0..0.07 m).
GRIPPER_RANGE: tuple[float, float] = (PIPER_LIMITS["gripper"].lower, PIPER_LIMITS["gripper"].upper)
DEFAULT_KEYS: tuple[str, ...] = (STATE, ACTION)
#: The statistics a Normalizer keeps (enough to rebuild it in either mode).
KEPT_STATS: tuple[str, ...] = ("mean", "std", "q01", "q99")

Array = np.ndarray | torch.Tensor


class Normalizer:
    """Normalises ``observation.state`` and ``action`` vectors (last axis = 14 dims).

    Built from dataset statistics (``DatasetReader.stats`` or ``actions.policy_stats``):
    ``stats[key]`` holds at least ``mean``/``std`` (zscore) or ``q01``/``q99`` (quantile),
    each of shape [D]. Works on numpy arrays and torch tensors of any leading shape.
    """

    def __init__(
        self,
        stats: Mapping[str, Mapping[str, Any]],
        mode: str = "zscore",
        gripper_mode: str = "range",
        gripper_indices: Sequence[int] = GRIPPER_INDICES,
        gripper_range: tuple[float, float] = GRIPPER_RANGE,
        eps: float = 1e-6,
        min_spread: float = 1e-4,
        keys: Sequence[str] = DEFAULT_KEYS,
        degenerate_scale: float = 0.01,
    ):
        if mode not in NORM_MODES:
            raise ValueError(f"normalisation mode must be one of {NORM_MODES}, got {mode!r}")
        if gripper_mode not in GRIPPER_MODES:
            raise ValueError(f"gripper_mode must be one of {GRIPPER_MODES}, got {gripper_mode!r}")
        low, high = (float(v) for v in gripper_range)
        if not high > low:
            raise ValueError(f"gripper_range must be (low, high) with high > low, got {gripper_range}")
        self.mode = mode
        self.gripper_mode = gripper_mode
        self.gripper_indices = tuple(int(i) for i in gripper_indices)
        self.gripper_range = (low, high)
        self.eps = float(eps)
        self.min_spread = float(min_spread)
        self.degenerate_scale = float(degenerate_scale)
        self.stats: dict[str, dict[str, np.ndarray]] = {}
        self.offset: dict[str, np.ndarray] = {}
        self.scale: dict[str, np.ndarray] = {}
        for key in keys:
            if key not in stats:
                raise KeyError(f"stats has no entry for {key!r} (has: {', '.join(stats) or 'nothing'})")
            self.stats[key] = _kept_stats(stats[key], key, mode)
            self.offset[key], self.scale[key] = self._affine(key)

    # -- building

    def _affine(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        st = self.stats[key]
        if self.mode == "zscore":
            offset, spread = st["mean"].copy(), st["std"].copy()
        else:
            offset, spread = (st["q01"] + st["q99"]) / 2.0, (st["q99"] - st["q01"]) / 2.0
        scale = spread + self.eps
        dim = len(offset)
        grippers = [i for i in self.gripper_indices if i < dim] if self.gripper_mode == "range" else []
        for i in grippers:  # physical range, whatever the data did
            low, high = self.gripper_range
            offset[i], scale[i] = (low + high) / 2.0, (high - low) / 2.0
        degenerate = [i for i in range(dim) if i not in grippers and spread[i] < self.min_spread]
        if degenerate:
            names = ", ".join(_dim_name(i, dim) for i in degenerate)
            warnings.warn(f"{key}: near-constant dimension(s) {names} (spread < {self.min_spread:g}) in the "
                          f"{self.mode} statistics; they are centred and get scale {self.degenerate_scale:g}",
                          stacklevel=3)
            scale[degenerate] = self.degenerate_scale
        return offset.astype(np.float64), scale.astype(np.float64)

    # -- applying

    def normalize(self, x: Array, key: str) -> Array:
        offset, scale = self._params(x, key)
        return (x - offset) / scale

    def unnormalize(self, y: Array, key: str) -> Array:
        offset, scale = self._params(y, key)
        return y * scale + offset

    def _params(self, x: Array, key: str) -> tuple[Array, Array]:
        if key not in self.offset:
            raise KeyError(f"the normaliser has no statistics for {key!r} (has: {', '.join(self.offset)})")
        offset, scale = self.offset[key], self.scale[key]
        if x.shape[-1] != len(offset):
            raise ValueError(f"{key}: expected a last dimension of {len(offset)}, got shape {tuple(x.shape)}")
        if isinstance(x, torch.Tensor):
            dtype = x.dtype if x.is_floating_point() else torch.float32
            return (torch.as_tensor(offset, dtype=dtype, device=x.device),
                    torch.as_tensor(scale, dtype=dtype, device=x.device))
        return offset, scale

    def dim(self, key: str) -> int:
        return len(self.offset[key])

    # -- saving

    def to_dict(self) -> dict:
        """A JSON-able dict (plain floats and lists) that ``from_dict`` turns back into this normaliser."""
        return {
            "version": 1,
            "mode": self.mode,
            "gripper_mode": self.gripper_mode,
            "gripper_indices": list(self.gripper_indices),
            "gripper_range": list(self.gripper_range),
            "eps": self.eps,
            "min_spread": self.min_spread,
            "degenerate_scale": self.degenerate_scale,
            "stats": {key: {name: value.tolist() for name, value in st.items()} for key, st in self.stats.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Normalizer:
        if data.get("version") != 1:
            raise ValueError(f"unknown normaliser format version {data.get('version')!r} (expected 1)")
        with warnings.catch_warnings():  # the degenerate-dimension warning was given when it was built
            warnings.simplefilter("ignore")
            return cls(data["stats"], mode=data["mode"], gripper_mode=data["gripper_mode"],
                       gripper_indices=data["gripper_indices"], gripper_range=tuple(data["gripper_range"]),
                       eps=data["eps"], min_spread=data["min_spread"], keys=tuple(data["stats"]),
                       # files written before the field existed used scale 1: load them as trained
                       degenerate_scale=data.get("degenerate_scale", 1.0))

    def __repr__(self) -> str:
        return (f"Normalizer(mode={self.mode!r}, gripper_mode={self.gripper_mode!r}, "
                f"keys={list(self.stats)}, gripper_indices={self.gripper_indices})")


def _kept_stats(st: Mapping[str, Any], key: str, mode: str) -> dict[str, np.ndarray]:
    """The statistics a mode needs, as float64 [D] arrays; errors name the missing or bad field."""
    needed = ("mean", "std") if mode == "zscore" else ("q01", "q99")
    missing = [name for name in needed if name not in st]
    if missing:
        raise KeyError(f"stats[{key!r}] lacks {', '.join(missing)} needed by {mode} normalisation")
    kept = {}
    for name in KEPT_STATS:
        if name not in st:
            continue
        value = np.asarray(st[name], dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(value)):
            raise ValueError(f"stats[{key!r}][{name!r}] has non-finite values: {value}")
        kept[name] = value
    dims = {len(v) for v in kept.values()}
    if len(dims) != 1:
        raise ValueError(f"stats[{key!r}]: statistics disagree on the dimension: "
                         f"{ {n: len(v) for n, v in kept.items()} }")
    return kept


def _dim_name(index: int, dim: int) -> str:
    return f"{index} ({JOINT_NAMES[index]})" if dim == len(JOINT_NAMES) else str(index)
