"""A dataset's quality: what a policy would learn from, beyond the layout ``validate`` checks.

``sf dataset check ROOT`` reports, per episode and for the dataset (docs/datasets.md,
"Quality check"): idle joints and arms, grippers never used, cameras frozen while the arms
move, rate shortfalls (rates.py, as ``validate`` warns), the lag between the action (master
arms) and the state (puppet arms) and its implausible values, an action copied from the state,
NaN/inf, values outside the Piper's limits, jumps faster than its motors, very short episodes.

An arm that never moves is *information*, not an error: in a bimanual setup one arm often
rests through a one-arm task (what lerobot-doctor and lerobot-lint flag as a dead joint). What
is suspicious is one joint that stays put while the rest of its arm moves (a dead motor, a
joint read from the wrong index), or a joint that never moves in the whole dataset.

Pure logic on arrays (``check_episode``, ``check_dataset``, ``frozen_runs``) with a thin
loader (``check``), so the tests feed it signals whose truth they know.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..embodiment import ARM_STATE_NAMES, DOF_PER_ARM, JOINT_NAMES, PIPER_LIMITS, SIDES, STATE_DIM
from .episode_ranges import format_episodes
from .features import ACTION, STAMP_NAMES, STAMPS, STATE, DatasetError
from .rates import measured_rates, shortfalls

INFO, WARNING, ERROR = "info", "warning", "error"
RANK = {INFO: 0, WARNING: 1, ERROR: 2}


@dataclass(frozen=True)
class Thresholds:
    """Every threshold of the check, with why it is where it is (units: rad, m, s, frames)."""

    # An arm moves in an episode when one of its six joints spans at least this (about 3 deg):
    # a resting arm (a puppet on its brakes, a master nobody holds) drifts far less, and any
    # reach moves some joint by tens of degrees.
    arm_moving_rad: float = 0.05
    # A joint of a moving arm is idle below this span (about 0.2 deg): a hand on the master moves
    # every joint by more (tremor alone is ~0.5 deg), while a dead motor or a joint read from the
    # wrong index stays within its 0.001 deg quantization.
    joint_idle_rad: float = 0.003
    # A gripper is used when its opening spans 5 mm (of 70 mm): a grasp closes it by centimetres.
    gripper_used_m: float = 0.005
    # A camera is frozen when its images stay near-identical for longer than this: a healthy
    # 30 Hz camera repeats an image for a frame or two at most (a frame the sync dropped).
    frozen_s: float = 0.5
    # Near-identical: the 99th percentile of |difference| between small grey images (averaged
    # down to ~frozen_width px) under this many of 255 levels. One picture encoded again decodes
    # to the same pixels (0 levels), sensor noise averaged over 10x10 blocks stays near 1, an arm
    # moving through the view changes its pixels by 50-200. Frames are compared with the first
    # one of the stretch, so slow motion adds up and breaks it. Looser levels (8-12) found
    # "freezes" in the twin's slow starts; the codec may still requantize the last frame or two
    # before a scene change (x264's lookahead), which can end a stretch a frame or two early.
    frozen_level: float = 3.0
    frozen_width: int = 64
    # "While the arms move": during the frozen stretch some joint of an arm the camera sees (its
    # own arm for a wrist camera, either for the others) moves this much; otherwise a still scene
    # may rightly give the same picture, e.g. the wrist camera of an arm resting through a one-arm task.
    frozen_motion_rad: float = 0.05
    # The puppet follows its master within about 100 ms; beyond 10 frames (333 ms at 30 Hz) the
    # state or the commands are stale. The cross-correlation is searched over +-lag_search_frames.
    max_lag_frames: int = 10
    lag_search_frames: int = 30
    # A correlation peak below this (normalized velocities) is too weak to tell a lag.
    min_lag_corr: float = 0.5
    # Action within this of the state at every frame of a moving arm: copied, not commanded (the
    # master and puppet encoders never agree that well).
    copy_atol: float = 1e-6
    # Readings a little beyond the factory limits come from calibration offsets (about 3 deg, 5 mm).
    limit_margin_rad: float = 0.05
    limit_margin_m: float = 0.005
    # A step larger than jump_factor x the motor's rated speed x the frame interval is a glitch.
    jump_factor: float = 2.0
    # Under 2 s (60 frames at 30 Hz, hardly more than one 50-step action chunk): a false start.
    min_episode_s: float = 2.0


@dataclass(frozen=True)
class Finding:
    severity: str                   # info | warning | error
    code: str                       # kind of finding, e.g. "joint_idle"
    field: str                      # e.g. "observation.state[left_joint3]"
    message: str                    # the same for every episode it applies to (so they group)
    episodes: tuple[int, ...] = ()  # () = the dataset as a whole
    details: tuple[str, ...] = ()   # per-episode figures, e.g. "episode 3: t = 1.00-2.00 s"

    @property
    def where(self) -> str:
        return format_episodes(self.episodes) if self.episodes else "dataset"

    def to_dict(self) -> dict:
        return {**asdict(self), "episodes": list(self.episodes), "details": list(self.details)}


@dataclass
class ArmQuality:
    """One arm in one episode: how much it moved, its gripper, its action-to-state lag."""

    moves: bool
    joint_span_rad: float           # largest span of its six joints (state)
    action_span_rad: float          # the same for the action
    gripper_span_m: float           # state
    lag_frames: int | None = None   # state follows action by this many frames (None: not told)
    lag_ms: float | None = None
    lag_corr: float | None = None


@dataclass
class EpisodeQuality:
    index: int
    length: int
    duration_s: float
    finite: bool = True
    minimum: dict[str, list[float]] = field(default_factory=dict)  # per key (state, action): 14 values
    maximum: dict[str, list[float]] = field(default_factory=dict)
    arms: dict[str, ArmQuality] = field(default_factory=dict)
    frozen: list[dict] = field(default_factory=list)  # {"camera", "start", "stop", "seconds", "source"}


@dataclass
class Report:
    root: str
    fps: int
    episodes: list[EpisodeQuality]
    findings: list[Finding]
    videos_checked: list[int] = field(default_factory=list)  # episodes whose videos were decoded
    thresholds: Thresholds = field(default_factory=Thresholds)

    def count(self, severity: str) -> int:
        return sum(f.severity == severity for f in self.findings)

    def exit_code(self, strict: bool = False) -> int:
        worst = max((RANK[f.severity] for f in self.findings), default=0)
        return 1 if worst == RANK[ERROR] or (strict and worst == RANK[WARNING]) else 0

    def to_dict(self) -> dict:
        return {"root": self.root, "fps": self.fps, "thresholds": asdict(self.thresholds),
                "counts": {s: self.count(s) for s in (ERROR, WARNING, INFO)},
                "findings": [f.to_dict() for f in self.findings],
                "episodes": [asdict(e) for e in self.episodes], "videos_checked": self.videos_checked}


@dataclass
class EpisodeData:
    index: int
    state: np.ndarray                 # [n, 14]
    action: np.ndarray                # [n, 14]
    stamps: np.ndarray | None = None  # [n, len(STAMP_NAMES)], or None when not recorded


# --------------------------------------------------------------------------------------------
# Helpers


def _arm(side: str) -> slice:
    """The seven channels of one arm (six joints, then the gripper) in the 14-d vector."""
    first = SIDES.index(side) * DOF_PER_ARM
    return slice(first, first + DOF_PER_ARM)


def _joints(side: str) -> slice:
    first = SIDES.index(side) * DOF_PER_ARM
    return slice(first, first + DOF_PER_ARM - 1)


def _gripper(side: str) -> int:
    return SIDES.index(side) * DOF_PER_ARM + DOF_PER_ARM - 1


def _field(key: str, channel: int) -> str:
    return f"{key}[{JOINT_NAMES[channel]}]"


def _limits(t: Thresholds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper bounds (with the margins) and rated speeds of the 14 channels."""
    limits = [PIPER_LIMITS[name] for _ in SIDES for name in ARM_STATE_NAMES]
    margin = np.array([t.limit_margin_m if n.endswith("gripper") else t.limit_margin_rad for n in JOINT_NAMES])
    lower = np.array([lim.lower for lim in limits]) - margin
    upper = np.array([lim.upper for lim in limits]) + margin
    return lower, upper, np.array([lim.max_velocity for lim in limits])


def _unit(channel: int) -> str:
    return "m" if JOINT_NAMES[channel].endswith("gripper") else "rad"


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of every run of True in a 1-d boolean array."""
    padded = np.concatenate([[False], np.asarray(mask, bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _frame_intervals(stamps: np.ndarray | None, n: int, fps: int) -> np.ndarray:
    """Seconds between consecutive frames: 1/fps, or longer where the top camera's stamps show a
    gap (frames lost: the joints had that long to move). Never shorter, so jitter is no jump."""
    nominal = np.full(max(n - 1, 0), 1.0 / fps)
    if stamps is None or len(stamps) != n or n < 2:
        return nominal
    dt = np.diff(stamps[:, STAMP_NAMES.index("cam_high")].astype(np.int64)) / 1e9
    return np.maximum(dt, nominal) if (dt > 0).all() else nominal


# --------------------------------------------------------------------------------------------
# One episode


def check_episode(data: EpisodeData, fps: int, cameras: list[str], t: Thresholds = Thresholds()
                  ) -> tuple[EpisodeQuality, list[Finding]]:
    """Everything that can be told from one episode's state, action and stamps."""
    n = len(data.state)
    quality = EpisodeQuality(index=data.index, length=n, duration_s=n / fps)
    findings = _short(data.index, n, fps, t) + _rates(data, fps, cameras)
    for key, values in ((STATE, data.state), (ACTION, data.action)):
        found = _non_finite(data.index, key, values)
        quality.finite &= not found
        findings += found
    if not quality.finite or n < 2:
        return quality, findings
    for key, values in ((STATE, data.state), (ACTION, data.action)):
        quality.minimum[key], quality.maximum[key] = values.min(axis=0).tolist(), values.max(axis=0).tolist()
        findings += _out_of_limits(data.index, key, values, t)
        findings += _jumps(data.index, key, values, _frame_intervals(data.stamps, n, fps), t)
    for side in SIDES:
        arm, found = _check_arm(data, side, fps, t)
        quality.arms[side] = arm
        findings += found
    for role in cameras:
        spans, found = _stamp_freezes(data, role, fps, t)
        quality.frozen += spans
        findings += found
    return quality, findings


def _short(ep: int, n: int, fps: int, t: Thresholds) -> list[Finding]:
    if n / fps >= t.min_episode_s:
        return []
    return [Finding(WARNING, "short", "length", f"shorter than {t.min_episode_s:g} s: a false start?",
                    (ep,), (f"episode {ep}: {n} frames ({n / fps:.2f} s)",))]


def _rates(data: EpisodeData, fps: int, cameras: list[str]) -> list[Finding]:
    """The same rule and sentences as ``validate``'s rate warning (rates.py)."""
    if data.stamps is None:
        return []
    return [Finding(WARNING, "rate", STAMPS, message, (data.index,))
            for message in shortfalls(measured_rates(data.stamps, cameras), fps)]


def _non_finite(ep: int, key: str, values: np.ndarray) -> list[Finding]:
    bad = ~np.isfinite(np.asarray(values, dtype=np.float64))
    if not bad.any():
        return []
    out = []
    for channel in np.flatnonzero(bad.any(axis=0)):
        frames = np.flatnonzero(bad[:, channel])
        more = " ..." if len(frames) > 5 else ""
        out.append(Finding(ERROR, "non_finite", _field(key, channel),
                           "NaN or inf (the other checks skip the episode)", (ep,),
                           (f"episode {ep}: {len(frames)} frame(s): {frames[:5].tolist()}{more}",)))
    return out


def _out_of_limits(ep: int, key: str, values: np.ndarray, t: Thresholds) -> list[Finding]:
    lower, upper, _ = _limits(t)
    out = []
    for c in range(STATE_DIM):
        excess = np.maximum(lower[c] - values[:, c], values[:, c] - upper[c])
        if (excess > 0).any():
            lim = PIPER_LIMITS[ARM_STATE_NAMES[c % DOF_PER_ARM]]
            out.append(Finding(WARNING, "limits", _field(key, c),
                               f"outside the Piper's limits [{lim.lower:g}, {lim.upper:g}] {_unit(c)} "
                               "(beyond the calibration margin): a wrong zero, unit or joint order?", (ep,),
                               (f"episode {ep}: {int((excess > 0).sum())} frame(s), by up to "
                                f"{excess.max():.3g} {_unit(c)}",)))
    return out


def _jumps(ep: int, key: str, values: np.ndarray, dt: np.ndarray, t: Thresholds) -> list[Finding]:
    _, _, speed = _limits(t)
    steps = np.abs(np.diff(values.astype(np.float64), axis=0))
    allowed = t.jump_factor * speed[None, :] * dt[:, None]
    out = []
    for c in np.flatnonzero((steps > allowed).any(axis=0)):
        frames = np.flatnonzero(steps[:, c] > allowed[:, c]) + 1  # the frame a step lands on
        more = " ..." if len(frames) > 5 else ""
        out.append(Finding(WARNING, "jump", _field(key, c),
                           f"jumps faster than {t.jump_factor:g} x the motor's rated speed: a glitch in the "
                           "reading, or frames lost?", (ep,),
                           (f"episode {ep}: {len(frames)} step(s) at frame(s) {frames[:5].tolist()}{more}, the "
                            f"largest {steps[frames - 1, c].max():.3g} {_unit(c)}",)))
    return out


# -- motion, grippers, lag (per arm)


def _span(values: np.ndarray) -> np.ndarray:
    return np.ptp(values, axis=0) if len(values) else np.zeros(values.shape[1:])


def _check_arm(data: EpisodeData, side: str, fps: int, t: Thresholds) -> tuple[ArmQuality, list[Finding]]:
    ep, joints = data.index, _joints(side)
    state_span, action_span = _span(data.state[:, joints]), _span(data.action[:, joints])
    grip = _gripper(side)
    arm = ArmQuality(moves=bool(state_span.max() >= t.arm_moving_rad), joint_span_rad=float(state_span.max()),
                     action_span_rad=float(action_span.max()), gripper_span_m=float(np.ptp(data.state[:, grip])))
    action_moves = action_span.max() >= t.arm_moving_rad
    findings: list[Finding] = []
    if not arm.moves and not action_moves:
        findings.append(Finding(INFO, "arm_idle", f"{side} arm",
                                f"{side} arm idle (no joint moves {t.arm_moving_rad:g} rad): a one-arm task? "
                                "(not an error)", (ep,)))
        return arm, findings
    if arm.moves != action_moves:
        findings.append(_follow_mismatch(ep, side, arm))
    for key, span, moving in ((STATE, state_span, arm.moves), (ACTION, action_span, action_moves)):
        if moving:
            findings += _idle_joints(ep, key, side, span, t)
    if np.allclose(data.action[:, _arm(side)], data.state[:, _arm(side)], rtol=0, atol=t.copy_atol):
        findings.append(Finding(ERROR, "copied", f"{ACTION}[{side}]",
                                f"{side} action equals the state at every frame: copied from the state? "
                                "(a policy would learn to stand still)", (ep,)))
    elif arm.moves and action_moves:
        findings += _lag(data, side, fps, arm, t)
    return arm, findings


def _follow_mismatch(ep: int, side: str, arm: ArmQuality) -> Finding:
    if arm.moves:  # the puppet moves, its commands do not
        return Finding(WARNING, "action_idle", f"{ACTION}[{side}]",
                       f"the {side} action never moves while the puppet does: commands stale or not recorded?",
                       (ep,), (f"episode {ep}: state spans {arm.joint_span_rad:.3g} rad, action "
                               f"{arm.action_span_rad:.3g} rad",))
    return Finding(WARNING, "state_idle", f"{STATE}[{side}]",
                   f"the {side} puppet never moves while its action does: puppet disabled or its state stale?",
                   (ep,), (f"episode {ep}: action spans {arm.action_span_rad:.3g} rad, state "
                           f"{arm.joint_span_rad:.3g} rad",))


def _idle_joints(ep: int, key: str, side: str, span: np.ndarray, t: Thresholds) -> list[Finding]:
    first = _joints(side).start
    return [Finding(WARNING, "joint_idle", _field(key, first + j),
                    f"{JOINT_NAMES[first + j]} never moves (spans under {t.joint_idle_rad:g} rad) while the rest "
                    f"of the {side} arm does: a dead motor or a wrong joint mapping?", (ep,),
                    (f"episode {ep}: spans {span[j]:.2g} rad",))
            for j in np.flatnonzero(span < t.joint_idle_rad)]


def estimate_lag(action: np.ndarray, state: np.ndarray, search: int) -> tuple[int, float]:
    """(lag, correlation): the state's velocity best matches the action's ``lag`` frames later
    (positive: the state follows the action), by normalized cross-correlation over +-search."""
    va, vs = np.diff(np.asarray(action, np.float64), axis=0), np.diff(np.asarray(state, np.float64), axis=0)
    n = len(va)
    search = max(0, min(search, n // 2))
    best, best_corr = 0, -np.inf
    for lag in range(-search, search + 1):
        a, s = va[max(0, -lag):n - max(0, lag)], vs[max(0, lag):n - max(0, -lag)]
        den = np.sqrt((a * a).sum() * (s * s).sum())
        corr = float((a * s).sum() / den) if den > 0 else 0.0
        if corr > best_corr:
            best, best_corr = lag, corr
    return best, best_corr


def _lag(data: EpisodeData, side: str, fps: int, arm: ArmQuality, t: Thresholds) -> list[Finding]:
    ep, joints = data.index, _joints(side)
    search = max(t.lag_search_frames, 2 * t.max_lag_frames)
    lag, corr = estimate_lag(data.action[:, joints], data.state[:, joints], search)
    arm.lag_corr = round(corr, 3)
    if corr < t.min_lag_corr:
        return [Finding(INFO, "lag_unclear", f"{side} arm",
                        f"{side} action-state lag unclear (velocity correlation under {t.min_lag_corr:g})", (ep,),
                        (f"episode {ep}: peak correlation {corr:.2f}",))]
    arm.lag_frames, arm.lag_ms = lag, round(lag * 1000 / fps, 1)
    if lag < 0:
        return [Finding(ERROR, "lag_negative", f"{side} arm",
                        f"{side} action follows the state (negative lag): action and state swapped or mislabelled?",
                        (ep,), (f"episode {ep}: {lag} frames ({arm.lag_ms:g} ms), correlation {corr:.2f}",))]
    if lag > t.max_lag_frames:
        return [Finding(WARNING, "lag_large", f"{side} arm",
                        f"{side} state follows the action by more than {t.max_lag_frames} frames: state or "
                        "commands stale?", (ep,),
                        (f"episode {ep}: {lag} frames ({arm.lag_ms:g} ms), correlation {corr:.2f}",))]
    return []


# -- frozen cameras


def _seen_arms_move(role: str, state: np.ndarray, start: int, stop: int, t: Thresholds) -> bool:
    """Whether an arm the camera sees moves during frames [start, stop): a wrist camera sees the
    scene change when its own arm moves, cam_high (or another role) when either does."""
    sides = [s for s in SIDES if role == f"cam_{s}_wrist"] or list(SIDES)
    joints = np.concatenate([np.arange(STATE_DIM)[_joints(s)] for s in sides])
    return bool(_span(state[start:stop][:, joints]).max() >= t.frozen_motion_rad)


def _frozen_finding(code: str, role: str, message: str, ep: int, start: int, stop: int, fps: int) -> Finding:
    seconds = (stop - start) / fps
    return Finding(WARNING, code, f"observation.images.{role}", message, (ep,),
                   (f"episode {ep}: {seconds:.2f} s, t = {start / fps:.2f}-{stop / fps:.2f} s "
                    f"(frames {start}-{stop - 1})",))


def _stamp_freezes(data: EpisodeData, role: str, fps: int, t: Thresholds) -> tuple[list[dict], list[Finding]]:
    """Stretches where a camera's header stamp repeats (the frame sync re-used its last image):
    a stall whether or not anything moves, since a camera publishes at its rate regardless."""
    if data.stamps is None or len(data.stamps) < 2:
        return [], []
    column = data.stamps[:, STAMP_NAMES.index(role)]
    if (column == 0).all():  # camera not recorded
        return [], []
    spans, findings = [], []
    for a, b in runs(column[1:] == column[:-1]):
        start, stop = a, b + 1  # frames start..stop-1 show one image
        if (stop - start) / fps > t.frozen_s:
            spans.append({"camera": role, "start": start, "stop": stop, "seconds": (stop - start) / fps,
                          "source": "stamps"})
            findings.append(_frozen_finding("camera_stalled", role, f"{role} delivered no new image (its header "
                                             f"stamp repeats) for over {t.frozen_s:g} s: a stalled camera or driver?",
                                             data.index, start, stop, fps))
    return spans, findings


def small_grey(image: np.ndarray, width: int) -> np.ndarray:
    """A float32 grey (green channel) image averaged down by whole blocks to about ``width`` px."""
    g = np.asarray(image)[..., 1] if np.ndim(image) == 3 else np.asarray(image)
    block = max(1, g.shape[1] // width)
    h, w = g.shape[0] // block * block, g.shape[1] // block * block
    return g[:h, :w].reshape(h // block, block, w // block, block).mean(axis=(1, 3), dtype=np.float32)


def frozen_runs(images: Iterable[np.ndarray], t: Thresholds = Thresholds()) -> tuple[list[tuple[int, int]], int]:
    """([start, stop) of every stretch of at least 2 near-identical frames, frames decoded).

    Each frame is compared with the first of the current stretch (not its neighbour), so a
    slow motion adds up and ends the stretch."""
    found, anchor, start, count = [], None, 0, 0
    for k, image in enumerate(images):
        small = small_grey(image, t.frozen_width)
        count = k + 1
        if anchor is not None and np.percentile(np.abs(small - anchor), 99) < t.frozen_level:
            continue
        if k - start >= 2:
            found.append((start, k))
        anchor, start = small, k
    if count - start >= 2:
        found.append((start, count))
    return found, count


def video_freezes(ep: int, role: str, images: Iterable[np.ndarray], state: np.ndarray,
                  stamps: np.ndarray | None, fps: int, t: Thresholds = Thresholds()
                  ) -> tuple[list[dict], list[Finding]]:
    """Decoded stretches of near-identical images longer than ``frozen_s`` while the arms move.
    Stretches whose header stamps repeat too are left to the stamps' finding (same cause)."""
    column = None if stamps is None else stamps[:, STAMP_NAMES.index(role)]
    spans, findings = [], []
    for start, stop in frozen_runs(images, t)[0]:
        stop = min(stop, len(state))
        if (stop - start) / fps <= t.frozen_s or not _seen_arms_move(role, state, start, stop, t):
            continue
        if column is not None and not (column == 0).all() and len(np.unique(column[start:stop])) == 1:
            continue
        spans.append({"camera": role, "start": start, "stop": stop, "seconds": (stop - start) / fps,
                      "source": "video"})
        findings.append(_frozen_finding("camera_frozen", role, f"{role} images frozen for over {t.frozen_s:g} s "
                                        "while the arms move: a stalled camera re-sending its last image?",
                                        ep, start, stop, fps))
    return spans, findings


# --------------------------------------------------------------------------------------------
# The dataset


def check_dataset(episodes: list[EpisodeQuality], fps: int, t: Thresholds = Thresholds()) -> list[Finding]:
    """Findings that need every episode: joints idle throughout, grippers never used, the lag."""
    usable = [e for e in episodes if e.finite and e.arms]
    findings: list[Finding] = []
    for side in SIDES:
        moving = [e for e in usable if e.arms[side].moves]
        if not moving:
            continue
        findings += _dataset_idle_joints(usable, side, t)
        findings += _grippers(moving, side, t)
        findings += _lag_summary(moving, side, fps)
    return findings


def _dataset_idle_joints(episodes: list[EpisodeQuality], side: str, t: Thresholds) -> list[Finding]:
    """A joint whose value stays put across every episode (a dead motor reads the same everywhere)."""
    out = []
    for key in (STATE, ACTION):
        span = np.max([e.maximum[key] for e in episodes], axis=0) - np.min([e.minimum[key] for e in episodes], axis=0)
        out += [Finding(ERROR, "joint_idle_dataset", _field(key, c),
                        f"{JOINT_NAMES[c]} never moves in the whole dataset while the {side} arm does: a dead motor "
                        "or a wrong joint mapping (its std is 0: nothing to learn, normalization divides by it)",
                        (), (f"spans {span[c]:.2g} rad over {len(episodes)} episodes",))
                for c in range(_joints(side).start, _joints(side).stop) if span[c] < t.joint_idle_rad]
    return out


def _grippers(moving: list[EpisodeQuality], side: str, t: Thresholds) -> list[Finding]:
    unused = [e.index for e in moving if e.arms[side].gripper_span_m < t.gripper_used_m]
    field_ = _field(STATE, _gripper(side))
    if not unused:
        return []
    if len(unused) == len(moving):
        return [Finding(WARNING, "gripper_unused_dataset", field_,
                        f"the {side} gripper never opens or closes (by {t.gripper_used_m * 1000:g} mm) in any "
                        f"episode where the {side} arm moves: a task without grasps, or a gripper not recorded?")]
    return [Finding(WARNING, "gripper_unused", field_,
                    f"the {side} gripper is not used (spans under {t.gripper_used_m * 1000:g} mm) though the arm "
                    "moves and other episodes use it: a missed grasp?", tuple(unused))]


def _lag_summary(moving: list[EpisodeQuality], side: str, fps: int) -> list[Finding]:
    lags = [e.arms[side].lag_frames for e in moving if e.arms[side].lag_frames is not None]
    if not lags:
        return []
    median = float(np.median(lags))
    spread = f", range {min(lags)} to {max(lags)}" if min(lags) != max(lags) else ""
    return [Finding(INFO, "lag", f"{side} arm",
                    f"{side} state follows the action by {median:g} frame(s) ({median * 1000 / fps:.0f} ms): median "
                    f"of {len(lags)} episode(s){spread}")]


def group(findings: Iterable[Finding]) -> list[Finding]:
    """One finding per (severity, code, field, message), its episodes and details merged;
    errors first, then warnings, then information."""
    merged: dict[tuple, tuple[list[int], list[str]]] = {}
    for f in findings:
        eps, details = merged.setdefault((f.severity, f.code, f.field, f.message), ([], []))
        eps.extend(f.episodes)
        details.extend(f.details)
    out = [Finding(s, c, fl, m, tuple(sorted(set(eps))), tuple(details))
           for (s, c, fl, m), (eps, details) in merged.items()]
    return sorted(out, key=lambda f: (-RANK[f.severity], f.episodes[:1] or (-1,), f.field))


def _drop_covered(findings: list[Finding]) -> list[Finding]:
    """A joint idle in the whole dataset is said once, not once per episode as well."""
    dataset_idle = {f.field for f in findings if f.code == "joint_idle_dataset"}
    return [f for f in findings if not (f.code == "joint_idle" and f.field in dataset_idle)]


def summarize(episodes: list[EpisodeQuality], findings: list[Finding], fps: int,
              t: Thresholds = Thresholds()) -> list[Finding]:
    """The grouped findings of the episodes plus those of the dataset."""
    return group(_drop_covered(findings + check_dataset(episodes, fps, t)))


# --------------------------------------------------------------------------------------------
# Loading


def check(root: Path | str, t: Thresholds = Thresholds(), videos: bool = True,
          video_episodes: int = 0, progress=None) -> Report:
    """The quality report of the dataset at ``root``. ``videos=False`` skips decoding;
    ``video_episodes`` > 0 decodes only that many episodes, spread evenly. DatasetError when
    ``root`` is not a dataset this check can read."""
    from .reader import DatasetReader

    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory (expected a dataset root holding meta/, data/, videos/)")
    with DatasetReader(root) as reader:
        missing = [k for k in (STATE, ACTION) if k not in reader.features]
        if missing:
            raise DatasetError(f"{root / 'meta/info.json'}: no feature {', '.join(missing)} to check")
        decode = set(_spread(reader.num_episodes, video_episodes)) if videos and reader.camera_roles else set()
        qualities, findings = [], []
        for position, data in enumerate(_episodes(reader)):
            quality, found = check_episode(data, reader.fps, reader.camera_roles, t)
            if position in decode and quality.finite:
                found += _decoded(reader, position, data, quality, t)
            qualities.append(quality)
            findings += found
            if progress:
                progress(position + 1, reader.num_episodes)
        return Report(str(root), reader.fps, qualities, summarize(qualities, findings, reader.fps, t),
                      sorted(reader.episodes[e].index for e in decode), t)


def _spread(total: int, count: int) -> list[int]:
    if count <= 0 or count >= total:
        return list(range(total))
    return sorted({int(round(i)) for i in np.linspace(0, total - 1, count)})


def _episodes(reader) -> Iterator[EpisodeData]:
    """Each episode's columns, in the reader's order."""
    has_stamps = STAMPS in reader.features
    for e, ep in enumerate(reader.episodes):
        yield EpisodeData(ep.index, reader.episode_column(e, STATE).astype(np.float64),
                          reader.episode_column(e, ACTION).astype(np.float64),
                          reader.episode_column(e, STAMPS) if has_stamps else None)


def _decoded(reader, position: int, data: EpisodeData, quality: EpisodeQuality, t: Thresholds) -> list[Finding]:
    findings = []
    for role in reader.camera_roles:
        spans, found = video_freezes(data.index, role, reader.episode_frames(position, role), data.state,
                                     data.stamps, reader.fps, t)
        quality.frozen += spans
        findings += found
    return findings


def write_json(report: Report, path: Path | str) -> Path:
    Path(path).write_text(json.dumps(report.to_dict(), indent=2, default=float) + "\n")
    return Path(path)


# --------------------------------------------------------------------------------------------
# The per-episode plot


def plot(report: Report, path: Path | str) -> Path:
    """Per episode: each arm's motion, gripper range and lag (matplotlib's object API, no display)."""
    from matplotlib.figure import Figure

    eps = [e for e in report.episodes if e.arms]
    x = np.array([e.index for e in eps])
    fig = Figure(figsize=(max(6.0, 0.18 * len(eps) + 3), 7), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)
    t = report.thresholds
    panels = (("largest joint span (deg)", lambda a: np.degrees(a.joint_span_rad), np.degrees(t.arm_moving_rad)),
              ("gripper span (mm)", lambda a: a.gripper_span_m * 1000, t.gripper_used_m * 1000),
              ("state lag behind action (frames)", lambda a: np.nan if a.lag_frames is None else a.lag_frames,
               t.max_lag_frames))
    width = 0.4
    for ax, (title, value, threshold) in zip(axes, panels):
        for k, side in enumerate(SIDES):
            ax.bar(x + (k - 0.5) * width, [value(e.arms[side]) for e in eps], width, label=f"{side} arm")
        ax.axhline(threshold, color="grey", ls="--", lw=0.8, label="threshold")
        ax.set_ylabel(title, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[-1].set_xlabel("episode")
    axes[-1].xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(f"{report.root}: {len(report.episodes)} episode(s), {report.count(ERROR)} error(s), "
                 f"{report.count(WARNING)} warning(s)", fontsize=10)
    fig.savefig(path, dpi=80)
    return Path(path)
