"""The safety filter's rules, one by one, then as properties over adversarial command streams,
then composed with the chunk scheduler. Times are plain numbers: no clock is read."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sf_policy.embodiment import GRIPPER_INDICES, JOINT_NAMES, PIPER_LIMITS, STATE_DIM
from sf_policy.runtime import ChunkScheduler, ManualClock, SafetyFilter
from sf_policy.runtime.safety import CLOCK, ERROR, ESTOP, MALFORMED, NO_COMMAND, NO_STATE, NON_FINITE, OK, STALE

P = 1.0 / 30.0
ARM_REST = [0.0, 0.5, -0.5, 0.0, 0.3, 0.0, 0.02]
REST = np.array(ARM_REST + ARM_REST)
EPS = 1e-9


def make(**kwargs) -> SafetyFilter:
    return SafetyFilter(period=P, **kwargs)


def run(filt: SafetyFilter, commands, state=REST, age=0.0, start_tick=0):
    """Feed one command per tick; returns the decisions."""
    return [filt.filter(c, state, age, (start_tick + i) * P) for i, c in enumerate(commands)]


def test_a_gentle_command_passes_unchanged():
    filt = make()
    target = REST + 0.005
    target[list(GRIPPER_INDICES)] = REST[list(GRIPPER_INDICES)] + 0.001  # 1 mm: within a gripper's first step
    d = filt.filter(target, REST, 0.0, 0.0)
    assert d.code == OK and not d.hold and not d.clamped and not d.limited and d.reason == ""
    np.testing.assert_allclose(d.action, target)


def test_first_command_ramps_from_the_measured_state_not_a_jump():
    filt = make()
    far = REST.copy()
    far[0] += 1.0  # left joint1 a whole radian away
    d = filt.filter(far, REST, 0.0, 0.0)
    assert d.limited and d.limited_joints == ("left_joint1",)
    # from rest, the first step is the acceleration limit's: a * dt^2
    assert d.action[0] - REST[0] == pytest.approx(filt.max_accel[0] * P * P)
    np.testing.assert_allclose(np.delete(d.action, 0), np.delete(REST, 0))


def test_position_limits_clamp_joints_and_grippers_and_are_counted():
    filt = make()
    wild = REST.copy()
    wild[2] = 5.0           # left joint3 (upper limit 0)
    wild[GRIPPER_INDICES[1]] = 0.5  # right gripper (upper 0.07 m)
    decisions = run(filt, [wild] * 200)
    assert all(d.clamped for d in decisions)
    assert decisions[0].clamped_joints == ("left_joint3", "right_gripper")
    assert "clamped to limits: left_joint3, right_gripper" in decisions[0].reason
    final = decisions[-1].action
    assert final[2] == pytest.approx(PIPER_LIMITS["joint3"].upper)
    assert final[GRIPPER_INDICES[1]] == pytest.approx(PIPER_LIMITS["gripper"].upper)
    assert filt.stats()["clamped"] == 200


def test_velocity_limit_bounds_every_step_of_a_jump():
    filt = make(velocity_scale=0.5)
    target = REST.copy()
    target[7] = 2.0  # right joint1: +2 rad
    target[GRIPPER_INDICES[0]] = 0.07
    actions = np.array([d.action for d in run(filt, [target] * 120)])
    steps = np.abs(np.diff(np.vstack([REST, actions]), axis=0))
    assert (steps <= filt.max_speed * P + EPS).all()
    assert steps[:, 7].max() == pytest.approx(math.pi * 0.5 * P)  # cruises at the cap
    np.testing.assert_allclose(actions[-1], target)  # and gets there


def test_acceleration_limit_ramps_speed_up_but_never_delays_a_stop():
    filt = make(max_accel=5.0)
    target = REST.copy()
    target[0] = 1.5
    actions = [d.action for d in run(filt, [target] * 15)]
    velocity = np.diff(np.array([REST] + actions)[:, 0]) / P
    assert np.all(np.diff(np.concatenate([[0.0], velocity])) <= 5.0 * P + EPS)
    assert velocity[-1] > velocity[0]
    # the plan now says "stay where you are": the command stops at once, no overshoot
    here = actions[-1]
    d = filt.filter(here, REST, 0.0, 15 * P)
    np.testing.assert_allclose(d.action, here)
    assert not d.limited


@pytest.mark.parametrize("index", range(STATE_DIM))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_element_anywhere_refuses_the_whole_command(index, bad):
    filt = make()
    run(filt, [REST] * 3)
    command = REST.copy()
    command[index] = bad
    d = filt.filter(command, REST, 0.0, 3 * P)
    assert d.hold and d.action is None and d.code == NON_FINITE
    assert JOINT_NAMES[index] in d.reason


@pytest.mark.parametrize("command", [np.zeros(13), np.zeros((2, STATE_DIM)), "fourteen", [[1.0] * 7, [1.0] * 8]])
def test_malformed_commands_hold(command):
    d = make().filter(command, REST, 0.0, 0.0)
    assert d.hold and d.code == MALFORMED


# --- hostile input: nothing makes filter raise, nothing it cannot use moves the arm ----------------

#: Values seen to make filter raise or pass before (issue 16), and their kin.
NOT_A_NUMBER = [10**400, -10**400, "0.1", b"0.1", True, np.bool_(False), 1j, np.array(0.1), np.array([0.1]), [0.1],
                object(), math.nan]


@pytest.mark.parametrize("age", [None, *NOT_A_NUMBER], ids=repr)
def test_an_observation_age_that_is_not_a_usable_number_holds_without_raising(age):
    filt = make()
    run(filt, [REST] * 2)
    d = filt.filter(REST, REST, age, 2 * P)
    assert d.hold and d.code in (STALE, CLOCK), d


@pytest.mark.parametrize("now", [None, math.inf, *NOT_A_NUMBER], ids=repr)
def test_a_time_that_is_not_a_finite_number_holds_without_raising(now):
    filt = make()
    run(filt, [REST] * 2)
    d = filt.filter(REST, REST, 0.0, now)
    assert d.hold and d.code == CLOCK, d


@pytest.mark.parametrize("command", [
    ["0.1"] * STATE_DIM, [True] * STATE_DIM, [1j] * STATE_DIM, [0.1] * 13 + [np.array(0.1)], np.zeros((2, 7)),
    np.zeros((STATE_DIM, 1)), np.zeros(STATE_DIM, dtype=bool), np.zeros(STATE_DIM, dtype=complex),
    np.array(["0.1"] * STATE_DIM), np.array([10**400] * STATE_DIM, dtype=object), {"left_joint1": 0.1}, 3.0,
    "0.1," * STATE_DIM], ids=lambda c: f"{type(c).__name__}{getattr(c, 'shape', '')}")
def test_anything_but_14_real_numbers_is_not_a_command(command):
    d = make().filter(command, REST, 0.0, 0.0)
    assert d.hold and d.code == MALFORMED, d


def test_an_integer_too_large_for_a_float_is_a_non_finite_command():
    command = list(REST)
    command[3] = 10**400
    d = make().filter(command, REST, 0.0, 0.0)
    assert d.hold and d.code == NON_FINITE and JOINT_NAMES[3] in d.reason


def test_an_error_inside_the_filter_holds_naming_it():
    filt = make()
    filt.max_speed = "fast"  # a bug of the filter's own: it must hold, not raise into the control loop
    d = filt.filter(REST, REST, 0.0, 0.0)
    assert d.hold and d.code == ERROR and "TypeError" in d.reason and filt.stats()[ERROR] == 1


anything = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=3)
                        | st.complex_numbers() | st.binary(max_size=3),
                        lambda inner: st.lists(inner, max_size=STATE_DIM + 1) | st.tuples(inner, inner), max_leaves=20)
command_like = st.one_of(anything, st.lists(st.one_of(st.floats(-4, 4), st.integers(-10**400, 10**400), anything),
                                            min_size=STATE_DIM, max_size=STATE_DIM))


@settings(max_examples=300, deadline=None)
@given(command_like, command_like, anything, anything)
def test_no_input_makes_the_filter_raise_and_whatever_passes_is_finite_and_in_limits(command, state, age, now):
    filt = make()
    d = filt.filter(command, state, age, now)
    if d.action is not None:
        assert d.action.shape == (STATE_DIM,) and np.isfinite(d.action).all()
        assert (d.action >= filt.lower - EPS).all() and (d.action <= filt.upper + EPS).all()


def test_no_command_holds():
    d = make().filter(None, REST, 0.0, 0.0)
    assert d.hold and d.code == NO_COMMAND


@pytest.mark.parametrize("state", [None, np.zeros(7), np.full(STATE_DIM, math.nan)])
def test_no_usable_state_holds(state):
    d = make().filter(REST, state, 0.0, 0.0)
    assert d.hold and d.code == NO_STATE


def test_stale_observation_holds_with_its_age_in_the_reason():
    filt = make(max_obs_age=0.2)
    assert not filt.filter(REST, REST, 0.19, 0.0).hold
    d = filt.filter(REST, REST, 0.25, P)
    assert d.hold and d.code == STALE
    assert "stale observation: 250 ms old (max_obs_age 200 ms)" in d.reason
    assert filt.filter(REST, REST, None, 2 * P).code == STALE
    assert filt.filter(REST, REST, math.nan, 3 * P).code == STALE
    future = filt.filter(REST, REST, -0.3, 4 * P)
    assert future.hold and future.code == CLOCK and "future" in future.reason
    assert filt.stats()[STALE] == 3


def test_estop_latches_from_the_next_call_until_reset():
    filt = make()
    target = REST.copy()
    target[0] = 1.0
    moving = run(filt, [target] * 10)
    assert not moving[-1].hold
    filt.estop("operator pressed the button")
    assert filt.estopped
    after = run(filt, [target, REST, None, target], start_tick=10)
    assert all(d.hold and d.code == ESTOP for d in after)
    assert "operator pressed the button" in after[0].reason
    filt.reset()
    assert not filt.estopped
    # resumes from where the arm measurably is, at rest: not from the last command
    measured = moving[-1].action
    d = filt.filter(target, measured, 0.0, 14 * P)
    assert d.action[0] - measured[0] == pytest.approx(filt.max_accel[0] * P * P)
    assert filt.stats()["estops"] == 1 and filt.stats()[ESTOP] == 4


def test_a_hold_resets_speed_and_a_long_pause_restarts_from_the_state():
    filt = make()
    target = REST.copy()
    target[0] = 1.0
    moving = run(filt, [target] * 10)
    assert filt.filter(None, REST, 0.0, 10 * P).hold
    d = filt.filter(target, REST, 0.0, 11 * P)  # the arm held: speed up from 0 again
    # two periods since the last command, from zero speed: a * (2 P)^2, not cruising speed
    assert d.action[0] - moving[-1].action[0] == pytest.approx(filt.max_accel[0] * (2 * P) ** 2)
    # a pause longer than 5 periods: restart from the measured state (here: REST)
    later = filt.filter(target, REST, 0.0, 30 * P)
    assert later.action[0] - REST[0] == pytest.approx(filt.max_accel[0] * P * P)


def test_a_repeated_tick_does_not_move():
    filt = make()
    target = REST + 0.3
    first = filt.filter(target, REST, 0.0, 0.0)
    again = filt.filter(target, REST, 0.0, 0.0)
    np.testing.assert_allclose(again.action, first.action)


def test_parameters_are_checked():
    with pytest.raises(ValueError, match="velocity_scale"):
        make(velocity_scale=1.5)
    with pytest.raises(ValueError, match="gripper_speed"):
        make(gripper_speed=1.0)
    with pytest.raises(ValueError, match="max_obs_age"):
        make(max_obs_age=0.0)
    with pytest.raises(ValueError, match="limits lack"):
        SafetyFilter({"joint1": PIPER_LIMITS["joint1"]})


# --- properties ------------------------------------------------------------------------------

value = st.floats(-10.0, 10.0)
poison = st.one_of(st.none(), st.none(), st.none(), st.none(),
                   st.tuples(st.integers(0, STATE_DIM - 1), st.sampled_from([math.nan, math.inf, -math.inf])))


@st.composite
def adversarial_command(draw):
    if draw(st.integers(0, 9)) == 0:
        return None
    values = np.array(draw(st.lists(value, min_size=STATE_DIM, max_size=STATE_DIM)))
    bad = draw(poison)
    if bad is not None:
        values[bad[0]] = bad[1]
    return values


# one step: command, ticks since the previous call, observation age, e-stop / reset events
step = st.tuples(adversarial_command(), st.sampled_from([1, 1, 1, 1, 2, 3, 8]), st.floats(0.0, 0.3),
                 st.sampled_from([None] * 18 + ["estop", "reset"]))


@settings(max_examples=200, deadline=None)
@given(st.lists(step, min_size=1, max_size=60), st.floats(0.05, 1.0), st.floats(0.5, 50.0))
def test_adversarial_streams_stay_in_limits_and_move_within_speed_and_accel(steps, scale, accel):
    filt = make(velocity_scale=scale, max_accel=accel, gripper_accel=accel / 10)
    tick, last, last_tick, velocity = 0, None, None, np.zeros(STATE_DIM)
    estopped = False
    for command, gap, age, event in steps:
        tick += gap
        if event == "estop":
            filt.estop()
            estopped, last = True, None
        elif event == "reset":
            filt.reset()
            estopped, last = False, None
        d = filt.filter(command, REST, age, tick * P)
        finite = command is not None and bool(np.isfinite(command).all())
        if estopped or not finite or age > filt.max_obs_age:
            assert d.hold
            velocity = np.zeros(STATE_DIM)
            continue
        action = d.action
        assert action.shape == (STATE_DIM,) and np.isfinite(action).all()
        assert (action >= filt.lower - EPS).all() and (action <= filt.upper + EPS).all()
        if last is not None and (tick - last_tick) <= 5:
            dt = min(tick - last_tick, 2) * P
            reference = last
        else:
            dt, reference, velocity = P, np.clip(REST, filt.lower, filt.upper), np.zeros(STATE_DIM)
        moved = action - reference
        assert (np.abs(moved) <= filt.max_speed * dt + EPS).all()
        new_velocity = moved / dt
        a = filt.max_accel * dt
        assert (new_velocity <= np.maximum(velocity, 0) + a + 1e-6).all()
        assert (new_velocity >= np.minimum(velocity, 0) - a - 1e-6).all()
        last, last_tick, velocity = action, tick, new_velocity


# --- scheduler -> filter -------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(["blend", "replace"]), st.integers(1, 6))
def test_scheduler_into_filter_gives_bounded_steps_for_any_chunks(seed, mode, latency):
    """Wild chunks (random targets far outside the limits, NaN now and then) through the real
    scheduler and the filter: every command sent is in limits and within one speed step."""
    rng = np.random.default_rng(seed)
    gate = threading.Semaphore(0)

    def wild(obs):  # the model boundary: answers when the test lets it
        assert gate.acquire(timeout=30.0)
        chunk = rng.uniform(-4.0, 4.0, (50, STATE_DIM)) * rng.uniform(0, 1) + rng.normal(0, 1, STATE_DIM)
        if rng.uniform() < 0.2:
            chunk[rng.integers(50), rng.integers(STATE_DIM)] = math.nan
        return chunk

    clock = ManualClock()
    sched = ChunkScheduler(wild, period=P, clock=clock, mode=mode, execute_steps=25, refill_at=15)
    filt = make()
    sched.start(0.0)
    try:
        state, sent, in_flight_since = REST.copy(), [], None
        for k in range(150):
            clock.set(k * P)
            if in_flight_since is not None and k - in_flight_since >= latency:
                gate.release()
                assert sched.wait_idle(30.0)  # the result is merged at this tick
                in_flight_since = None
            sched.observe({"tick": k}, k * P)
            decision = filt.filter(sched.tick(k * P), state, 0.0, k * P)
            if in_flight_since is None and sched.in_flight:
                in_flight_since = k
            if decision.action is not None:
                sent.append((k, decision.action))
                state = decision.action  # a perfect arm
        assert sched.stats().chunks > 0 and len(sent) > 50
    finally:
        gate.release()
        assert sched.stop(30.0)
    previous_tick, previous = -1, REST
    for k, action in sent:
        assert np.isfinite(action).all()
        assert (action >= filt.lower - EPS).all() and (action <= filt.upper + EPS).all()
        dt = min(k - previous_tick, 2) * P
        assert (np.abs(action - previous) <= filt.max_speed * dt + EPS).all()
        previous_tick, previous = k, action


def test_every_limited_joint_says_whether_speed_or_acceleration_limited_it():
    filt = make(velocity_scale=0.5, max_accel=10.0)
    target = REST.copy()
    target[7] = 2.0  # right joint1: a 2 rad jump, ramped up by acceleration, then cruising at the cap
    decisions = run(filt, [target] * 40)
    causes = [dict(zip(d.limited_joints, d.limit_causes)).get("right_joint1") for d in decisions]
    assert causes[0] == "accel"  # from rest the speed may only grow by a*dt per tick
    assert "speed" in causes and causes.index("speed") > 0  # then it cruises at the cap
    assert all(len(d.limit_causes) == len(d.limited_joints) for d in decisions)
    counts = filt.limit_counts()["right_joint1"]
    assert counts["accel"] == causes.count("accel") and counts["speed"] == causes.count("speed")


def test_limit_counts_name_clamps_by_joint():
    filt = make()
    wild = REST.copy()
    wild[GRIPPER_INDICES[1]] = 0.5
    run(filt, [wild] * 5)
    assert filt.limit_counts()["right_gripper"]["position"] == 5
    assert "left_joint1" not in filt.limit_counts()
