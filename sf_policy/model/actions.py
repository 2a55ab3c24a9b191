"""What the model predicts: absolute joint targets, or arm deltas to the current state.

``"absolute"``: the 14-d action chunk as recorded (joint targets in rad, gripper openings
in m). ``"delta"``: arm joints relative to the state at the chunk's first step, grippers
still absolute (FACTS.md, SF real-robot recipe; openpi's DeltaActions on ALOHA). A delta is
relative to the *current* state for every step of the chunk, not to the previous step,
so errors do not accumulate along the chunk.

Normalisation statistics must describe what the model sees: in the delta representation
those are chunk-relative deltas, whose spread grows with the step index and has nothing to
do with the dataset's per-frame action statistics. ``action_stats`` computes them from the
raw arrays; ``policy_stats`` assembles the state and action statistics for a dataset.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from sf_policy.data.features import ACTION, STATE
from sf_policy.data.stats import vector_stats
from sf_policy.embodiment import GRIPPER_INDICES, STATE_DIM

REPRESENTATIONS: tuple[str, ...] = ("absolute", "delta")

Array = np.ndarray | torch.Tensor


def check_representation(representation: str) -> str:
    if representation not in REPRESENTATIONS:
        raise ValueError(f"action representation must be one of {REPRESENTATIONS}, got {representation!r}")
    return representation


def delta_mask(dim: int = STATE_DIM, gripper_indices: Sequence[int] = GRIPPER_INDICES) -> np.ndarray:
    """Bool [dim]: True for the dimensions expressed as deltas (arm joints), False for grippers."""
    mask = np.ones(dim, dtype=bool)
    mask[[i for i in gripper_indices if i < dim]] = False
    return mask


def _shift(state: Array, like: Array) -> Array:
    """state [..., D] -> [..., 1, D] masked to the delta dims, in like's type/dtype/device."""
    mask = delta_mask(state.shape[-1])
    if isinstance(like, torch.Tensor):
        state = torch.as_tensor(state, dtype=like.dtype, device=like.device)
        return (state * torch.as_tensor(mask, dtype=like.dtype, device=like.device))[..., None, :]
    return (np.asarray(state, dtype=np.result_type(like, np.float32)) * mask)[..., None, :]


def _check(actions: Array, state: Array) -> None:
    if actions.ndim < 2 or actions.shape[-1] != state.shape[-1] or actions.shape[:-2] != state.shape[:-1]:
        raise ValueError(f"actions must be [..., T, D] and state [..., D] with matching batch and D; "
                         f"got actions {tuple(actions.shape)}, state {tuple(state.shape)}")


def to_model(actions: Array, state: Array, representation: str) -> Array:
    """Absolute actions [..., T, 14] → the model's representation, given the state [..., 14]."""
    check_representation(representation)
    _check(actions, state)
    if representation == "absolute":
        return actions
    return actions - _shift(state, actions)


def from_model(actions: Array, state: Array, representation: str) -> Array:
    """Inverse of ``to_model``: the model's actions [..., T, 14] → absolute joint targets."""
    check_representation(representation)
    _check(actions, state)
    if representation == "absolute":
        return actions
    return actions + _shift(state, actions)


def chunk_indices(start: int, stop: int, chunk_size: int) -> np.ndarray:
    """[stop-start, chunk_size] frame indices of every chunk of one episode [start, stop).

    Past the episode's end the last frame repeats, as the processor pads short chunks.
    """
    if stop <= start:
        raise ValueError(f"empty episode range [{start}, {stop})")
    steps = np.arange(start, stop)[:, None] + np.arange(chunk_size)[None, :]
    return np.minimum(steps, stop - 1)


def action_stats(
    actions: np.ndarray,
    states: np.ndarray,
    representation: str,
    chunk_size: int = 50,
    episodes: Sequence[tuple[int, int]] | None = None,
) -> dict[str, np.ndarray]:
    """Statistics of the action chunks as the model sees them (before normalisation).

    ``actions`` and ``states`` are the raw per-frame arrays [N, 14]; ``episodes`` lists the
    [start, stop) row ranges of the episodes (default: one episode), so that no chunk crosses
    an episode boundary. Every (frame, chunk step) pair counts once, with the same padding
    as training. Returns the keys of ``sf_policy.data.stats`` (mean, std, q01, q99, ...).
    """
    check_representation(representation)
    actions, states = np.asarray(actions, dtype=np.float64), np.asarray(states, dtype=np.float64)
    if actions.ndim != 2 or actions.shape != states.shape:
        raise ValueError(f"actions and states must both be [N, D]; got {actions.shape} and {states.shape}")
    episodes = list(episodes) if episodes is not None else [(0, len(actions))]
    parts = []
    for start, stop in episodes:
        if not 0 <= start < stop <= len(actions):
            raise ValueError(f"episode range [{start}, {stop}) is outside the {len(actions)} rows")
        idx = chunk_indices(start, stop, chunk_size)  # [n, H]
        chunks = to_model(actions[idx], states[start:stop], representation)  # [n, H, D]
        parts.append(chunks.reshape(-1, actions.shape[1]))
    return vector_stats(np.concatenate(parts))


def policy_stats(reader, representation: str, chunk_size: int = 50) -> dict[str, dict[str, np.ndarray]]:
    """Normaliser statistics for a ``DatasetReader``: state per frame, actions per chunk."""
    states, actions = reader.column(STATE), reader.column(ACTION)
    first = reader.episodes[0].from_index if reader.episodes else 0
    episodes = [(ep.from_index - first, ep.to_index - first) for ep in reader.episodes]
    return {STATE: vector_stats(states), ACTION: action_stats(actions, states, representation, chunk_size, episodes)}
