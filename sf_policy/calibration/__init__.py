"""Calibration tools behind ``sf calibrate`` (docs/calibration.md): camera intrinsics,
camera discovery and role assignment, arm zero and gripper range, time sync.

One module per tool; none imports ROS at module level (timesync imports rclpy when it runs).
"""
