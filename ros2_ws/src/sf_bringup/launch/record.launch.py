"""Recording bringup: the arms in teleop mode and the cameras (or the twin), and the recorder.

  ros2 launch sf_bringup record.launch.py task:=lift_pot [sim:=true] [episodes:=50]
      [dataset_root:=~/sf_data/lift_pot] [max_duration_s:=60] [bag_root:=...] [camera_config:=...]
Episodes are started and stopped from /recorder/command: the key/pedal helper (launched in a
terminal window of its own on a desktop, keys:=...; else `ros2 run sf_nodes record_keys` in a
terminal), or, with sim:=true, the scripted operator.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _plan import arguments, as_bool, large_data_env, opaque, to_actions  # noqa: E402
from launch import LaunchDescription  # noqa: E402


def generate_launch_description():
    from sf_policy.bringup.plan import record_nodes

    args = [("task", "lift_pot", "task name: config/tasks/<task>.yaml (its prompt is the default)"),
            ("sim", "false", "the MuJoCo twin with the task's scripted operator instead of the robot"),
            ("seed", "0", "sim only: first episode's seed"),
            ("episodes", "0", "stop after this many saved episodes (0: no limit)"),
            ("max_duration_s", "0", "an episode is saved at this length (0: config/recorder.yaml's)"),
            ("dataset_root", "", "LeRobot v3 dataset to create or append to (default ~/sf_data/<task>)"),
            ("bag_root", "", "also write each episode's raw topics as an MCAP bag here"),
            ("link", "hardware", "master-puppet link: hardware (shared bus) or software (teleop_link node)"),
            ("robot_config", "", "robot YAML (default: config/robot.yaml)"),
            ("camera_config", "", "cameras YAML (default: the task's, else config/cameras.yaml)"),
            ("keys", "auto", "key/pedal helper's terminal: auto (a terminal window on a desktop), none, "
                             "or a command such as 'xterm -e'"),
            ("keymap", "", "key map YAML for the helper (default: keyboard; teleop/pedal.yaml for a pedal)")]

    def build(a):
        return to_actions(record_nodes(
            a["task"], dataset_root=a["dataset_root"] or None, sim=as_bool(a["sim"], "sim"), seed=int(a["seed"]),
            episodes=int(a["episodes"]), max_duration_s=float(a["max_duration_s"]) or None,
            bag_root=a["bag_root"], link=a["link"], robot_config=a["robot_config"] or None,
            camera_config=a["camera_config"] or None, keys=a["keys"], keymap=a["keymap"]), ends_launch="recorder")

    return LaunchDescription([*arguments(*args), *large_data_env(), opaque(build)])
