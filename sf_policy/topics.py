"""Default ROS 2 topic and service names: one source of truth (docs/interfaces.md mirrors it).

Names follow AgileX's conventions so existing tools keep working; every one of them can be
remapped at launch. Functions rather than constants, because each arm and camera has its own.
"""

from __future__ import annotations

from .embodiment import SIDES

#: Camera role -> AgileX topic namespace.
CAMERA_NAMESPACES: dict[str, str] = {
    "cam_high": "/camera_f",
    "cam_left_wrist": "/camera_l",
    "cam_right_wrist": "/camera_r",
}
CAMERA_ROLES: tuple[str, ...] = tuple(CAMERA_NAMESPACES)
DIAGNOSTICS = "/diagnostics"


def _check_side(side: str) -> str:
    if side not in SIDES:
        raise ValueError(f"arm side must be one of {SIDES}, got {side!r}")
    return side


def puppet_state(side: str) -> str:
    """Measured joints of the puppet (follower) arm: sensor_msgs/JointState, ~200 Hz."""
    return f"/puppet/joint_{_check_side(side)}"


def master_state(side: str) -> str:
    """Joint targets of the master (leader) arm during teleoperation: sensor_msgs/JointState."""
    return f"/master/joint_{_check_side(side)}"


def arm_command(side: str) -> str:
    """Joint targets the arm driver executes in follow mode: sensor_msgs/JointState."""
    return f"/puppet/joint_cmd_{_check_side(side)}"


def check_camera_role(role: str) -> str:
    if role not in CAMERA_NAMESPACES:
        raise ValueError(f"unknown camera role {role!r}; expected one of {', '.join(CAMERA_ROLES)}")
    return role


def camera_image(role: str) -> str:
    return f"{CAMERA_NAMESPACES[check_camera_role(role)]}/color/image_raw"


def camera_info(role: str) -> str:
    return f"{CAMERA_NAMESPACES[check_camera_role(role)]}/color/camera_info"


def camera_depth(role: str) -> str:
    return f"{CAMERA_NAMESPACES[check_camera_role(role)]}/aligned_depth_to_color/image_raw"


def arm_node_name(side: str) -> str:
    return f"piper_{_check_side(side)}"


def camera_node_name(role: str) -> str:
    return check_camera_role(role)


# Recording (issue 4). The recorder node is named "recorder"; its services are
# /recorder/start, /recorder/stop, /recorder/discard, /recorder/rerecord (std_srvs/Trigger).
RECORDER_NODE = "recorder"
#: std_msgs/String commands: "start [prompt...]", "stop", "discard", "rerecord" (keyboard, pedal, scripts).
RECORDER_COMMAND = "/recorder/command"
#: std_msgs/String, JSON: state, episode, duration, measured rate, drops, backlog, last error (2 Hz).
RECORDER_STATUS = "/recorder/status"
RECORDER_COMMANDS: tuple[str, ...] = ("start", "stop", "discard", "rerecord")

#: std_msgs/String, latched (reliable, transient local, depth 1): the instruction the policy node
#: follows from now on, replacing its ``prompt`` parameter. The twin publishes each scene's
#: prompt here; an operator may too (``ros2 topic pub --once /sf/prompt std_msgs/String ...``).
PROMPT = "/sf/prompt"

#: std_msgs/String, JSON, reliable + transient local: the twin's report of each finished episode
#: (episode, task, seed, success, ticks, sim_time_s, prompt).
SIM_EPISODE = "/sim/episode"
