"""Driver-side upsampling in the twin: the arms' jerk and tracking with 30 Hz targets sent as
they come (zero-order hold) and along the B-spline at 200 Hz (the arm driver's
``command_rate``, sf_policy/runtime/upsample.py).

The scripted expert's 30 Hz targets of a seeded episode are recorded once, then replayed open
loop into the twin (same seed, same scene) both ways, then the last target held for 1 s. Per
way: RMS jerk of the measured arm joints (second difference of their velocities at 200 Hz, rad/s³), the servo's tracking error against the command it was
sent at that moment, the lag behind the 30 Hz targets (the best-fitting delay of the measured
joints), and whether the episode still succeeds.

  .venv/bin/python bench/upsample.py [--task lift_pot] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

os.environ.setdefault("MUJOCO_GL", "egl")
RATE = 200.0  # the driver's command rate
HOLD_TICKS = 30  # after the last target, as long again as the episode's success check may need


def expert_targets(task: str, seed: int) -> np.ndarray:
    from sf_policy.sim.experts import make_expert
    from sf_policy.sim.twin import Twin

    twin = Twin(task, cameras=())
    try:
        twin.reset(seed)
        expert, targets = make_expert(twin), []
        while not twin.done() and not twin.success():
            targets.append(np.asarray(expert.act(), np.float64))
            twin.step(targets[-1])
        return np.array(targets)
    finally:
        twin.close()


def replay(task: str, seed: int, targets: np.ndarray, upsample: bool) -> dict:
    from sf_policy.embodiment import GRIPPER_INDICES, STATE_DIM
    from sf_policy.runtime.upsample import BSplineUpsampler
    from sf_policy.sim.twin import CONTROL_HZ, Twin

    arms = [i for i in range(STATE_DIM) if i not in GRIPPER_INDICES]
    twin = Twin(task, cameras=())
    up = BSplineUpsampler(1.0 / CONTROL_HZ)
    measured, velocity, sent, success = [], [], [], False
    targets = np.concatenate([targets, np.repeat(targets[-1:], HOLD_TICKS, axis=0)])  # time to settle
    per_tick = int(RATE / CONTROL_HZ) + 1
    try:
        twin.reset(seed)
        t = 0.0
        for k, target in enumerate(targets):
            up.push(k / CONTROL_HZ, target)
            while t < (k + 1) / CONTROL_HZ - 1e-9:
                command = up.sample(t) if upsample else target
                twin.set_master(command)
                twin.advance(1.0 / RATE)
                t += 1.0 / RATE
                measured.append(twin.puppet_state()[arms])
                velocity.append(twin.puppet_velocity()[arms])
                sent.append(np.asarray(command)[arms])
            success = success or twin.success()
    finally:
        twin.close()
    measured, velocity, sent = np.array(measured), np.array(velocity), np.array(sent)
    jerk = np.diff(velocity, 2, axis=0) * RATE ** 2  # from the joint velocities: less noise than 3 position differences
    reference = np.repeat(targets[:, arms], per_tick, axis=0)[:len(measured)]
    lags = range(0, 40)
    errors = [np.sqrt(np.mean((measured[lag:] - reference[:len(measured) - lag]) ** 2)) for lag in lags]
    best = int(np.argmin(errors))
    return {"jerk_rms_rad_s3": float(np.sqrt(np.mean(jerk ** 2))), "jerk_max_rad_s3": float(np.abs(jerk).max()),
            "tracking_rms_rad": float(np.sqrt(np.mean((measured - sent) ** 2))),
            "lag_ms": best / RATE * 1e3, "success": bool(success)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="lift_pot")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        targets = expert_targets(args.task, seed)
        for way, upsample in (("hold 30 Hz", False), ("B-spline 200 Hz", True)):
            rows.append({"seed": seed, "way": way, **replay(args.task, seed, targets, upsample)})
            r = rows[-1]
            print(f"seed {seed} {way:16s} jerk RMS {r['jerk_rms_rad_s3']:8.0f} max {r['jerk_max_rad_s3']:9.0f} "
                  f"rad/s³  tracking {r['tracking_rms_rad']:.4f} rad  lag {r['lag_ms']:.0f} ms  "
                  f"success {r['success']}", flush=True)
    print(f"written: {write_results('upsample', {'task': args.task, 'rate_hz': RATE, 'rows': rows}, args.results_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
