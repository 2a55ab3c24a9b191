"""Arm drivers (one per CAN bus) and camera drivers.

  ros2 launch sf_bringup drivers.launch.py [sim:=true] [mode:=teleop] [camera_config:=...]
Same plan as `sf launch drivers` (sf_policy.bringup.driver_nodes).
"""

import sys
from pathlib import Path

from launch import LaunchDescription

sys.path.insert(0, str(Path(__file__).parent))
from _plan import arguments, as_bool, opaque, to_actions  # noqa: E402

from sf_policy.bringup import driver_nodes  # noqa: E402

ARGS = (("sim", "false", "simulated arms (CAN level) instead of hardware"),
        ("mode", "follow", "follow: execute joint commands; teleop: read only"),
        ("robot_config", "", "robot YAML (default: config/robot.yaml or robot_sim.yaml)"),
        ("camera_config", "", "cameras YAML (default: config/cameras.yaml; none in sim)"))


def generate_launch_description():
    def build(args):
        return to_actions(driver_nodes(sim=as_bool(args["sim"]), mode=args["mode"],
                                       robot_config=args["robot_config"] or None,
                                       camera_config=args["camera_config"] or None))

    return LaunchDescription([*arguments(*ARGS), opaque(build)])
