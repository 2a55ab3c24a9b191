"""The twin through the Gymnasium API: spaces, deterministic resets, stepping, rendering."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from sf_policy.sim.env import PiperTwinEnv, register


@pytest.fixture
def env():
    e = PiperTwinEnv("lift_pot", width=64, height=48, depth=True)
    yield e
    e.close()


def test_gymnasium_env_checker_passes(env):
    check_env(env, skip_render_check=True)


def test_reset_is_deterministic_per_seed(env):
    a, info = env.reset(seed=7)
    b, _ = env.reset(seed=7)
    c, _ = env.reset(seed=8)
    assert "pot" in info["prompt"] and info["seed"] == 7
    assert np.array_equal(a["images"]["cam_high"], b["images"]["cam_high"])
    assert not np.array_equal(a["images"]["cam_high"], c["images"]["cam_high"])
    assert a["depth"]["cam_high"].shape == (48, 64) and np.all(a["depth"]["cam_high"] > 0)


def test_actions_move_the_puppets(env):
    obs, _ = env.reset(seed=0)
    target = obs["state"].copy()
    target[0] += 0.3  # left joint1
    target[13] = 0.01  # right gripper nearly closed
    for _ in range(30):
        obs, reward, terminated, truncated, info = env.step(target)
    assert abs(obs["state"][0] - target[0]) < 0.01 and abs(obs["state"][13] - 0.01) < 0.003
    assert reward == 0.0 and not terminated and info["tick"] == 30


def test_registered_with_gymnasium():
    register()
    e = gym.make("sf/PiperTwin-v0", task="lift_pot", cameras=())
    obs, _ = e.reset(seed=1)
    assert set(obs) == {"state"}
    e.close()
