"""Recording bringup: drivers in teleop mode (the master arms drive the puppets).

  ros2 launch sf_bringup record.launch.py [sim:=true] [task:=lift_pot] [camera_config:=...]
The recorder node and the teleop helper join this launch file with the recording issue;
today it starts what recording stands on: the arms (read-only) and the cameras.
"""

import sys
from pathlib import Path

from launch import LaunchDescription

sys.path.insert(0, str(Path(__file__).parent))
from _plan import arguments, as_bool, opaque, to_actions  # noqa: E402

from sf_policy.bringup import driver_nodes, task_config  # noqa: E402

ARGS = (("sim", "false", "simulated arms instead of hardware"),
        ("task", "lift_pot", "task name: config/tasks/<task>.yaml"),
        ("robot_config", "", "robot YAML"),
        ("camera_config", "", "cameras YAML"))


def generate_launch_description():
    def build(args):
        task_config(args["task"])  # an unknown task fails here, listing the known ones
        return to_actions(driver_nodes(sim=as_bool(args["sim"]), mode="teleop",
                                       robot_config=args["robot_config"] or None,
                                       camera_config=args["camera_config"] or None))

    return LaunchDescription([*arguments(*ARGS), opaque(build)])
