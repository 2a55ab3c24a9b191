"""The twin's tasks, modelled on the paper's real-robot tasks: objects, seeded resets,
prompts and geometric success checks in the style of RoboTwin's.

A task is a small object with: ``name``, ``step_limit`` (control ticks at 30 Hz),
``objects_xml()`` (MJCF bodies added to the scene), ``home()`` (14 joint values the arms
start from), ``reset(twin, rng) -> info`` (place objects from the seed; ``info`` holds the
prompt and any per-seed variant) and ``success(twin) -> bool``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .piper_mjcf import TABLE_TOP_Z

#: Both arms folded above the table, grippers half open (14 values, SI).
HOME = np.array([0.0, 0.6, -0.9, 0.0, 0.5, 0.0, 0.035] * 2)


def _free_body(name: str, inner: str, pos=(0.0, 0.0, 1.0)) -> str:
    return f'<body name="{name}" pos="{pos[0]} {pos[1]} {pos[2]}"><freejoint name="{name}_free"/>{inner}</body>'


def upright(twin, body: str) -> float:
    """Dot product of the body's z axis with the world's (1 = upright)."""
    return float(twin.body_mat(body)[2, 2])


@dataclass
class LiftPot:
    """Both arms lift a pot by its handles and keep it level."""

    name: str = "lift_pot"
    step_limit: int = 450  # 15 s
    radius: float = 0.08
    height: float = 0.10
    handle_offset: float = 0.115  # handle centre from the pot's axis, along x

    def objects_xml(self) -> str:
        r, h, off = self.radius, self.height, self.handle_offset
        inner = (f'<geom name="pot_body" type="cylinder" size="{r} {h / 2}" mass="0.6" rgba="0.6 0.2 0.15 1"/>'
                 f'<geom name="pot_handle_left" type="box" size="0.035 0.015 0.01" pos="{-off} 0 {h / 2 - 0.015}" '
                 f'mass="0.05" rgba="0.15 0.15 0.15 1"/>'
                 f'<geom name="pot_handle_right" type="box" size="0.035 0.015 0.01" pos="{off} 0 {h / 2 - 0.015}" '
                 f'mass="0.05" rgba="0.15 0.15 0.15 1"/>'
                 f'<site name="pot_handle_left" pos="{-off} 0 {h / 2 - 0.015}" size="0.005"/>'
                 f'<site name="pot_handle_right" pos="{off} 0 {h / 2 - 0.015}" size="0.005"/>')
        return _free_body("pot", inner)

    def home(self) -> np.ndarray:
        return HOME.copy()

    def reset(self, twin, rng: np.random.Generator) -> dict:
        x, y = rng.uniform(-0.04, 0.04), rng.uniform(-0.05, 0.03)
        yaw = rng.uniform(-0.15, 0.15)
        twin.set_free_body("pot", (x, y, TABLE_TOP_Z + self.height / 2 + 0.001),
                           (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)))
        return {"prompt": "lift the pot by both handles and hold it level"}

    def success(self, twin) -> bool:
        pot = twin.body_pos("pot")
        near = all(np.linalg.norm(twin.site_pos(f"{side}_tcp") - twin.site_pos(f"pot_handle_{side}")) < 0.03
                   for side in ("left", "right"))
        return pot[2] > TABLE_TOP_Z + 0.08 and near and upright(twin, "pot") > 0.8


TASKS = {"lift_pot": LiftPot}


def get_task(name: str):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]()
