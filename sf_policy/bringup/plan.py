"""Which nodes a bringup starts, with which parameters: one plan, two runners.

``ros2 launch sf_bringup <x>.launch.py`` turns these specs into launch_ros Node actions;
``sf launch <x>`` (for machines without the ROS launch system, like the pip-only install)
runs the same specs as processes with ``--ros-args``. Keeping the plan here, as data, means
both runners start exactly the same graph and the plan is tested without ROS.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import topics
from ..config import ConfigError, load_camera_config, load_robot_config, load_yaml
from ..embodiment import SIDES

PACKAGE = "sf_nodes"


@dataclass(frozen=True)
class NodeSpec:
    executable: str
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)
    params_files: tuple[str, ...] = ()
    remappings: tuple[tuple[str, str], ...] = ()
    package: str = PACKAGE
    prefix: str = ""  # a command the node runs inside, e.g. "xterm -e" for a node that reads keys

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
    if value == "":
        return "''"  # rcl cannot parse "-p name:=" (empty); a YAML empty string it can
    return str(value)


def bringup_share() -> Path:
    """sf_bringup's share directory: the colcon/ROS install if there is one, else this checkout."""
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        candidate = Path(prefix) / "share" / "sf_bringup"
        if (candidate / "config").is_dir():
            return candidate
    source = Path(__file__).resolve().parents[2] / "ros2_ws" / "src" / "sf_bringup"
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


def task_prompt(task: str, scene: dict[str, Any] | None = None, share: Path | None = None) -> str:
    """The instruction for ``task``, from config/tasks/<task>.yaml, the one place prompts live.

    ``scene``: in the twin, the scene's variant (its ``info``): a task whose scenes differ in
    what the instruction must name (grasp_vegetable: which of three vegetables) has a
    ``sim_prompt`` template filled from it; the twin publishes each scene's prompt on
    ``topics.PROMPT``, which the policy node follows, so training and deployment in the twin
    see the same text. Every other task, in the twin and on the robot: ``prompt``."""
    config = task_config(task, share)
    template = config.get("sim_prompt") if scene is not None else None
    if not template:
        return config["prompt"]
    try:
        return str(template).format(**scene)
    except (KeyError, IndexError, ValueError) as error:
        raise ConfigError((share or bringup_share()) / "config" / "tasks" / f"{task}.yaml", "sim_prompt",
                          f"cannot be filled from the scene {sorted(scene)}: {error}") from None


LINKS = ("hardware", "software")


def robot_config_path(share: Path, sim: bool = False, robot_config: str | None = None) -> str:
    """The robot YAML the drivers and the policy node read (its arms and joint limits): the
    given one, else the package's config/robot.yaml (robot_sim.yaml for simulated CAN arms)."""
    return robot_config or str(share / "config" / ("robot_sim.yaml" if sim else "robot.yaml"))


def driver_nodes(share: Path | None = None, *, sim: bool = False, mode: str = "follow",
                 robot_config: str | None = None, camera_config: str | None = None,
                 cameras: bool = True, link: str = "hardware", master_config: str | None = None) -> list[NodeSpec]:
    """Arm drivers (one per CAN bus) and camera drivers (one per configured role).

    With ``sim`` the arms are simulated at the CAN level inside the driver processes (the
    drivers' own code runs; the whole robot in simulation is ``twin_nodes``); cameras then
    come only from an explicit ``camera_config`` (e.g. OpenCV reading video files).

    ``link`` picks the master-puppet link for ``mode="teleop"``: ``hardware`` (each master
    shares its puppet's bus and the puppet follows it in hardware) or ``software`` (each
    master on a bus of its own, from ``master_config``, default ``config/masters[_sim].yaml``;
    a driver in ``master`` mode reads it, the puppets' drivers run in follow mode, and the
    ``teleop_link`` node commands them).
    """
    if link not in LINKS:
        raise ValueError(f"link must be one of {', '.join(LINKS)}, got {link!r}")
    if link == "software" and mode != "teleop":
        raise ValueError(f"link 'software' is for teleoperation (mode 'teleop'); in mode {mode!r} the puppets "
                         "take their commands from elsewhere (a policy), and the link would fight it")
    share = share or bringup_share()
    config = share / "config"
    robot_path = robot_config_path(share, sim, robot_config)
    robot = load_robot_config(robot_path)  # validate before anything starts
    sides = [side for side in SIDES if side in robot.arms]
    puppet_mode = "follow" if link == "software" else mode
    specs = [NodeSpec("piper_arm_driver", topics.arm_node_name(side),
                      {"side": side, "robot_config": robot_path, "mode": puppet_mode, "simulate": sim},
                      params_files=(str(config / "arm_driver.yaml"),))
             for side in sides]
    if link == "software":
        specs += _software_link_nodes(config, robot, sides, sim, master_config)
    cam_path = camera_config or (None if sim else str(config / "cameras.yaml"))
    if cameras and cam_path:
        for role in load_camera_config(cam_path):
            specs.append(NodeSpec("camera_driver", topics.camera_node_name(role),
                                  {"role": role, "camera_config": cam_path}))
    return specs


def _software_link_nodes(config: Path, robot, sides: list[str], sim: bool,
                         master_config: str | None) -> list[NodeSpec]:
    """A master-mode driver per master bus, and the link node between masters and puppets."""
    masters_path = master_config or str(config / ("masters_sim.yaml" if sim else "masters.yaml"))
    masters = load_robot_config(masters_path)
    for side in sides:
        if side not in masters.arms:
            raise ConfigError(masters_path, f"arms.{side}", "no master arm for this side; the software link "
                              f"needs one per puppet ({robot.path} has {', '.join(sides)})")
        master = masters.arms[side]
        if (master.bustype, master.can_port) in {(a.bustype, a.can_port) for a in robot.arms.values()}:
            raise ConfigError(masters_path, f"arms.{side}.can_port", f"{master.can_port!r} is a puppet's bus in "
                              f"{robot.path}; for the software link each master needs a bus of its own "
                              f"(else the puppet follows it in hardware)")
    specs = [NodeSpec("piper_arm_driver", f"{topics.arm_node_name(side)}_master",
                      {"side": side, "robot_config": masters_path, "mode": "master", "simulate": sim},
                      params_files=(str(config / "arm_driver.yaml"),))
             for side in sides]
    specs.append(NodeSpec("teleop_link", "teleop_link", {"sides": sides, "robot_config": str(robot.path)},
                          params_files=(str(config / "teleop_link.yaml"),)))
    return specs


def twin_nodes(task: str = "lift_pot", *, operator: str = "scripted", seed: int = 0, episodes: int = 0,
               width: int = 224, height: int = 224, depth: bool = False, recorder_control: bool = False,
               link: str = "hardware", share: Path | None = None) -> list[NodeSpec]:
    """The MuJoCo twin in place of the arm and camera drivers (same topics).

    ``recorder_control``: the scripted operator also starts, stops and discards the
    recorder's episodes, as a person with a foot pedal would. ``link``: the twin models the
    hardware master-puppet link itself; with ``software`` the puppets follow only commands
    and the ``teleop_link`` node provides them, as on the robot.
    """
    if link not in LINKS:
        raise ValueError(f"link must be one of {', '.join(LINKS)}, got {link!r}")
    share = share or bringup_share()
    task_config(task, share)  # an unknown task fails here, listing the known ones
    specs = [NodeSpec("sim_node", "piper_twin", {"task": task, "operator": operator, "seed": seed,
                                                 "episodes": episodes, "width": width, "height": height,
                                                 "depth": depth, "recorder_control": recorder_control,
                                                 "link": link})]
    if link == "software":
        specs.append(NodeSpec("teleop_link", "teleop_link", {},
                              params_files=(str(share / "config" / "teleop_link.yaml"),)))
    return specs


def default_dataset_root(task: str) -> Path:
    """Where recordings go unless told: one dataset per task, like LeRobot's local cache."""
    return Path(os.environ.get("SF_DATA_HOME", Path.home() / "sf_data")) / task


def recorder_node(dataset_root: str | Path, *, prompt: str = "", episodes: int = 0,
                  max_duration_s: float | None = None, bag_root: str = "", exit_when_done: bool = False,
                  share: Path | None = None) -> NodeSpec:
    params: dict[str, Any] = {"dataset_root": str(dataset_root), "task": prompt, "episodes": episodes,
                              "bag_root": bag_root, "exit_when_done": exit_when_done}
    if max_duration_s:
        params["max_duration_s"] = float(max_duration_s)
    config = (share or bringup_share()) / "config" / "recorder.yaml"
    return NodeSpec("recorder", topics.RECORDER_NODE, params, params_files=(str(config),))


#: Terminals that can host the key helper, tried in order by ``keys="auto"``.
KEY_TERMINALS = ("x-terminal-emulator -e", "gnome-terminal --wait --", "konsole -e", "xterm -e")


def key_terminal(keys: str) -> str | None:
    """The terminal command the key helper runs in: ``keys`` is ``auto`` (the first terminal found
    on a desktop; none on a headless machine), ``none``, or a command such as ``"xterm -e"``."""
    if keys == "none":
        return None
    if keys != "auto":
        return keys
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return None
    return next((t for t in KEY_TERMINALS if shutil.which(t.split()[0])), None)


def record_keys_node(terminal: str, keymap: str = "") -> NodeSpec:
    """The keyboard / foot-pedal helper (teleop/README.md), in a terminal window of its own:
    it reads keys from its terminal, which a launched process does not have."""
    return NodeSpec("record_keys", "record_keys", {"keymap": keymap}, prefix=terminal)


def record_nodes(task: str, *, dataset_root: str | Path | None = None, sim: bool = False, episodes: int = 0,
                 max_duration_s: float | None = None, seed: int = 0, bag_root: str = "",
                 robot_config: str | None = None, camera_config: str | None = None, width: int = 224,
                 height: int = 224, exit_when_done: bool | None = None, link: str = "hardware", keys: str = "auto",
                 keymap: str = "", share: Path | None = None) -> list[NodeSpec]:
    """Recording: the robot in teleop mode (or the twin with its scripted operator) + the recorder
    + on the robot the key helper (``keys``: see ``key_terminal``; the twin's operator needs none).

    ``link``: the master-puppet link (``driver_nodes``), on the twin the sim node's ``link``.
    ``exit_when_done`` (default: when ``episodes`` is set): the recorder exits after its episodes,
    and with it the graph (both runners stop when the recorder exits).
    """
    exit_when_done = bool(episodes) if exit_when_done is None else exit_when_done
    config = task_config(task, share)
    root = dataset_root or default_dataset_root(task)
    if sim:
        # The recorder counts saved episodes and an attempt can abort: a twin that played exactly
        # `episodes` attempts left the recorder waiting forever. It plays on until the recorder,
        # and with it the graph, is done.
        attempts = 0 if exit_when_done else episodes
        graph = twin_nodes(task, operator="scripted", seed=seed, episodes=attempts, width=width, height=height,
                           recorder_control=True, link=link, share=share)
    else:
        graph = driver_nodes(share, mode="teleop", robot_config=robot_config, link=link,
                             camera_config=camera_config or config.get("camera_config") or None)
    recorder = recorder_node(root, prompt=config["prompt"], episodes=episodes, max_duration_s=max_duration_s,
                             bag_root=bag_root, exit_when_done=exit_when_done, share=share)
    terminal = None if sim else key_terminal(keys)
    return [*graph, recorder, *([record_keys_node(terminal, keymap)] if terminal else [])]


def policy_node(task: str, *, checkpoint: str | None = None, remote: str = "", dry_run: bool = False,
                autostart: bool = True, robot_config: str | None = None, share: Path | None = None) -> NodeSpec:
    """The policy node for a task: config/policy.yaml (control and safety defaults), then the
    task's prompt, checkpoint and cameras; ``checkpoint``/``remote`` override the task's.
    ``robot_config``: the robot YAML whose joint limits its safety filter clamps to (the ones the
    drivers and the teleop link honour; none: the Piper's factory limits)."""
    from ..runtime.config import RuntimeConfig

    share = share or bringup_share()
    policy_yaml = share / "config" / "policy.yaml"
    RuntimeConfig.from_yaml(policy_yaml)  # a wrong setting is refused here, named, rather than by the node
    config = task_config(task, share)
    checkpoint = checkpoint or config.get("checkpoint") or ""
    if not checkpoint and not remote:
        raise ConfigError(share / "config" / "tasks" / f"{task}.yaml", "checkpoint",
                          "no trained checkpoint: set it here, or pass checkpoint:=<dir> or remote:=<server url>")
    params: dict[str, Any] = {"prompt": config["prompt"], "checkpoint": str(checkpoint), "remote": remote,
                              "dry_run": dry_run, "autostart": autostart}
    if config.get("cameras"):
        params["cameras"] = list(config["cameras"])
    if robot_config:
        params["robot_config"] = str(robot_config)
    return NodeSpec("policy_node", "policy", params, params_files=(str(policy_yaml),))


def policy_nodes(task: str, *, sim: bool = False, checkpoint: str | None = None, remote: str = "",
                 dry_run: bool = False, seed: int = 0, robot_config: str | None = None,
                 camera_config: str | None = None, share: Path | None = None) -> list[NodeSpec]:
    """Deployment: the drivers in follow mode (or the twin with no operator) + the policy node,
    whose safety filter clamps to the drivers' robot YAML limits (the twin's: the factory's, or
    ``robot_config`` when given)."""
    config = task_config(task, share)
    robot = robot_config if sim else robot_config_path(share or bringup_share(), robot_config=robot_config)
    node = policy_node(task, checkpoint=checkpoint, remote=remote, dry_run=dry_run, robot_config=robot, share=share)
    if sim:
        graph = twin_nodes(task, operator="none", seed=seed, share=share)
    else:
        graph = driver_nodes(share, mode="follow", robot_config=robot_config,
                             camera_config=camera_config or config.get("camera_config") or None)
    return [*graph, node]


def bag_player_node(bags: str | Path | list[str | Path], *, rate: float = 1.0, loop: bool = False,
                    topics: tuple[str, ...] = (), restamp: bool = True, start_paused: bool = False) -> NodeSpec:
    """The bag player (docs/eval_replay.md): recorded bags onto the live topics, in place of the
    drivers, so any other plan's nodes can run against a recording."""
    paths = [str(bags)] if isinstance(bags, (str, Path)) else [str(b) for b in bags]
    params: dict[str, Any] = {"bag": paths[0] if len(paths) == 1 else paths, "rate": float(rate), "loop": loop,
                              "restamp": restamp, "start_paused": start_paused}
    if topics:
        params["topics"] = list(topics)
    return NodeSpec("bag_player", "bag_player", params)
