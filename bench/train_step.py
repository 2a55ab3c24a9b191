"""Training step time and peak memory: π0 baseline, SF with the teacher cache, SF with the online teacher.

Three variants of one preset, side by side in one run, on the same batches:

* ``baseline``   the preset with ``align.alpha=0`` (no projector, no hook, no teacher);
* ``sf_cache``   Spatial Forcing, targets read from the teacher cache (``teacher.mode=cache``);
  the cache is built first, outside the timings (its build time is reported on its own);
* ``sf_online``  Spatial Forcing with the teacher run at every step (``teacher.mode=online``).

What is timed: ``Trainer.step(batch, step)`` (forward, alignment, backward, clip, optimiser)
on batches fetched from ``trainer.loader`` BEFORE the timing, so data loading (video decoding
and the processor) is excluded; its cost per batch is reported separately (``data.workers=0``:
one process decoding, i.e. what one DataLoader worker spends per batch). Warm-up steps are
excluded. Each variant runs in a process of its own, so its memory is its own:

* CPU: the three processes live side by side and the steps are interleaved (A B C, B C A,
  C A B, ...), so a shared machine's load falls on all three alike. Memory is resident set
  size: the process peak (``ru_maxrss``: Python, torch, model, optimiser, batches) and the
  step's own peak over the ready trainer (``VmHWM`` after resetting it through
  ``/proc/self/clear_refs`` minus ``VmRSS`` before the first step: activations, gradients,
  optimiser state).
  Each process uses ``--threads`` torch threads (default 1): with OpenMP threads that wait
  for each other at every operator, a core taken by another process stalls the whole
  operator, and on a busy 2-core machine a tiny-model step measured 2-10 s with 2 threads
  against 0.3 s with one. One thread gives figures that hold still; the ratios are what count.
* CUDA: one variant after another (three full-size models do not fit one GPU together);
  ``torch.cuda.max_memory_allocated`` over the steps, reset per variant.

Presets: ``tiny`` (the CPU preset: random tiny π0 and VGGT; default, runs on the CPU) and
``full`` (the ``pi0_sf`` recipe at π0's real size, 3.5 B parameters, and a full-size VGGT
aggregator, 909 M, both with RANDOM weights: nothing is downloaded; CUDA only). Random weights
time the same work as trained ones. The full π0 is built from transformers' default
``PI0Config`` on the GPU; the prompt tokenizer is the tiny one (the prompt is padded to
``policy.max_prompt_tokens`` either way, so the sequence length is the real one).

  .venv/bin/python bench/train_step.py                               # tiny, CPU
  .venv/bin/python bench/train_step.py --preset full --batch-size 4  # a lent GPU
  .venv/bin/python bench/train_step.py --preset full --set optim.gradient_checkpointing=true

Target (issue 5): SF with the cache at most 1.05 × the baseline's median step time.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

os.environ.setdefault("MUJOCO_GL", "egl")  # the twin renders offscreen when it records a dataset

VARIANTS = ("baseline", "sf_cache", "sf_online")
VARIANT_OVERRIDES = {"baseline": ["align.alpha=0"], "sf_cache": ["teacher.mode=cache"],
                     "sf_online": ["teacher.mode=online"]}
PRESETS = {"tiny": "tiny", "full": "pi0_sf"}  # bench preset → training preset
TARGET_RATIO = 1.05  # sf_cache median / baseline median (issue 5)
MIB = 1024 * 1024


# --------------------------------------------------------------------------- full size, random weights


def full_pi0_config(chunk_size: int):
    """π0 at its real size: transformers' defaults are PaliGemma 3B (Gemma 2B, SigLIP So400m) +
    the Gemma 300M action expert, 3.5 B parameters."""
    from transformers import PI0Config

    return PI0Config(chunk_size=chunk_size)


def full_aggregator_config():
    """VGGT-1B's aggregator (909 M parameters): ``AggregatorConfig``'s defaults."""
    from sf_policy.teacher.vggt import AggregatorConfig

    return AggregatorConfig()


def random_full_build_pi0(device: str):
    """A stand-in for ``sf_policy.model.policy.build_pi0`` that makes a randomly initialised
    full-size π0 directly on ``device`` (no checkpoint exists here, and 3.5 B parameters
    initialised on the CPU would take minutes). LoRA and freezing as ``build_pi0`` does them."""
    import torch
    from transformers import PI0ForConditionalGeneration

    from sf_policy.model.policy import DTYPES, apply_lora, freeze_unused

    def build(config, tokenizer=None):
        with torch.device(device):
            model = PI0ForConditionalGeneration(full_pi0_config(config.chunk_size))
        model.to(DTYPES[config.dtype])
        if config.lora is not None:
            model = apply_lora(model, config.lora)
        if config.freeze_unused:
            freeze_unused(model)
        return model

    return build


def write_random_teacher(path: Path, device: str) -> Path:
    """A full-size aggregator with random weights, saved where ``teacher.checkpoint`` can point
    (bf16: half the disk; the teacher loads it as float32 and runs under bf16 autocast)."""
    import torch

    from sf_policy.teacher.checkpoint import save_state_dict
    from sf_policy.teacher.vggt import Aggregator

    torch.manual_seed(0)
    with torch.device(device):
        aggregator = Aggregator(full_aggregator_config())
    return save_state_dict({k: v.to(torch.bfloat16) for k, v in aggregator.state_dict().items()}, path)


# --------------------------------------------------------------------------- one variant, in its own process


def _rss_mib(field: str) -> float:
    """VmRSS / VmHWM of this process from /proc/self/status, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _build_trainer(spec: dict):
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    from sf_policy.model import policy as policy_module
    from sf_policy.train.config import load_config
    from sf_policy.train.loop import Trainer

    cfg = load_config(spec["preset"], spec["overrides"])
    accelerator = Accelerator(cpu=spec["device"] == "cpu", mixed_precision=cfg.optim.mixed_precision,
                              gradient_accumulation_steps=cfg.optim.grad_accum,
                              dataloader_config=DataLoaderConfiguration(split_batches=True))  # as the trainer's
    if spec["full"]:
        original = policy_module.build_pi0
        policy_module.build_pi0 = random_full_build_pi0(str(accelerator.device))  # Policy.build looks it up here
        try:
            trainer = Trainer(cfg, accelerator=accelerator)
        finally:
            policy_module.build_pi0 = original
    else:
        trainer = Trainer(cfg, accelerator=accelerator)
    trainer.policy_ddp.train()
    if trainer.aligner_ddp is not None:
        trainer.aligner_ddp.train()
    info = {"trained_params": int(sum(p.numel() for p in trainer.params)),
            "torch_threads": torch.get_num_threads(), "device": str(accelerator.device)}
    if accelerator.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(accelerator.device)
    return trainer, info


def _fetch(trainer, count: int) -> tuple[list[dict], list[float]]:
    """``count`` batches from the trainer's own loader, and the seconds each took to load."""
    batches, seconds = [], []
    stream = iter(trainer.loader)
    for _ in range(count):
        t0 = time.perf_counter()
        batches.append(next(stream))
        seconds.append(time.perf_counter() - t0)
    return batches, seconds


def _time_targets(trainer, batches: list[dict], cuda: bool) -> float:
    """Median seconds to get one batch's teacher targets onto the device, as the step does (cache
    lookup + expansion + copy, or the online teacher's forward): SF's extra work before the loss."""
    import torch

    seconds = []
    for batch in batches:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        targets, valid = trainer.targets(batch)
        targets.to(trainer.accelerator.device), valid.to(trainer.accelerator.device)
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
    return float(np.median(seconds[1:] if len(seconds) > 1 else seconds))


def worker(spec: dict, conn) -> None:
    """Build one variant's trainer, fetch its batches, then time one step per "step" message."""
    try:
        import torch

        if spec["threads"]:
            torch.set_num_threads(spec["threads"])
        t0 = time.perf_counter()
        trainer, info = _build_trainer(spec)
        info["build_s"] = time.perf_counter() - t0
        batches, load_s = _fetch(trainer, spec["warmup"] + spec["steps"])
        info["data_load_s"] = load_s
        cuda = trainer.accelerator.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            info["cuda_allocated_before_mib"] = torch.cuda.memory_allocated() / MIB
        info["rss_before_mib"] = _rss_mib("VmRSS")
        info["hwm_reset"] = _reset_peak_rss()
        conn.send(("ready", info))
        while True:
            command, step = conn.recv()
            if command == "stop":
                break
            if cuda:
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            trainer.step(batches[step], step)
            if cuda:
                torch.cuda.synchronize()
            conn.send(("step", (time.perf_counter() - t0, time.process_time() - c0)))
        memory = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        if info["hwm_reset"]:
            memory["step_peak_rss_delta_mib"] = _rss_mib("VmHWM") - info["rss_before_mib"]
        if cuda:
            memory["cuda_peak_allocated_mib"] = torch.cuda.max_memory_allocated() / MIB
            memory["cuda_peak_reserved_mib"] = torch.cuda.max_memory_reserved() / MIB
        if trainer.targets is not None:  # after the memory readings: this is not a training step
            memory["targets_ms"] = 1e3 * _time_targets(trainer, batches[:spec["warmup"] + 3], cuda)
        conn.send(("done", memory))
    except BaseException:  # noqa: BLE001 - the parent reports it and carries on with the others
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class Runner:
    """The parent's handle on one worker process."""

    def __init__(self, ctx, variant: str, spec: dict):
        self.variant, self.error = variant, None
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker, args=(spec, child), name=f"bench-{variant}", daemon=True)
        self.process.start()
        child.close()
        self.info: dict = {}
        self.times: list[float] = []  # wall seconds per step
        self.cpu_times: list[float] = []  # this process's CPU seconds per step (all its threads)
        self.memory: dict = {}

    def _recv(self, expected: str):
        try:
            kind, payload = self.conn.recv()
        except EOFError:
            kind, payload = "error", f"the worker died (exit code {self.process.exitcode})"
        if kind == "error":
            self.error = payload
            return None
        assert kind == expected, (kind, expected)
        return payload

    def ready(self) -> bool:
        self.info = self._recv("ready") or {}
        return self.error is None

    def step(self, index: int) -> None:
        self.conn.send(("step", index))
        seconds = self._recv("step")
        if seconds is not None:
            self.times.append(seconds[0])
            self.cpu_times.append(seconds[1])

    def finish(self) -> None:
        if self.error is None:
            self.conn.send(("stop", 0))
            self.memory = self._recv("done") or {}
        self.process.join(timeout=120)


def run_variants(specs: dict[str, dict], total_steps: int, interleave: bool) -> dict[str, Runner]:
    """Interleaved: all workers up at once, one step each in rotating order. Otherwise one
    worker at a time (all its steps, then it exits and frees its memory)."""
    ctx = mp.get_context("spawn")  # a fresh interpreter: no CUDA or thread state inherited
    if not interleave:
        runners = {}
        for variant, spec in specs.items():
            runner = runners[variant] = Runner(ctx, variant, spec)
            if runner.ready():
                for i in range(total_steps):
                    runner.step(i)
                    if runner.error:
                        break
            runner.finish()
        return runners
    runners = {variant: Runner(ctx, variant, spec) for variant, spec in specs.items()}
    alive = [v for v in specs if runners[v].ready()]
    for i in range(total_steps):
        k = i % len(alive) if alive else 0
        for variant in alive[k:] + alive[:k]:  # A B C, B C A, C A B: no variant always goes first
            runners[variant].step(i)
        alive = [v for v in alive if runners[v].error is None]
    for runner in runners.values():
        runner.finish()
    return runners


# --------------------------------------------------------------------------- setup in the parent


def _in_child(fn, *args):
    """Run ``fn(*args)`` in a spawned process (GPU work: the parent must hold no CUDA memory)."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def _build_cache(root: str, preset: str, overrides: list[str], device: str) -> dict:
    from sf_policy.train.config import load_config
    from sf_policy.train.targets import build_cache, vla_grid

    cfg = load_config(preset, overrides)
    t0 = time.perf_counter()
    cache = build_cache(root, cfg.teacher, device=device, progress=False, grid=vla_grid(cfg.policy),
                        dim=cfg.align.teacher_dim)
    return {"seconds": time.perf_counter() - t0, "frames": int(cache.num_frames), "dim": int(cache.dim),
            "storage": cache.storage, "bytes": int(cache.layout.nbytes())}


def _dataset(args, workdir: Path) -> tuple[Path, dict]:
    from sf_policy.data.reader import DatasetReader

    if args.dataset is not None:
        root, recorded = Path(args.dataset), None
    else:
        from sf_policy.sim.record_without_ros import record_expert

        root = workdir / "dataset"
        width, height = args.camera
        t0 = time.perf_counter()
        record_expert(root, args.task, episodes=args.episodes, width=width, height=height, every=args.every)
        recorded = {"task": args.task, "seconds": round(time.perf_counter() - t0, 2), "every": args.every}
    with DatasetReader(root) as reader:
        shapes = {role: reader.features[f"observation.images.{role}"]["shape"][:2] for role in reader.camera_roles}
        info = {"root": str(root) if recorded is None else "(recorded into a temporary directory)",
                "frames": reader.num_frames, "episodes": reader.num_episodes,
                "cameras": {role: f"{w}x{h}" for role, (h, w) in shapes.items()}, "recorded": recorded}
    return root, info


def specs_for(args, root: Path, workdir: Path) -> tuple[dict[str, dict], list[str]]:
    """Per variant the worker's spec; and the overrides shared by all (for the cache build)."""
    preset = PRESETS[args.preset]
    common = [f"data.root={root}", f"teacher.cache_root={workdir / 'cache'}", "data.workers=0",
              "data.heldout_episodes=0", "log.eval_batches=0", "log.wandb=false"]
    if args.batch_size is not None:
        common.append(f"optim.batch_size={args.batch_size}")
    if args.preset == "full":
        from sf_policy.model.tokenizer import tiny_tokenizer

        tiny_tokenizer(workdir / "tokenizer")
        common += [f"policy.tokenizer={workdir / 'tokenizer'}", "policy.checkpoint=null", "policy.tiny=false",
                   f"teacher.checkpoint={workdir / 'vggt_random.safetensors'}", "teacher.tiny=false"]
    common += args.set
    specs = {v: {"preset": preset, "device": args.device, "full": args.preset == "full", "steps": args.steps,
                 "warmup": args.warmup, "threads": args.threads,
                 "overrides": common + VARIANT_OVERRIDES[v] + [f"output_dir={workdir / v}"]}
             for v in VARIANTS}
    return specs, common


# --------------------------------------------------------------------------- figures


def summarise(runners: dict[str, Runner], warmup: int) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for variant, r in runners.items():
        entry: dict = {"error": r.error.strip().splitlines()[-1] if r.error else None}
        timed, cpu = 1e3 * np.array(r.times[warmup:]), 1e3 * np.array(r.cpu_times[warmup:])
        if len(timed):
            entry["step_ms"] = {"median": float(np.median(timed)), "p90": float(np.percentile(timed, 90)),
                                "mean": float(timed.mean()), "min": float(timed.min()), "n": int(len(timed))}
            entry["step_cpu_ms"] = {"median": float(np.median(cpu)), "p90": float(np.percentile(cpu, 90))}
            entry["step_ms_all"] = [round(1e3 * t, 3) for t in r.times]  # warm-up first
        if r.info.get("data_load_s"):
            entry["data_load_ms_per_batch"] = 1e3 * float(np.median(r.info["data_load_s"]))
        for key in ("trained_params", "build_s", "device", "gpu", "torch_threads", "rss_before_mib",
                    "cuda_allocated_before_mib"):
            if key in r.info:
                entry[key] = r.info[key]
        entry.update(r.memory)
        out[variant] = entry
    base = out.get("baseline", {}).get("step_ms")
    for variant, entry in out.items():
        if base and "step_ms" in entry:
            entry["ratio_to_baseline"] = entry["step_ms"]["median"] / base["median"]
            entry["cpu_ratio_to_baseline"] = entry["step_cpu_ms"]["median"] / out["baseline"]["step_cpu_ms"]["median"]
            mine, theirs = runners[variant].times[warmup:], runners["baseline"].times[warmup:]
            n = min(len(mine), len(theirs))
            # Paired: each round's variant step over the baseline step of the same round.
            entry["paired_ratio_to_baseline"] = float(np.median(np.array(mine[:n]) / np.array(theirs[:n])))
    return out


def _cell(entry: dict, *path: str, width: int = 8, digits: int = 1) -> str:
    value = entry
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return f"{value:{width}.{digits}f}" if isinstance(value, (int, float)) else f"{'-':>{width}}"


def print_table(figures: dict) -> None:
    cuda = figures["device"].startswith("cuda")
    print(f"train step, preset {figures['preset']} ({figures['training_preset']}) on {figures['device_name']}, "
          f"batch {figures['batch_size']}, {figures['steps']} timed steps after {figures['warmup']} warm-up, "
          f"{figures['schedule']}")
    print("  Trainer.step() on pre-fetched batches: wall ms (median, p90) and the process's CPU ms (median);\n"
          "  x base = median / baseline median; paired = median over rounds of step / the same round's baseline "
          "step;\n  x cpu = CPU ms median / baseline's; targets = one batch's teacher targets onto the device "
          "(inside the step);\n  load = one batch read, decoded and processed in one process (NOT in the step)")
    memory = ("peak alloc MiB", "peak resv MiB") if cuda else ("peak RSS MiB", "step dRSS MiB")
    keys = (("cuda_peak_allocated_mib", "cuda_peak_reserved_mib") if cuda
            else ("peak_rss_mib", "step_peak_rss_delta_mib"))
    print(f"  {'variant':10} {'median ms':>9} {'p90 ms':>8} {'x base':>6} {'paired':>6} {'cpu ms':>8} {'x cpu':>6} "
          f"{memory[0]:>14} {memory[1]:>14} {'targets ms':>10} {'load ms':>8}")
    for name, e in figures["variants"].items():
        if e.get("error"):
            print(f"  {name:10} failed: {e['error']}")
            continue
        print(f"  {name:10} {_cell(e, 'step_ms', 'median', width=9)} {_cell(e, 'step_ms', 'p90')} "
              f"{_cell(e, 'ratio_to_baseline', width=6, digits=3)} "
              f"{_cell(e, 'paired_ratio_to_baseline', width=6, digits=3)} "
              f"{_cell(e, 'step_cpu_ms', 'median')} {_cell(e, 'cpu_ratio_to_baseline', width=6, digits=3)} "
              f"{_cell(e, keys[0], width=14, digits=0)} {_cell(e, keys[1], width=14, digits=0)} "
              f"{_cell(e, 'targets_ms', width=10)} {_cell(e, 'data_load_ms_per_batch')}")
    cache = figures.get("cache")
    if cache:
        print(f"  teacher cache: {cache['frames']} frames x {cache['dim']}-d {cache['storage']}, "
              f"{cache['bytes'] / MIB:.1f} MiB, built in {cache['seconds']:.1f} s (not in the step times)")
    t = figures["target"]
    if t["sf_cache_ratio"] is not None:
        print(f"  target: sf_cache median <= {t['max_ratio']:.2f} x baseline median: {t['sf_cache_ratio']:.3f} -> "
              f"{'met' if t['met'] else 'NOT met'}")


# --------------------------------------------------------------------------- main


def _camera(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                        help="tiny: the CPU preset; full: pi0_sf at π0's size, random weights, CUDA only")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (default 5 tiny, 3 full)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="optim.batch_size (default: the preset's for tiny, 4 for full: see docs)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cpu for tiny, cuda for full")
    parser.add_argument("--schedule", choices=("interleaved", "sequential"), default=None,
                        help="default: interleaved on the CPU, sequential on CUDA")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads per variant process (default 1 on the CPU, torch's own on CUDA)")
    parser.add_argument("--dataset", type=Path, default=None, help="a LeRobot v3 dataset (default: record the twin)")
    parser.add_argument("--task", default="lift_pot", help="twin task to record")
    parser.add_argument("--episodes", type=int, default=2, help="episodes to record")
    parser.add_argument("--every", type=int, default=2, help="record one control tick in this many")
    parser.add_argument("--camera", type=_camera, default=None,
                        help="recorded WxH (default 160x120 tiny, 640x480 full)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="a training-config override for all variants (repeatable)")
    parser.add_argument("--results-dir", type=Path, default=None, help="default: bench/results")
    args = parser.parse_args(argv)
    full = args.preset == "full"
    if full and args.device == "cpu":
        parser.error("--preset full runs on a CUDA GPU only (π0 at 3.5 B parameters does not train on a CPU); "
                     "use --preset tiny on the CPU")
    args.device = args.device or ("cuda" if full else "cpu")
    args.warmup = args.warmup if args.warmup is not None else (3 if full else 5)
    if args.batch_size is None and full:
        args.batch_size = 4  # pi0_sf says 16 (over all GPUs); fp32 master weights + AdamW alone take ~52 GB
    args.camera = args.camera or ((640, 480) if full else (160, 120))
    if args.threads is None and args.device == "cpu":
        args.threads = 1  # see the module docstring: stable figures on a shared machine
    args.schedule = args.schedule or ("sequential" if args.device == "cuda" else "interleaved")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be ≥ 1 and --warmup ≥ 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        what = ("--preset full (π0 at 3.5 B parameters: weights, gradients and AdamW state alone ~52 GB)"
                if args.preset == "full" else "--device cuda")
        print(f"bench/train_step.py: {what} needs a CUDA GPU and none is visible here. On a CPU run the tiny "
              "preset: bench/train_step.py --preset tiny", file=sys.stderr)
        return 2
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Set up (dataset, random teacher for full, cache), run the three variants, report."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)  # the cache build in this process
    with tempfile.TemporaryDirectory(prefix="sf-bench-train-step-") as tmp:
        workdir = Path(tmp)
        root, dataset = _dataset(args, workdir)
        specs, common = specs_for(args, root, workdir)
        if args.preset == "full":
            _in_child(write_random_teacher, workdir / "vggt_random.safetensors", args.device)
        cache_args = (str(root), PRESETS[args.preset], common + VARIANT_OVERRIDES["sf_cache"], args.device)
        cache = _in_child(_build_cache, *cache_args) if args.device == "cuda" else _build_cache(*cache_args)
        runners = run_variants(specs, args.warmup + args.steps, interleave=args.schedule == "interleaved")
    variants = summarise(runners, args.warmup)
    ratio = variants["sf_cache"].get("ratio_to_baseline")
    first = next((e for e in variants.values() if "device" in e), {})
    figures = {
        "preset": args.preset, "training_preset": PRESETS[args.preset], "device": first.get("device", args.device),
        "device_name": first.get("gpu") or f"cpu ({first.get('torch_threads', '?')} torch threads)",
        "batch_size": args.batch_size or _preset_batch(PRESETS[args.preset]), "steps": args.steps,
        "warmup": args.warmup, "schedule": args.schedule, "overrides": args.set, "dataset": dataset, "cache": cache,
        "timing": "median/p90 of Trainer.step() wall time on pre-fetched batches, warm-up excluded; data loading "
                  "excluded (data_load_ms_per_batch: one batch decoded and processed in one process)",
        "memory": ("torch.cuda.max_memory_allocated/reserved over warm-up + timed steps, reset per variant"
                   if args.device == "cuda" else
                   "per variant process: peak_rss_mib = ru_maxrss (whole process); step_peak_rss_delta_mib = "
                   "VmHWM (reset via /proc/self/clear_refs before the first step) - VmRSS before the first step"),
        "variants": variants,
        "target": {"max_ratio": TARGET_RATIO, "sf_cache_ratio": ratio,
                   "met": None if ratio is None else bool(ratio <= TARGET_RATIO)},
    }
    print_table(figures)
    print(f"written: {write_results('train_step', figures, args.results_dir)}")
    failed = [v for v, e in variants.items() if e.get("error")]
    for variant in failed:
        print(f"\n{variant} failed:\n{runners[variant].error}", file=sys.stderr)
    return 1 if failed else 0


def _preset_batch(preset: str) -> int:
    from sf_policy.train.config import load_config

    return load_config(preset).optim.batch_size


if __name__ == "__main__":
    sys.exit(main())
