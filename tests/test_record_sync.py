"""The frame synchronization rule, on synthetic streams with known timing."""

from __future__ import annotations

import numpy as np
import pytest

from sf_policy.record.sync import ARM_STREAMS, FrameSync
from sf_policy.topics import CAMERA_ROLES

PERIOD = 1e9 / 30
ARM_PERIOD = 5_000_000


def streams(seconds: float, offsets_ms=(0.0, 9.0, 14.0), jitter_ms: float = 1.0, latency_ms: float = 6.0,
            missing: dict | None = None, seed: int = 0):
    """(receive_ns, kind, name, stamp_ns, payload) in receive order, like a subscriber sees them."""
    rng = np.random.default_rng(seed)
    events = []
    t0 = 1_700_000_000_000_000_000
    for role, offset in zip(CAMERA_ROLES, offsets_ms):
        for k in range(int(seconds * 30)):
            if k in (missing or {}).get(role, ()):
                continue
            stamp = int(t0 + k * PERIOD + offset * 1e6 + rng.normal(0, jitter_ms) * 1e6)
            events.append((stamp + int(latency_ms * 1e6), "image", role, stamp, (role, k)))
    for j, name in enumerate(ARM_STREAMS):
        for k in range(int(seconds * 200)):
            stamp = t0 + k * ARM_PERIOD + j * 1_000_000
            events.append((stamp + 500_000, "arm", name, stamp, np.full(7, stamp / 1e9)))
    return sorted(events, key=lambda e: e[0])


def run(events, sync: FrameSync):
    frames = []
    for received, kind, name, stamp, payload in events:
        (sync.add_image if kind == "image" else sync.add_arm)(name, stamp, payload, received)
        frames += sync.poll(received)
    return frames


def test_one_frame_per_top_camera_image_without_drops_or_duplicates():
    sync = FrameSync()
    frames = run(streams(10.0), sync)
    assert len(frames) >= 298  # the last pivot images wait for later messages
    assert sum(sync.drops.values()) == 0 and sum(sync.duplicates.values()) == 0
    for role in CAMERA_ROLES:
        used = [f.images[role][1] for f in frames]
        assert used == list(range(len(frames))), role  # every image once, in order
    skews = [f.camera_skew_ms for f in frames]
    assert max(skews) < 14.0 + 5 * 1.0  # offsets 0/9/14 ms plus jitter


def test_cameras_half_a_period_apart_keep_skew_under_half_a_period():
    sync = FrameSync()
    frames = run(streams(10.0, offsets_ms=(0.0, 25.0, 30.0), jitter_ms=0.5), sync)
    # The first frame has no earlier wrist images to match; from the second on, each wrist
    # camera's image 8 ms *before* the top one is nearer than the one 25 ms after.
    steady = frames[2:]
    assert max(f.camera_skew_ms for f in steady) <= PERIOD / 2e6 + 2.0
    assert all(f.duplicated == () for f in steady)


def test_arms_pair_with_the_sample_nearest_the_image_time():
    sync = FrameSync()
    frames = run(streams(3.0), sync)
    for frame in frames:
        for name in ARM_STREAMS:
            assert abs(frame.arm_stamps[name] - frame.stamp_ns) <= ARM_PERIOD / 2 + 1_000_000
        assert frame.state.shape == (14,) and frame.action.shape == (14,)
        assert frame.state.dtype == np.float32


def test_a_lost_image_repeats_its_neighbour_instead_of_shifting_later_frames():
    sync = FrameSync()
    frames = run(streams(3.0, missing={"cam_left_wrist": {40}}), sync)
    assert sync.duplicates["cam_left_wrist"] == 1
    later = [f for f in frames if f.images["cam_high"][1] > 41]
    assert all(f.images["cam_left_wrist"][1] == f.images["cam_high"][1] for f in later)


def test_a_dropped_top_camera_image_leaves_a_gap_not_a_copy():
    sync = FrameSync()
    frames = run(streams(3.0, missing={"cam_high": {30}}), sync)
    assert 30 not in [f.images["cam_high"][1] for f in frames]
    assert sync.drops["cam_left_wrist"] == 1  # its image 30 had no frame to go to


def test_a_silent_camera_is_named_and_repeats_rather_than_holding_frames_back():
    sync = FrameSync()
    events = [e for e in streams(2.0) if not (e[2] == "cam_right_wrist" and e[0] > events_start() + 1e9)]
    frames = run(events, sync)
    assert sync.silent_streams(events[-1][0], 0.5, since_ns=0) == ["cam_right_wrist"]
    assert len(frames) >= 60 - 9  # the top camera keeps the time base (the last 0.25 s still wait)
    assert sync.duplicates["cam_right_wrist"] >= 20 and sync.duplicates["cam_left_wrist"] == 0


def events_start() -> int:
    return 1_700_000_000_000_000_000


def test_the_pivot_camera_must_be_recorded():
    with pytest.raises(ValueError, match="cam_high"):
        FrameSync(cameras=("cam_left_wrist",))


def test_wrong_arm_vector_length_is_refused_with_the_stream_name():
    with pytest.raises(ValueError, match="puppet_left"):
        FrameSync().add_arm("puppet_left", 1, np.zeros(6), 1)
