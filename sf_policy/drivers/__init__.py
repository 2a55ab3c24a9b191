"""Hardware-facing cores of the drivers (no ROS): the Piper arm over CAN and the cameras."""
