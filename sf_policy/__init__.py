"""Spatial Forcing on the AgileX bimanual Piper: the ROS-free core of the stack.

Nothing in this package imports rclpy; the ROS 2 nodes in ``ros2_ws/src/sf_nodes`` are thin
wrappers around it.
"""

__version__ = "0.1.0"
