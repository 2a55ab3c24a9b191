"""Spatial Forcing on the AgileX bimanual Piper: the ROS-free core of the stack.

Nothing in this package imports rclpy at module level; the ROS 2 nodes in
``ros2_ws/src/sf_nodes`` are thin wrappers around it. The contracts sit at the top
(``embodiment``: joints, units, limits; ``topics``: ROS names and roles; ``config``: the robot
and camera files); each journey has a package: ``record`` + ``data`` (demonstrations into
LeRobot v3 datasets), ``teacher`` + ``align`` + ``model`` + ``train`` (π0 with Spatial
Forcing), ``runtime`` + ``serve`` (deployment), ``eval`` (replay, the twin, probes), ``sim``
(the MuJoCo twin), with ``drivers``, ``teleop``, ``calibration``, ``bringup`` (starting ROS
graphs), ``demo`` and ``cli``. docs/design.md draws the map.
"""

__version__ = "0.1.0"
