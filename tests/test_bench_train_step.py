"""bench/train_step.py: the three variants run and report, and the full-size path builds.

Not a timing test: the benchmark must keep working and write finite, positive figures for the
baseline, SF with the cache and SF with the online teacher. The full π0 size cannot train on
a CPU; its model, teacher and aligner are built on the meta device to check their sizes.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "train_step.py"


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_train_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow  # 12 s: the default tier stays under 5 minutes
def test_tiny_run_writes_step_time_and_memory_of_the_three_variants(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--steps", "2", "--warmup", "1", "--batch-size", "2",
                             "--task", "grasp_vegetable", "--episodes", "1", "--every", "3", "--camera", "64x48",
                             "--results-dir", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sf_cache" in result.stdout and "written:" in result.stdout
    data = json.loads((tmp_path / "train_step.json").read_text())
    assert data["benchmark"] == "train_step" and data["preset"] == "tiny" and data["device"] == "cpu"
    assert set(data["variants"]) == {"baseline", "sf_cache", "sf_online"}
    for name, v in data["variants"].items():
        assert v["error"] is None, name
        assert v["step_ms"]["n"] == 2 and len(v["step_ms_all"]) == 3, name
        for figure in (v["step_ms"]["median"], v["step_ms"]["p90"], v["step_cpu_ms"]["median"], v["peak_rss_mib"],
                       v["ratio_to_baseline"], v["paired_ratio_to_baseline"], v["data_load_ms_per_batch"]):
            assert positive(figure), (name, v)
        assert math.isfinite(v["step_peak_rss_delta_mib"]), name
    variants = data["variants"]
    assert variants["sf_cache"]["trained_params"] > variants["baseline"]["trained_params"]  # + the projector
    assert positive(variants["sf_cache"]["targets_ms"]) and positive(variants["sf_online"]["targets_ms"])
    assert data["cache"]["frames"] > 0 and positive(data["cache"]["seconds"])
    # the verdict follows from the figures it was given (not a restated constant)
    ratio = variants["sf_cache"]["step_ms"]["median"] / variants["baseline"]["step_ms"]["median"]
    assert data["target"]["sf_cache_ratio"] == pytest.approx(ratio, rel=1e-6)
    assert data["target"]["met"] == (data["target"]["sf_cache_ratio"] <= data["target"]["max_ratio"])


def test_full_preset_is_pi0_and_vggt_at_their_real_size():
    from sf_policy.align.aligner import SpatialAligner
    from sf_policy.model.policy import PolicyConfig, unwrap
    from sf_policy.teacher.vggt import Aggregator
    from sf_policy.train.config import load_config

    bench = bench_module()
    model = bench.random_full_build_pi0("meta")(PolicyConfig())  # what the full workers build, on no memory
    params = sum(p.numel() for p in model.parameters())
    assert 3.4e9 < params < 3.6e9, params
    assert next(model.parameters()).device.type == "meta"
    assert not unwrap(model).model.vlm.language_model.norm.weight.requires_grad  # frozen like build_pi0 does
    aligner = SpatialAligner.for_model(model, load_config("pi0_sf").align)
    assert (aligner.projector.fc1.in_features, aligner.projector.fc2.out_features) == (2048, 2048)
    with torch.device("meta"):
        teacher = Aggregator(bench.full_aggregator_config())
    assert 0.9e9 < sum(p.numel() for p in teacher.parameters()) < 0.92e9


def test_full_preset_refuses_the_cpu(capsys):
    bench = bench_module()
    with pytest.raises(SystemExit):
        bench.parse_args(["--preset", "full", "--device", "cpu"])
    assert "CUDA GPU only" in capsys.readouterr().err
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the full preset would run")
    assert bench.main(["--preset", "full"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
