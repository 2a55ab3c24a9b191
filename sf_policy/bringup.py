"""Which nodes a bringup starts, with which parameters: one plan, two runners.

``ros2 launch sf_bringup <x>.launch.py`` turns these specs into launch_ros Node actions;
``sf launch <x>`` (for machines without the ROS launch system, like the pip-only install)
runs the same specs as processes with ``--ros-args``. Keeping the plan here, as data, means
both runners start exactly the same graph and the plan is tested without ROS.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import topics
from .config import ConfigError, load_camera_config, load_robot_config, load_yaml
from .embodiment import SIDES

PACKAGE = "sf_nodes"


@dataclass(frozen=True)
class NodeSpec:
    executable: str
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)
    params_files: tuple[str, ...] = ()
    remappings: tuple[tuple[str, str], ...] = ()
    package: str = PACKAGE

    def ros_args(self) -> list[str]:
        """The same node as a command line: ``<executable> --ros-args ...``."""
        args = ["--ros-args", "-r", f"__node:={self.name}"]
        for path in self.params_files:
            args += ["--params-file", path]
        for key, value in self.parameters.items():
            args += ["-p", f"{key}:={_ros_value(value)}"]
        for src, dst in self.remappings:
            args += ["-r", f"{src}:={dst}"]
        return args


def _ros_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def bringup_share() -> Path:
    """sf_bringup's share directory: the colcon/ROS install if there is one, else this checkout."""
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        candidate = Path(prefix) / "share" / "sf_bringup"
        if (candidate / "config").is_dir():
            return candidate
    source = Path(__file__).resolve().parents[1] / "ros2_ws" / "src" / "sf_bringup"
    if (source / "config").is_dir():
        return source
    raise FileNotFoundError("cannot find sf_bringup's config: source your ROS workspace (install/setup.bash) "
                            "or run from a checkout of the repository")


def task_config(task: str, share: Path | None = None) -> dict[str, Any]:
    """config/tasks/<task>.yaml, with a clear error listing the known tasks."""
    tasks_dir = (share or bringup_share()) / "config" / "tasks"
    path = tasks_dir / f"{task}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in tasks_dir.glob("*.yaml"))
        raise ConfigError(path, "task", f"unknown task {task!r}; known tasks: {', '.join(known)}")
    data = load_yaml(path)
    if not isinstance(data.get("prompt"), str) or not data["prompt"].strip():
        raise ConfigError(path, "prompt", "a non-empty task prompt is required")
    return data


def driver_nodes(share: Path | None = None, *, sim: bool = False, mode: str = "follow",
                 robot_config: str | None = None, camera_config: str | None = None,
                 cameras: bool = True) -> list[NodeSpec]:
    """Arm drivers (one per CAN bus) and camera drivers (one per configured role).

    With ``sim`` the arms are simulated at the CAN level inside the driver processes (the
    drivers' own code runs; the whole robot in simulation is ``twin_nodes``); cameras then
    come only from an explicit ``camera_config`` (e.g. OpenCV reading video files).
    """
    share = share or bringup_share()
    config = share / "config"
    robot_path = robot_config or str(config / ("robot_sim.yaml" if sim else "robot.yaml"))
    robot = load_robot_config(robot_path)  # validate before anything starts
    specs = [NodeSpec("piper_arm_driver", topics.arm_node_name(side),
                      {"side": side, "robot_config": robot_path, "mode": mode, "simulate": sim},
                      params_files=(str(config / "arm_driver.yaml"),))
             for side in SIDES if side in robot.arms]
    cam_path = camera_config or (None if sim else str(config / "cameras.yaml"))
    if cameras and cam_path:
        for role in load_camera_config(cam_path):
            specs.append(NodeSpec("camera_driver", topics.camera_node_name(role),
                                  {"role": role, "camera_config": cam_path}))
    return specs


def twin_nodes(task: str = "lift_pot", *, operator: str = "scripted", seed: int = 0, episodes: int = 0,
               width: int = 224, height: int = 224, depth: bool = False, share: Path | None = None) -> list[NodeSpec]:
    """The MuJoCo twin in place of the arm and camera drivers (same topics)."""
    task_config(task, share)  # an unknown task fails here, listing the known ones
    return [NodeSpec("sim_node", "piper_twin", {"task": task, "operator": operator, "seed": seed,
                                                "episodes": episodes, "width": width, "height": height,
                                                "depth": depth})]
