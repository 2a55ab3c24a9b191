"""Shared by the launch files: turn sf_policy.bringup.plan's NodeSpecs into launch_ros actions.

Kept beside the launch files (installed with them) so each launch file stays a few lines.
The plan itself lives in sf_policy.bringup.plan, which `sf launch` runs without the ROS launch system.
"""

from __future__ import annotations

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler, SetEnvironmentVariable
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.parameter_descriptions import ParameterValue

LIFECYCLE_EXECUTABLES = {"piper_arm_driver", "policy_node"}


def as_bool(text: str, name: str = "argument") -> bool:
    """true/false (and 1/0, yes/no, on/off); anything else is an error naming the argument (sim:=maybe
    used to mean false)."""
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"launch argument {name}:={text!r}: expected true or false")


def typed(parameters: dict) -> dict:
    """String parameters kept strings. launch_ros before Kilted reads a plain string as YAML:
    a prompt with ': ' fails to launch, 'yes' becomes true, '0755' an integer. A value_type=str
    ParameterValue is passed through unparsed on Humble, Jazzy and Kilted alike."""
    return {k: ParameterValue(v, value_type=str) if isinstance(v, str) else v for k, v in parameters.items()}


def to_actions(specs, ends_launch: str | None = None):
    """Node actions for ``specs``; when the node of executable ``ends_launch`` exits (the recorder
    after its episodes), the whole launch shuts down, as `sf launch` stops when a node exits."""
    actions = []
    for spec in specs:
        kind = LifecycleNode if spec.executable in LIFECYCLE_EXECUTABLES else Node
        extra = {"namespace": ""} if kind is LifecycleNode else {}
        if spec.prefix:
            extra["prefix"] = spec.prefix
        actions.append(kind(package=spec.package, executable=spec.executable, name=spec.name, output="screen",
                            parameters=[*spec.params_files, typed(spec.parameters)], remappings=list(spec.remappings),
                            **extra))
        if spec.executable == ends_launch:
            reason = f"{spec.name} finished"
            actions.append(RegisterEventHandler(OnProcessExit(target_action=actions[-1],
                                                              on_exit=[EmitEvent(event=Shutdown(reason=reason))])))
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
    """Arm and camera drivers; `mode=None` makes the mode a launch argument. The same plan as
    `sf launch drivers`: with sim:=true the drivers' own code runs on simulated CAN arms (the whole
    robot in simulation, the MuJoCo twin, is record.launch.py / policy.launch.py sim:=true)."""
    from sf_policy.bringup.plan import driver_nodes, task_config

    args = [("sim", "false", "simulated CAN arms inside the driver processes instead of the hardware"),
            ("robot_config", "", "robot YAML (default: config/robot.yaml, with sim:=true config/robot_sim.yaml)"),
            ("camera_config", "", "cameras YAML (default: the task's, else config/cameras.yaml; none with sim)")]
    if with_task:
        args.insert(0, ("task", "lift_pot", "task name: config/tasks/<task>.yaml"))
    if mode is None:
        args.append(("mode", "follow", "follow: execute joint commands; teleop: read only"))

    def build(a):
        task = task_config(a["task"]) if with_task else {}  # an unknown task fails here, listing known ones
        return to_actions(driver_nodes(sim=as_bool(a["sim"], "sim"), mode=mode or a["mode"],
                                       robot_config=a["robot_config"] or None,
                                       camera_config=a["camera_config"] or task.get("camera_config") or None))

    return LaunchDescription([*arguments(*args), *large_data_env(), opaque(build)])


def large_data_env():
    """Whole camera images through shared memory (config/fastdds_large_data.xml), unless the
    user chose a Fast DDS profile or another RMW."""
    import os

    from sf_policy.bringup.env import PROFILE_VAR, large_data_profile

    if PROFILE_VAR in os.environ or os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") != "rmw_fastrtps_cpp":
        return []
    return [SetEnvironmentVariable(PROFILE_VAR, large_data_profile())]
