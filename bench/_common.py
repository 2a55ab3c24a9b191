"""Helpers shared by the benchmarks: machine description and the results file."""

from __future__ import annotations

import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    versions = {}
    for dist in ("rclpy", "ros-kilted-rclpy", "piper-sdk", "python-can", "pyrealsense2", "torch"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "os": platform.platform(), "packages": versions}


def write_results(name: str, figures: dict, directory: Path | None = None) -> Path:
    directory = directory or RESULTS
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    payload = {"benchmark": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), **figures}
    path.write_text(json.dumps(payload, indent=2))
    return path
