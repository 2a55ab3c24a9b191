"""Why a grasp_vegetable policy fails: did it reach the named vegetable, and did it lift it?

Re-runs a checkpoint closed loop exactly as ``sf eval sim`` / ``bench/learn.py`` do (same seeds,
same order, the same flow-matching noise: the episodes and their successes are reproduced) and
records after every twin step how high each vegetable is above its rest height and which ones
the right gripper's fingers touch. The success rule only says "not lifted 5 cm while held";
this says whether the policy went for the wrong vegetable (grounding the prompt) or reached the
right one and lost it (grasp precision).

  .venv/bin/python bench/grasp_outcomes.py outputs/bench/learn/full/grasp_vegetable/train/\
grasp_vegetable_heldout/checkpoints/step_036000 --seed 5000 --episodes 20

Writes bench/results/grasp_outcomes.json (per episode and the counts).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

os.environ.setdefault("MUJOCO_GL", "egl")

HELD_LIFT_M = 0.01  # above this the vegetable left the table: the grasp held, at least for a while


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--seed", type=int, default=5000, help="first scene (bench/learn.py's held-out ones)")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--results-dir", type=Path, default=None, help="default: bench/results")
    args = parser.parse_args()

    import torch

    from sf_policy.eval.sim import run_episode
    from sf_policy.runtime.inference import load_for_inference
    from sf_policy.runtime.scheduler import policy_infer
    from sf_policy.sim.piper_mjcf import TABLE_TOP_Z
    from sf_policy.sim.tasks import VEGETABLES, fingers, touching
    from sf_policy.sim.twin import Twin

    infer = policy_infer(load_for_inference(args.checkpoint, device="cpu"), 10)
    twin = Twin("grasp_vegetable", width=224, height=224)  # evaluate_checkpoints' cameras
    lift: dict[str, float] = {}
    touched: dict[str, int] = {}
    twin_step = twin.step

    def step_and_look(target):
        twin_step(target)
        for v in VEGETABLES:
            lift[v.name] = max(lift[v.name], float(twin.body_pos(v.name)[2] - TABLE_TOP_Z - v.rest_z))
            touched[v.name] += bool(touching(twin, v.name, fingers("right")))

    twin.step = step_and_look  # run_episode drives the twin unchanged; this only looks after each step
    torch.manual_seed(args.seed)  # as evaluate_checkpoints: the same noise, so the same episodes
    episodes = []
    for seed in range(args.seed, args.seed + args.episodes):
        lift.update({v.name: 0.0 for v in VEGETABLES})
        touched.update({v.name: 0 for v in VEGETABLES})
        outcome = run_episode(twin, infer, seed)
        target = twin.info["target"]
        episodes.append({"seed": seed, "success": outcome.success, "target": target,
                         "ticks_touching": {k: v for k, v in touched.items() if v},
                         "max_lift_m": {k: round(v, 4) for k, v in lift.items()}, "verdict": _verdict(
                             outcome.success, target, touched, lift)})
        print(f"seed {seed}: {episodes[-1]['verdict']} (target {target}, touched "
              f"{', '.join(episodes[-1]['ticks_touching']) or 'nothing'}, lifted {lift[target] * 100:.1f} cm)",
              flush=True)
    counts = dict(Counter(e["verdict"] for e in episodes))
    path = write_results("grasp_outcomes", {"checkpoint": str(args.checkpoint), "counts": counts,
                                            "episodes": episodes}, args.results_dir)
    print(f"{counts}\nresults: {path}")
    return 0


def _verdict(success: bool, target: str, touched: dict[str, int], lift: dict[str, float]) -> str:
    if success:
        return "success"
    if not touched[target]:
        return "wrong vegetable" if any(touched.values()) else "touched nothing"
    return "lifted, not held to 5 cm" if lift[target] > HELD_LIFT_M else "reached, not lifted"


if __name__ == "__main__":
    raise SystemExit(main())
