"""The launch files evaluated without the ROS launch system, which has no PyPI wheels.

`launch` and `launch_ros` cannot be installed on this machine, so these tests put minimal
stand-ins with the same constructor signatures in their place, evaluate
generate_launch_description(), resolve the OpaqueFunction with launch arguments, and check
the nodes it would start. On a machine with ROS 2, `ros2 launch` runs the same files.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest

from conftest import BRINGUP


class _Action:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class LaunchConfiguration:
    def __init__(self, name):
        self.name = name

    def perform(self, context):
        return context.launch_configurations[self.name]


class ParameterValue:
    def __init__(self, value, *, value_type=None):
        self.value, self.value_type = value, value_type


def _evaluated(parameters: list) -> list:
    """What launch_ros hands the node. A plain string would be read as YAML by launch_ros
    before Kilted ('a: b' fails, 'yes' is true): every string must come typed."""
    out = []
    for item in parameters:
        if isinstance(item, dict):
            plain = [k for k, v in item.items() if isinstance(v, str)]
            assert not plain, f"string parameters not wrapped in ParameterValue(value_type=str): {plain}"
            item = {k: v.value if isinstance(v, ParameterValue) else v for k, v in item.items()}
        out.append(item)
    return out


class LifecycleNode(_Action):
    def __init__(self, *, package, executable, name, namespace, parameters=(), **kwargs):  # namespace: required
        super().__init__(package=package, executable=executable, name=name, namespace=namespace,
                         parameters=_evaluated(parameters), **kwargs)


class Node(_Action):
    def __init__(self, *, package, executable, name=None, parameters=(), **kwargs):
        super().__init__(package=package, executable=executable, name=name, parameters=_evaluated(parameters),
                         **kwargs)


@pytest.fixture
def launch_standins(monkeypatch):
    mods = {
        "launch": types.ModuleType("launch"),
        "launch.actions": types.ModuleType("launch.actions"),
        "launch.substitutions": types.ModuleType("launch.substitutions"),
        "launch.event_handlers": types.ModuleType("launch.event_handlers"),
        "launch.events": types.ModuleType("launch.events"),
        "launch_ros": types.ModuleType("launch_ros"),
        "launch_ros.actions": types.ModuleType("launch_ros.actions"),
        "launch_ros.parameter_descriptions": types.ModuleType("launch_ros.parameter_descriptions"),
    }
    mods["launch"].LaunchDescription = type("LaunchDescription", (_Action,), {})
    mods["launch.actions"].DeclareLaunchArgument = type("DeclareLaunchArgument", (_Action,), {})
    mods["launch.actions"].OpaqueFunction = type("OpaqueFunction", (_Action,), {})
    mods["launch.actions"].SetEnvironmentVariable = type("SetEnvironmentVariable", (_Action,), {})
    mods["launch.actions"].EmitEvent = type("EmitEvent", (_Action,), {})
    mods["launch.actions"].RegisterEventHandler = type("RegisterEventHandler", (_Action,), {})
    mods["launch.event_handlers"].OnProcessExit = type("OnProcessExit", (_Action,), {})
    mods["launch.events"].Shutdown = type("Shutdown", (_Action,), {})
    mods["launch.substitutions"].LaunchConfiguration = LaunchConfiguration
    mods["launch_ros.actions"].Node = Node
    mods["launch_ros.actions"].LifecycleNode = LifecycleNode
    mods["launch_ros.parameter_descriptions"].ParameterValue = ParameterValue
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.delitem(sys.modules, "_plan", raising=False)
    monkeypatch.delenv("FASTDDS_DEFAULT_PROFILES_FILE", raising=False)
    yield


def evaluate(name: str, **overrides):
    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), BRINGUP / "launch" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    actions = description.args[0]
    declared = {a.args[0]: a.kwargs["default_value"] for a in actions if type(a).__name__ == "DeclareLaunchArgument"}
    opaque = next(a for a in actions if type(a).__name__ == "OpaqueFunction")
    context = types.SimpleNamespace(launch_configurations={**declared, **overrides})
    evaluate.env = {a.args[0]: a.args[1] for a in actions if type(a).__name__ == "SetEnvironmentVariable"}
    built = opaque.kwargs["function"](context)
    evaluate.handlers = [a for a in built if type(a).__name__ == "RegisterEventHandler"]
    return declared, [a for a in built if type(a).__name__ != "RegisterEventHandler"]


def test_policy_launch_follow_mode_with_task(launch_standins):
    declared, nodes = evaluate("policy.launch.py", task="lift_pot", remote="http://127.0.0.1:8000")
    assert {"task", "sim", "robot_config", "camera_config", "checkpoint", "remote", "dry_run"} <= set(declared)
    names = [n.kwargs["name"] for n in nodes]
    assert names == ["piper_left", "piper_right", "cam_high", "cam_left_wrist", "cam_right_wrist", "policy"]
    assert isinstance(nodes[-1], LifecycleNode) and nodes[-1].kwargs["parameters"][-1]["remote"].endswith(":8000")
    arm = nodes[0]
    assert isinstance(arm, LifecycleNode) and arm.kwargs["executable"] == "piper_arm_driver"
    assert evaluate.env["FASTDDS_DEFAULT_PROFILES_FILE"].endswith("fastdds_large_data.xml")
    params = arm.kwargs["parameters"]
    assert params[0].endswith("arm_driver.yaml") and params[-1]["mode"] == "follow"


def test_record_launch_in_sim_runs_the_twin_and_the_recorder(launch_standins, tmp_path):
    declared, nodes = evaluate("record.launch.py", sim="true", task="lift_pot", seed="4", episodes="3",
                               dataset_root=str(tmp_path / "ds"))
    assert {"task", "episodes", "max_duration_s", "dataset_root", "bag_root", "camera_config"} <= set(declared)
    assert [n.kwargs["executable"] for n in nodes] == ["sim_node", "recorder"]
    twin = nodes[0].kwargs["parameters"][-1]
    assert twin["task"] == "lift_pot" and twin["operator"] == "scripted" and twin["seed"] == 4
    # the twin plays on until the recorder has saved 3 (an aborted attempt does not count)
    assert twin["recorder_control"] is True and twin["episodes"] == 0
    recorder = nodes[1].kwargs["parameters"]
    assert recorder[0].endswith("recorder.yaml")
    assert recorder[-1]["dataset_root"] == str(tmp_path / "ds") and recorder[-1]["episodes"] == 3
    assert recorder[-1]["exit_when_done"] is True
    assert recorder[-1]["task"].startswith("Lift the pot")


def test_record_launch_on_the_robot_reads_the_masters(launch_standins):
    _, nodes = evaluate("record.launch.py", task="lift_pot", keys="none")
    arms = [n for n in nodes if n.kwargs["executable"] == "piper_arm_driver"]
    assert arms and all(n.kwargs["parameters"][-1]["mode"] == "teleop" for n in arms)
    assert nodes[-1].kwargs["executable"] == "recorder"
    assert nodes[-1].kwargs["parameters"][-1]["dataset_root"].endswith("lift_pot")


def test_policy_launch_in_sim_leaves_the_arms_to_the_policy(launch_standins, tmp_path):
    declared, nodes = evaluate("policy.launch.py", sim="true", task="lift_pot", checkpoint=str(tmp_path),
                               dry_run="true")
    assert [n.kwargs["executable"] for n in nodes] == ["sim_node", "policy_node"]
    assert nodes[0].kwargs["parameters"][-1]["operator"] == "none"
    policy = nodes[1].kwargs["parameters"]
    assert policy[0].endswith("policy.yaml")
    assert policy[-1]["checkpoint"] == str(tmp_path) and policy[-1]["dry_run"] is True
    assert policy[-1]["prompt"].startswith("Lift the pot") and policy[-1]["autostart"] is True


def test_policy_launch_on_the_robot_clamps_to_the_drivers_robot_yaml(launch_standins, tmp_path):
    _, nodes = evaluate("policy.launch.py", task="lift_pot", checkpoint=str(tmp_path))
    arms = [n.kwargs["parameters"][-1] for n in nodes if n.kwargs["executable"] == "piper_arm_driver"]
    policy = nodes[-1].kwargs["parameters"][-1]
    assert arms and {a["robot_config"] for a in arms} == {policy["robot_config"]}
    assert policy["robot_config"].endswith("robot.yaml")


def test_policy_launch_without_a_checkpoint_says_where_to_set_one(launch_standins):
    from sf_policy.config import ConfigError

    with pytest.raises(ConfigError, match="lift_pot.yaml: checkpoint: no trained checkpoint"):
        evaluate("policy.launch.py", task="lift_pot")


def test_drivers_launch_mode_argument(launch_standins):
    declared, nodes = evaluate("drivers.launch.py", mode="teleop")
    assert declared["mode"] == "follow"
    assert nodes[0].kwargs["parameters"][-1]["mode"] == "teleop"


def test_drivers_launch_sim_is_sf_launch_drivers_sim_with_its_mode(launch_standins):
    """The drivers on simulated CAN arms, as `sf launch drivers --sim`, the mode honoured (it used to start
    the twin and ignore mode)."""
    from sf_policy.bringup.plan import driver_nodes

    _, nodes = evaluate("drivers.launch.py", sim="true", mode="teleop")
    params = [n.kwargs["parameters"][-1] for n in nodes]
    assert [n.kwargs["executable"] for n in nodes] == ["piper_arm_driver"] * 2
    assert all(p["simulate"] is True and p["mode"] == "teleop" for p in params)
    assert params == [s.parameters for s in driver_nodes(sim=True, mode="teleop")]


def test_a_boolean_argument_that_is_not_true_or_false_is_refused_naming_it(launch_standins):
    with pytest.raises(ValueError, match=r"launch argument sim:='maybe': expected true or false"):
        evaluate("record.launch.py", sim="maybe", keys="none")


def test_record_launch_ends_when_the_recorder_is_done(launch_standins, tmp_path):
    _, nodes = evaluate("record.launch.py", sim="true", episodes="2", dataset_root=str(tmp_path / "ds"))
    recorder = next(n for n in nodes if n.kwargs["executable"] == "recorder")
    assert recorder.kwargs["parameters"][-1]["exit_when_done"] is True
    (handler,) = evaluate.handlers  # the recorder's exit shuts the launch down, as it stops `sf launch`
    on_exit = handler.args[0]
    assert on_exit.kwargs["target_action"] is recorder and type(on_exit.kwargs["on_exit"][0]).__name__ == "EmitEvent"


def test_unknown_task_fails_naming_known_ones(launch_standins):
    from sf_policy.config import ConfigError

    with pytest.raises(ConfigError, match="unknown task 'juggle'; known tasks"):
        evaluate("policy.launch.py", task="juggle")


def test_record_launch_software_link_in_sim_adds_the_link_node(launch_standins, tmp_path):
    _, nodes = evaluate("record.launch.py", sim="true", link="software", dataset_root=str(tmp_path / "ds"))
    assert [n.kwargs["executable"] for n in nodes] == ["sim_node", "teleop_link", "recorder"]
    assert nodes[0].kwargs["parameters"][-1]["link"] == "software"


def test_record_launch_opens_the_key_helper_in_a_terminal(launch_standins, monkeypatch):
    _, nodes = evaluate("record.launch.py", task="lift_pot", keys="xterm -e", keymap="teleop/pedal.yaml")
    keys = nodes[-1]
    assert keys.kwargs["executable"] == "record_keys" and keys.kwargs["prefix"] == "xterm -e"
    assert keys.kwargs["parameters"][-1]["keymap"] == "teleop/pedal.yaml"
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    _, headless = evaluate("record.launch.py", task="lift_pot")  # auto, no desktop: run it by hand
    assert headless[-1].kwargs["executable"] == "recorder"
    _, twin = evaluate("record.launch.py", sim="true", keys="xterm -e")  # the scripted operator drives
    assert "record_keys" not in [n.kwargs["executable"] for n in twin]


# -- one plan, two runners: every launch argument starts the same nodes under `sf launch` --------

ROBOT, ROBOT_SIM, CAMERAS = (str(BRINGUP / "config" / n) for n in ("robot.yaml", "robot_sim.yaml", "cameras.yaml"))
PARITY = {  # launch file -> (sf launch command, argument sets covering every argument)
    "drivers.launch.py": ("drivers", [{}, {"sim": "true"}, {"mode": "teleop"},
                                      {"sim": "true", "mode": "teleop", "robot_config": ROBOT_SIM},
                                      {"camera_config": CAMERAS}]),
    "record.launch.py": ("record", [{"keys": "none"}, {"keys": "none", "robot_config": ROBOT, "camera_config": CAMERAS},
                                    {"sim": "true", "episodes": "3", "seed": "4", "max_duration_s": "5",
                                     "bag_root": "/tmp/bags", "dataset_root": "/tmp/ds"},
                                    {"sim": "true", "link": "software"}, {"keys": "xterm -e", "keymap": "pedal.yaml"},
                                    {"task": "stack_cups", "keys": "none", "link": "software"}]),
    "policy.launch.py": ("policy", [{"checkpoint": "/tmp/ckpt"}, {"remote": "http://127.0.0.1:8000"},
                                    {"sim": "true", "checkpoint": "/tmp/ckpt", "dry_run": "true", "seed": "2"},
                                    {"checkpoint": "/tmp/ckpt", "robot_config": ROBOT, "camera_config": CAMERAS},
                                    {"task": "place_block", "checkpoint": "/tmp/ckpt"}]),
}


def _cli_flags(args: dict) -> list[str]:
    flags = []
    for name, value in args.items():
        flag = "--" + name.replace("_", "-")
        flags += [flag] if value == "true" else [f"--no-{name.replace('_', '-')}"] if value == "false" \
            else [flag, value]
    return flags


@pytest.mark.parametrize("launch_file", list(PARITY))
def test_ros2_launch_and_sf_launch_start_the_same_nodes_for_every_argument(launch_standins, monkeypatch, launch_file):
    from typer.testing import CliRunner

    import sf_policy.cli.main as cli

    command, cases = PARITY[launch_file]
    declared, _ = evaluate(launch_file, **({"checkpoint": "/tmp/ckpt"} if command == "policy" else {}))
    covered = set().union(*cases)
    assert covered >= set(declared), f"arguments not compared: {set(declared) - covered}"
    for args in cases:
        _, nodes = evaluate(launch_file, **args)
        started = []
        monkeypatch.setattr(cli, "_run_graph", lambda specs, *a, **k: started.extend(specs))
        result = CliRunner().invoke(cli.app, ["launch", command, *_cli_flags(args)])
        assert result.exit_code == 0, (args, result.output)
        assert nodes and [(n.kwargs["executable"], n.kwargs["name"], n.kwargs["parameters"], n.kwargs.get("prefix"))
                          for n in nodes] == \
            [(s.executable, s.name, [*s.params_files, s.parameters], s.prefix or None) for s in started], args
