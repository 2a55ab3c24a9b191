"""Arm drivers (one per CAN bus) and camera drivers.

  ros2 launch sf_bringup drivers.launch.py [sim:=true] [mode:=teleop] [camera_config:=...]
Same plan as `sf launch drivers` (sf_policy.bringup.plan.driver_nodes); sim:=true: the drivers on
simulated CAN arms, as `sf launch drivers --sim`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _plan import drivers_launch  # noqa: E402


def generate_launch_description():
    return drivers_launch(mode=None, with_task=False)
