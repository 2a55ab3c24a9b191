"""Turning free-running streams into 30 Hz frames: one rule for live recording and bags.

The rule (docs/recording.md explains the alternatives we rejected):

* The **top camera is the pivot**: every cam_high image starts one frame, and the frame's
  time is that image's capture stamp. The recording rate is therefore the camera's real
  rate, and a frame never repeats or invents an image.
* Every other camera contributes its image **nearest to the pivot stamp** among those not
  used yet. That keeps the skew within half a camera period (16.7 ms at 30 Hz) for cameras
  that free-run at the same rate, where AgileX's "oldest of the latest stamps" allows a
  whole period. Images skipped over are counted as drops; a camera that lost an image
  repeats its nearest one (counted as a duplicate) rather than shifting later frames.
* Each arm stream contributes its sample **nearest to the frame time** (200 Hz streams:
  within 2.5 ms). State is the puppet arms, action the master arms, both at the frame time:
  action k is what the operator commanded when image k was taken, which the puppets reach a
  servo delay later.
* A frame is emitted once it is decided: every camera and arm has a message at or after the
  frame time (so "nearest" cannot change), or the pivot image is older than ``wait_s`` (0.25 s); a
  late camera then repeats its newest image (a counted duplicate), so the top camera keeps
  the time base, and a stream silent for ``stall_s`` aborts the episode (the session's job).

The class is pure: callers pass the receive time ``now_ns``, so the same code replays bags.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..embodiment import DOF_PER_ARM, SIDES
from ..topics import CAMERA_ROLES

PIVOT = "cam_high"
ARM_STREAMS: tuple[str, ...] = tuple(f"{kind}_{side}" for kind in ("puppet", "master") for side in SIDES)


@dataclass
class _Message:
    stamp_ns: int
    received_ns: int
    payload: object


@dataclass
class SyncedFrame:
    """One frame: the pivot image's time and, per stream, the message chosen for it."""

    stamp_ns: int
    images: dict[str, object]
    image_stamps: dict[str, int]
    arms: dict[str, np.ndarray]
    arm_stamps: dict[str, int]
    dropped: dict[str, int] = field(default_factory=dict)
    duplicated: tuple[str, ...] = ()
    emitted_ns: int = 0  # receive-clock time the frame was decided (latency = emitted - stamp)

    @property
    def state(self) -> np.ndarray:
        return np.concatenate([self.arms[f"puppet_{side}"] for side in SIDES]).astype(np.float32)

    @property
    def action(self) -> np.ndarray:
        return np.concatenate([self.arms[f"master_{side}"] for side in SIDES]).astype(np.float32)

    @property
    def camera_skew_ms(self) -> float:
        stamps = list(self.image_stamps.values())
        return (max(stamps) - min(stamps)) / 1e6

    def stamps(self, order: tuple[str, ...]) -> np.ndarray:
        """Stamps (ns) in the dataset's order: "tick" is when the frame was assembled (the
        recorder's clock), then each stream's message stamp by name (cam_high's is the frame time)."""
        known = {"tick": self.emitted_ns, **self.image_stamps, **self.arm_stamps}
        # A camera left out of the recording has no stamp to give: its slot holds 0.
        return np.array([known.get(name, 0) for name in order], dtype=np.int64)


def frame_row(frame: SyncedFrame) -> dict[str, np.ndarray]:
    """A synchronized frame as the dataset writer's row: live recording and bags write the same."""
    from ..data.features import ACTION, SKEW, STAMP_NAMES, STAMPS, STATE

    return {STATE: frame.state, ACTION: frame.action, STAMPS: frame.stamps(STAMP_NAMES),
            SKEW: np.array([frame.camera_skew_ms], dtype=np.float32)}


class FrameSync:
    """Buffers the latest messages of every stream and emits frames by the rule above."""

    def __init__(self, cameras: tuple[str, ...] = CAMERA_ROLES, arms: tuple[str, ...] = ARM_STREAMS,
                 fps: float = 30.0, wait_s: float | None = None, keep_s: float = 1.0):
        if PIVOT not in cameras:
            raise ValueError(f"the frame sync pivots on {PIVOT!r}, which is not among the cameras {cameras}")
        self.cameras, self.arms, self.fps = tuple(cameras), tuple(arms), fps
        self.period_ns = int(1e9 / fps)
        # Long enough for a late stream on a busy machine (DDS delivery of a 1 MB image takes
        # ~5 ms idle, >100 ms measured with encoders saturating two cores); a frame decided
        # too early repeats an image and skips the late one. Well under the 0.5 s stall limit.
        self.wait_ns = int((wait_s if wait_s is not None else 0.25) * 1e9)
        self.match_ns = int(0.6 * self.period_ns)
        self._keep_ns = int(keep_s * 1e9)
        self._images = {role: deque() for role in self.cameras}
        self._arms = {name: deque() for name in self.arms}
        self._last_used = {role: -1 for role in self.cameras}
        self._last_received: dict[str, int] = {}
        self.frames = 0
        self.drops = {role: 0 for role in self.cameras}
        self.duplicates = {role: 0 for role in self.cameras}
        self.duplicates = {role: 0 for role in self.cameras}

    # -- input -------------------------------------------------------------------------
    def add_image(self, role: str, stamp_ns: int, image: object, now_ns: int) -> None:
        queue = self._images[role]
        if queue and stamp_ns <= queue[-1].stamp_ns:
            return  # a repeated or out-of-order image cannot be a new frame
        queue.append(_Message(stamp_ns, now_ns, image))
        self._last_received[role] = now_ns
        self._trim(queue, now_ns)

    def add_arm(self, name: str, stamp_ns: int, positions: np.ndarray, now_ns: int) -> None:
        if len(positions) != DOF_PER_ARM:
            raise ValueError(f"arm stream {name!r}: expected {DOF_PER_ARM} positions, got {len(positions)}")
        queue = self._arms[name]
        if queue and stamp_ns <= queue[-1].stamp_ns:
            return
        queue.append(_Message(stamp_ns, now_ns, np.asarray(positions, dtype=np.float64)))
        self._last_received[name] = now_ns
        self._trim(queue, now_ns)

    def _trim(self, queue: deque, now_ns: int) -> None:
        while len(queue) > 2 and now_ns - queue[0].received_ns > self._keep_ns:
            queue.popleft()

    # -- output ------------------------------------------------------------------------
    def poll(self, now_ns: int) -> list[SyncedFrame]:
        """Every frame decided by now, oldest first."""
        frames = []
        while (frame := self._next_frame(now_ns)) is not None:
            frames.append(frame)
        return frames

    def _next_frame(self, now_ns: int) -> SyncedFrame | None:
        pivot = next((m for m in self._images[PIVOT] if m.stamp_ns > self._last_used[PIVOT]), None)
        if pivot is None:
            return None
        t = pivot.stamp_ns
        overdue = now_ns - pivot.received_ns > self.wait_ns
        streams = [self._images[r] for r in self.cameras if r != PIVOT] + [self._arms[a] for a in self.arms]
        if not overdue and not all(q and q[-1].stamp_ns >= t for q in streams):
            return None
        images, image_stamps = {PIVOT: pivot.payload}, {PIVOT: t}
        dropped = {PIVOT: self._skipped(PIVOT, pivot)}
        duplicated = []
        for role in self.cameras:
            if role == PIVOT:
                continue
            chosen = self._pick(role, t)
            if chosen is None:
                return None  # nothing from this camera yet
            if chosen.stamp_ns <= self._last_used[role]:
                duplicated.append(role)
            else:
                dropped[role] = self._skipped(role, chosen)
            images[role], image_stamps[role] = chosen.payload, chosen.stamp_ns
        arms, arm_stamps = {}, {}
        for name in self.arms:
            chosen = self._nearest(self._arms[name], t)
            if chosen is None:
                return None  # no sample at all yet: nothing to pair with this image
            arms[name], arm_stamps[name] = chosen.payload, chosen.stamp_ns
        for role, stamp in image_stamps.items():
            self._last_used[role] = max(self._last_used[role], stamp)
        for role, count in dropped.items():
            self.drops[role] += count
        for role in duplicated:
            self.duplicates[role] += 1
        self.frames += 1
        return SyncedFrame(t, images, image_stamps, arms, arm_stamps, dropped, tuple(duplicated), now_ns)

    def _pick(self, role: str, t: int) -> _Message | None:
        """The unused image nearest the frame time if it is close enough, else the nearest of all.

        "Close enough" is 0.6 of a period: a camera that lost an image then repeats its
        neighbour (a counted duplicate) instead of shifting every later frame by a period.
        """
        queue = self._images[role]
        fresh = self._nearest(queue, t, after=self._last_used[role])
        if fresh is not None and abs(fresh.stamp_ns - t) <= self.match_ns:
            return fresh
        return self._nearest(queue, t) if queue else None

    @staticmethod
    def _nearest(queue: deque, t: int, after: int = -1) -> _Message | None:
        candidates = [m for m in queue if m.stamp_ns > after]
        if not candidates:
            return None
        return min(candidates, key=lambda m: (abs(m.stamp_ns - t), m.stamp_ns))

    def _skipped(self, role: str, chosen: _Message) -> int:
        """Images of this camera newer than the last used and older than the chosen one."""
        if self._last_used[role] < 0:
            return 0  # before the first frame nothing was due
        return sum(1 for m in self._images[role] if self._last_used[role] < m.stamp_ns < chosen.stamp_ns)

    # -- health ------------------------------------------------------------------------
    def silent_streams(self, now_ns: int, timeout_s: float, since_ns: int) -> list[str]:
        """Streams with no message for ``timeout_s`` (counting from ``since_ns`` if never heard)."""
        limit = int(timeout_s * 1e9)
        return [name for name in (*self.cameras, *self.arms)
                if now_ns - max(self._last_received.get(name, since_ns), since_ns) > limit]

    def reset_counters(self) -> None:
        """New episode: count from zero. Buffers stay, so its first frame is as well matched as any."""
        self.frames = 0
        self.drops = {role: 0 for role in self.cameras}
        self.duplicates = {role: 0 for role in self.cameras}
