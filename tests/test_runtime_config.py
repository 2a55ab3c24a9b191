"""RuntimeConfig: the runtime's settings declared once, and every runner reading them.

The policy node declares its parameters from it, config/policy.yaml is checked against it,
the launch plan refuses a wrong file before a node starts, ``sf eval sim`` runs the deployed
file and ``sf serve`` takes its model options from it.
"""

from __future__ import annotations

import shutil
from dataclasses import fields

import pytest
import yaml

from sf_policy.bringup.plan import bringup_share
from sf_policy.config import ConfigError
from sf_policy.runtime.config import RuntimeConfig, SettingError, describe, settings

POLICY_YAML = bringup_share() / "config" / "policy.yaml"


def test_the_deployed_file_sets_every_declared_setting_and_nothing_else():
    """policy.yaml is the deployment's whole choice: a diff shows every setting, a typo fails."""
    section = yaml.safe_load(POLICY_YAML.read_text())["policy"]["ros__parameters"]
    assert list(section) and set(section) == {f.name for f in settings()}
    deployed = RuntimeConfig.deployed()
    assert all(getattr(deployed, name) == pytest.approx(value) for name, value in section.items())


def test_every_setting_has_a_description_and_its_default_is_valid():
    for f in settings():
        assert len(f.metadata["description"]) > 10, f.name
    RuntimeConfig()  # the declared defaults pass their own validation
    assert "one of 'blend', 'replace', 'rtc'" in describe(next(f for f in settings() if f.name == "mode"))


@pytest.mark.parametrize("values, message", [
    ({"rate": 0}, "parameter rate: must be in [1, 1000], got 0.0"),
    ({"rate": float("nan")}, "parameter rate: must be in [1, 1000], got nan"),
    ({"mode": "inpaint"}, "parameter mode: must be one of 'blend', 'replace', 'rtc', got 'inpaint'"),
    ({"refill_at": 30}, "parameter refill_at: must be at most execute_steps=25, got 30"),
    ({"adaptive_horizon": 1}, "parameter adaptive_horizon: must be a bool, got 1"),
    ({"num_steps": 2.5}, "parameter num_steps: must be a int, got 2.5"),
    ({"velocity": 0.5}, "parameter velocity: not a runtime setting; known: rate,"),
])
def test_wrong_values_are_refused_naming_the_setting(values, message):
    with pytest.raises(ValueError) as info:
        RuntimeConfig.from_values(values)
    assert str(info.value).startswith(message), str(info.value)


def test_a_yaml_int_is_a_float_setting_and_overrides_keep_the_rest():
    config = RuntimeConfig.from_values({"rate": 15, "max_obs_age": 1})
    assert config.rate == 15.0 and isinstance(config.rate, float) and config.period == pytest.approx(1 / 15)
    changed = config.with_overrides(mode="rtc", num_steps=None)
    assert (changed.mode, changed.rate, changed.num_steps) == ("rtc", 15.0, 10)
    with pytest.raises(SettingError, match="blend_steps: must be >= 0"):
        config.with_overrides(blend_steps=-1)


def test_a_wrong_file_names_the_file_and_the_setting(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("policy:\n  ros__parameters:\n    on_error: ignore\n")
    with pytest.raises(ConfigError, match=r"policy.yaml: policy.ros__parameters.on_error: must be one of 'hold', "
                                          r"'continue', got 'ignore'"):
        RuntimeConfig.from_yaml(path)
    path.write_text("controller:\n  ros__parameters: {}\n")
    with pytest.raises(ConfigError, match="policy.yaml: policy.ros__parameters: missing"):
        RuntimeConfig.from_yaml(path)


def test_the_launch_plan_refuses_a_wrong_policy_yaml_before_any_node_starts(tmp_path):
    from sf_policy.bringup.plan import policy_node

    share = tmp_path / "share"
    shutil.copytree(bringup_share() / "config", share / "config")
    assert policy_node("lift_pot", checkpoint="/ckpt", share=share).params_files == (str(share / "config" /
                                                                                       "policy.yaml"),)
    text = (share / "config" / "policy.yaml").read_text().replace("velocity_scale: 0.5", "velocity_scale: 5")
    (share / "config" / "policy.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"policy.ros__parameters.velocity_scale: must be in \[0.01, 1\], got 5"):
        policy_node("lift_pot", checkpoint="/ckpt", share=share)


def test_the_twin_evaluation_runs_the_deployed_settings():
    from sf_policy.eval.sim import _twin_runtime

    assert _twin_runtime(None) == RuntimeConfig.deployed()
    with pytest.raises(ValueError, match="the twin runs at 30 Hz, got 15"):
        _twin_runtime(RuntimeConfig(rate=15.0))


def test_sf_serve_takes_its_model_options_from_the_declared_settings():
    import typer.main

    from sf_policy.cli.serve import app

    command = typer.main.get_command(app).commands["serve"]
    options = {p.name: p for p in command.params}
    for name in ("device", "dtype", "num_steps", "noise_scale", "rtc_max_guidance", "sampler", "compile",
                 "cuda_graph"):
        declared = next(f for f in settings() if f.name == name)
        assert options[name].default == declared.default, name
        assert declared.metadata["description"][1:] in options[name].help, name
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["serve", "/nowhere", "--sampler", "slow"])
    text = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and "--sampler" in text and "got 'slow'" in text, text


@pytest.mark.ros
def test_the_policy_node_declares_each_setting_read_only_with_its_description(ros):
    from rclpy.parameter import Parameter
    from sf_nodes.policy_node import PolicyNode

    node = ros.add(PolicyNode(infer=lambda sample: None, context=ros.context,
                              parameter_overrides=[Parameter("mode", value="replace"),
                                                   Parameter("execute_steps", value=20)]))
    assert node.runtime == RuntimeConfig(mode="replace", execute_steps=20)
    for f in fields(RuntimeConfig):
        descriptor = node.describe_parameter(f.name)
        assert descriptor.description == describe(f) and descriptor.read_only, f.name
    # a running node would not act on a change: `ros2 param set` is refused, not ignored
    (result,) = node.set_parameters([Parameter("mode", value="blend")])
    assert not result.successful and node.runtime.mode == "replace"


@pytest.mark.ros
def test_a_wrong_parameter_stops_the_node_naming_it(ros):
    from rclpy.parameter import Parameter
    from sf_nodes.policy_node import PolicyNode

    with pytest.raises(ValueError, match=r"parameter refill_at: must be at most execute_steps=5, got 15"):
        PolicyNode(infer=lambda sample: None, context=ros.context,
                   parameter_overrides=[Parameter("execute_steps", value=5)])


def test_the_interfaces_page_lists_every_setting():
    from conftest import REPO

    page = (REPO / "docs" / "interfaces.md").read_text()
    table = page[page.index("### `policy_node`"):]
    table = table[:table.index("\n\n", table.index("| parameter |"))]
    missing = [f.name for f in settings() if f"`{f.name}`" not in table]
    assert not missing, f"docs/interfaces.md's policy_node table lacks {missing}"
