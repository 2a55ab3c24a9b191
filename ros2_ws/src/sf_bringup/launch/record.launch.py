"""Recording bringup: drivers in teleop mode (the master arms drive the puppets).

  ros2 launch sf_bringup record.launch.py [sim:=true] [task:=lift_pot] [camera_config:=...]
The recorder node and the teleop helper join this launch file with the recording issue;
today it starts what recording stands on: the arms (read-only) and the cameras.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _plan import drivers_launch  # noqa: E402


def generate_launch_description():
    return drivers_launch(mode="teleop", with_task=True)
