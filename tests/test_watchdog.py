"""The tracking watchdog (sf_policy/runtime/watchdog.py): unit rules, and in the twin an arm
driven into the table is stopped, naming the joint, while normal closed-loop driving never trips it."""

from __future__ import annotations

import numpy as np
import pytest

from sf_policy.embodiment import STATE_DIM
from sf_policy.runtime.watchdog import TrackingWatchdog

HOME = np.array([0.0, 0.6, -0.9, 0.0, 0.5, 0.0, 0.035] * 2)


def test_a_joint_away_from_its_command_for_too_long_trips_naming_it():
    dog = TrackingWatchdog(max_error=0.3, max_duration=0.5)
    command, measured = HOME.copy(), HOME.copy()
    command[8] += 0.5  # right_joint2 commanded 0.5 rad further than it is
    assert dog.update(command, measured, 0.0) is None
    assert dog.update(None, measured, 0.4) is None     # not long enough yet; the last command stands
    reason = dog.update(None, measured, 0.6)
    assert reason.startswith("tracking: right_joint2 stayed 0.50 rad from its command for 0.60 s")


def test_errors_that_come_and_go_or_grippers_never_trip():
    dog = TrackingWatchdog(max_error=0.3, max_duration=0.5)
    command = HOME.copy()
    for k in range(60):
        measured = HOME.copy()
        measured[1] += 0.4 if k % 10 < 5 else 0.0  # off for 5 ticks at a time: a transient
        measured[6] = 0.0                           # a gripper closed on an object: by design
        assert dog.update(command, measured, k / 30) is None


@pytest.mark.parametrize("measured", [None, "x", np.full(STATE_DIM, np.nan), np.zeros(5)])
def test_unusable_input_never_raises(measured):
    dog = TrackingWatchdog()
    assert dog.update(HOME, measured, 1.0) is None
    assert dog.update(np.full(STATE_DIM, np.inf), HOME, 2.0) is None


def test_reset_forgets_the_command():
    dog = TrackingWatchdog(max_error=0.3, max_duration=0.1)
    dog.update(HOME + 1.0, HOME, 0.0)
    dog.reset()
    assert dog.update(None, HOME, 5.0) is None


def test_an_arm_driven_into_the_table_is_stopped_in_the_twin():
    """The runtime (scheduler + safety filter + watchdog) drives the right shoulder down into the
    table: the arm stops against it, the watchdog latches the e-stop naming right_joint2 and
    nothing more is commanded. The workspace guard would hold the arm above the table first, so
    it is off here: the table stands for an obstacle no configuration knows about."""
    from sf_policy.eval.sim import run_episode
    from sf_policy.runtime.config import RuntimeConfig
    from sf_policy.eval.trace import EpisodeTrace
    from sf_policy.sim.twin import Twin

    def into_the_table(observation):
        chunk = np.repeat(np.asarray(observation["state"], np.float64)[None], 50, axis=0)
        chunk[:, 8] = np.minimum(observation["state"][8] + 0.05 * np.arange(1, 51), 2.6)
        return chunk

    twin = Twin("lift_pot", cameras=())
    trace = EpisodeTrace(seed=0)
    try:
        outcome = run_episode(twin, into_the_table, 0, latency_ticks=1, max_ticks=150, trace=trace,
                              runtime=RuntimeConfig.deployed(workspace_guard=False))
    finally:
        twin.close()
    assert outcome.estop.startswith("tracking: right_joint2 stayed"), outcome.estop
    commands = trace.arrays()["command"]
    stopped = int(np.flatnonzero(np.isnan(commands).all(axis=1))[-1])
    assert np.isnan(commands[-20:]).all()  # held from the trip on
    assert outcome.held_ticks > 20 and stopped == len(commands) - 1


def test_with_the_workspace_guard_the_same_plan_stops_above_the_table():
    from sf_policy.eval.sim import run_episode
    from sf_policy.sim.piper_mjcf import TABLE_TOP_Z
    from sf_policy.sim.twin import Twin

    def into_the_table(observation):
        chunk = np.repeat(np.asarray(observation["state"], np.float64)[None], 50, axis=0)
        chunk[:, 8] = np.minimum(observation["state"][8] + 0.05 * np.arange(1, 51), 2.6)
        return chunk

    twin = Twin("lift_pot", cameras=())
    try:
        outcome = run_episode(twin, into_the_table, 0, latency_ticks=1, max_ticks=150)
        lowest = min(twin.body_pos(f"right_link{i}")[2] for i in range(2, 7))
    finally:
        twin.close()
    assert outcome.estop == "" and outcome.held_ticks > 50  # held by the guard, never blocked
    assert lowest > TABLE_TOP_Z + 0.02


def test_the_safety_filter_runs_the_watchdog_and_latches_its_estop():
    """The watchdog belongs to the filter: the arm that does not follow the filter's own last
    command latches the e-stop; reset() clears both."""
    from sf_policy.runtime.safety import ESTOP, SafetyFilter

    f = SafetyFilter(watchdog=TrackingWatchdog(max_error=0.1, max_duration=0.2))
    stuck = HOME.copy()
    target = HOME.copy()
    target[1] += 1.0  # asks left_joint2 to move; the measured arm never does
    decisions = [f.filter(target, stuck, 0.0, k / 30) for k in range(40)]
    codes = [d.code for d in decisions]
    assert ESTOP in codes and all(c == ESTOP for c in codes[codes.index(ESTOP):])
    assert "tracking: left_joint2" in f.estop_reason
    f.reset()
    assert f.filter(HOME, HOME, 0.0, 2.0).action is not None  # the watchdog forgot the old command
