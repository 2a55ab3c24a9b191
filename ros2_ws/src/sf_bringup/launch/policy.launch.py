"""Deployment bringup: drivers in follow mode for a task's policy.

  ros2 launch sf_bringup policy.launch.py task:=lift_pot [sim:=true]
Loads config/tasks/<task>.yaml (prompt, checkpoint, cameras, control and safety). The
policy node joins this launch file with the deployment issue; today it starts the drivers
that will execute its commands.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _plan import drivers_launch  # noqa: E402


def generate_launch_description():
    return drivers_launch(mode="follow", with_task=True)
