"""Shared by the launch files: turn sf_policy.bringup's NodeSpecs into launch_ros actions.

Kept beside the launch files (installed with them) so each launch file stays a few lines.
The plan itself lives in sf_policy.bringup, which `sf launch` runs without the ROS launch system.
"""

from pathlib import Path

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

LIFECYCLE_EXECUTABLES = {"piper_arm_driver"}


def share_dir() -> Path:
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("sf_bringup"))


def as_bool(text: str) -> bool:
    return str(text).lower() in ("1", "true", "yes", "on")


def to_actions(specs):
    actions = []
    for spec in specs:
        kind = LifecycleNode if spec.executable in LIFECYCLE_EXECUTABLES else Node
        extra = {"namespace": ""} if kind is LifecycleNode else {}
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
