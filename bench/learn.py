"""Does a policy trained by this stack do the task? Closed-loop success in the twin, per task.

For each task: record scripted demonstrations in-process (seeds 0, 1, ...), train a π0 from
scratch with the CPU recipe (the ``small`` preset at the ``micro`` size, α = 0), and run it
closed loop through the deployed runtime (chunk scheduler + safety filter, 100 ms simulated
inference) on scenes no demonstration showed (seeds from 5000): success with its Wilson
interval, the share of ticks the safety filter limited, and the scripted expert and its plan
through the runtime (the oracle) on the same scenes. Success at intermediate checkpoints
gives the curve.

``--quick`` is the consistency check instead: a few demonstrations, trained until they fit,
evaluated closed loop on the very scenes they were recorded in (the twin is deterministic
per seed). A chain that is right reproduces them; one with a bug (alignment, normalisation,
delta actions, latency compensation, merging, filtering) does not (docs/results/learn.md).

  .venv/bin/python bench/learn.py                       # the full run (≈ 45 min per task on 2 cores)
  .venv/bin/python bench/learn.py --quick               # the consistency check (< 10 min)
  .venv/bin/python bench/learn.py --tasks lift_pot --steps 6000 --set optim.batch_size=16

Writes bench/results/learn.json (per task: demos, steps, training minutes, success, ci95,
limited fraction, seeds, ...); the runs' artifacts (datasets, checkpoints, traces, plots)
stay under --work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

os.environ.setdefault("MUJOCO_GL", "egl")

TASKS = ("grasp_vegetable", "lift_pot")
#: The committed run (docs/results/learn.md): the micro size steps 3× faster than small here, so an
#: hour's budget buys 36,000 steps (≈ 34 min of training per task on 2 cores).
FULL = {"demos": 50, "steps": 36_000, "eval_episodes": 20, "checkpoint_every": 12_000}
FULL_OVERRIDES = ("align.alpha=0", "policy.size=micro")
ANALYSIS = "<!-- analysis: kept when bench/learn.py --report rewrites the figures above -->"
QUICK = {"demos": 2, "steps": 2400, "checkpoint_every": 0}  # with CONSISTENCY_OVERRIDES


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the consistency check: fit a few demonstrations, "
                        "replay their scenes closed loop")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated twin tasks")
    parser.add_argument("--demos", type=int, default=None, help="demonstrations per task")
    parser.add_argument("--steps", type=int, default=None, help="training steps")
    parser.add_argument("--eval-episodes", type=int, default=FULL["eval_episodes"], help="held-out scenes")
    parser.add_argument("--eval-seed", type=int, default=5000, help="first held-out scene")
    parser.add_argument("--checkpoint-every", type=int, default=None, help="evaluate every N steps too (0: final)")
    parser.add_argument("--preset", default="small", help="training preset")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="training config override")
    parser.add_argument("--work", type=Path, default=Path("outputs/bench/learn"), help="datasets, runs, reports")
    parser.add_argument("--results-dir", type=Path, default=None, help="default: bench/results")
    parser.add_argument("--report", type=Path, default=None, help="also write <dir>/learn.md, learn.json and plots "
                        "(docs/results for the committed run)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()

    from sf_policy.eval.learn import CONSISTENCY_OVERRIDES, LearnSettings, run_learn
    from sf_policy.sim.tasks import TASKS as KNOWN

    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in KNOWN]
    if unknown:
        parser.error(f"--tasks: unknown {unknown}; known: {', '.join(KNOWN)}")
    defaults = QUICK if args.quick else FULL
    mode = "quick" if args.quick else "full"
    overrides = [*(CONSISTENCY_OVERRIDES if args.quick else FULL_OVERRIDES), *args.set]
    results = {}
    for task in tasks:
        settings = LearnSettings(
            task=task, demos=args.demos or defaults["demos"], steps=args.steps or defaults["steps"],
            preset=args.preset, overrides=overrides,
            eval_episodes=args.eval_episodes, eval_seed=args.eval_seed, seen=args.quick,
            noise_scale=0.0 if args.quick else 1.0,
            checkpoint_every=defaults["checkpoint_every"] if args.checkpoint_every is None else args.checkpoint_every)
        result = run_learn(settings, args.work / mode / task, progress=not args.no_progress)
        results[task] = result.to_dict()
        print(f"{task}: {result.successes}/{result.episodes} ({result.success:.0%}, 95 % CI "
              f"{result.ci95[0]:.0%}–{result.ci95[1]:.0%}) on {result.mode} scenes after {result.steps} steps "
              f"({result.train_minutes:.1f} min); limited {result.limited_fraction:.0%} of ticks; "
              f"oracle {result.oracle_success:.0%}", flush=True)
    path = write_results("learn", {"mode": mode, "preset": args.preset, "overrides": overrides, "tasks": results},
                         args.results_dir)
    print(f"results: {path}")
    if args.report is not None:
        write_report(json.loads(path.read_text()), args.report)
        print(f"report: {args.report / 'learn.md'}")
    return 0


def write_report(data: dict, out: Path) -> None:
    """learn.json (a copy), learn.md (the table) and learn_curve.png (success vs steps, 95 % CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "learn.json").write_text(json.dumps(data, indent=2))
    tasks = data["tasks"]
    scenes = "the scenes it was trained on (consistency check)" if data["mode"] == "quick" else "held-out scenes"
    lines = [f"| task | demos (trained on) | steps | training | success on {scenes} | 95 % CI (Wilson) | "
             "limited ticks | expert | oracle (expert plan via runtime) |", "|---|---|---|---|---|---|---|---|---|"]
    for task, r in tasks.items():
        trained = f" ({r['trained_on']})" if r.get("trained_on") not in (None, r["demos"]) else ""
        lines.append(f"| {task} | {r['demos']}{trained} | {r['steps']} | {r['train_minutes']:.0f} min | "
                     f"{r['successes']}/{r['episodes']} ({r['success']:.0%}) | {r['ci95'][0]:.0%}–{r['ci95'][1]:.0%} | "
                     f"{r['limited_fraction']:.0%} | {r['expert_success']:.0%} | {r['oracle_success']:.0%} |")
    details = []
    for task, r in tasks.items():
        seeds = r["eval_seeds"]
        curve = ", ".join(f"{p['step']}: {p['success']:.0%}" for p in r["by_step"])
        limits = r.get("limits") or {}
        worst = sorted(limits.get("by_joint", {}).items(), key=lambda kv: -max(kv[1].values()))[:3]
        details.append(f"- **{task}**: evaluated on seeds {seeds[0]}–{seeds[-1]}; success by training step "
                       f"{curve}; final loss {r['final_loss']:.4f}"
                       + (f", open-loop error on the held-out demonstrations {r['heldout_joint_mae_rad']:.3f} rad"
                          if r.get("heldout_joint_mae_rad") is not None else "")
                       + ("; most limited joints " + ", ".join(
                           f"{j} ({', '.join(f'{c} {v:.0%}' for c, v in causes.items())})" for j, causes in worst)
                          if worst else "")
                       + (f"; at the first frame of its training scenes, its chunk end is off the demonstration's "
                          f"by {r['scene_reading']['error_ratio']:.2f}× a scene-blind policy's error, and showing "
                          f"it another scene's cameras moves it by {r['scene_reading']['swap_ratio']:.2f}× the "
                          "spread between scenes (a policy that reads the scene: near 0 and about 1; "
                          "a blind one: 1 or more and 0)"
                          if r.get("scene_reading") else "") + ".")
    machine = data["machine"]
    header = (f"# Learning in the twin: `bench/learn.py` ({data['mode']})\n\nMachine: {machine['cpu']}, "
              f"{machine['cores']} cores, no GPU; torch {machine['packages'].get('torch', '?')}; {data['time']}. "
              f"Preset `{data['preset']}` with {' '.join(data['overrides'])}"
              + (", deterministic sampling (noise scale 0)" if data["mode"] == "quick" else "") + ".\n\n")
    # The analysis written under the figures survives a rerun that rewrites them.
    previous = (out / "learn.md").read_text() if (out / "learn.md").is_file() else ""
    kept = previous[previous.index(ANALYSIS):] if ANALYSIS in previous else ""
    (out / "learn.md").write_text(header + "\n".join(lines) + "\n\n" + "\n".join(details)
                                  + "\n\n![success vs steps](learn_curve.png)\n" + (f"\n{kept}" if kept else ""))
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for task, r in tasks.items():
        steps = [p["step"] for p in r["by_step"]]
        rate = [p["success"] for p in r["by_step"]]
        err = [[p["success"] - p["ci95"][0] for p in r["by_step"]], [p["ci95"][1] - p["success"] for p in r["by_step"]]]
        ax.errorbar(steps, rate, yerr=err, marker="o", capsize=4, label=task)
    ax.set_xlabel("training steps")
    ax.set_ylabel(f"success ({tasks and next(iter(tasks.values()))['episodes']} scenes, 95 % CI)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "learn_curve.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
