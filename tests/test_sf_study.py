"""bench/sf_study.py --quick: the SF study's plumbing end to end (slow tier, ≈ 4 min on 2 cores).

Records two small twin datasets with depth, builds the geometry and random-teacher caches,
trains every arm (baseline, SF with the geometry teacher, SF with the random teacher, the
adaptive layer) for 300 steps in two worker processes, evaluates them closed loop on the same
held-out scenes, probes their depth and writes the report. Success is not asserted (300 steps
of a from-scratch π0 do not lift a pot); what is: every arm ran with its own teacher, the
arms are paired scene by scene, and the figures exist.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_study_runs_every_arm_and_reports(tmp_path):
    report = tmp_path / "report"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "sf_study.py"), "--quick", "--work", str(tmp_path),
                           "--results-dir", str(tmp_path), "--report", str(report)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((tmp_path / "sf_study.json").read_text())
    assert data["mode"] == "quick" and data["plan"]["steps"] == 300
    assert set(data["arms"]) == {"baseline@3", "sf_geometry@3", "sf_random@3", "sf_geometry_adaptive@3",
                                 "baseline@2", "sf_geometry@2", "sf_random@2"}
    for name, arm in data["arms"].items():
        final = arm["curve"][-1]
        assert final["step"] == 300 and final["episodes"] == 3 and 0 <= final["success"] <= 1, name
        assert (arm["final_align_loss"][0] is None) == (arm["arm"] == "baseline"), name  # only SF arms align
    assert [p["step"] for p in data["arms"]["sf_geometry@3"]["curve"]] == [150, 300]
    # The geometry arm learnt its targets further than chance; the random teacher's are near-trivial to match.
    assert data["arms"]["sf_geometry@3"]["final_align_loss"][0] < 0.9
    compared = {(c["arm"], c["versus"], c["demos"], c["step"]) for c in data["paired"]}
    assert {("sf_geometry", "baseline", 3, 300), ("sf_geometry", "sf_random", 3, 150),
            ("sf_geometry_adaptive", "sf_geometry", 3, 300), ("sf_random", "baseline", 2, 300)} <= compared
    assert all(c["scenes"] == 3 for c in data["paired"])
    probe = data["depth_probe"]["checkpoints"]
    assert [r["arm"] for r in probe] == ["baseline", "sf_geometry", "sf_random", "sf_geometry_adaptive"]
    assert all(r["abs_rel"] is not None and r["abs_rel"] > 0 for r in probe)
    for figure in ("sf_study.md", "sf_study_steps.png", "sf_study_demos.png", "sf_study_depth_probe.png"):
        assert (report / figure).stat().st_size > 0, figure
    assert "Paired comparisons" in (report / "sf_study.md").read_text()
    # The geometry arm trained on the twin's geometry teacher, recorded with the dataset.
    train_config = (tmp_path / "quick" / "train" / "sf_geometry_d3_s0" / "train_config.yaml").read_text()
    assert "kind: geometry" in train_config
    assert len(list((tmp_path / "quick" / "dataset_3" / "geometry").glob("episode_*.safetensors"))) == 3
