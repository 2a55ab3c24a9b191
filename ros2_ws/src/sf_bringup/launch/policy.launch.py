"""Deployment bringup: the drivers in follow mode (or the twin) and the policy node.

  ros2 launch sf_bringup policy.launch.py task:=lift_pot [sim:=true] [checkpoint:=DIR]
      [remote:=http://gpu-box:8000] [dry_run:=true]
Loads config/tasks/<task>.yaml (prompt, checkpoint, cameras) and config/policy.yaml (control
and safety). The policy node configures (loads and warms the model) and activates itself.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _plan import arguments, as_bool, large_data_env, opaque, to_actions  # noqa: E402
from launch import LaunchDescription  # noqa: E402


def generate_launch_description():
    from sf_policy.bringup.plan import policy_nodes

    args = [("task", "lift_pot", "task name: config/tasks/<task>.yaml (prompt, checkpoint, cameras)"),
            ("sim", "false", "the MuJoCo twin (no operator: the policy drives it) instead of the robot"),
            ("seed", "0", "sim only: the scene's seed"),
            ("checkpoint", "", "trained checkpoint or run directory (default: the task's)"),
            ("remote", "", "a policy server URL (sf serve) instead of a local model"),
            ("dry_run", "false", "publish commands on /policy/dry_run/... only: the arms hold"),
            ("robot_config", "", "robot YAML (default: config/robot.yaml)"),
            ("camera_config", "", "cameras YAML (default: the task's, else config/cameras.yaml)")]

    def build(a):
        return to_actions(policy_nodes(
            a["task"], sim=as_bool(a["sim"], "sim"), seed=int(a["seed"]), checkpoint=a["checkpoint"] or None,
            remote=a["remote"], dry_run=as_bool(a["dry_run"], "dry_run"), robot_config=a["robot_config"] or None,
            camera_config=a["camera_config"] or None))

    return LaunchDescription([*arguments(*args), *large_data_env(), opaque(build)])
