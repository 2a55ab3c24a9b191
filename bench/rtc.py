"""Real-time chunking against blending and plain switching: closed loop in the twin, and what
the guidance costs.

Closed loop (``--checkpoint``, a learned policy, e.g. from bench/learn.py): the same held-out
scenes (seeds from ``--seed``) through the deployed runtime (chunk scheduler + safety filter)
at simulated inference latencies of 100, 200 and 300 ms (3, 6, 9 ticks), for the scheduler's
three ways of joining chunks: ``replace`` (no merge), ``blend`` (the linear cross-fade) and
``rtc`` (sf_policy/model/rtc.py). Per row: success with its Wilson interval, time to success,
the chunk-boundary jump (largest change of an arm joint's command at the ticks a chunk took
over, rad), the chunk disagreement (at each merge, the largest |new chunk − plan| over the
steps both cover: how much consecutive chunks disagree, which blending hides and RTC should
remove), jerk (RMS of the commands' third difference / period^3, rad/s^3, arm joints) and
the share of ticks the safety filter limited. The flow noise is seeded per row, so the rows
differ by the merge rule only.

Inpainting (open loop, the same checkpoint): on observations of held-out scenes, how much
closer the guided chunk comes to the chunk it continues, unguided vs β = 5, 20, 100.

Cost: one chunk of the tiny π0 with and without guidance, side by side on this
machine (a ratio; absolute times only from a GPU).

  .venv/bin/python bench/rtc.py --checkpoint RUN/checkpoints/step_024000 --episodes 10
  .venv/bin/python bench/rtc.py --parts cost

Writes bench/results/rtc.json; ``--report DIR`` also writes DIR/rtc.md (docs/results for the
committed run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_results  # noqa: E402

os.environ.setdefault("MUJOCO_GL", "egl")

MODES = ("replace", "blend", "rtc")
LATENCIES_MS = (100, 200, 300)


def arm_columns() -> np.ndarray:
    from sf_policy.embodiment import GRIPPER_INDICES, STATE_DIM

    return np.array([i for i in range(STATE_DIM) if i not in GRIPPER_INDICES])


def smoothness(traces, period: float) -> dict:
    """Arm joints only. The chunk-boundary jump: the largest change of the runtime's target (the
    plan, before the safety filter, which would hide a jump behind its speed limit) at the ticks
    a chunk took over. Jerk: of the commands the arms got."""
    arms = arm_columns()
    jumps, jerks = [], []
    for trace in traces:
        arrays = trace.arrays()
        target, merged = arrays["target"][:, arms], arrays["merged"].astype(bool)
        planned = np.isfinite(target).all(axis=1)
        for k in np.flatnonzero(merged[1:] & planned[1:] & planned[:-1]) + 1:
            jumps.append(float(np.abs(target[k] - target[k - 1]).max()))
        command = arrays["command"][:, arms]
        valid = command[np.isfinite(command).all(axis=1)]
        if len(valid) > 3:
            jerks.append(np.diff(valid, n=3, axis=0) / period ** 3)
    jerk = np.concatenate(jerks) if jerks else np.zeros((0, len(arms)))
    return {"boundary_jump_max_rad": max(jumps, default=0.0),
            "boundary_jump_mean_rad": float(np.mean(jumps)) if jumps else 0.0,
            "boundaries": len(jumps),
            "jerk_rms_rad_s3": float(np.sqrt(np.mean(jerk ** 2))) if jerk.size else 0.0}


def closed_loop(checkpoint: str, task: str, episodes: int, seed: int, num_steps: int, progress: bool,
                max_ticks: int | None = None) -> list[dict]:
    import torch

    from sf_policy.eval.sim import PERIOD, evaluate
    from sf_policy.runtime.config import RuntimeConfig
    from sf_policy.runtime.inference import load_for_inference
    from sf_policy.runtime.scheduler import policy_infer

    policy = load_for_inference(checkpoint, device="cpu")
    rows = []
    for latency_ms in LATENCIES_MS:
        ticks = round(latency_ms / 1000 / PERIOD)
        for mode in MODES:
            torch.manual_seed(seed)
            started = time.perf_counter()
            result = evaluate(policy_infer(policy, num_steps), task, episodes, seed, label=f"{mode}@{latency_ms}ms",
                              checkpoint=checkpoint, latency_ticks=ticks, runtime=RuntimeConfig.deployed(mode=mode),
                              max_ticks=max_ticks, plots=0, progress=progress)
            summary = result.summary()
            rows.append({"mode": mode, "latency_ms": latency_ms, "latency_ticks": ticks, "episodes": episodes,
                         "seeds": summary["seeds"], "successes": summary["successes"],
                         "success_rate": summary["success_rate"], "ci95": summary["ci95"],
                         "time_to_success_s": summary["mean_success_seconds"],
                         "limited_fraction": summary["limited_fraction"], "held_fraction": summary["held_fraction"],
                         "estops": [e.estop for e in result.episodes if e.estop],
                         "disagreement_rad": float(np.mean([e.disagreement_rad for e in result.episodes
                                                            if e.disagreement_rad is not None] or [np.nan])),
                         **smoothness(result.traces, PERIOD), "wall_s": round(time.perf_counter() - started, 1)})
            print(f"{mode:8s} {latency_ms} ms: {result.successes}/{episodes}, jump max "
                  f"{rows[-1]['boundary_jump_max_rad']:.3f} rad, jerk {rows[-1]['jerk_rms_rad_s3']:.0f}, "
                  f"limited {summary['limited_fraction']:.1%}", flush=True)
    return rows


def inpainting(checkpoint: str, task: str, seed: int, scenes: int = 8, delay: int = 6,
               guidance: tuple[float, ...] = (5.0, 20.0, 100.0)) -> dict:
    """Open loop, on twin observations of held-out scenes (one per scene, 2 s into the scripted
    expert's episode): chunk A; then chunk B of the same observation guided toward A's steps from
    ``delay`` on (as if A had been executing for ``delay`` ticks), and chunk F unguided with B's
    noise. How much closer guidance brings the new chunk to the old one where they overlap (arm
    joints, rad): over the frozen steps (i < delay) and the soft-masked rest."""
    import torch

    from sf_policy.embodiment import GRIPPER_INDICES, STATE_DIM
    from sf_policy.runtime.inference import load_for_inference
    from sf_policy.sim.experts import make_expert
    from sf_policy.sim.twin import Twin

    arms = [i for i in range(STATE_DIM) if i not in GRIPPER_INDICES]
    policy = load_for_inference(checkpoint, device="cpu")
    twin = Twin(task, width=224, height=224)
    rows = {beta: {"frozen": [], "soft": []} for beta in guidance}
    free = {"frozen": [], "soft": []}
    try:
        for n, scene in enumerate(range(seed, seed + scenes)):
            obs = twin.reset(scene)
            expert = make_expert(twin)
            for _ in range(60):
                twin.step(expert.act())
            obs = twin.observe()
            sample = {"images": obs.images, "state": obs.state.astype(np.float32), "prompt": twin.info["prompt"]}
            old = policy.predict([sample], generator=torch.Generator().manual_seed(n))[0]
            prefix = old[delay:25]
            unguided = policy.predict([sample], generator=torch.Generator().manual_seed(1000 + n))[0]
            free["frozen"].append(np.abs(unguided[:delay] - prefix[:delay])[:, arms].max())
            free["soft"].append(np.abs(unguided[delay:len(prefix)] - prefix[delay:])[:, arms].max())
            for beta in guidance:
                policy.configure_inference(max_guidance=beta)
                guided = policy.predict([dict(sample, prefix_actions=prefix, inference_delay=delay)],
                                        generator=torch.Generator().manual_seed(1000 + n))[0]
                rows[beta]["frozen"].append(np.abs(guided[:delay] - prefix[:delay])[:, arms].max())
                rows[beta]["soft"].append(np.abs(guided[delay:len(prefix)] - prefix[delay:])[:, arms].max())
    finally:
        twin.close()
    mean = lambda values: float(np.mean(values))  # noqa: E731
    return {"scenes": scenes, "seed": seed, "delay": delay,
            "unguided": {k: mean(v) for k, v in free.items()},
            "guided": {str(beta): {k: mean(v) for k, v in r.items()} for beta, r in rows.items()}}


def guidance_cost(repeats: int = 5) -> dict:
    """Seconds per chunk of the tiny π0 on this machine, plain and guided, interleaved."""
    import torch

    from sf_policy.model.policy import Policy, PolicyConfig
    from sf_policy.model.tokenizer import tiny_tokenizer

    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        tiny_tokenizer(Path(tmp))
        zeros, ones = np.zeros(14, np.float32), np.ones(14, np.float32)
        stats = {k: {"mean": zeros, "std": ones, "min": -ones, "max": ones, "q01": -ones, "q99": ones}
                 for k in ("observation.state", "action")}
        policy = Policy.build(PolicyConfig(tiny=True, tokenizer=tmp), stats=stats).eval()
    rng = np.random.default_rng(0)
    sample = {"images": {r: rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
                         for r in ("cam_high", "cam_left_wrist", "cam_right_wrist")},
              "state": np.zeros(14, np.float32), "prompt": "Lift the pot by both handles and hold it level."}
    guided = dict(sample, prefix_actions=np.zeros((20, 14)), inference_delay=6)
    times = {"plain": [], "guided": []}
    for _ in range(repeats + 1):  # the first round warms up
        for name, s in (("plain", sample), ("guided", guided)):
            started = time.perf_counter()
            policy.predict([s], num_steps=10, generator=torch.Generator().manual_seed(0))
            times[name].append(time.perf_counter() - started)
    plain, guided_s = np.median(times["plain"][1:]), np.median(times["guided"][1:])
    return {"model": "tiny π0 (CPU)", "num_steps": 10, "plain_s": float(plain), "guided_s": float(guided_s),
            "ratio": float(guided_s / plain)}


def report(figures: dict, path: Path) -> None:
    lines = ["# Real-time chunking in the twin: `bench/rtc.py`", "",
             f"Machine: {figures['machine']['cpu']}, {figures['machine']['cores']} cores, no GPU. "
             f"{figures.get('note', '')}", ""]
    if figures.get("closed_loop"):
        cl = figures["closed_loop"]
        lines += [f"Checkpoint `{cl['checkpoint']}`, task {cl['task']}, held-out seeds "
                  f"{cl['seed']}–{cl['seed'] + cl['episodes'] - 1}, {cl['num_steps']} flow steps; latency "
                  "simulated (the twin waits), runtime defaults (execute 25, refill 15, blend 10).", "",
                  "| latency | mode | success | Wilson 95 % | time to success | boundary jump max / mean (rad) "
                  "| chunk disagreement (rad) | jerk RMS (rad/s³) | limited ticks |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in cl["rows"]:
            tts = f"{r['time_to_success_s']:.1f} s" if r["time_to_success_s"] is not None else "–"
            lines.append(f"| {r['latency_ms']} ms | {r['mode']} | {r['successes']}/{r['episodes']} | "
                         f"{r['ci95'][0]:.0%}–{r['ci95'][1]:.0%} | {tts} | {r['boundary_jump_max_rad']:.3f} / "
                         f"{r['boundary_jump_mean_rad']:.3f} | {r['disagreement_rad']:.3f} | {r['jerk_rms_rad_s3']:.0f} | "
                         f"{r['limited_fraction']:.1%} |")
        lines.append("")
    if figures.get("inpainting"):
        p = figures["inpainting"]
        lines += [f"Inpainting, open loop ({p['scenes']} held-out scenes from seed {p['seed']}, an old chunk "
                  f"executing for d = {p['delay']} ticks): the new chunk's largest distance from the old one, "
                  "arm joints, mean over scenes.", "",
                  "| | frozen steps (i < d) | soft-masked steps |", "|---|---|---|",
                  f"| unguided | {p['unguided']['frozen']:.4f} rad | {p['unguided']['soft']:.4f} rad |"]
        lines += [f"| guided, β = {beta} | {g['frozen']:.4f} rad | {g['soft']:.4f} rad |"
                  for beta, g in p["guided"].items()]
        lines.append("")
    if figures.get("cost"):
        c = figures["cost"]
        lines += [f"Guidance cost ({c['model']}, {c['num_steps']} steps, side by side): plain "
                  f"{c['plain_s'] * 1e3:.0f} ms, guided {c['guided_s'] * 1e3:.0f} ms per chunk: "
                  f"**{c['ratio']:.2f}×**.", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    analysis = "<!-- analysis -->"
    kept = path.read_text().split(analysis, 1)[1] if path.is_file() and analysis in path.read_text() else "\n"
    path.write_text("\n".join(lines) + "\n" + analysis + kept)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a learned policy (checkpoint directory)")
    parser.add_argument("--task", default="lift_pot")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=5000, help="first held-out scene")
    parser.add_argument("--num-steps", type=int, default=10)
    parser.add_argument("--max-ticks", type=int, default=None, help="cut episodes short (a smoke test)")
    parser.add_argument("--inpainting-scenes", type=int, default=8)
    parser.add_argument("--parts", default="cost,inpainting,closed_loop",
                        help="comma-separated: cost, inpainting, closed_loop (others kept from an earlier rtc.json)")
    parser.add_argument("--results-dir", type=Path, default=None)
    parser.add_argument("--report", type=Path, default=None, help="also write <dir>/rtc.md")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if parts - {"cost", "inpainting", "closed_loop"}:
        parser.error(f"--parts: unknown {sorted(parts - {'cost', 'inpainting', 'closed_loop'})}")
    if parts & {"inpainting", "closed_loop"} and not args.checkpoint:
        parser.error("--checkpoint is needed for inpainting and closed_loop (or --parts cost)")
    earlier = (args.results_dir or RESULTS) / "rtc.json"
    figures: dict = {k: v for k, v in json.loads(earlier.read_text()).items()
                     if k in ("cost", "inpainting", "closed_loop")} if earlier.is_file() else {}
    if "cost" in parts:
        figures["cost"] = guidance_cost()
        print(f"guidance cost: {figures['cost']['ratio']:.2f}x a plain chunk", flush=True)
    if "inpainting" in parts:
        figures["inpainting"] = inpainting(args.checkpoint, args.task, args.seed, args.inpainting_scenes)
        print(f"inpainting: {figures['inpainting']}", flush=True)
    if "closed_loop" in parts:
        figures["closed_loop"] = {"checkpoint": args.checkpoint, "task": args.task, "episodes": args.episodes,
                                  "seed": args.seed, "num_steps": args.num_steps,
                                  "rows": closed_loop(args.checkpoint, args.task, args.episodes, args.seed,
                                                      args.num_steps, not args.no_progress, args.max_ticks)}
    path = write_results("rtc", figures, args.results_dir)
    print(f"wrote {path}")
    if args.report:
        report({**figures, "machine": machine()}, args.report / "rtc.md")
        print(f"wrote {args.report / 'rtc.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
