"""Shared by the launch files: turn sf_policy.bringup's NodeSpecs into launch_ros actions.

Kept beside the launch files (installed with them) so each launch file stays a few lines.
The plan itself lives in sf_policy.bringup, which `sf launch` runs without the ROS launch system.
"""

from __future__ import annotations

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

LIFECYCLE_EXECUTABLES = {"piper_arm_driver", "policy_node"}


def as_bool(text: str) -> bool:
    return str(text).lower() in ("1", "true", "yes", "on")


def to_actions(specs):
    actions = []
    for spec in specs:
        kind = LifecycleNode if spec.executable in LIFECYCLE_EXECUTABLES else Node
        extra = {"namespace": ""} if kind is LifecycleNode else {}
        if spec.prefix:
            extra["prefix"] = spec.prefix
        actions.append(kind(package=spec.package, executable=spec.executable, name=spec.name, output="screen",
                            parameters=[*spec.params_files, spec.parameters], remappings=list(spec.remappings),
                            **extra))
    return actions


def arguments(*names_defaults_help):
    return [DeclareLaunchArgument(n, default_value=d, description=h) for n, d, h in names_defaults_help]


def opaque(build):
    """Evaluate the launch arguments, then let `build(args: dict)` return the actions."""

    def _setup(context, *_):
        args = {k: LaunchConfiguration(k).perform(context) for k in context.launch_configurations}
        return build(args)

    return OpaqueFunction(function=_setup)


def drivers_launch(mode: str | None, with_task: bool) -> LaunchDescription:
    """Arm and camera drivers; `mode=None` makes the mode a launch argument."""
    from sf_policy.bringup import driver_nodes, task_config, twin_nodes

    args = [("sim", "false", "the MuJoCo twin instead of the robot (same topics)"),
            ("operator", "scripted" if mode == "teleop" else "none",
             "sim only: scripted (the task's expert teleoperates) or none"),
            ("seed", "0", "sim only: first episode's seed"),
            ("robot_config", "", "robot YAML (default: config/robot.yaml)"),
            ("camera_config", "", "cameras YAML (default: the task's, else config/cameras.yaml)")]
    if with_task:
        args.insert(0, ("task", "lift_pot", "task name: config/tasks/<task>.yaml"))
    if mode is None:
        args.append(("mode", "follow", "follow: execute joint commands; teleop: read only"))

    def build(a):
        task = task_config(a["task"]) if with_task else {}  # an unknown task fails here, listing known ones
        if as_bool(a["sim"]):
            return to_actions(twin_nodes(a.get("task", "lift_pot"), operator=a["operator"], seed=int(a["seed"])))
        return to_actions(driver_nodes(mode=mode or a["mode"],
                                       robot_config=a["robot_config"] or None,
                                       camera_config=a["camera_config"] or task.get("camera_config") or None))

    return LaunchDescription([*arguments(*args), *large_data_env(), opaque(build)])


def large_data_env():
    """Whole camera images through shared memory (config/fastdds_large_data.xml), unless the
    user chose a Fast DDS profile or another RMW."""
    import os

    from sf_policy.ros_env import PROFILE_VAR, large_data_profile

    if PROFILE_VAR in os.environ or os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") != "rmw_fastrtps_cpp":
        return []
    return [SetEnvironmentVariable(PROFILE_VAR, large_data_profile())]
