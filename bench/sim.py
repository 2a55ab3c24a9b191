"""The twin's speed and its scripted operators' success.

Real-time factor (simulated seconds per wall second) with physics at 500 Hz and control at
30 Hz: physics alone, and with the three cameras rendered at 30 Hz at 224x224 and at
640x480 (offscreen, MUJOCO_GL=egl). Then each task's scripted operator over N seeds.

  .venv/bin/python bench/sim.py [--seconds 5] [--seeds 50] [--tasks lift_pot,...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

os.environ.setdefault("MUJOCO_GL", "egl")


def real_time_factor(task: str, seconds: float, size: tuple[int, int] | None) -> float:
    from sf_policy.sim.twin import Twin

    cameras = () if size is None else ("cam_high", "cam_left_wrist", "cam_right_wrist")
    width, height = size or (224, 224)
    twin = Twin(task, width=width, height=height, cameras=cameras)
    twin.reset(0)
    twin.observe(images=bool(cameras))  # renderer warm-up outside the timing
    ticks = int(seconds * 30)
    start = time.perf_counter()
    for _ in range(ticks):
        twin.step(twin.master)
        if cameras:
            twin.observe()
    wall = time.perf_counter() - start
    twin.close()
    return ticks / 30 / wall


def expert_success(task: str, seeds: int) -> dict:
    from tqdm import tqdm

    from sf_policy.sim.experts import run_episode

    results = [run_episode(task, seed) for seed in tqdm(range(seeds), desc=task, leave=False)]
    wins = sum(bool(r["success"]) for r in results)
    return {"seeds": seeds, "successes": wins, "rate": wins / seeds,
            "mean_ticks": sum(r["ticks"] for r in results) / seeds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="simulated seconds per speed run")
    parser.add_argument("--seeds", type=int, default=50, help="episodes per task for the success rates (0: skip)")
    parser.add_argument("--tasks", default="", help="comma-separated (default: all)")
    parser.add_argument("--results-dir", type=Path, default=None, help="default: bench/results")
    args = parser.parse_args()

    from sf_policy.sim.tasks import TASKS

    tasks = [t for t in args.tasks.split(",") if t] or sorted(TASKS)
    speed = {"physics_only": real_time_factor(tasks[0], args.seconds, None),
             "3_cameras_224x224": real_time_factor(tasks[0], args.seconds, (224, 224)),
             "3_cameras_640x480": real_time_factor(tasks[0], args.seconds, (640, 480))}
    print(f"twin real-time factor ({tasks[0]}, physics 500 Hz, control and cameras 30 Hz):")
    for name, rtf in speed.items():
        print(f"  {name:20} {rtf:7.2f}x")
    success = {}
    if args.seeds:
        print(f"scripted operators over {args.seeds} seeds:")
        for task in tasks:
            success[task] = expert_success(task, args.seeds)
            s = success[task]
            print(f"  {task:16} {s['successes']:3d}/{s['seeds']} = {s['rate']:.0%}  (mean {s['mean_ticks']:.0f} ticks)")
    path = write_results("sim", {"real_time_factor": {k: round(v, 3) for k, v in speed.items()},
                                 "simulated_seconds": args.seconds, "expert_success": success}, args.results_dir)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
