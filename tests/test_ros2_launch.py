"""The launch files under the real ``ros2 launch``, not stand-ins (slow tier).

Where no ROS 2 install is sourced, ROS 2's launch system is built from ``../shared/ros2-launch``
into this venv (its README; idempotent, about a minute the first time); the workspace is built
by colcon. Every launch is stopped as a terminal's Ctrl-C would (SIGINT to the process group),
with a time limit, then SIGKILL (launch_ros can hang on rare occasions, ros2/launch_ros#199).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, wait_for

pytestmark = pytest.mark.slow
SHARED_LAUNCH = REPO.parent / "shared" / "ros2-launch"
VENV = Path(sys.executable).parent.parent


@pytest.fixture(scope="module")
def ros2_env(tmp_path_factory) -> dict[str, str]:
    """The environment of a shell that sourced ROS 2's launch system and this workspace."""
    overlay = ""
    if shutil.which("ros2") is None:
        assert (SHARED_LAUNCH / "build.sh").is_file(), f"no ROS 2 install sourced and no {SHARED_LAUNCH}"
        built = subprocess.run(["bash", str(SHARED_LAUNCH / "build.sh"), str(VENV)], capture_output=True, text=True,
                               timeout=900)
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
        overlay = built.stdout.strip().splitlines()[-1]  # its setup.bash
    base = tmp_path_factory.mktemp("ws")
    colcon = subprocess.run([str(VENV / "bin" / "colcon"), "--log-base", str(base / "log"), "build", "--base-paths",
                             "ros2_ws/src", "--build-base", str(base / "build"), "--install-base", str(base / "install"),
                             "--symlink-install"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert colcon.returncode == 0, colcon.stdout + colcon.stderr
    sources = [f"source {VENV / 'bin' / 'activate'}", f"source {overlay}" if overlay else "",
               f"source {base / 'install' / 'setup.bash'}", "env -0"]
    shell = subprocess.run(["bash", "-c", " && ".join(s for s in sources if s)], capture_output=True, timeout=60,
                           env={**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"})
    assert shell.returncode == 0, shell.stderr
    env = dict(item.split("=", 1) for item in shell.stdout.decode().split("\0") if "=" in item)
    return env | {"PYTHONUNBUFFERED": "1", "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}


class Launched:
    """``ros2 launch sf_bringup NAME ARGS`` in a process group of its own, output to a file."""

    def __init__(self, env: dict, log: Path, name: str, *args: str):
        self.log = log
        with log.open("w") as out:
            self.process = subprocess.Popen(["ros2", "launch", "sf_bringup", name, *args], stdout=out,
                                            stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text()

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def ctrl_c(self, timeout: float = 60.0) -> int:
        """SIGINT to the whole group (a terminal's Ctrl-C: launch and every node), then SIGKILL."""
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            pytest.fail(f"ros2 launch did not stop within {timeout} s of Ctrl-C:\n{self.text()[-3000:]}")

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def nodes_ended_cleanly(text: str) -> None:
    assert "process has died" not in text, text[-4000:]
    assert text.count("process has finished cleanly") >= text.count("process started with pid"), text[-4000:]


@pytest.mark.parametrize("name, expected", [
    ("record.launch.py", {"task", "sim", "episodes", "dataset_root", "keys", "robot_config"}),
    ("policy.launch.py", {"task", "sim", "checkpoint", "remote", "dry_run", "robot_config"}),
    ("drivers.launch.py", {"sim", "mode", "robot_config", "camera_config"})])
def test_show_args_lists_every_argument(ros2_env, name, expected):
    shown = subprocess.run(["ros2", "launch", "sf_bringup", name, "--show-args"], capture_output=True, text=True,
                           env=ros2_env, timeout=60)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert {f"'{arg}':" for arg in expected} <= {line.strip() for line in shown.stdout.splitlines()}


def test_record_launch_ends_by_itself_with_a_valid_dataset(ros2_env, tmp_path):
    from sf_policy.data.validate import validate

    launch = Launched(ros2_env, tmp_path / "launch.log", "record.launch.py", "sim:=true", "episodes:=1",
                      "keys:=none", f"dataset_root:={tmp_path / 'ds'}", "max_duration_s:=3")
    try:
        assert launch.wait(timeout=180) == 0, launch.text()[-4000:]
    finally:
        launch.close()
    nodes_ended_cleanly(launch.text())
    assert "1 episodes recorded; exiting" in launch.text()
    assert validate(tmp_path / "ds") == []


def test_policy_launch_drives_the_twin_and_a_ctrl_c_ends_every_node_with_0(ros2_env, ros, tmp_path):
    from sensor_msgs.msg import JointState
    from sf_nodes.common import COMMAND_QOS
    from test_policy_node import Listener, tiny_checkpoint

    from sf_policy import topics

    commands = Listener(ros, JointState, topics.arm_command("left"), COMMAND_QOS)
    launch = Launched(ros2_env, tmp_path / "launch.log", "policy.launch.py", "sim:=true",
                      f"checkpoint:={tiny_checkpoint(tmp_path)}")
    try:
        wait_for(lambda: commands.count() >= 20 or launch.process.poll() is not None, timeout=180,
                 what="20 commands from the policy node")
        assert commands.count() >= 20, launch.text()[-4000:]
        time.sleep(1.0)
        assert launch.ctrl_c() == 0, launch.text()[-4000:]
    finally:
        launch.close()
    nodes_ended_cleanly(launch.text())


def test_drivers_launch_runs_the_drivers_on_simulated_can_arms(ros2_env, ros, tmp_path):
    from sensor_msgs.msg import JointState
    from sf_nodes.common import SENSOR_QOS
    from test_policy_node import Listener

    from sf_policy import topics

    states = Listener(ros, JointState, topics.puppet_state("right"), SENSOR_QOS)
    launch = Launched(ros2_env, tmp_path / "launch.log", "drivers.launch.py", "sim:=true")
    try:
        wait_for(lambda: states.count() >= 50 or launch.process.poll() is not None, timeout=120,
                 what="the right puppet's state from its driver")
        assert states.count() >= 50, launch.text()[-4000:]
        assert launch.ctrl_c() == 0, launch.text()[-4000:]
    finally:
        launch.close()
    assert "piper_arm_driver" in launch.text() and "sim_node" not in launch.text()
    nodes_ended_cleanly(launch.text())


def test_string_parameters_reach_the_node_as_written(ros2_env):
    """The launch files' parameters through the real launch_ros: strings YAML would read as
    something else (a prompt with ': ', 'yes', '0755', '') stay the strings they were."""
    install = next(p for p in ros2_env["AMENT_PREFIX_PATH"].split(os.pathsep) if p.endswith("sf_bringup"))
    script = f"""
import sys
sys.path.insert(0, {str(Path(install) / 'share' / 'sf_bringup' / 'launch')!r})
from launch import LaunchContext
from launch_ros.utilities import evaluate_parameters, normalize_parameters
from _plan import typed
values = {{"prompt": "Lift: the pot, then hold", "answer": "yes", "mode": "0755", "empty": "", "rate": 30.0}}
(evaluated,) = evaluate_parameters(LaunchContext(), normalize_parameters([typed(values)]))
assert evaluated == values, evaluated
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ros2_env, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr
