"""The twin as a Gymnasium environment, for closed-loop evaluation without a ROS graph.

Action: the 14 master joint targets (SI, the embodiment's order), as a policy in follow mode
sends them. Observation: ``state`` (the 14 puppet values) and ``images`` (one RGB array per
camera role; depth too with ``depth=True``). Reward is 1.0 on the tick the task succeeds;
the episode terminates on success and truncates at the task's step limit.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ..embodiment import STATE_DIM, arm_limits_arrays
from ..topics import CAMERA_ROLES
from .twin import Twin


class PiperTwinEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, task: str = "lift_pot", width: int = 224, height: int = 224,
                 cameras: tuple[str, ...] = CAMERA_ROLES, depth: bool = False, render_mode: str | None = None):
        self.twin = Twin(task, width=width, height=height, cameras=cameras, depth=depth)
        self.render_mode = render_mode
        lower, upper = arm_limits_arrays()
        self.action_space = spaces.Box(np.tile(lower, 2).astype(np.float32), np.tile(upper, 2).astype(np.float32),
                                       dtype=np.float32)
        margin = 0.1  # servos may overshoot a limit a little under contact
        obs_spaces: dict[str, spaces.Space] = {
            "state": spaces.Box(np.tile(lower, 2) - margin, np.tile(upper, 2) + margin, (STATE_DIM,), np.float64)}
        if cameras:
            obs_spaces["images"] = spaces.Dict({r: spaces.Box(0, 255, (height, width, 3), np.uint8) for r in cameras})
        if depth and cameras:
            obs_spaces["depth"] = spaces.Dict({r: spaces.Box(0, 100.0, (height, width), np.float32) for r in cameras})
        self.observation_space = spaces.Dict(obs_spaces)

    def _obs(self) -> dict[str, Any]:
        o = self.twin.observe(images=bool(self.twin.cameras))
        obs: dict[str, Any] = {"state": o.state}
        if self.twin.cameras:
            obs["images"] = o.images
        if o.depth:
            obs["depth"] = o.depth
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        episode_seed = int(self.np_random.integers(0, 2**31 - 1)) if seed is None else int(seed)
        self.twin.reset(episode_seed)
        return self._obs(), {**self.twin.info, "seed": episode_seed}

    def step(self, action):
        self.twin.step(np.asarray(action, dtype=float))
        success = self.twin.success()
        return (self._obs(), float(success), success, self.twin.done() and not success,
                {"success": success, "tick": self.twin.tick})

    def render(self):
        return self.twin.render("cam_high")[0]

    def close(self):
        self.twin.close()


def register() -> None:
    """`gym.make("sf/PiperTwin-v0", task=...)`."""
    if "sf/PiperTwin-v0" not in gym.registry:
        gym.register(id="sf/PiperTwin-v0", entry_point=PiperTwinEnv)
