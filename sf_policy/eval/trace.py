"""What happened at every control tick of a closed-loop episode, and pictures of it.

A success rate says *whether* a policy works; a trace says *why not*. Per tick it keeps the
chain the robot runs (docs/eval_sim.md, "Reading a trace"):

    chunk step executed ─> raw target (scheduler) ─> command (safety filter) ─> measured state

with which rule of the safety filter changed which joint (``position`` clamp, ``speed`` cap,
``accel`` cap) and where chunks were merged. ``limit_shares`` turns traces into the share of
commanded ticks each joint was limited, per cause; ``plot_trace`` draws target, command and
state of the joints that matter.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from ..embodiment import GRIPPER_INDICES, JOINT_NAMES, STATE_DIM
from ..runtime.safety import ACCEL, LIMIT_CAUSES, POSITION, SPEED, SafetyDecision
from ..runtime.scheduler import TickInfo

#: Codes of ``EpisodeTrace.limit`` (rate limits; position clamps have their own mask).
NOT_LIMITED, SPEED_LIMITED, ACCEL_LIMITED = 0, 1, 2
_CODE = {SPEED: SPEED_LIMITED, ACCEL: ACCEL_LIMITED}
_INDEX = {name: i for i, name in enumerate(JOINT_NAMES)}


@dataclass
class EpisodeTrace:
    """Arrays over the ticks of one episode; NaN where there was nothing (no command)."""

    seed: int
    tick: list[int] = field(default_factory=list)
    chunk: list[int] = field(default_factory=list)     # merged chunk number, -1: no command
    step: list[int] = field(default_factory=list)      # step of that chunk executed, -1: none
    blend: list[float] = field(default_factory=list)   # the newest chunk's weight in the command
    merged: list[bool] = field(default_factory=list)   # a chunk was merged at this tick
    target: list[np.ndarray] = field(default_factory=list)   # scheduler output [14]
    command: list[np.ndarray] = field(default_factory=list)  # filter output [14] (what the arms got)
    state: list[np.ndarray] = field(default_factory=list)    # measured puppet joints [14]
    limit: list[np.ndarray] = field(default_factory=list)    # [14] NOT/SPEED/ACCEL_LIMITED
    clamp: list[np.ndarray] = field(default_factory=list)    # [14] bool: clamped into the range

    def add(self, info: TickInfo | None, target, decision: SafetyDecision, state: np.ndarray) -> None:
        nan = np.full(STATE_DIM, np.nan)
        self.tick.append(len(self.tick) if info is None else info.tick)
        self.chunk.append(-1 if info is None or info.chunk is None else info.chunk)
        self.step.append(-1 if info is None or info.step is None else info.step)
        self.blend.append(1.0 if info is None else info.blend)
        self.merged.append(bool(info is not None and info.merged))
        self.target.append(nan if target is None else np.asarray(target, dtype=np.float64).copy())
        self.command.append(nan if decision.action is None else decision.action.copy())
        self.state.append(np.asarray(state, dtype=np.float64).copy())
        limit = np.zeros(STATE_DIM, dtype=np.int8)
        for joint, cause in zip(decision.limited_joints, decision.limit_causes):
            limit[_INDEX[joint]] = _CODE[cause]
        clamp = np.zeros(STATE_DIM, dtype=bool)
        clamp[[_INDEX[j] for j in decision.clamped_joints]] = True
        self.limit.append(limit)
        self.clamp.append(clamp)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"seed": np.asarray(self.seed)}
        for f in fields(self):
            if f.name != "seed":
                values = getattr(self, f.name)
                out[f.name] = np.asarray(values) if values else np.zeros((0, STATE_DIM))
        return out

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **self.arrays())
        return path

    @classmethod
    def load(cls, path: Path) -> EpisodeTrace:
        with np.load(path) as data:
            trace = cls(seed=int(data["seed"]))
            for f in fields(cls):
                if f.name != "seed":
                    setattr(trace, f.name, list(data[f.name]))
        return trace


def limit_shares(traces: Iterable[EpisodeTrace]) -> dict:
    """Share of commanded ticks on which the filter changed each joint, per cause.

    ``{"commanded_ticks": n, "any": share of ticks with any change, "by_cause": {cause: share},
    "by_joint": {joint: {cause: share}}}`` (joints never changed are left out)."""
    limit, clamp = [], []
    for trace in traces:
        commanded = ~np.isnan(np.asarray(trace.command, dtype=np.float64).reshape(-1, STATE_DIM)[:, 0])
        limit.append(np.asarray(trace.limit).reshape(-1, STATE_DIM)[commanded])
        clamp.append(np.asarray(trace.clamp).reshape(-1, STATE_DIM)[commanded])
    limit = np.concatenate(limit) if limit else np.zeros((0, STATE_DIM), np.int8)
    clamp = np.concatenate(clamp) if clamp else np.zeros((0, STATE_DIM), bool)
    n = len(limit)
    if n == 0:
        return {"commanded_ticks": 0, "any": 0.0, "by_cause": {c: 0.0 for c in LIMIT_CAUSES}, "by_joint": {}}
    masks = {POSITION: clamp, SPEED: limit == SPEED_LIMITED, ACCEL: limit == ACCEL_LIMITED}
    by_joint = {}
    for i, joint in enumerate(JOINT_NAMES):
        shares = {cause: float(m[:, i].mean()) for cause, m in masks.items() if m[:, i].any()}
        if shares:
            by_joint[joint] = shares
    return {"commanded_ticks": n, "any": float((clamp | (limit != NOT_LIMITED)).any(axis=1).mean()),
            "by_cause": {cause: float(m.any(axis=1).mean()) for cause, m in masks.items()}, "by_joint": by_joint}


def joints_worth_plotting(trace: EpisodeTrace, count: int = 4) -> list[int]:
    """The most-limited arm joints, then the gripper that moved most: what a person looks at first."""
    limit = np.asarray(trace.limit).reshape(-1, STATE_DIM)
    target = np.asarray(trace.target, dtype=np.float64).reshape(-1, STATE_DIM)
    grippers = list(GRIPPER_INDICES)
    moved = np.nan_to_num(np.nanmax(target, axis=0) - np.nanmin(target, axis=0)) if len(target) else np.zeros(STATE_DIM)
    arms = [i for i in range(STATE_DIM) if i not in grippers]
    busiest = sorted(arms, key=lambda i: (-(limit[:, i] != NOT_LIMITED).sum(), -moved[i]))
    gripper = max(grippers, key=lambda i: moved[i])
    return busiest[:count - 1] + [gripper]


def plot_trace(trace: EpisodeTrace, path: Path, joints: Sequence[int] | None = None, title: str = "") -> Path:
    """Target (scheduler), command (filter) and state (arm) over time for a few joints; ticks the
    filter limited shaded (speed red, acceleration orange), chunk merges as thin lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    joints = list(joints) if joints is not None else joints_worth_plotting(trace)
    ticks = np.asarray(trace.tick)
    target = np.asarray(trace.target, dtype=np.float64).reshape(-1, STATE_DIM)
    command = np.asarray(trace.command, dtype=np.float64).reshape(-1, STATE_DIM)
    state = np.asarray(trace.state, dtype=np.float64).reshape(-1, STATE_DIM)
    limit = np.asarray(trace.limit).reshape(-1, STATE_DIM)
    merges = ticks[np.asarray(trace.merged, dtype=bool)] if len(ticks) else []
    fig, axes = plt.subplots(len(joints), 1, figsize=(9, 1.9 * len(joints) + 0.6), sharex=True, squeeze=False)
    for ax, j in zip(axes[:, 0], joints):
        for m in merges:
            ax.axvline(m, color="0.85", lw=0.6, zorder=0)
        for code, colour in ((SPEED_LIMITED, "#d62728"), (ACCEL_LIMITED, "#ff7f0e")):
            hit = ticks[limit[:, j] == code]
            ax.vlines(hit, 0, 1, transform=ax.get_xaxis_transform(), colors=colour, alpha=0.25, lw=2)
        ax.plot(ticks, target[:, j], "--", color="#1f77b4", lw=1.2, label="target (chunk)")
        ax.plot(ticks, command[:, j], "-", color="#2ca02c", lw=1.2, label="command (filtered)")
        ax.plot(ticks, state[:, j], ":", color="k", lw=1.2, label="state (measured)")
        unit = "m" if j in GRIPPER_INDICES else "rad"
        ax.set_ylabel(f"{JOINT_NAMES[j]}\n[{unit}]", fontsize=8)
    axes[0, 0].legend(loc="upper right", fontsize=7, ncol=3)
    axes[-1, 0].set_xlabel("control tick (30 Hz)   shading: rate-limited (red speed, orange accel); lines: merges")
    if title:
        axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
