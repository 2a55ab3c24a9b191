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


def test_bench_arm_driver_runs_and_writes_results(tmp_path):
    """Not a timing test: the benchmark script must keep working and write its figures."""
    import json
    import os
    import sys

    env = {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    result = subprocess.run([sys.executable, "bench/arm_driver.py", "--seconds", "1", "--results-dir", str(tmp_path)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads((tmp_path / "arm_driver.json").read_text())
    assert set(data["arms"]) == {"left", "right"} and data["machine"]["cores"] >= 1
