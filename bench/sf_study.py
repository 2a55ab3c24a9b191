"""What does Spatial Forcing do here? The baseline against SF with a teacher that knows 3-D.

Arms, all the CPU recipe (the ``small`` preset at ``policy.size=micro``) trained for the same
steps on the same twin demonstrations, differing only in the alignment:

* ``baseline``: α = 0;
* ``sf_geometry``: α = 0.5 toward the twin's geometry teacher (exact 3-D: sf_policy/teacher/geometry.py);
* ``sf_random``: α = 0.5 toward the random tiny VGGT (the control: an alignment target that
  knows no 3-D, so what it changes is the regulariser, not the knowledge);
* ``sf_geometry_adaptive``: the geometry teacher with the appendix-G layer gating instead of
  the fixed layer.

Each is trained with several seeds (init and data order) and evaluated closed loop at
intermediate checkpoints on the same held-out scenes with the same sampling noise, so arms
are paired scene by scene (exact McNemar on the discordant scenes). The smaller dataset
sizes give data efficiency; the depth probe (``sf eval depth-probe``) reads metric depth
from each final checkpoint's aligned layer.

  .venv/bin/python bench/sf_study.py                    # the full study (see FULL; ≈ 2 h on 2 cores)
  .venv/bin/python bench/sf_study.py --quick            # the plumbing, one seed per arm (< 10 min)
  .venv/bin/python bench/sf_study.py --report docs/results   # also sf_study.md and the figures
  .venv/bin/python bench/sf_study.py --recording-cost 6      # what recording the depth costs

Jobs run in ``--workers`` processes of one thread each (two on this 2-core machine); a job
that finished with the same settings is reused, so an interrupted study resumes. Writes
bench/results/sf_study.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

os.environ.setdefault("MUJOCO_GL", "egl")

ARMS = {
    "baseline": ("align.alpha=0",),
    "sf_geometry": ("align.alpha=0.5", "teacher.kind=geometry"),
    "sf_random": ("align.alpha=0.5", "teacher.kind=random"),
    "sf_geometry_adaptive": ("align.alpha=0.5", "teacher.kind=geometry", "align.adaptive=true"),
}
LABELS = {"baseline": "baseline (α = 0)", "sf_geometry": "SF, geometry teacher",
          "sf_random": "SF, random teacher (control)", "sf_geometry_adaptive": "SF, geometry, adaptive layer"}
MAIN_ARMS = ("baseline", "sf_geometry", "sf_random")
#: Paired comparisons (arm, against): SF against the baseline, the knowledge against the control,
#: the adaptive gating against the fixed layer.
PAIRS = (("sf_geometry", "baseline"), ("sf_random", "baseline"), ("sf_geometry_adaptive", "baseline"),
         ("sf_geometry", "sf_random"), ("sf_geometry_adaptive", "sf_geometry"))
COMMON = ("policy.size=micro", "data.heldout_episodes=0", "data.workers=0")
#: The committed study: 3 seeds of the three main arms on 50 demonstrations, evaluated at 3
#: checkpoints; 3 seeds of each on 16 (data efficiency) and one of the adaptive gating, evaluated
#: at the end (closed-loop evaluation costs more than training here: 20 scenes take 2-3 min).
FULL = {"task": "lift_pot", "demos": (16, 50), "steps": 6000, "checkpoints": 3, "seeds": 3, "small_seeds": 3,
        "adaptive_seeds": 1, "eval_episodes": 20, "probe_episodes": 6, "probe_steps": 300}
QUICK = {"task": "lift_pot", "demos": (2, 3), "steps": 300, "checkpoints": 2, "seeds": 1, "small_seeds": 1,
         "adaptive_seeds": 1, "eval_episodes": 3, "probe_episodes": 2, "probe_steps": 30}
EVAL_SEED = 5000
ANALYSIS = "<!-- analysis: kept when bench/sf_study.py --report rewrites the figures above -->"


@dataclass(frozen=True)
class Job:
    arm: str
    seed: int
    demos: int
    steps: int
    checkpoints: int
    task: str
    eval_episodes: int
    dataset: str
    work: str

    @property
    def name(self) -> str:
        return f"{self.arm}_d{self.demos}_s{self.seed}"

    @property
    def steps_evaluated(self) -> list[int]:
        every = self.steps // self.checkpoints
        return [every * (k + 1) for k in range(self.checkpoints - 1)] + [self.steps]

    def overrides(self) -> list[str]:
        every = self.steps // self.checkpoints
        return [f"data.root={self.dataset}", f"output_dir={Path(self.work) / 'train'}", f"name={self.name}",
                f"optim.steps={self.steps}", f"seed={self.seed}", *COMMON, *ARMS[self.arm],
                f"log.save_every={every}", f"log.keep_last={self.checkpoints + 1}", "log.eval_every=0"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed per arm, a few hundred steps: the plumbing")
    parser.add_argument("--workers", type=int, default=2, help="jobs at once (one thread each)")
    parser.add_argument("--work", type=Path, default=Path("outputs/bench/sf_study"), help="datasets, runs, evals")
    parser.add_argument("--results-dir", type=Path, default=None, help="default: bench/results")
    parser.add_argument("--report", type=Path, default=None, help="also write <dir>/sf_study.md and its figures")
    parser.add_argument("--recording-cost", type=int, default=0, metavar="EPISODES",
                        help="only measure recording with and without the depth, side by side, and exit")
    parser.add_argument("--job", type=Path, default=None, help=argparse.SUPPRESS)  # a worker's one job
    args = parser.parse_args()
    if args.job is not None:
        return run_job(Job(**json.loads(args.job.read_text())))
    if args.recording_cost:
        path = write_results("sf_study_recording", recording_cost(FULL["task"], args.recording_cost),
                             args.results_dir)
        print(path.read_text())
        return 0

    plan = QUICK if args.quick else FULL
    mode = "quick" if args.quick else "full"
    work = (args.work / mode).resolve()
    started = time.perf_counter()
    datasets = {n: record_dataset(plan["task"], n, work / f"dataset_{n}") for n in plan["demos"]}
    jobs = plan_jobs(plan, datasets, work)
    prepare_caches(jobs)
    results = run_jobs(jobs, work, args.workers)
    probe = depth_probe([r for r in results if r["demos"] == max(plan["demos"])], plan, work)
    data = summarise(plan, mode, datasets, results, probe, (time.perf_counter() - started) / 60)
    path = write_results("sf_study", data, args.results_dir)
    print(f"results: {path}")
    for line in headline(data):
        print(line)
    if args.report is not None:
        write_report(json.loads(path.read_text()), args.report)
        print(f"report: {args.report / 'sf_study.md'}")
    return 0


# --------------------------------------------------------------------------------------------
# Plan, data, teacher caches


def record_dataset(task: str, demos: int, root: Path) -> dict:
    """``demos`` scripted demonstrations with the twin's depth (seeds from 0; reused if there)."""
    from sf_policy.data.reader import DatasetReader
    from sf_policy.sim.record_without_ros import record_expert

    if (root / "meta" / "info.json").is_file() and (root / "geometry").is_dir():
        with DatasetReader(root) as reader:
            seeds = [ep.sim_seed for ep in reader.episodes]
        if len(seeds) == demos:
            return {"root": str(root), "seeds": seeds, "record_seconds": None}
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    print(f"recording {demos} {task} demonstrations with depth into {root}", flush=True)
    seeds = record_expert(root, task=task, episodes=demos, seed=0, geometry=True)
    return {"root": str(root), "seeds": seeds, "record_seconds": round(time.perf_counter() - t0, 1)}


def recording_cost(task: str, episodes: int) -> dict:
    """Milliseconds per recorded frame without and with the geometry: ``episodes`` episodes in one
    recording each, alternately, twice (the same seeds, so the same frames: the difference is
    the depth pass and its files)."""
    import shutil
    import tempfile

    from sf_policy.data.reader import DatasetReader
    from sf_policy.sim.record_without_ros import record_expert

    seconds = {"plain": 0.0, "geometry": 0.0}
    frames = {"plain": 0, "geometry": 0}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(2):
            for mode in ("plain", "geometry"):
                root = Path(tmp) / f"{mode}_{round_}"
                t0 = time.perf_counter()
                record_expert(root, task=task, episodes=episodes, seed=0, geometry=mode == "geometry")
                seconds[mode] += time.perf_counter() - t0
                with DatasetReader(root) as reader:
                    frames[mode] += reader.num_frames
                shutil.rmtree(root)
    per_frame = {mode: seconds[mode] / frames[mode] * 1e3 for mode in seconds}
    return {"task": task, "episodes": 2 * episodes, "frames": frames["plain"], "ms_per_frame": per_frame,
            "geometry_overhead": per_frame["geometry"] / per_frame["plain"] - 1,
            "what": "in-process record_expert at 224×224, three cameras, video encoding included; plain and "
                    "with geometry in turn, twice"}


def plan_jobs(plan: dict, datasets: dict, work: Path) -> list[Job]:
    largest = max(plan["demos"])
    jobs = []

    def add(arm: str, seeds: int, demos: int, checkpoints: int) -> None:
        jobs.extend(Job(arm, seed, demos, plan["steps"], checkpoints, plan["task"], plan["eval_episodes"],
                        datasets[demos]["root"], str(work)) for seed in range(seeds))

    for arm in MAIN_ARMS:
        add(arm, plan["seeds"], largest, plan["checkpoints"])
    add("sf_geometry_adaptive", plan["adaptive_seeds"], largest, 1)
    for demos in sorted(plan["demos"]):
        if demos != largest:
            for arm in MAIN_ARMS:
                add(arm, plan["small_seeds"], demos, 1)
    return jobs


def prepare_caches(jobs: list[Job]) -> None:
    """Build each (dataset, teacher) cache once, before the workers start (one builder per cache)."""
    from sf_policy.train.config import load_config
    from sf_policy.train.targets import build_cache, vla_grid

    done = set()
    for job in jobs:
        cfg = load_config("small", job.overrides())
        key = (job.dataset, cfg.teacher.kind, cfg.teacher.seed)  # every training seed shares its teacher
        if not cfg.aligned or key in done:
            continue
        done.add(key)
        t0 = time.perf_counter()
        cache = build_cache(job.dataset, cfg.teacher, grid=vla_grid(cfg.policy), dim=cfg.align.teacher_dim,
                            progress=False)
        print(f"teacher cache ({cfg.teacher.kind}) for {Path(job.dataset).name}: {cache.num_frames} frames, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)


# --------------------------------------------------------------------------------------------
# Jobs: train one arm/seed, evaluate its checkpoints (in a worker process)


def run_jobs(jobs: list[Job], work: Path, workers: int) -> list[dict]:
    (work / "jobs").mkdir(parents=True, exist_ok=True)

    def one(job: Job) -> dict:
        spec, result, log = (work / "jobs" / f"{job.name}{ext}" for ext in (".json", ".result.json", ".log"))
        if result.is_file() and json.loads(result.read_text())["job"] == asdict(job):
            return json.loads(result.read_text()) | {"reused": True}
        spec.write_text(json.dumps(asdict(job)))
        env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        with open(log, "w") as out:
            code = subprocess.call([sys.executable, __file__, "--job", str(spec)], stdout=out, stderr=subprocess.STDOUT,
                                   env=env)
        if code != 0:
            raise RuntimeError(f"job {job.name} failed (exit {code}); see {log}")
        data = json.loads(result.read_text())
        print(f"{job.name}: " + ", ".join(f"{p['step']}: {p['successes']}/{p['episodes']}" for p in data["by_step"])
              + f"  ({(time.perf_counter() - t0) / 60:.1f} min)", flush=True)
        return data

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, jobs))


def run_job(job: Job) -> int:
    import torch

    from sf_policy.eval.learn import TRAIN_TIME_FILE, finished_run, train_minutes
    from sf_policy.eval.sim import evaluate_checkpoints
    from sf_policy.train.checkpoint import step_dir
    from sf_policy.train.config import load_config
    from sf_policy.train.loop import train

    torch.set_num_threads(1)
    cfg = load_config("small", job.overrides())
    run = Path(job.work) / "train" / job.name
    if not finished_run(run, cfg):
        import shutil

        shutil.rmtree(run, ignore_errors=True)
        t0 = time.perf_counter()
        train(cfg, progress=False)
        (run / TRAIN_TIME_FILE).write_text(json.dumps({"train_minutes": (time.perf_counter() - t0) / 60}))
    by_step = []
    for step in job.steps_evaluated:
        result = evaluate_checkpoints([step_dir(run, step)], job.task, job.eval_episodes, EVAL_SEED,
                                      out=Path(job.work) / "eval" / job.name / f"step_{step}",
                                      labels=[f"{job.name} @ {step}"], expert=False, plots=0, progress=False)[0]
        by_step.append({"step": step, "successes": result.successes, "episodes": len(result.episodes),
                        "success": result.success_rate, "ci95": [round(v, 4) for v in result.interval],
                        "outcomes": {str(e.seed): bool(e.success) for e in result.episodes},
                        "limited_fraction": round(result.summary()["limited_fraction"], 4)})
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = {k: v for row in metrics for k, v in row.items()}
    out = {"job": asdict(job), "arm": job.arm, "seed": job.seed, "demos": job.demos, "steps": job.steps,
           "train_minutes": round(train_minutes(run), 2), "checkpoint": str(step_dir(run, job.steps)),
           "final_action_loss": last.get("action"), "final_align_loss": last.get("align"), "by_step": by_step}
    Path(job.work, "jobs", f"{job.name}.result.json").write_text(json.dumps(out, indent=1))
    return 0


# --------------------------------------------------------------------------------------------
# Depth probe on the final checkpoints


def depth_probe(results: list[dict], plan: dict, work: Path) -> dict:
    """Metric depth read from each final checkpoint's aligned layer (the same layer for all)."""
    from sf_policy.eval.depth_probe.frames import load_or_collect
    from sf_policy.eval.depth_probe.run import REPORT_FILE, run_depth_probe
    from sf_policy.eval.depth_probe.train import ProbeConfig
    from sf_policy.train.checkpoint import resolve_checkpoint

    ordered = sorted(results, key=lambda r: (list(ARMS).index(r["arm"]), r["seed"]))
    config = ProbeConfig(steps=plan["probe_steps"])
    previous = work / "depth_probe" / REPORT_FILE
    report = json.loads(previous.read_text()) if previous.is_file() else None
    if not (report and report["probe"] == config.to_dict()  # the same probe of the same checkpoints: reused
            and [c["checkpoint"] for c in report["checkpoints"]] == [str(resolve_checkpoint(r["checkpoint"]))
                                                                     for r in ordered]):
        frames = load_or_collect(work / "probe_frames.npz", task=plan["task"], episodes=plan["probe_episodes"],
                                 seed=9000, width=224, height=224, every=5)
        report = run_depth_probe([r["checkpoint"] for r in ordered], frames, out=work / "depth_probe",
                                 config=config, log=print)
    for r, probed in zip(ordered, report["checkpoints"], strict=True):
        probed["arm"], probed["seed"] = r["arm"], r["seed"]
    return report


# --------------------------------------------------------------------------------------------
# Summary and statistics


def summarise(plan: dict, mode: str, datasets: dict, results: list[dict], probe: dict, minutes: float) -> dict:
    from sf_policy.eval.sim import mcnemar, wilson_interval

    largest = max(plan["demos"])
    arms: dict = {}
    for demos in sorted(plan["demos"]):
        for arm in ARMS:
            runs = [r for r in results if r["arm"] == arm and r["demos"] == demos]
            if not runs:
                continue
            curve = []
            for k, step in enumerate(p["step"] for p in runs[0]["by_step"]):
                wins = sum(r["by_step"][k]["successes"] for r in runs)
                n = sum(r["by_step"][k]["episodes"] for r in runs)
                curve.append({"step": step, "successes": wins, "episodes": n, "success": wins / n,
                              "ci95": [round(v, 4) for v in wilson_interval(wins, n)],
                              "per_seed": [r["by_step"][k]["success"] for r in runs],
                              "limited_fraction": round(sum(r["by_step"][k]["limited_fraction"] for r in runs)
                                                        / len(runs), 4)})
            arms[f"{arm}@{demos}"] = {"arm": arm, "label": LABELS[arm], "demos": demos, "seeds": [r["seed"] for r in runs],
                                      "train_minutes": [r["train_minutes"] for r in runs], "curve": curve,
                                      "final_action_loss": [r["final_action_loss"] for r in runs],
                                      "final_align_loss": [r["final_align_loss"] for r in runs]}
    comparisons = []
    for demos in sorted(plan["demos"]):
        for arm, versus in PAIRS:
            base = {r["seed"]: r for r in results if r["arm"] == versus and r["demos"] == demos}
            runs = [r for r in results if r["arm"] == arm and r["demos"] == demos and r["seed"] in base]
            for step in [p["step"] for p in runs[0]["by_step"]] if runs else []:
                mine = {r["seed"]: _at(r, step)["outcomes"] for r in runs}
                theirs = {seed: _at(base[seed], step)["outcomes"] for seed in mine}
                pairs = [(mine[seed][scene], theirs[seed][scene]) for seed in mine for scene in mine[seed]]
                comparisons.append({"arm": arm, "versus": versus, "demos": demos, "step": step,
                                    "seeds": [r["seed"] for r in runs], **mcnemar(pairs)})
    probe_rows = [{"arm": c["arm"], "seed": c["seed"], "label": c["label"], **c["metrics"]["overall"]}
                  for c in probe["checkpoints"]]
    return {"mode": mode, "plan": {k: list(v) if isinstance(v, tuple) else v for k, v in plan.items()},
            "preset": "small", "common_overrides": list(COMMON), "arms_overrides": {k: list(v) for k, v in ARMS.items()},
            "eval_seeds": [EVAL_SEED, EVAL_SEED + plan["eval_episodes"] - 1], "largest_demos": largest,
            "datasets": {str(k): v for k, v in datasets.items()}, "minutes": round(minutes, 1),
            "jobs": len(results), "reused_jobs": sum(bool(r.get("reused")) for r in results), "arms": arms,
            "paired": comparisons,
            "depth_probe": {"layer": probe["layer"], "split": probe["split"], "frames": probe["frames"]["count"],
                            "constant_baseline": probe["constant_baseline"]["overall"], "checkpoints": probe_rows}}


def _at(result: dict, step: int) -> dict:
    return next(p for p in result["by_step"] if p["step"] == step)


def headline(data: dict) -> list[str]:
    lines = []
    for row in data["arms"].values():
        last = row["curve"][-1]
        lines.append(f"{row['label']:<32} {row['demos']:>3} demos, seeds {row['seeds']}: "
                     + ", ".join(f"{p['step']}: {p['success']:.0%}" for p in row["curve"])
                     + f"  (final {last['successes']}/{last['episodes']}, 95 % CI "
                     f"{last['ci95'][0]:.0%}–{last['ci95'][1]:.0%})")
    for c in data["paired"]:
        lines.append(f"{c['arm']} vs {c['versus']}, {c['demos']} demos @ {c['step']}: only {c['arm']} {c['only_a']}, "
                     f"only {c['versus']} {c['only_b']} of {c['scenes']} paired scenes (McNemar p = {c['p_value']:.3f})")
    return lines


# --------------------------------------------------------------------------------------------
# Report


def write_report(data: dict, out: Path) -> None:
    """sf_study.json (a copy), sf_study.md and three figures under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "sf_study.json").write_text(json.dumps(data, indent=2))
    plot_curves(data, out / "sf_study_steps.png")
    plot_demos(data, out / "sf_study_demos.png")
    plot_probe(data, out / "sf_study_depth_probe.png")
    plan, machine = data["plan"], data["machine"]
    largest = data["largest_demos"]
    steps = sorted({p["step"] for row in data["arms"].values() for p in row["curve"]})
    lines = [f"# Spatial Forcing's effect in the twin: `bench/sf_study.py` ({data['mode']})", "",
             f"Machine: {machine['cpu']}, {machine['cores']} cores, no GPU; torch "
             f"{machine['packages'].get('torch', '?')}; {data['time']}; {data['minutes']:.0f} min"
             + (f" for this invocation ({data['reused_jobs']} of {data['jobs']} jobs reused from an earlier one)"
                if data.get("reused_jobs") else " in all") + ". "
             f"Task {plan['task']}; preset `small` with {' '.join(data['common_overrides'])}; {plan['steps']} steps; "
             f"closed loop on held-out scenes (seeds {data['eval_seeds'][0]}–{data['eval_seeds'][1]}) through the "
             "deployed runtime (100 ms simulated latency), the same sampling noise for every arm.", "",
             "## Success vs training steps", "",
             "| arm | demos | seeds | " + " | ".join(f"@{s}" for s in steps) + " | final 95 % CI (Wilson, pooled) | "
             "limited ticks |", "|---|---|---|" + "---|" * len(steps) + "---|---|"]
    for row in data["arms"].values():
        last = row["curve"][-1]
        at = {p["step"]: p for p in row["curve"]}
        cells = " | ".join(f"{at[s]['successes']}/{at[s]['episodes']} ({at[s]['success']:.0%})" if s in at else "–"
                           for s in steps)
        lines.append(f"| {row['label']} | {row['demos']} | {', '.join(map(str, row['seeds']))} | {cells} | "
                     f"{last['ci95'][0]:.0%}–{last['ci95'][1]:.0%} | {last['limited_fraction']:.0%} |")
    lines += ["", "Per seed (final checkpoint): " + "; ".join(
        f"{row['label']} @ {row['demos']}: " + ", ".join(f"{v:.0%}" for v in row["curve"][-1]["per_seed"])
        for row in data["arms"].values()) + ".", "", "![success vs steps](sf_study_steps.png)", "",
        "## Paired comparisons", "",
        "Scene by scene on the same held-out scenes (seed k of one arm against seed k of the other, the same "
        "sampling noise), exact two-sided McNemar test on the scenes only one of them solved.", "",
        "| arm | against | demos | step | only the arm | only the other | both | neither | p |",
        "|---|---|---|---|---|---|---|---|---|"]
    for c in data["paired"]:
        lines.append(f"| {LABELS[c['arm']]} | {LABELS[c['versus']]} | {c['demos']} | {c['step']} | {c['only_a']} | "
                     f"{c['only_b']} | {c['both']} | {c['neither']} | {c['p_value']:.3f} |")
    sizes = sorted({row["demos"] for row in data["arms"].values()})
    lines += ["", "## Data efficiency", "", f"Success after {plan['steps']} steps, pooled over the seeds run at each "
              "size.", "", "| arm | " + " | ".join(f"{n} demos" for n in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for arm in MAIN_ARMS:
        final = {row["demos"]: row["curve"][-1] for row in data["arms"].values() if row["arm"] == arm}
        lines.append(f"| {LABELS[arm]} | " + " | ".join(
            f"{final[n]['successes']}/{final[n]['episodes']} ({final[n]['success']:.0%})" if n in final else "–"
            for n in sizes) + " |")
    split = data["depth_probe"]["split"]
    lines += ["", "![success vs demonstrations](sf_study_demos.png)", "",
              "## Depth probe", "",
              f"A DPT-style head trained on each frozen final checkpoint's layer {data['depth_probe']['layer']} "
              f"tokens ({data['depth_probe']['frames']} frames of the twin's expert: probe trained on scenes "
              f"{_seeds(split['train_episodes'])}, tested on {_seeds(split['test_episodes'])}), for the arms trained "
              f"on {largest} demonstrations. Lower AbsRel / RMSE and higher δ<1.25: more metric depth in the "
              "tokens.", "",
              "| checkpoint | AbsRel | RMSE (m) | δ<1.25 |", "|---|---|---|---|"]
    const = data["depth_probe"]["constant_baseline"]
    for c in data["depth_probe"]["checkpoints"]:
        lines.append(f"| {LABELS[c['arm']]}, seed {c['seed']} | {c['abs_rel']:.3f} | {c['rmse']:.3f} | "
                     f"{c['delta1']:.3f} |")
    lines.append(f"| constant per camera (no depth information) | {const['abs_rel']:.3f} | {const['rmse']:.3f} | "
                 f"{const['delta1']:.3f} |")
    lines += ["", "![depth probe](sf_study_depth_probe.png)", ""]
    previous = (out / "sf_study.md").read_text() if (out / "sf_study.md").is_file() else ""
    kept = previous[previous.index(ANALYSIS):] if ANALYSIS in previous else ANALYSIS + "\n"
    (out / "sf_study.md").write_text("\n".join(lines) + "\n" + kept)


def _seeds(seeds: list[int]) -> str:
    return f"{seeds[0]}–{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(data: dict, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    shift = data["plan"]["steps"] / 150  # arms side by side, so the intervals do not hide each other
    for k, row in enumerate(r for r in data["arms"].values() if r["demos"] == data["largest_demos"]):
        steps = [p["step"] + (k - 1.5) * shift for p in row["curve"]]
        seeds = len(row["seeds"])
        rate = [p["success"] for p in row["curve"]]
        err = [[p["success"] - p["ci95"][0] for p in row["curve"]], [p["ci95"][1] - p["success"] for p in row["curve"]]]
        ax.errorbar(steps, rate, yerr=err, marker="o", capsize=4, label=f"{row['label']} ({seeds} seed{'s' if seeds > 1 else ''})")
    ax.set_xlabel("training steps")
    ax.set_ylabel("success, pooled over seeds (95 % CI)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    ax.set_title(f"{data['plan']['task']}, {data['largest_demos']} demonstrations")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_demos(data: dict, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.4, 3.4))
    for arm in MAIN_ARMS:
        rows = sorted((r for r in data["arms"].values() if r["arm"] == arm), key=lambda r: r["demos"])
        finals = [r["curve"][-1] for r in rows]
        ax.errorbar([r["demos"] for r in rows], [p["success"] for p in finals], marker="o", capsize=4,
                    yerr=[[p["success"] - p["ci95"][0] for p in finals], [p["ci95"][1] - p["success"] for p in finals]],
                    label=LABELS[arm])
    ax.set_xlabel("demonstrations")
    ax.set_ylabel(f"success after {data['plan']['steps']} steps (95 % CI)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_probe(data: dict, path: Path) -> None:
    plt = _plt()
    rows = data["depth_probe"]["checkpoints"]
    fig, ax = plt.subplots(figsize=(2.4 + 0.7 * len(rows), 4.0))
    ax.bar(range(len(rows)), [r["abs_rel"] for r in rows], color=[f"C{list(ARMS).index(r['arm'])}" for r in rows])
    ax.axhline(data["depth_probe"]["constant_baseline"]["abs_rel"], color="k", ls="--", lw=1, label="constant")
    ax.set_xticks(range(len(rows)), [f"{r['arm']}\nseed {r['seed']}" for r in rows], rotation=60, fontsize=7)
    ax.set_ylabel("depth probe AbsRel (↓)")
    ax.set_title("metric depth read from the aligned layer", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
