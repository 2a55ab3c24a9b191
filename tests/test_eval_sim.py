"""Closed-loop evaluation in the twin: the deployed runtime on a simulated clock."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sf_policy.eval.sim import evaluate_checkpoints, run_episode, wilson_interval
from sf_policy.runtime.config import RuntimeConfig
from sf_policy.sim.experts import make_expert
from sf_policy.sim.twin import Twin

TASK, SEED = "grasp_vegetable", 1000


def test_wilson_interval_matches_the_formula_at_the_edges_and_inside():
    assert wilson_interval(0, 5) == pytest.approx((0.0, 0.4345), abs=1e-4)
    assert wilson_interval(5, 5) == pytest.approx((0.5655, 1.0), abs=1e-4)
    assert wilson_interval(3, 10) == pytest.approx((0.1078, 0.6032), abs=1e-4)
    low, high = wilson_interval(50, 100)
    assert low < 0.5 < high and high - low == pytest.approx(0.1923, abs=1e-3)


@pytest.fixture(scope="module")
def twin():
    twin = Twin(TASK, width=64, height=64)
    yield twin
    twin.close()


@pytest.fixture(scope="module")
def expert_demo(twin):
    """The scripted expert's states and master targets on the evaluation seed."""
    twin.reset(SEED)
    expert = make_expert(twin)
    states, actions = [], []
    while not twin.done() and not twin.success():
        states.append(twin.observe(images=False).state.copy())
        actions.append(np.asarray(expert.act(), float))
        twin.step(actions[-1])
    assert twin.success()
    actions += [actions[-1]] * 60  # the chunk past the end: stay
    return np.array(states), np.array(actions)


def oracle(expert_demo):
    """A perfect policy: the expert's targets from the tick whose state is nearest the observation."""
    states, actions = expert_demo

    def infer(sample):
        assert set(sample["images"]) == {"cam_high", "cam_left_wrist", "cam_right_wrist"}
        t = int(np.argmin(np.linalg.norm(states - sample["state"], axis=1)))
        return actions[t:t + 50]

    return infer


def test_a_perfect_policy_succeeds_through_the_scheduler_and_the_safety_filter(twin, expert_demo):
    outcome = run_episode(twin, oracle(expert_demo), SEED, latency_ticks=3)
    assert outcome.success and outcome.ticks < len(expert_demo[0]) + 15
    assert outcome.chunks >= outcome.ticks // 15  # replanned all along
    assert outcome.held_ticks == 3  # only while the first chunk was being "inferred"
    assert outcome.max_step_rad <= np.pi * 0.5 / 30 + 1e-9  # the filter's velocity limit held
    assert outcome.estop == ""  # a whole task, grasp included, never trips the tracking watchdog


@pytest.mark.parametrize("latency", [3, 6])
def test_latency_is_simulated_in_ticks_not_wall_time(twin, expert_demo, latency):
    outcome = run_episode(twin, oracle(expert_demo), SEED, latency_ticks=latency)
    assert outcome.held_ticks == latency and outcome.success


def test_a_broken_model_never_commands_and_fails(twin):
    def broken(sample):
        return np.full((50, 14), np.nan)

    outcome = run_episode(twin, broken, SEED, latency_ticks=2, runtime=RuntimeConfig.deployed())
    assert not outcome.success and outcome.held_ticks == outcome.ticks == twin.task.step_limit
    assert outcome.chunks == 0


def _tiny_checkpoint(path: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_policy_node import tiny_checkpoint

    return tiny_checkpoint(path)


def test_checkpoints_side_by_side_are_reproducible_and_reported(tmp_path):
    checkpoint = _tiny_checkpoint(tmp_path)
    quick = {"width": 64, "height": 64, "max_ticks": 45, "progress": False}  # 1.5 s of a random policy: enough
    first = evaluate_checkpoints([checkpoint], TASK, 1, SEED, out=tmp_path / "a", labels=["tiny"], expert=True,
                                 videos=True, **quick)
    again = evaluate_checkpoints([checkpoint], TASK, 1, SEED, out=tmp_path / "b", labels=["tiny"], expert=False,
                                 **quick)
    assert [r.label for r in first] == ["tiny", "scripted expert (direct)", "expert plan via runtime (oracle)"]
    assert first[1].successes == 1  # the reference rows: the expert solves its own scene,
    assert first[2].successes == 1  # and so does its plan through the scheduler and the filter
    assert first[0].episodes[0].ticks == again[0].episodes[0].ticks == 45
    assert first[0].episodes[0].max_step_rad == again[0].episodes[0].max_step_rad  # same noise, same episode
    data = json.loads((tmp_path / "a" / "results.json").read_text())
    assert data[0]["summary"]["episodes"] == 1 and data[0]["summary"]["ci95"][1] > 0.5
    table = (tmp_path / "a" / "results.md").read_text()
    assert "| tiny | grasp_vegetable | 0/1 |" in table or "| tiny | grasp_vegetable | 1/1 |" in table
    assert (tmp_path / "a" / "success.png").stat().st_size > 1000
    assert "## Where the safety filter limited the commands" in table
    assert (tmp_path / "a" / "traces" / f"tiny_seed{SEED}.png").is_file()
    assert data[0]["summary"]["limits"]["commanded_ticks"] > 0
    video = Path(first[0].episodes[0].video)
    assert video.is_file() and video.stat().st_size > 1000


def test_cli_names_the_bad_option(tmp_path):
    import os

    sf, env = Path(sys.executable).parent / "sf", {**os.environ, "COLUMNS": "400"}  # no wrapped error box
    bad_task = subprocess.run([str(sf), "eval", "sim", "-c", str(tmp_path), "--task", "juggle"],
                              capture_output=True, text=True, timeout=120, env=env)
    assert bad_task.returncode == 2 and "--task" in bad_task.stderr and "juggle" in bad_task.stderr
    missing = subprocess.run([str(sf), "eval", "sim", "-c", str(tmp_path / "nope"), "--episodes", "1"],
                             capture_output=True, text=True, timeout=120, env=env)
    assert missing.returncode == 2 and "nope does not exist" in missing.stderr


def test_paired_comparison_counts_discordant_scenes_and_tests_them():
    from sf_policy.eval.sim import EpisodeOutcome, SimEvalResult, paired, paired_text

    def result(label, successes):
        r = SimEvalResult(label=label, checkpoint=f"/{label}", task=TASK, latency_ticks=3)
        r.episodes = [EpisodeOutcome(seed=s, success=ok, ticks=10, chunks=1, held_ticks=0, limited_ticks=0,
                                     max_step_rad=0.0) for s, ok in enumerate(successes)]
        return r

    sf = result("sf", [True] * 8 + [False, True])
    base = result("base", [False] * 8 + [False, True])
    p = paired(sf, base)
    assert (p["only_a"], p["only_b"], p["both"], p["neither"]) == (8, 0, 1, 1)
    assert p["p_value"] == pytest.approx(2 / 2**8)  # 8 discordant scenes, all one way
    assert paired(sf, sf)["p_value"] == 1.0
    assert "only sf 8, only base 0" in paired_text([sf, base])


def test_the_expert_plan_is_an_oracle_through_the_runtime_and_is_traced(tmp_path):
    from sf_policy.eval.sim import ExpertPlan, evaluate, limits_table
    from sf_policy.eval.trace import EpisodeTrace, limit_shares

    plan = ExpertPlan()
    result = evaluate(plan, TASK, 2, SEED, label="oracle", trace_dir=tmp_path, plots=1, cameras=(), progress=False)
    assert result.successes == 2  # a perfect plan succeeds through scheduler + filter
    assert [e.estop for e in result.episodes] == ["", ""]  # nor the tracking watchdog
    limits = result.summary()["limits"]
    assert limits["commanded_ticks"] == sum(e.ticks - e.held_ticks for e in result.episodes)
    assert limits["any"] < 0.2  # the demonstrations mostly stay inside the filter's limits
    assert set(limits["by_cause"]) == {"position", "speed", "accel"}
    assert (tmp_path / f"oracle_seed{SEED}.png").is_file() and not (tmp_path / f"oracle_seed{SEED + 1}.png").exists()
    trace = EpisodeTrace.load(tmp_path / f"oracle_seed{SEED}.npz")
    assert len(trace.tick) == result.episodes[0].ticks
    assert limit_shares([trace])["commanded_ticks"] == result.episodes[0].ticks - result.episodes[0].held_ticks
    assert np.asarray(trace.merged).sum() == result.episodes[0].chunks
    # the last episode's plan is still in the oracle: every executed target is its step for that tick
    last = EpisodeTrace.load(tmp_path / f"oracle_seed{SEED + 1}.npz")
    ticks, steps = np.asarray(last.tick), np.asarray(last.step)
    commanded = steps >= 0
    np.testing.assert_allclose(np.asarray(last.target)[commanded],
                               plan.targets[np.minimum(ticks[commanded], len(plan.targets) - 1)], atol=1e-12)
    assert "oracle" in limits_table([result])


def test_a_jittery_policy_is_limited_by_acceleration_and_the_trace_says_so(twin, expert_demo):
    """The finding of issue 13: a chunk whose steps jitter around a good trajectory (an
    under-trained flow passing its noise through) is accel-limited on most ticks."""
    from sf_policy.eval.trace import EpisodeTrace, limit_shares

    rng = np.random.default_rng(0)
    smooth = oracle(expert_demo)

    def jittery(sample):
        chunk = smooth(sample).copy()
        chunk[:, 7:13] += rng.normal(0.0, 0.03, size=(len(chunk), 6))
        return chunk

    traces = {}
    for name, infer in (("smooth", smooth), ("jittery", jittery)):
        traces[name] = EpisodeTrace(seed=SEED)
        run_episode(twin, infer, SEED, latency_ticks=3, trace=traces[name], max_ticks=120)
    quiet, noisy = limit_shares([traces["smooth"]]), limit_shares([traces["jittery"]])
    assert quiet["by_cause"]["accel"] < 0.1
    assert noisy["by_cause"]["accel"] > 0.5 and noisy["by_cause"]["accel"] > 5 * quiet["by_cause"]["accel"]
    assert "right_joint2" in noisy["by_joint"]


def test_sim_cli_refuses_an_unknown_merge_mode(tmp_path):
    from typer.testing import CliRunner

    from sf_policy.cli.main import app

    result = CliRunner().invoke(app, ["eval", "sim", "-c", str(tmp_path), "--mode", "inpaint"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "--mode" in text and "'blend', 'replace', 'rtc'" in text, result.output


def test_sim_cli_runs_the_deployed_runtime_config_or_the_one_given(tmp_path, monkeypatch):
    """sf eval sim takes config/policy.yaml's settings (what policy.launch.py deploys), a file
    given with --runtime-config, and the command line's options over either; bad values are
    refused naming the file and setting or the option."""
    from typer.testing import CliRunner

    import sf_policy.eval.sim as sim
    from sf_policy.cli.main import app

    used = []
    monkeypatch.setattr(sim, "evaluate_checkpoints", lambda *a, runtime, **k: used.append(runtime) or [])
    assert CliRunner().invoke(app, ["eval", "sim", "-c", str(tmp_path), "--out", str(tmp_path / "o")]).exit_code == 0
    assert used[-1] == RuntimeConfig.deployed() and used[-1].adaptive_horizon and used[-1].on_error == "hold"
    custom = tmp_path / "policy.yaml"
    custom.write_text("policy:\n  ros__parameters:\n    mode: replace\n    adaptive_horizon: false\n")
    result = CliRunner().invoke(app, ["eval", "sim", "-c", str(tmp_path), "--out", str(tmp_path / "o"),
                                      "--runtime-config", str(custom), "--num-steps", "4"])
    assert result.exit_code == 0, result.output
    assert (used[-1].mode, used[-1].adaptive_horizon, used[-1].num_steps) == ("replace", False, 4)
    custom.write_text("policy:\n  ros__parameters:\n    velocity_scale: 3.0\n")
    result = CliRunner().invoke(app, ["eval", "sim", "-c", str(tmp_path), "--runtime-config", str(custom)])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "policy.ros__parameters.velocity_scale: must be in [0.01, 1]" in text, text
    result = CliRunner().invoke(app, ["eval", "sim", "-c", str(tmp_path), "--num-steps", "0"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "--num-steps" in text and "must be in [1, 100], got 0" in text, text
