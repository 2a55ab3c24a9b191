"""``sf demo``: the stack end to end on a machine with no robot.

``run_record`` (the README's main job): the twin with its scripted operator working the
recorder's pedal; the recorder node writes the episodes into a LeRobot v3 dataset, which
is then validated and summarized.
``run_twin``: the MuJoCo twin on the ROS graph with the task's scripted operator driving
the master arms; the monitor measures every stream and collects per-episode success.
``run_drivers``: the real driver graph (two Piper arm drivers on simulated CAN arms, three
camera drivers reading generated test videos through OpenCV), measured and exercised.
Everything stays on loopback.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import yaml

from ..bringup.plan import NodeSpec, driver_nodes, record_nodes, twin_nodes
from ..bringup.launcher import Launch
from ..bringup.env import ros_env
from ..topics import CAMERA_ROLES


def write_test_video(path: Path, width: int = 640, height: int = 480, fps: float = 30.0, seconds: float = 2.0,
                     hue: int = 0) -> None:
    """A moving-bar test pattern (MJPG in AVI: encodable and decodable everywhere)."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    for i in range(int(fps * seconds)):
        frame = np.full((height, width, 3), 40, np.uint8)
        x = int((i / (fps * seconds)) * width)
        frame[:, max(0, x - 10):x + 10] = (hue, 255 - hue, 200)
        cv2.putText(frame, f"{path.stem} {i:03d}", (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
        writer.write(frame)
    writer.release()


def demo_camera_config(out_dir: Path) -> Path:
    cameras = {}
    for k, role in enumerate(CAMERA_ROLES):
        video = out_dir / f"{role}.avi"
        write_test_video(video, hue=80 * k)
        cameras[role] = {"backend": "opencv", "device": str(video), "width": 640, "height": 480, "fps": 30,
                         "loop": True}
    path = out_dir / "cameras_demo.yaml"
    path.write_text(yaml.safe_dump({"cameras": cameras}, sort_keys=False))
    return path


def run_drivers(out_dir: Path, measure_s: float = 3.0, motion_s: float = 4.0, verbose: bool = False,
                echo=print) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    cam_config = demo_camera_config(out_dir)
    drivers = driver_nodes(sim=True, mode="follow", camera_config=str(cam_config))
    monitor = {"measure_s": measure_s, "motion_s": motion_s}
    return _run_with_monitor(drivers, monitor, out_dir, verbose, echo)


def run_twin(out_dir: Path, task: str = "lift_pot", episodes: int = 3, seed: int = 0, measure_s: float = 3.0,
             verbose: bool = False, echo=print) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    twin = twin_nodes(task, operator="scripted", seed=seed, episodes=episodes)
    monitor = {"measure_s": measure_s, "exercise": False, "episodes": episodes}
    return _run_with_monitor(twin, monitor, out_dir, verbose, echo)


def run_record(out_dir: Path, task: str = "lift_pot", episodes: int = 3, seed: int = 0, measure_s: float = 2.0,
               verbose: bool = False, echo=print, timeout_s: float = 900.0, bags: bool = False) -> dict:
    """Record ``episodes`` successful scripted episodes from the twin through ROS into a dataset
    (and, with ``bags``, each episode's raw topics as an MCAP bag under ``out_dir/bags``)."""
    from ..data.reader import DatasetReader
    from ..data.validate import validate

    out_dir.mkdir(parents=True, exist_ok=True)
    root = out_dir / "dataset"
    bag_root = out_dir / "bags"
    for earlier in (root, bag_root):  # the demo's own output from an earlier run
        if earlier.exists():
            shutil.rmtree(earlier)
    # The twin keeps running episodes (a failed one is discarded) until the recorder has
    # saved the requested number and exits (record_nodes plans it so).
    *twin, recorder = record_nodes(task, dataset_root=root, sim=True, episodes=episodes, seed=seed,
                                   bag_root=str(bag_root) if bags else "",
                                   exit_when_done=True)
    monitor = {"measure_s": measure_s, "exercise": False, "episodes": episodes}
    report = _run_with_monitor(twin, monitor, out_dir, verbose, echo, waiting_for=[recorder], timeout_s=timeout_s)
    problems = validate(root) if root.exists() else []
    saved = DatasetReader(root).num_episodes if root.exists() and not problems else 0
    report["dataset"] = {"root": str(root), "episodes": saved, "problems": [str(p) for p in problems]}
    if bags:
        report["bags"] = sorted(str(p) for p in bag_root.glob("*") if p.is_dir() or p.suffix == ".mcap")
        report["checks"][f"{episodes} episode bags"] = len(report["bags"]) == episodes
    report["checks"][f"{episodes} episodes in the dataset"] = saved == episodes
    report["checks"]["dataset valid (sf dataset validate)"] = root.exists() and not problems
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _run_with_monitor(graph_specs: list[NodeSpec], monitor_params: dict, out_dir: Path, verbose: bool,
                      echo, waiting_for: list[NodeSpec] = (), timeout_s: float = 900.0) -> dict:
    """Start the graph and the monitor; wait for the monitor (and ``waiting_for``) to exit."""
    report_path = out_dir / "report.json"
    report_path.unlink(missing_ok=True)
    monitor = NodeSpec("driver_monitor", "driver_monitor",
                       {"roles": "[" + ",".join(CAMERA_ROLES) + "]", "report": str(report_path), **monitor_params})
    log_lines: list[str] = []

    def keep(line: str) -> None:
        log_lines.append(line)
        if verbose:
            echo(line)

    env = ros_env(local=True)
    with Launch(graph_specs, env=env, echo=keep) as graph, Launch(list(waiting_for), env=env, echo=keep) as awaited, \
            Launch([monitor], env=env, echo=keep) as check:
        code = awaited.wait(duration=timeout_s) if waiting_for else 0
        check.wait(duration=timeout_s)
        failed = graph.dead()
        if waiting_for and code != 0:
            failed.update({spec.name: code for spec in waiting_for})
    (out_dir / "launch.log").write_text("\n".join(log_lines) + "\n")
    if not report_path.is_file():
        raise RuntimeError(f"the monitor wrote no report; see {out_dir / 'launch.log'}")
    report = json.loads(report_path.read_text())
    if failed:
        report.setdefault("checks", {})["no node died"] = False
        report["dead_nodes"] = failed
    return report
