"""The driver-rate B-spline upsampler (sf_policy/runtime/upsample.py)."""

from __future__ import annotations

import numpy as np
import pytest

from sf_policy.runtime.upsample import BSplineUpsampler

PERIOD = 1 / 30


def run(targets, rate=600.0, jitter=0.0, seed=0):
    """Push targets at 30 Hz (with arrival jitter), sample at ``rate``; (times, samples)."""
    rng = np.random.default_rng(seed)
    up = BSplineUpsampler(PERIOD)
    arrivals = [k * PERIOD + rng.uniform(0, jitter) for k in range(len(targets))]
    times = np.arange(0, len(targets) * PERIOD + 0.15, 1 / rate)
    out, k = [], 0
    for t in times:
        while k < len(targets) and arrivals[k] <= t:
            up.push(arrivals[k], targets[k])
            k += 1
        out.append(up.sample(t))
    return times, out


def test_c2_across_a_chunk_switch_with_jittery_arrival():
    """A ramp that switches to another ramp with an offset (a chunk switch): the samples'
    second differences stay small and bounded, where forwarding the targets jumps."""
    t = np.arange(60)
    targets = np.where(t[:, None] < 30, 0.01 * t[:, None], 0.1 + 0.02 * t[:, None]) * np.ones((1, 14))
    times, out = run(targets, jitter=0.01)
    q = np.array([s[0] for s in out if s is not None])
    dt = 1 / 600
    jerk = np.abs(np.diff(q, 3)) / dt ** 3
    # C²: the jerk is that of the control points, (P3 − 3 P2 + 3 P1 − P0) / period³, bounded by
    # 8 max|ΔP| / period³; a curve with a kink or a jump in acceleration has spikes ~ 1/dt³ there.
    step = 0.1 + 0.02 * 30 - 0.01 * 29  # the switch's jump in the targets
    assert jerk.max() <= 8 * step / PERIOD ** 3 * 1.01
    held = np.repeat(targets[:, 0], 20)  # forwarding each target as it comes, at 600 Hz
    assert np.abs(np.diff(held, 3)).max() / dt ** 3 > 100 * jerk.max()
    assert np.abs(np.diff(q)).max() < step / 10  # spread out
    assert q.min() >= targets[:, 0].min() - 1e-12 and q.max() <= targets[:, 0].max() + 1e-12


def test_settles_exactly_on_the_last_target_then_goes_quiet():
    up = BSplineUpsampler(PERIOD, stale_s=0.2)
    for k in range(5):
        up.push(k * PERIOD, np.full(14, float(k)))
    assert up.sample(4 * PERIOD + 0.15) == pytest.approx(np.full(14, 4.0))
    assert up.sample(4 * PERIOD + 0.25) is None  # nothing for 0.25 s: send nothing
    up.push(1.0, np.full(14, 9.0))               # a new stream starts on its first target
    assert up.sample(1.0) == pytest.approx(np.full(14, 9.0))


def test_never_outside_the_targets():
    rng = np.random.default_rng(3)
    targets = rng.uniform(-1, 1, (40, 14))
    _, out = run(targets, jitter=0.02, seed=3)
    q = np.array([s for s in out if s is not None])
    assert (q >= targets.min(axis=0) - 1e-12).all() and (q <= targets.max(axis=0) + 1e-12).all()


def test_nothing_before_the_first_target():
    assert BSplineUpsampler().sample(0.0) is None
