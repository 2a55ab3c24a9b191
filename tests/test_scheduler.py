"""The chunk scheduler, deterministically: a manual clock and a model the test releases.

The model is a plain function at the model boundary: it records the observation it was
given and returns its chunk only when the test opens its gate, so "inference took N ticks"
is exact and no test depends on how fast this machine is.
"""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest

from sf_policy.embodiment import STATE_DIM
from sf_policy.runtime import ChunkScheduler, ManualClock, check_chunk, interpolate, substeps

PERIOD = 1.0 / 30.0
H = 50
WAIT = 30.0  # seconds a test waits for the worker before failing (never reached when it works)


def trajectory(ticks) -> np.ndarray:
    """A smooth reference: the target of every joint at absolute control tick t."""
    t = np.asarray(ticks, dtype=np.float64)[:, None]
    phase = np.arange(STATE_DIM) * 0.3
    return 0.2 * np.sin(0.05 * t + phase) + 0.01 * np.arange(STATE_DIM)


def on_trajectory(obs) -> np.ndarray:
    """A perfect model: its chunk is the reference from the observation's tick on."""
    return trajectory(obs["tick"] + np.arange(H))


class GatedModel:
    """``infer``: records each observation, then waits for the test to release it."""

    def __init__(self, make_chunk=on_trajectory):
        self.make_chunk = make_chunk
        self.calls: queue.Queue = queue.Queue()
        self.gate = threading.Semaphore(0)
        self.seen: list[dict] = []

    def __call__(self, obs):
        self.seen.append(obs)
        self.calls.put(obs)
        if not self.gate.acquire(timeout=WAIT):
            raise TimeoutError("the test never released the model")
        return self.make_chunk(obs)


class Rig:
    """A scheduler driven tick by tick. ``latency(n)``: ticks the n-th request (0-based) takes."""

    def __init__(self, make_chunk=on_trajectory, latency=3, **kwargs):
        self.clock = ManualClock()
        self.model = GatedModel(make_chunk)
        self.latency = latency if callable(latency) else (lambda n: latency)
        self.sched = ChunkScheduler(self.model, period=PERIOD, clock=self.clock, **kwargs)
        self.pending: dict | None = None
        self.requests = 0
        self.sched.start(0.0)

    def step(self, k: int, observe: bool = True, obs_age_ticks: int = 0):
        now = k * PERIOD
        self.clock.set(now)
        if self.pending is not None and k - self.pending["request_tick"] >= self.latency(self.requests - 1):
            self.model.gate.release()
            assert self.sched.wait_idle(WAIT)
            self.pending = None
        if observe:
            obs_tick = k - obs_age_ticks
            self.sched.observe({"tick": obs_tick}, stamp=obs_tick * PERIOD)
        action = self.sched.tick(now)
        if self.pending is None and self.sched.in_flight:
            self.pending = dict(self.model.calls.get(timeout=WAIT), request_tick=k)
            self.requests += 1
        return action

    def run(self, ticks, start: int = 0, **kwargs) -> list:
        return [self.step(k, **kwargs) for k in range(start, start + ticks)]

    def close(self):
        if self.pending is not None:
            self.model.gate.release()
        assert self.sched.stop()


@pytest.fixture
def rigs():
    made = []

    def make(*args, **kwargs) -> Rig:
        made.append(Rig(*args, **kwargs))
        return made[-1]

    yield make
    for rig in made:
        rig.close()


@pytest.mark.parametrize("mode", ["blend", "replace", "rtc"])
@pytest.mark.parametrize("latency", [1, 3, 10, 12])
def test_latency_below_refill_never_starves_and_follows_the_plan_exactly(rigs, latency, mode):
    rig = rigs(latency=latency, execute_steps=25, refill_at=15, mode=mode)
    actions = rig.run(300)
    first = latency  # the first chunk lands `latency` ticks after the first request (tick 0)
    assert all(a is None for a in actions[:first])
    executed = np.array(actions[first:])  # a None here would make this an object array
    assert executed.shape == (300 - first, STATE_DIM)
    # elapsed steps skipped exactly: every command is the reference at its own tick
    np.testing.assert_allclose(executed, trajectory(np.arange(first, 300)), atol=1e-12)
    stats = rig.sched.stats()
    assert stats.starved == 0 and stats.waiting == first
    assert stats.errors == 0 and stats.late_chunks == 0
    assert stats.chunks >= 300 // 25  # replanned all along, not once
    assert stats.last_skip == latency
    assert stats.latency_p50_s == pytest.approx(latency * PERIOD)
    assert stats.latency_p99_s == pytest.approx(latency * PERIOD)


@pytest.mark.parametrize("latency", [13, 20])
def test_latency_beyond_the_bound_starves_and_counts_it(rigs, latency):
    # the bound (docs/runtime.md): latency < refill_at and 2 * latency < execute_steps
    rig = rigs(latency=latency, execute_steps=25, refill_at=15)
    actions = rig.run(200)
    stats = rig.sched.stats()
    assert stats.starved > 0
    assert stats.starved == sum(a is None for a in actions[latency:])
    assert stats.waiting == latency


def test_elapsed_steps_are_skipped_exactly(rigs):
    rig = rigs(latency=7, execute_steps=40, refill_at=5)
    actions = rig.run(8, obs_age_ticks=2)  # the observation was taken 2 ticks before the request
    assert all(a is None for a in actions[:7])
    stats = rig.sched.stats()
    # the chunk was computed from tick -2 and landed at tick 7: steps 0..8 are in the past
    assert stats.last_skip == 9 and stats.skipped_steps == 9
    np.testing.assert_allclose(actions[7], trajectory([7])[0], atol=1e-12)
    assert stats.chunk_age_ticks == 9


def test_only_execute_steps_of_a_chunk_run_then_the_node_holds(rigs):
    rig = rigs(latency=lambda n: 2 if n == 0 else 10_000, execute_steps=20, refill_at=5)
    actions = rig.run(40)
    got = [k for k, a in enumerate(actions) if a is not None]
    assert got == list(range(2, 20))  # steps 2..19 of the one chunk; 0 and 1 elapsed
    stats = rig.sched.stats()
    assert stats.starved == 20 and stats.remaining == 0


def test_chunk_arriving_after_its_horizon_is_dropped(rigs):
    rig = rigs(latency=lambda n: 30 if n == 0 else 2, execute_steps=25, refill_at=10)
    actions = rig.run(40)
    stats = rig.sched.stats()
    assert stats.late_chunks == 1
    # the late chunk gave nothing; the second request (tick 30) lands at tick 32
    assert [k for k, a in enumerate(actions) if a is not None][0] == 32


def offset_chunks(gap: float, slope: float):
    """Chunks that disagree: a ramp of `slope` per tick, offset by `gap` on every other request."""
    count = {"n": 0}

    def make(obs):
        offset = gap * (count["n"] % 2)
        count["n"] += 1
        ticks = obs["tick"] + np.arange(H, dtype=np.float64)
        return np.repeat((offset + slope * ticks)[:, None], STATE_DIM, axis=1)

    return make


def max_jump(actions) -> float:
    executed = np.array([a for a in actions if a is not None])
    return float(np.abs(np.diff(executed, axis=0)).max())


def test_blending_is_continuous_where_replace_jumps(rigs):
    gap, slope, width = 0.2, 0.005, 10
    blend = rigs(offset_chunks(gap, slope), latency=3, mode="blend", blend_steps=width)
    replace = rigs(offset_chunks(gap, slope), latency=3, mode="replace")
    blended, replaced = blend.run(200), replace.run(200)
    assert blend.sched.stats().chunks > 5 and blend.sched.stats().starved == 0
    # replace: the full disagreement at every switch
    assert max_jump(replaced) == pytest.approx(gap + slope, rel=1e-9)
    # blend: the chunks' own step plus at most 1/(width+1) of their disagreement per tick
    assert max_jump(blended) <= slope + gap / (width + 1) + 1e-12


def inpainting(make_chunk):
    """What real-time chunking asks of a model: its own chunk, pulled onto the prefix it was
    given with the soft mask (an exact inpainter; the sampler approximates this)."""
    from sf_policy.model.rtc import prefix_weights

    def make(obs):
        own = make_chunk(obs)
        prefix = obs.get("prefix_actions")
        if prefix is None:
            return own
        w = prefix_weights(len(own), obs["inference_delay"], len(prefix))[:len(prefix), None]
        own[:len(prefix)] = w * prefix + (1 - w) * own[:len(prefix)]
        return own

    return make


def test_rtc_requests_carry_the_plan_and_the_expected_delay(rigs):
    rig = rigs(latency=4, mode="rtc", refill_at=15)
    executed = rig.run(120)
    seen = rig.model.seen
    assert "prefix_actions" not in seen[0]  # nothing planned yet: the first chunk is free
    guided = [obs for obs in seen[1:] if "prefix_actions" in obs]
    assert len(guided) == len(seen) - 1 >= 5 and rig.sched.stats().guided == len(guided)
    for obs in guided:
        # the plan from the observation's tick on: what the ticks after it execute
        np.testing.assert_allclose(obs["prefix_actions"], trajectory(obs["tick"] + np.arange(len(obs["prefix_actions"]))))
        # the observation is fresh (0 ticks old); the p90 latency is 4 ticks (ManualClock: 4 periods)
        assert obs["inference_delay"] == 4
    np.testing.assert_allclose(np.array([a for a in executed if a is not None])[-1], trajectory([119])[0])


def test_rtc_joins_disagreeing_chunks_where_replace_jumps(rigs):
    gap, slope = 0.2, 0.005
    rtc = rigs(inpainting(offset_chunks(gap, slope)), latency=3, mode="rtc")
    replace = rigs(offset_chunks(gap, slope), latency=3, mode="replace")
    joined, replaced = rtc.run(200), replace.run(200)
    assert rtc.sched.stats().chunks > 5 and rtc.sched.stats().starved == 0
    assert max_jump(replaced) == pytest.approx(gap + slope, rel=1e-9)
    assert replace.sched.stats().disagreement_max == pytest.approx(gap, rel=1e-9)  # what each switch faced
    # the switch lands inside the hard-masked delay: the new chunk equals the plan there, and its
    # soft tail moves at most gap * (the largest weight step) per tick
    assert max_jump(joined) < slope + 0.35 * gap


def test_blend_from_the_held_command_after_starvation(rigs):
    gap, slope, width = 0.2, 0.0, 4
    # the first chunk runs out at tick 40; the second, asked for at tick 37, lands at 47
    rig = rigs(offset_chunks(gap, slope), latency=lambda n: 2 if n == 0 else 10, execute_steps=40,
               refill_at=3, blend_steps=width)
    actions = rig.run(60)
    executed = [a for a in actions if a is not None]
    assert rig.sched.stats().starved == 7
    # the second chunk (offset gap) starts from where the arm was held, not with a jump
    assert max_jump(executed) <= gap / (width + 1) + 1e-12
    np.testing.assert_allclose(executed[-1], gap)


def test_infer_exception_is_counted_reported_and_not_fatal(rigs):
    calls = {"n": 0}

    def flaky(obs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        if calls["n"] == 3:
            chunk = on_trajectory(obs)
            chunk[4, 3] = np.nan
            return chunk
        return on_trajectory(obs)

    rig = rigs(flaky, latency=2, execute_steps=25, refill_at=15)
    actions = rig.run(120)
    stats = rig.sched.stats()
    assert stats.errors == 2
    assert "non-finite" in stats.last_error
    assert rig.sched.running and stats.chunks >= 5
    # no NaN ever reached a command, and commands kept coming after the errors
    executed = np.array([a for a in actions if a is not None])
    assert np.isfinite(executed).all()
    assert actions[-1] is not None


def test_wrong_shapes_are_errors_not_commands(rigs):
    rig = rigs(lambda obs: np.zeros((H, 7)), latency=1)
    actions = rig.run(10)
    assert all(a is None for a in actions)
    stats = rig.sched.stats()
    assert stats.errors >= 1 and "shape" in stats.last_error


def test_check_chunk():
    assert check_chunk(np.zeros((1, H, STATE_DIM))).shape == (H, STATE_DIM)
    with pytest.raises(ValueError, match="non-finite values at 1 entries .first at step 3"):
        bad = np.zeros((H, STATE_DIM))
        bad[3, 0] = np.inf
        check_chunk(bad)
    with pytest.raises(ValueError, match="not numeric"):
        check_chunk([["a"] * STATE_DIM])


def test_no_new_observation_no_new_request(rigs):
    rig = rigs(latency=1, execute_steps=25, refill_at=15)
    rig.step(0)
    rig.run(60, start=1, observe=False)  # the camera stalled after tick 0
    assert rig.sched.stats().requests == 1
    assert rig.sched.stats().starved > 0


def test_stop_joins_the_worker_and_a_restart_works():
    clock = ManualClock()
    model = GatedModel()
    sched = ChunkScheduler(model, period=PERIOD, clock=clock, name="sched-under-test")
    with pytest.raises(RuntimeError, match="start"):
        sched.tick(0.0)
    sched.start(0.0)
    with pytest.raises(RuntimeError, match="already running"):
        sched.start(0.0)
    worker = next(t for t in threading.enumerate() if t.name == "sched-under-test")
    sched.observe({"tick": 0}, 0.0)
    sched.tick(0.0)
    model.calls.get(timeout=WAIT)
    model.gate.release()  # let the inference finish: stop() can join at once
    assert sched.stop(timeout=WAIT)
    assert not worker.is_alive() and not sched.running
    # a result of the stopped run never leaks into the next one
    sched.start(10.0)
    assert sched.tick(10.0) is None
    sched.observe({"tick": 0}, 10.0)
    sched.tick(10.0)
    model.calls.get(timeout=WAIT)
    model.gate.release()
    assert sched.wait_idle(WAIT)
    np.testing.assert_allclose(sched.tick(10.0 + PERIOD), trajectory([1])[0])
    assert sched.stop(timeout=WAIT)


def test_stop_while_inference_hangs_returns_and_the_worker_ends_later():
    model = GatedModel()
    sched = ChunkScheduler(model, period=PERIOD, clock=ManualClock(), name="sched-hung")
    sched.start(0.0)
    worker = next(t for t in threading.enumerate() if t.name == "sched-hung")
    sched.observe({"tick": 0}, 0.0)
    sched.tick(0.0)
    model.calls.get(timeout=WAIT)
    assert sched.stop(timeout=0.0) is False  # still inside infer(); does not block the caller
    assert worker.daemon
    model.gate.release()
    worker.join(WAIT)
    assert not worker.is_alive()


def test_reset_drops_the_plan_and_the_result_in_flight(rigs):
    rig = rigs(latency=2, execute_steps=25, refill_at=15)
    rig.run(12)
    assert rig.sched.stats().in_flight
    rig.sched.reset()
    rig.model.gate.release()
    assert rig.sched.wait_idle(WAIT)
    rig.pending = None
    assert rig.sched.tick(12 * PERIOD) is None  # neither the old plan nor the old result
    assert rig.sched.stats().chunks == 1


def test_planned_is_what_the_next_ticks_will_execute(rigs):
    rig = rigs(latency=1, execute_steps=25, refill_at=15)
    rig.run(5)
    start, rows = rig.sched.planned()
    assert start == pytest.approx(5 * PERIOD)
    assert len(rows) == rig.sched.stats().remaining
    nxt = rig.step(5)
    np.testing.assert_allclose(nxt, rows[0])


def test_clock_going_back_drops_the_plan(rigs):
    rig = rigs(latency=1)
    rig.run(10)
    assert rig.sched.tick(3 * PERIOD) is None


def test_parameters_are_checked():
    with pytest.raises(ValueError, match="mode"):
        ChunkScheduler(on_trajectory, mode="inpaint")
    with pytest.raises(ValueError, match="refill_at"):
        ChunkScheduler(on_trajectory, execute_steps=10, refill_at=11)
    with pytest.raises(ValueError, match="period"):
        ChunkScheduler(on_trajectory, period=0.0)


def test_interpolation_substeps_reach_the_next_command():
    prev, nxt = np.zeros(STATE_DIM), np.full(STATE_DIM, 0.3)
    np.testing.assert_allclose(interpolate(prev, nxt, 0.5), 0.15)
    steps = list(substeps(prev, nxt, 3))
    assert len(steps) == 3
    np.testing.assert_allclose([s[0] for s in steps], [0.1, 0.2, 0.3])
    np.testing.assert_allclose(list(substeps(None, nxt, 2))[0], nxt)
    with pytest.raises(ValueError):
        list(substeps(prev, nxt, 0))


def test_a_real_tiny_policy_drives_the_scheduler_and_the_filter(tmp_path):
    """policy_infer around a tiny real PI0 (transformers' class, random weights): chunks
    are [50, 14] absolute targets, merged and executed, and the filter passes them on."""
    import torch

    from sf_policy.data.features import ACTION, STATE
    from sf_policy.data.stats import vector_stats
    from sf_policy.model.actions import action_stats
    from sf_policy.model.policy import Policy, PolicyConfig
    from sf_policy.model.tokenizer import tiny_tokenizer
    from sf_policy.runtime import SafetyFilter, policy_infer

    rng = np.random.default_rng(0)
    states = np.cumsum(rng.normal(size=(300, STATE_DIM)) * 0.02, axis=0) + np.array([0.0, 0.5, -0.5, 0, 0.3, 0, 0] * 2)
    states[:, [6, 13]] = rng.uniform(0.0, 0.07, size=(300, 2))
    actions = np.roll(states, -3, axis=0)
    tiny_tokenizer(tmp_path)
    torch.manual_seed(0)
    config = PolicyConfig(tiny=True, tokenizer=str(tmp_path))
    policy = Policy.build(config, stats={STATE: vector_stats(states),
                                         ACTION: action_stats(actions, states, "delta", 50)})
    state = states[0]
    images = {"cam_high": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), "cam_left_wrist": None,
              "cam_right_wrist": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)}
    sched = ChunkScheduler(policy_infer(policy, num_steps=2), period=PERIOD, clock=ManualClock(),
                           execute_steps=10, refill_at=5)
    filt = SafetyFilter(period=PERIOD)
    sched.start(0.0)
    try:
        sent = []
        for k in range(8):  # requests at ticks 0 and 5 (two CPU inferences: this is the slow test)
            sched.observe({"images": images, "state": state, "prompt": "lift the pot"}, k * PERIOD)
            decision = filt.filter(sched.tick(k * PERIOD), state, 0.0, k * PERIOD)
            assert sched.wait_idle(WAIT)  # inference "takes" one tick: its chunk merges at the next
            if decision.action is not None:
                sent.append(decision.action)
        stats = sched.stats()
        assert stats.errors == 0, stats.last_error
        assert stats.chunks == 2 and stats.starved == 0 and stats.waiting == 1
        assert len(sent) == 7 and np.isfinite(sent).all()
    finally:
        assert sched.stop(WAIT)


@pytest.mark.parametrize("on_error", ["hold", "continue"])
def test_a_nan_chunk_stops_the_plan_at_once_unless_told_to_continue(rigs, on_error):
    calls = {"n": 0}

    def second_is_nan(obs):
        calls["n"] += 1
        chunk = on_trajectory(obs)
        if calls["n"] == 2:
            chunk[-1, 0] = np.nan  # far in the future, beyond execute_steps: still distrusted
        return chunk

    # replace: after a hold, blending would (rightly) fade from the held command; exactness is easier
    rig = rigs(second_is_nan, latency=2, execute_steps=25, refill_at=15, on_error=on_error, mode="replace")
    actions, error_tick = [], None
    for k in range(60):
        actions.append(rig.step(k))
        if error_tick is None and rig.sched.stats().errors:
            error_tick = k
    assert error_tick is not None and rig.sched.stats().errors == 1
    if on_error == "hold":
        assert actions[error_tick] is None  # the previous plan had steps left: not used
    else:
        np.testing.assert_allclose(actions[error_tick], trajectory([error_tick])[0], atol=1e-12)
    # either way the next observation is inferred at once and commands resume on the reference
    resumed = [k for k in range(error_tick, 60) if actions[k] is not None]
    assert resumed and resumed[0] <= error_tick + 3
    np.testing.assert_allclose(np.array(actions[resumed[0]:]), trajectory(np.arange(resumed[0], 60)), atol=1e-9)


def test_adaptive_horizon_executes_late_chunks_in_time_instead_of_dropping_them(rigs):
    """A model slower than the execution horizon (20 ticks vs 15): the fixed scheduler drops
    every chunk; the adaptive one executes each from its first un-elapsed step."""
    fixed = rigs(latency=20, execute_steps=15, refill_at=5)
    adaptive = rigs(latency=20, execute_steps=15, refill_at=5, adaptive=True, mode="replace")
    fixed_actions, adaptive_actions = fixed.run(200), adaptive.run(200)
    assert all(a is None for a in fixed_actions) and fixed.sched.stats().late_chunks > 0
    stats = adaptive.sched.stats()
    assert stats.late_chunks == 0 and stats.chunks >= 8
    assert stats.refill_at == 15  # ceil(20) + 2 = 22 ticks wanted, capped at execute_steps
    executed = [k for k, a in enumerate(adaptive_actions) if a is not None]
    assert len(executed) >= 0.6 * (200 - 20)
    # time-correct: the command at tick k is the reference at tick k, late or not
    np.testing.assert_allclose(np.array([adaptive_actions[k] for k in executed]), trajectory(executed), atol=1e-9)


@pytest.mark.parametrize("mode", ["blend", "replace"])
def test_adaptive_changes_nothing_while_the_model_is_on_time(rigs, mode):
    """The adaptive horizon is for a model slower than the horizon. With chunks landing well
    inside it (3 ticks of latency), the requests and where every command comes from (chunk,
    step) are the fixed scheduler's. Before, every chunk ran `latency` steps longer, so each
    request came 3 ticks later and the arm went deeper into each chunk (a fitted policy of
    the consistency check then missed its own grasp)."""
    runs = []
    for adaptive in (False, True):
        rig = rigs(latency=3, execute_steps=25, refill_at=15, mode=mode, adaptive=adaptive)
        sources = []
        for k in range(200):
            rig.step(k)
            info = rig.sched.last_tick_info
            sources.append((info.chunk, info.step))
        runs.append((sources, [obs["tick"] for obs in rig.model.seen]))
    assert runs[0] == runs[1]
    assert max(step for _, step in runs[1][0] if step is not None) < 25


def test_adaptive_refill_asks_earlier_for_a_slow_model(rigs):
    rig = rigs(latency=12, execute_steps=40, refill_at=5, adaptive=True)
    actions = rig.run(240)
    stats = rig.sched.stats()
    assert stats.refill_at == 14  # 12 ticks of latency + 2 ticks of margin
    assert stats.starved == 0 and stats.late_chunks == 0
    np.testing.assert_allclose(np.array(actions[12:]), trajectory(np.arange(12, 240)), atol=1e-12)


def test_scheduler_rejects_an_unknown_error_policy():
    with pytest.raises(ValueError, match="on_error must be one of hold, continue"):
        ChunkScheduler(on_trajectory, on_error="retry")


def test_tick_info_says_which_chunk_step_ran_and_where_merges_and_blends_were(rigs):
    rig = rigs(latency=3, execute_steps=25, refill_at=15, mode="blend", blend_steps=10)
    infos = []
    for k in range(60):
        rig.step(k)
        infos.append(rig.sched.last_tick_info)
    assert [i.tick for i in infos] == list(range(60))
    assert all(i.chunk is None for i in infos[:3])  # nothing before the first chunk
    first = infos[3]
    assert first.merged and first.skip == 3 and (first.chunk, first.step) == (1, 3) and first.blend == 1.0
    # each command is its chunk's step for its own tick: step = tick - the chunk's observation tick
    merges = [i for i in infos if i.merged]
    assert len(merges) >= 4 and all(m.skip == 3 for m in merges)
    second = merges[1]
    assert second.chunk == 2 and second.blend == pytest.approx(1 / 11)  # the cross-fade starts at 1/11
    after = infos[second.tick + 10]
    assert after.chunk in (2, 3) and after.blend == 1.0 or after.merged
    for i in infos[3:]:
        assert 0 <= i.step < 25 and i.chunk >= 1
