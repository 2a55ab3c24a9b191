"""Deployment bringup: drivers in follow mode for a task's policy.

  ros2 launch sf_bringup policy.launch.py task:=lift_pot [sim:=true]
Loads config/tasks/<task>.yaml (prompt, checkpoint, cameras, control and safety). The
policy node joins this launch file with the deployment issue; today it starts the drivers
that will execute its commands.
"""

import sys
from pathlib import Path

from launch import LaunchDescription

sys.path.insert(0, str(Path(__file__).parent))
from _plan import arguments, as_bool, opaque, to_actions  # noqa: E402

from sf_policy.bringup import driver_nodes, task_config  # noqa: E402

ARGS = (("task", "lift_pot", "task name: config/tasks/<task>.yaml"),
        ("sim", "false", "simulated arms instead of hardware"),
        ("robot_config", "", "robot YAML"),
        ("camera_config", "", "cameras YAML"))


def generate_launch_description():
    def build(args):
        task = task_config(args["task"])
        return to_actions(driver_nodes(sim=as_bool(args["sim"]), mode="follow",
                                       robot_config=args["robot_config"] or None,
                                       camera_config=args["camera_config"] or task.get("camera_config") or None))

    return LaunchDescription([*arguments(*ARGS), opaque(build)])
