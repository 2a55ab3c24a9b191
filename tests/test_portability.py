"""The code must run on Python 3.10 (Humble), 3.11 and 3.12 (Jazzy): at least every source
file must compile on each interpreter this machine has."""

from __future__ import annotations

import glob
import subprocess

import pytest

from conftest import REPO

SOURCES = ["sf_policy", "ros2_ws/src", "tests", "bench"]


def find_python(version: str) -> str | None:
    """A real interpreter (pyenv's shims refuse versions that are not selected)."""
    candidates = [f"/usr/bin/python{version}", f"/usr/local/bin/python{version}",
                  *sorted(glob.glob(f"/root/.pyenv/versions/{version}.*/bin/python{version}"))]
    for path in candidates:
        try:
            if subprocess.run([path, "--version"], capture_output=True, timeout=10).returncode == 0:
                return path
        except OSError:
            continue
    return None


@pytest.mark.parametrize("version", ["3.10", "3.12"])
def test_sources_compile(version, tmp_path):
    python = find_python(version)
    if python is None:
        pytest.skip(f"no python{version} interpreter on this machine")
    result = subprocess.run([python, "-m", "compileall", "-q", "-d", str(tmp_path), *SOURCES], cwd=REPO,
                            capture_output=True, text=True, timeout=120,
                            env={"PYTHONPYCACHEPREFIX": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name, extra", [pytest.param("arm_driver", [], marks=pytest.mark.slow),  # 4 s
                                         pytest.param("camera_driver", ["--width", "160", "--height", "120"],
                                                      marks=pytest.mark.slow),  # 13 s
                                         ("sim", ["--seeds", "0"]), ("control", []),
                                         pytest.param("record", [], marks=pytest.mark.slow),  # 4 s
                                         ("inference", ["--repeats", "2", "--warmup", "1", "--steps", "2"]),
                                         pytest.param("upsample", ["--seeds", "0"], marks=pytest.mark.slow)])
def test_benchmarks_run_and_write_results(tmp_path, name, extra):
    """Not a timing test: the benchmark scripts must keep working and write their figures."""
    import json
    import os
    import sys

    env = {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    duration = [] if name == "upsample" else ["--seconds", "1"]  # upsample replays whole episodes
    result = subprocess.run([sys.executable, f"bench/{name}.py", *duration, "--results-dir", str(tmp_path),
                             *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads((tmp_path / f"{name}.json").read_text())
    assert data["benchmark"] == name and data["machine"]["cores"] >= 1
    if name == "arm_driver":
        assert set(data["arms"]) == {"left", "right"} and all(a["messages"] > 0 for a in data["arms"].values())
    elif name == "camera_driver":
        assert len(data["runs"]) == 4 and all(r["hz"] > 0 for r in data["runs"])
    elif name == "control":
        assert data["commands"] > 0 and data["rate_hz"] > 0 and "gaps" in data
    elif name == "inference":
        assert set(data["latency_ms"]) == {"transformers", "fast", "ours"}
        assert all(t["p50"] > 0 for t in data["latency_ms"].values())
        assert data["fast_vs_transformers_max_abs_diff"] < 1e-4
    elif name == "upsample":
        hold, spline = data["rows"]
        assert spline["jerk_rms_rad_s3"] < hold["jerk_rms_rad_s3"] and spline["success"] and hold["success"]
    elif name == "record":
        assert data["frames"] > 0 and set(data["cameras"]) == {"cam_high", "cam_left_wrist", "cam_right_wrist"}
    else:
        assert all(v > 0 for v in data["real_time_factor"].values())
