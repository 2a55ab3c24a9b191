"""The consistency check (issue 13), scaled down for CI: a π0 fit to one scripted demonstration
must reproduce it closed loop from the same scene, through the same chain a robot runs
(recorded frames → normalisation and delta actions → flow sampling → chunk scheduler with
latency compensation and blending → safety filter → the twin). The full check and the
generalisation runs are ``bench/learn.py --quick`` and ``bench/learn.py`` (docs/results/learn.md).

The twin is deterministic per seed and so is training on this machine; the check asserts the
outcome a user would see (success), not a loss.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from sf_policy.eval.learn import CONSISTENCY_OVERRIDES, LearnSettings, run_learn

#: One demonstration, the `micro` size (56 px cameras), 1,200 steps (about 1.2 min here).
STEPS = 1200


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    work = tmp_path_factory.mktemp("learn")
    settings = LearnSettings(task="grasp_vegetable", demos=1, steps=STEPS, seen=True, overrides=CONSISTENCY_OVERRIDES,
                             noise_scale=0.0)
    return run_learn(settings, work, progress=False), work


@pytest.mark.slow  # the fixture trains and runs the twin: about 2.5 min here
def test_a_policy_fit_to_a_demonstration_reproduces_it_closed_loop(fitted):
    result, work = fitted
    assert result.mode == "seen" and result.eval_seeds == result.demo_seeds == [0]
    assert result.expert_success == 1.0 and result.oracle_success == 1.0  # the chain can do it
    assert result.successes == 1, f"the fitted policy failed its own scene: see {work / 'eval' / 'traces'}"
    report = (work / "eval" / "results.md").read_text()
    assert "(seen scenes: 1/1)" in report and "**Seen scenes**" in report
    assert json.loads((work / "result.json").read_text())["successes"] == 1


@pytest.mark.slow
def test_the_check_catches_a_broken_chain(fitted):
    """The same checkpoint with the delta actions mistaken for absolute targets (an action
    representation lost between training and deployment) fails the same scene."""
    from sf_policy.eval.sim import evaluate
    from sf_policy.runtime.inference import load_for_inference
    from sf_policy.runtime.scheduler import policy_infer

    result, _ = fitted
    policy = load_for_inference(result.checkpoint, device="cpu", noise_scale=0.0)
    policy.processor.config = type(policy.processor.config)(**{**policy.processor.config.to_dict(),
                                                              "camera_roles": tuple(policy.processor.config.camera_roles),
                                                              "representation": "absolute"})
    broken = evaluate(policy_infer(policy), "grasp_vegetable", 1, 0, label="broken", progress=False)
    assert broken.successes == 0
    assert np.isfinite(broken.summary()["limited_fraction"])


def test_a_rerun_reuses_the_trained_policy_and_its_evaluation_only_when_they_match(tmp_path):
    """bench/learn.py --report after a finished run re-evaluates nothing it already has; a
    changed config retrains and a changed evaluation re-evaluates."""
    from sf_policy.eval.learn import TRAIN_TIME_FILE, LearnResult, finished_run, _previous_result, train_minutes
    from sf_policy.train.checkpoint import TRAIN_CONFIG_FILE, step_dir
    from sf_policy.train.config import load_config

    run = tmp_path / "train" / "run"
    cfg = load_config("small", [f"data.root={tmp_path / 'dataset'}", "optim.steps=30"])
    assert not finished_run(run, cfg)  # nothing trained yet
    (step_dir(run, 30) / "policy").mkdir(parents=True)
    (run / TRAIN_CONFIG_FILE).write_text(cfg.to_yaml())
    cfg.log.every = 7  # logging is not the recipe
    assert finished_run(run, cfg)
    cfg.optim.lr *= 2
    assert not finished_run(run, cfg)

    (run / "metrics.jsonl").write_text("\n".join(json.dumps({"step": s, "step_s": 0.2}) for s in (10, 20, 30)))
    assert train_minutes(run) == pytest.approx(30 * 0.2 / 60)  # older runs: from the logged step times
    (run / TRAIN_TIME_FILE).write_text(json.dumps({"train_minutes": 1.5}))
    assert train_minutes(run) == 1.5

    settings = LearnSettings(steps=30, eval_episodes=2, checkpoint_every=10)
    final = step_dir(run, 30)
    result = LearnResult(task="grasp_vegetable", mode="held-out", demos=3, demo_seeds=[0, 1, 2], steps=30,
                         train_minutes=1.5, record_minutes=0.1, eval_seeds=[5000, 5001], success=0.5, successes=1,
                         episodes=2, ci95=[0.1, 0.9], limited_fraction=0.1, limits=None, expert_success=1.0,
                         oracle_success=1.0, oracle_limited_fraction=0.0, final_loss=0.1, heldout_joint_mae_rad=None,
                         checkpoint=str(final), by_step=[{"step": 10}, {"step": 20}, {"step": 30}])
    (tmp_path / "result.json").write_text(json.dumps(result.to_dict()))
    assert _previous_result(tmp_path, final, settings, [5000, 5001], [10, 20]) == result
    assert _previous_result(tmp_path, final, settings, [5000, 5001, 5002], [10, 20]) is None  # more scenes
    settings.noise_scale = 0.0
    assert _previous_result(tmp_path, final, settings, [5000, 5001], [10, 20]) is None  # other sampling


def test_the_report_rewrites_the_figures_and_keeps_the_analysis_under_them(tmp_path):
    import importlib.util
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location("bench_learn", bench / "learn.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(bench))
    task = {"demos": 3, "trained_on": 1, "steps": 30, "train_minutes": 1.5, "successes": 1, "episodes": 2,
            "success": 0.5, "ci95": [0.1, 0.9], "limited_fraction": 0.1, "expert_success": 1.0,
            "oracle_success": 1.0, "eval_seeds": [5000, 5001], "final_loss": 0.1, "heldout_joint_mae_rad": 0.02,
            "limits": None, "by_step": [{"step": 10, "success": 0.0, "ci95": [0.0, 0.8]},
                                        {"step": 30, "success": 0.5, "ci95": [0.1, 0.9]}]}
    data = {"mode": "full", "preset": "small", "overrides": ["align.alpha=0"], "tasks": {"grasp_vegetable": task},
            "machine": {"cpu": "test cpu", "cores": 2, "packages": {"torch": "x"}}, "time": "now"}
    module.write_report(data, tmp_path)
    first = (tmp_path / "learn.md").read_text()
    assert "| grasp_vegetable | 3 (1) | 30 | 2 min | 1/2 (50%) | 10%–90% |" in first
    assert (tmp_path / "learn_curve.png").stat().st_size > 0
    (tmp_path / "learn.md").write_text(first + f"\n{module.ANALYSIS}\n\n## Why\n\nwritten by hand\n")
    task["successes"], task["success"] = 2, 1.0
    module.write_report(data, tmp_path)
    second = (tmp_path / "learn.md").read_text()
    assert "2/2 (100%)" in second and "1/2 (50%)" not in second
    assert second.endswith(f"{module.ANALYSIS}\n\n## Why\n\nwritten by hand\n") and second.count("## Why") == 1
