"""The twin's tasks, modelled on the paper's real-robot tasks: objects, seeded resets,
prompts and geometric success checks in the style of RoboTwin's.

A task is a small object with: ``name``, ``step_limit`` (control ticks at 30 Hz),
``objects_xml()`` (MJCF bodies added to the scene), ``home()`` (14 joint values the arms
start from), ``reset(twin, rng) -> info`` (place objects from the seed; ``info`` holds any
per-seed variant) and ``success(twin) -> bool``. The prompt is not here: config/tasks/<task>.yaml
holds every task's (``bringup.task_prompt``), and the twin adds it to ``info``.

Objects are primitives with realistic sizes and masses. Everything a seed varies is drawn
from ``rng`` in a fixed order, so a seed gives the same scene bit for bit. Placements stay
inside the region both the arms' wrists (+-70 deg at joint 5) and the 7 cm gripper can
actually grasp: roughly 0.2-0.45 m in front of the bases, below ~0.9 m.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .piper_mjcf import TABLE_TOP_Z

#: Both arms folded above the table, grippers half open (14 values, SI).
HOME = np.array([0.0, 0.6, -0.9, 0.0, 0.5, 0.0, 0.035] * 2)
SETTLE = 0.001  # objects start this far above their support and drop onto it in a tick


def _free_body(name: str, inner: str, pos=(0.0, 0.0, 1.0)) -> str:
    return f'<body name="{name}" pos="{pos[0]} {pos[1]} {pos[2]}"><freejoint name="{name}_free"/>{inner}</body>'


def _mocap_body(name: str, inner: str) -> str:
    """A static body the reset may move (mocap): it collides with objects, not the table."""
    return f'<body name="{name}" mocap="true" pos="0 0 -1">{inner}</body>'


def yaw_quat(yaw: float) -> tuple[float, float, float, float]:
    return (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))


def upright(twin, body: str) -> float:
    """Dot product of the body's z axis with the world's (1 = upright)."""
    return float(twin.body_mat(body)[2, 2])


def body_speed(twin, body: str) -> float:
    """Linear speed (m/s) of a free body."""
    dof = twin.model.jnt_dofadr[twin.model.body(body).jntadr[0]]
    return float(np.linalg.norm(twin.data.qvel[dof:dof + 3]))


def touching(twin, body: str, geoms: tuple[str, ...]) -> set[str]:
    """Which of `geoms` are in contact with any geom of `body`."""
    model, data = twin.model, twin.data
    bid = model.body(body).id
    wanted = {model.geom(g).id: g for g in geoms}
    found = set()
    for c in data.contact[:data.ncon]:
        for mine, other in ((c.geom1, c.geom2), (c.geom2, c.geom1)):
            if model.geom_bodyid[mine] == bid and other in wanted:
                found.add(wanted[other])
    return found


def fingers(side: str) -> tuple[str, str]:
    return (f"{side}_finger_a_geom", f"{side}_finger_b_geom")


def set_mocap(twin, body: str, pos, quat=(1.0, 0.0, 0.0, 0.0)) -> None:
    mocap = twin.model.body(body).mocapid[0]
    twin.data.mocap_pos[mocap] = pos
    twin.data.mocap_quat[mocap] = quat


def scatter(rng: np.random.Generator, boxes: list[tuple[tuple[float, float], tuple[float, float]]],
            min_gap: float, tries: int = 200) -> list[np.ndarray]:
    """One xy point per box ((x range), (y range)), all at least `min_gap` apart.

    Rejection sampling with the seed's rng: deterministic per seed.
    """
    for _ in range(tries):
        points = [np.array([rng.uniform(*xr), rng.uniform(*yr)]) for xr, yr in boxes]
        if all(np.linalg.norm(a - b) >= min_gap for i, a in enumerate(points) for b in points[i + 1:]):
            return points
    raise RuntimeError(f"could not place {len(boxes)} objects {min_gap} m apart")


@dataclass
class LiftPot:
    """Both arms lift a pot by its loop handles and keep it level."""

    name: str = "lift_pot"
    step_limit: int = 450  # 15 s; the scripted expert succeeds after about 5 s
    radius: float = 0.08
    height: float = 0.10
    handle_offset: float = 0.125  # outer bar of each loop handle, from the pot's axis along x
    bar_z: float = 0.035          # the handles' height above the pot's centre
    mass: float = 0.6

    def objects_xml(self) -> str:
        r, h, off, z = self.radius, self.height, self.handle_offset, self.bar_z
        inner = [f'<geom name="pot_body" type="cylinder" size="{r} {h / 2}" mass="{self.mass}" rgba="0.6 0.2 0.15 1"/>']
        for side, sign in (("left", -1), ("right", 1)):
            # A loop handle: a bar parallel to y, joined to the wall by two short arms; the
            # gap between bar and wall leaves room for the inner finger.
            arm_len = off - r + 0.005
            inner += [
                (f'<geom name="pot_handle_{side}" type="box" size="0.006 0.035 0.008" pos="{sign * off} 0 {z}" '
                 f'mass="0.03" rgba="0.15 0.15 0.15 1"/>'),
                *(f'<geom name="pot_handle_{side}_arm{k}" type="box" size="{arm_len / 2} 0.005 0.008" '
                  f'pos="{sign * (r + arm_len / 2 - 0.005)} {dy} {z}" mass="0.01" rgba="0.15 0.15 0.15 1"/>'
                  for k, dy in enumerate((-0.03, 0.03))),
                f'<site name="pot_handle_{side}" pos="{sign * off} 0 {z}" size="0.005"/>',
            ]
        return _free_body("pot", "".join(inner))

    def home(self) -> np.ndarray:
        return HOME.copy()

    def reset(self, twin, rng: np.random.Generator) -> dict:
        x, y = rng.uniform(-0.04, 0.04), rng.uniform(-0.12, -0.04)
        yaw = rng.uniform(-0.15, 0.15)
        twin.set_free_body("pot", (x, y, TABLE_TOP_Z + self.height / 2 + SETTLE), yaw_quat(yaw))
        return {}

    def success(self, twin) -> bool:
        pot = twin.body_pos("pot")
        near = all(np.linalg.norm(twin.site_pos(f"{side}_tcp") - twin.site_pos(f"pot_handle_{side}")) < 0.03
                   for side in ("left", "right"))
        return pot[2] > TABLE_TOP_Z + 0.08 and near and upright(twin, "pot") > 0.8


@dataclass
class PlaceBlock:
    """Pick a green block and put it on a platform whose height varies per seed."""

    name: str = "place_block"
    step_limit: int = 540  # 18 s; the scripted expert succeeds after about 9 s
    block: float = 0.04            # edge (m)
    block_mass: float = 0.06       # a painted wooden cube
    platform_half: float = 0.05    # 10 x 10 cm top
    platform_depth: float = 0.12   # the mocap box's full height; it pokes out of the table
    heights: tuple[float, float] = (0.02, 0.08)

    def objects_xml(self) -> str:
        b, p = self.block / 2, self.platform_half
        block = (f'<geom name="block_geom" type="box" size="{b} {b} {b}" mass="{self.block_mass}" '
                 'rgba="0.15 0.7 0.2 1"/>')
        platform = (f'<geom name="platform_geom" type="box" size="{p} {p} {self.platform_depth / 2}" '
                    'rgba="0.3 0.35 0.7 1"/>')
        return _free_body("block", block) + _mocap_body("platform", platform)

    def home(self) -> np.ndarray:
        return HOME.copy()

    def reset(self, twin, rng: np.random.Generator) -> dict:
        side = 1.0 if rng.uniform() < 0.5 else -1.0
        block_xy, platform_xy = scatter(rng, [((0.06, 0.22), (-0.24, -0.12)), ((0.0, 0.2), (-0.1, -0.02))],
                                        min_gap=0.13)
        block_xy[0] *= side
        platform_xy[0] *= side
        height = rng.uniform(*self.heights)
        block_yaw, platform_yaw = rng.uniform(-0.6, 0.6), rng.uniform(-0.3, 0.3)
        top = TABLE_TOP_Z + height
        set_mocap(twin, "platform", (*platform_xy, top - self.platform_depth / 2), yaw_quat(platform_yaw))
        twin.set_free_body("block", (*block_xy, TABLE_TOP_Z + self.block / 2 + SETTLE), yaw_quat(block_yaw))
        return {"platform_height": height, "platform_top": top, "arm": "right" if side > 0 else "left"}

    def platform_top(self, twin) -> float:
        return float(twin.data.mocap_pos[twin.model.body("platform").mocapid[0]][2] + self.platform_depth / 2)

    def success(self, twin) -> bool:
        block, top = twin.body_pos("block"), self.platform_top(twin)
        local = twin.body_mat("platform").T @ (block - twin.body_pos("platform"))
        on_top = abs(block[2] - self.block / 2 - top) < 0.01
        inside = bool(np.all(np.abs(local[:2]) < self.platform_half))
        released = not touching(twin, "block", fingers("left") + fingers("right"))
        return on_top and inside and released and body_speed(twin, "block") < 0.05


@dataclass(frozen=True)
class Vegetable:
    name: str
    geom: str      # MJCF geom attributes apart from the name (type, size, rgba, mass)
    rest_z: float  # centre height above the table when lying on it


VEGETABLES = (
    # A carrot lying along its local x; an eggplant and a potato as ellipsoids.
    Vegetable("carrot", 'type="capsule" size="0.016 0.05" euler="0 1.5708 0" mass="0.07" rgba="0.95 0.45 0.08 1"',
              0.016),
    # Ellipsoids a little flatter than wide, so they rest without rolling.
    Vegetable("eggplant", 'type="ellipsoid" size="0.065 0.028 0.024" mass="0.15" rgba="0.35 0.12 0.4 1"', 0.024),
    Vegetable("potato", 'type="ellipsoid" size="0.04 0.027 0.025" mass="0.12" rgba="0.7 0.55 0.3 1"', 0.025),
)


@dataclass
class GraspVegetable:
    """Pick up the named vegetable, which lies on the right, with the right gripper."""

    name: str = "grasp_vegetable"
    step_limit: int = 300  # 10 s; the scripted expert succeeds after about 5 s
    lift: float = 0.05     # how far above its rest height counts as lifted

    def objects_xml(self) -> str:
        return "".join(_free_body(v.name, f'<geom name="{v.name}_geom" {v.geom}/>') for v in VEGETABLES)

    def home(self) -> np.ndarray:
        return HOME.copy()

    def reset(self, twin, rng: np.random.Generator) -> dict:
        target = int(rng.integers(len(VEGETABLES)))
        regions = [((-0.25, 0.25), (-0.25, -0.0)) for _ in VEGETABLES]
        regions[target] = ((0.08, 0.22), (-0.22, -0.08))  # the right arm's comfortable reach
        points = scatter(rng, regions, min_gap=0.15)
        for veg, xy in zip(VEGETABLES, points):
            # Long axes roughly along y, so the fingers close across them from above.
            yaw = math.pi / 2 + rng.uniform(-0.5, 0.5)
            twin.set_free_body(veg.name, (*xy, TABLE_TOP_Z + veg.rest_z + SETTLE), yaw_quat(yaw))
        name = VEGETABLES[target].name
        return {"target": name}  # named in the prompt (sim_prompt of config/tasks/grasp_vegetable.yaml)

    def success(self, twin) -> bool:
        target = twin.info.get("target")
        if target is None:
            return False
        lifted = {v.name: twin.body_pos(v.name)[2] - TABLE_TOP_Z - v.rest_z for v in VEGETABLES}
        others_down = all(lifted[n] < 0.02 for n in lifted if n != target)
        held = touching(twin, target, fingers("right")) == set(fingers("right"))
        return lifted[target] > self.lift and held and others_down


def cup_xml(name: str, radius: float, height: float, rgba: str, mass: float, wall: float = 0.004,
            segments: int = 16) -> str:
    """A cylindrical cup from primitives: a base disc and a ring of wall slabs."""
    base = 0.005
    seg_half = radius * math.tan(math.pi / segments) + 0.001  # slabs overlap a little: no gaps
    parts = [(f'<geom name="{name}_base" type="cylinder" size="{radius} {base / 2}" pos="0 0 {base / 2}" '
              f'mass="{mass * 0.3}" rgba="{rgba}"/>')]
    for k in range(segments):
        a = 2 * math.pi * k / segments
        r = radius - wall / 2
        # Walls stand on the base, not the table: one table contact patch per cup, not 17.
        parts.append(f'<geom name="{name}_wall{k}" type="box" size="{wall / 2} {seg_half} {(height - base) / 2}" '
                     f'pos="{r * math.cos(a):.5f} {r * math.sin(a):.5f} {(height + base) / 2}" euler="0 0 {a:.5f}" '
                     f'mass="{mass * 0.7 / segments:.5f}" rgba="{rgba}"/>')
    return "".join(parts)


@dataclass
class StackCups:
    """Put the small cup into the big one (the body origin is each cup's bottom centre)."""

    name: str = "stack_cups"
    step_limit: int = 540  # 18 s; the scripted expert succeeds after about 10 s
    small: tuple[float, float] = (0.027, 0.075)  # outer radius, height
    big: tuple[float, float] = (0.045, 0.055)

    def objects_xml(self) -> str:
        small = cup_xml("cup_small", *self.small, rgba="0.2 0.45 0.85 1", mass=0.05)
        big = cup_xml("cup_big", *self.big, rgba="0.9 0.45 0.6 1", mass=0.08)
        return _free_body("cup_small", small) + _free_body("cup_big", big)

    def home(self) -> np.ndarray:
        return HOME.copy()

    def reset(self, twin, rng: np.random.Generator) -> dict:
        side = 1.0 if rng.uniform() < 0.5 else -1.0
        small_xy, big_xy = scatter(rng, [((0.08, 0.22), (-0.22, -0.1)), ((-0.05, 0.2), (-0.12, -0.0))],
                                   min_gap=0.14)
        small_xy[0] *= side
        big_xy[0] *= side
        for name, xy in (("cup_small", small_xy), ("cup_big", big_xy)):
            twin.set_free_body(name, (*xy, TABLE_TOP_Z + SETTLE), yaw_quat(rng.uniform(-math.pi, math.pi)))
        return {"arm": "right" if side > 0 else "left"}

    def success(self, twin) -> bool:
        small, big = twin.body_pos("cup_small"), twin.body_pos("cup_big")
        inner = self.big[0] - 0.004 - self.small[0]  # the slack between the nested walls
        centred = np.linalg.norm(small[:2] - big[:2]) < inner + 0.005
        inside = 0.0 < small[2] - big[2] < 0.03  # resting on (or just above) the big cup's floor
        released = not touching(twin, "cup_small", fingers("left") + fingers("right"))
        level = upright(twin, "cup_small") > 0.9 and upright(twin, "cup_big") > 0.9
        return bool(centred and inside and released and level and body_speed(twin, "cup_small") < 0.05)


TASKS = {"lift_pot": LiftPot, "place_block": PlaceBlock, "grasp_vegetable": GraspVegetable, "stack_cups": StackCups}


def get_task(name: str):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]()
