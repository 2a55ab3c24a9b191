"""The software master-puppet link's rules, without ROS: properties over random master streams."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sf_policy.embodiment import ARM_STATE_NAMES, PIPER_LIMITS, arm_limits_arrays
from sf_policy.teleop.link import MAX_DT_PERIODS, SoftwareLink

LOWER, UPPER = arm_limits_arrays()
REST = np.array([0.0, 0.5, -0.5, 0.0, 0.3, 0.0, 0.02])
RATE = 50.0
PERIOD = 1.0 / RATE

# Master values: far outside the limits included, and now and then a NaN or inf in one entry
# (what a broken stream could carry).
finite_value = st.floats(-20.0, 20.0)
poison = st.one_of(st.none(), st.none(), st.none(),
                   st.tuples(st.integers(0, 6), st.sampled_from([math.nan, math.inf, -math.inf])))


@st.composite
def master_sample(draw):
    values = draw(st.lists(finite_value, min_size=7, max_size=7))
    bad = draw(poison)
    if bad is not None:
        values[bad[0]] = bad[1]
    return values


# One step of a stream: the master sample, how late its stamp is, how long until the next tick.
stream_step = st.tuples(master_sample(), st.one_of(st.floats(0.0, 0.05), st.floats(0.0, 0.3)),
                        st.floats(0.001, 0.1))


def started_link(**kwargs) -> SoftwareLink:
    link = SoftwareLink(rate_hz=RATE, **kwargs)
    link.observe_puppet(REST, 0.0)
    return link


def cap_per_second(link: SoftwareLink) -> np.ndarray:
    return link.max_speed


@settings(max_examples=150, deadline=None)
@given(st.lists(stream_step, min_size=1, max_size=40), st.floats(0.05, 1.0))
def test_commands_stay_in_limits_move_slowly_and_never_carry_nan(steps, scale):
    link = started_link(velocity_scale=scale)
    now, previous, previous_time = 0.0, REST.copy(), None
    commands = 0
    for values, lateness, wait in steps:
        now += wait
        link.observe_puppet(REST if previous_time is None else previous, now)
        reason = link.observe_master(values, now - lateness)
        out = link.tick(now)
        if not np.all(np.isfinite(values)):
            assert reason.startswith("non-finite") and out.command is None
        elif lateness > link.max_master_age:
            assert out.command is None and out.reason.startswith("stale")
        if out.command is None:
            continue
        commands += 1
        cmd = out.command
        assert np.all(np.isfinite(cmd))
        assert np.all(cmd >= LOWER) and np.all(cmd <= UPPER), "a command left the joint limits"
        # never a bigger step than the speed cap allows over the time since the previous command
        dt = PERIOD if previous_time is None or now - previous_time > 5 * PERIOD else \
            min(now - previous_time, MAX_DT_PERIODS * PERIOD)
        assert np.all(np.abs(cmd - previous) <= cap_per_second(link) * dt + 1e-9)
        previous, previous_time = cmd, now
    assert commands <= 1 + (now + PERIOD) / PERIOD  # the rate cap, whatever the tick pattern


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 0.05), min_size=5, max_size=200))
def test_at_most_one_command_per_period(waits):
    link = started_link()
    now, stamps = 0.0, []
    for wait in waits:
        now += wait
        link.observe_master(REST, now)
        link.observe_puppet(REST, now)
        if link.tick(now).command is not None:
            stamps.append(now)
    # commands sit in distinct slots of the rate's grid: never more than rate * T + 1 in T
    for i, t in enumerate(stamps):
        later = [s for s in stamps[i:] if s < t + 1.0]
        assert len(later) <= RATE + 1
    assert all(b - a >= PERIOD / 2 - 1e-12 for a, b in zip(stamps, stamps[1:]))


@settings(max_examples=100, deadline=None)
@given(st.lists(finite_value, min_size=7, max_size=7))
def test_a_steady_master_is_reached_at_its_clamped_value(values):
    link = started_link(velocity_scale=1.0)
    target = np.clip(values, LOWER, UPPER)
    out = None
    for k in range(1, 300):  # 6 s at 50 Hz: enough for 5.3 rad at pi rad/s and 7 cm at 0.1 m/s
        now = k * PERIOD
        link.observe_master(values, now)
        tick = link.tick(now)
        out = tick if tick.command is not None else out
    assert np.allclose(out.command, target, atol=1e-9)
    assert set(out.clamped) == {n for n, v, t in zip(ARM_STATE_NAMES, values, target) if v != t}


def test_a_nan_sample_holds_at_once_and_a_good_one_resumes():
    link = started_link()
    link.observe_master(REST + 0.1, PERIOD)
    assert link.tick(PERIOD).command is not None
    bad = (REST + 0.2).tolist()
    bad[3] = math.nan
    assert link.observe_master(bad, 2 * PERIOD) == "non-finite master value for joint4"
    # the previous good sample is not followed any more either
    assert link.tick(2 * PERIOD).command is None
    link.observe_master(REST + 0.1, 3 * PERIOD)
    assert link.tick(3 * PERIOD).command is not None


def test_first_command_starts_from_the_puppet_and_needs_it():
    link = SoftwareLink(rate_hz=RATE, velocity_scale=0.5)
    far = REST + np.array([1.0, 0.5, -0.5, 0.5, 0.5, 1.0, 0.04])
    link.observe_master(far, 0.0)
    out = link.tick(0.0)
    assert out.command is None and "puppet" in out.reason
    link.observe_puppet(REST, 0.0)
    out = link.tick(0.0)
    step = out.command - REST
    assert np.allclose(np.abs(step), link.max_speed * PERIOD)  # one period's worth toward the master
    assert np.all(np.sign(step) == np.sign(far - REST))
    assert set(out.limited) == set(ARM_STATE_NAMES)


def test_after_a_pause_the_link_restarts_from_where_the_puppet_is():
    link = started_link()
    link.observe_master(REST + 0.01, 0.0)
    first = link.tick(0.0).command
    moved = REST + np.array([0.5, 0.2, -0.2, 0.1, 0.1, 0.1, 0.0])  # someone moved the puppet meanwhile
    link.observe_puppet(moved, 1.0)
    link.observe_master(moved, 1.0)
    out = link.tick(1.0)
    assert np.allclose(out.command, moved) and not np.allclose(out.command, first)


def test_stale_and_future_samples_give_no_command():
    link = started_link(max_master_age=0.1)
    link.observe_master(REST, 0.0)
    assert link.tick(0.15).reason.startswith("stale master sample: 150 ms old")
    link.observe_master(REST, 1.0)
    assert "future" in link.tick(0.5).reason


def test_gripper_speed_is_its_own_limit():
    link = started_link(velocity_scale=0.1, gripper_speed=0.05)
    assert link.max_speed[6] == 0.05 and np.allclose(link.max_speed[:6], 0.1 * math.pi)
    with pytest.raises(ValueError, match="gripper_speed"):
        SoftwareLink(gripper_speed=PIPER_LIMITS["gripper"].max_velocity * 2)
    with pytest.raises(ValueError, match="velocity_scale"):
        SoftwareLink(velocity_scale=1.5)
