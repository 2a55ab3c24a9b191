"""``sf train``: Spatial Forcing training (docs/training.md).

  sf train run tiny data.root=outputs/demo/record/dataset          # CPU, minutes
  sf train cache-teacher pi0_sf data.root=... teacher.checkpoint=.../model.pt
  sf train run pi0_sf data.root=... policy.checkpoint=~/models/pi0_base
  sf train run pi0_sf data.root=... --resume outputs/train/pi0_sf
  sf train config pi0_sf optim.lr=1e-5                      # print the resolved config
  sf train plan pi0_sf --gpus 8                             # GPU memory per setup, what fits

A config is a preset name or a YAML file; ``section.field=value`` arguments override it.
Several GPUs (the same run as on one: docs/training.md, "Several GPUs"):
``torchrun --nproc_per_node N -m sf_policy.cli.train run pi0_sf ...`` or ``accelerate launch
--config_file sf_policy/train/configs/accelerate/ddp.yaml --num_processes N -m sf_policy.cli.train ...``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape  # messages name fields like [lower, upper]: not markup
from rich.table import Table

app = typer.Typer(help="Train π0 with Spatial Forcing.", no_args_is_help=True)
console = Console()


def _config(config: str, overrides: list[str]):
    from ..train.config import load_config

    return load_config(config, overrides)


@app.command("config")
def config_cmd(config: str = typer.Argument(..., help="Preset (tiny, pi0_sf, pi0_baseline) or YAML file."),
               overrides: Optional[List[str]] = typer.Argument(None, help="section.field=value ...")):
    """Print the resolved config (what a run would use), as YAML."""
    with _refusals():
        print(_config(config, overrides or []).to_yaml(), end="")


@app.command("run")
def run_cmd(config: str = typer.Argument(..., help="Preset (tiny, pi0_sf, pi0_baseline) or YAML file."),
            overrides: Optional[List[str]] = typer.Argument(None, help="section.field=value ..."),
            resume: Optional[Path] = typer.Option(None, help="A run directory or checkpoint to continue."),
            progress: bool = typer.Option(True, help="Show a progress bar.")):
    """Train; checkpoints, TensorBoard logs and metrics.jsonl go to <output_dir>/<name>/."""
    from ..train.loop import Trainer

    with _refusals():  # a mistake found before the first step is one line, not a traceback
        cfg = _config(config, overrides or [])
        if cfg.aligned and cfg.teacher.mode == "cache" and resume is None:
            _ensure_cache(cfg)
        trainer = Trainer(cfg, resume=resume, progress=progress)
    final = trainer.train(progress=progress)
    if _main_process():  # one line for the run, not one per process
        console.print(f"[green]done[/green]: {final}  (load it with sf_policy.train.checkpoint.load_policy)")


@contextmanager
def _refusals():
    """Errors the user fixes in the config, the command or the data (they name the file, field or
    parameter): printed once, as one line, exit 2; every process of a launch stops."""
    from ..config import ConfigError
    from ..data.features import DatasetError
    from ..teacher.cache.errors import CacheError
    from ..train.distributed import LaunchError

    try:
        yield
    except (ConfigError, CacheError, DatasetError, LaunchError, ValueError, FileExistsError, FileNotFoundError) as exc:
        if _main_process():
            console.print(f"[red]error[/red]: {escape(str(exc))}")
        raise typer.Exit(2) from None


def _main_process() -> bool:
    """Process 0 of a launch (torchrun / accelerate set RANK), or a plain command."""
    return os.environ.get("RANK", "0") == "0"


@app.command("plan")
def plan_cmd(config: str = typer.Argument(..., help="Preset (pi0_sf, pi0_baseline, ...) or YAML file."),
             overrides: Optional[List[str]] = typer.Argument(None, help="section.field=value ..."),
             gpus: int = typer.Option(1, min=1, help="GPUs the run would use."),
             gpu_memory: Optional[float] = typer.Option(None, help="GB per GPU: exit 2 naming what fits, if "
                                                                    "nothing does.")):
    """GPU memory per setup (full fine-tuning, LoRA, FSDP-N, gradient checkpointing) and what fits."""
    from ..train.plan import GPU_SIZES_GB, PUBLISHED_GB, check_fits, make_plan

    with _refusals():
        cfg = _config(config, overrides or [])
    plan = make_plan(cfg)
    full, lora, act = plan.params["full"], plan.params["lora"], plan.activations
    gb = lambda b: f"{b / 1e9:.1f}"  # noqa: E731
    console.print(f"[bold]{cfg.name}[/bold]: {full['total'] / 1e9:.2f} B parameters; trainable "
                  f"{full['trainable'] / 1e9:.2f} B in full fine-tuning (SF projector {full['projector'] / 1e6:.1f} "
                  f"M), {lora['trainable'] / 1e6:.0f} M with LoRA. Gradients + AdamW state "
                  f"{gb(12 * full['trainable'])} GB, fp32 weights {gb(4 * full['total'])} GB + their bf16 copy "
                  f"{gb(2 * full['total'])} GB")
    console.print(f"Activations per sample, counted on the meta device (bf16): {gb(act.total)} GB as eager attention "
                  f"keeps them, {gb(plan.fused_activations(False))} GB with a fused attention kernel (the GPU's), "
                  f"{gb(plan.fused_activations(True))} GB with gradient checkpointing")
    sizes = [gpu_memory] if gpu_memory else list(GPU_SIZES_GB)
    table = Table(title=f"GB per GPU on {gpus} GPU(s), global batch {cfg.optim.batch_size} "
                        f"(grad_accum {cfg.optim.grad_accum})")
    for column in ["setup", "batch/GPU", "GB/GPU", *[f"{s:g} GB GPU" for s in sizes]]:
        table.add_column(column)
    setups = plan.setups(gpus)
    for setup in setups:
        marks = []
        for size in sizes:
            most = plan.largest_batch(setup.name, gpus, size * 1e9)
            marks.append("fits" if setup.bytes_per_gpu <= size * 1e9 else f"≤ {most}/GPU" if most else "no")
        table.add_row(setup.name, str(setup.per_gpu_batch), gb(setup.bytes_per_gpu), *marks)
    console.print(table)
    console.print("'≤ N/GPU': fits with at most N samples per GPU (raise optim.grad_accum). Commands:")
    for setup in setups:
        print(f"  {setup.name:10s} {setup.command}")
    console.print(f"Inference (bf16): {gb(plan.inference_bytes())} GB. Published by openpi for π0: inference > "
                  f"{PUBLISHED_GB['inference']:g} GB, LoRA > {PUBLISHED_GB['lora']:g} GB, full fine-tuning > "
                  f"{PUBLISHED_GB['full']:g} GB. How these are estimated: docs/training.md, \"Memory\".")
    if gpu_memory is not None:
        try:
            check_fits(plan, gpus, gpu_memory)
        except ValueError as exc:
            console.print(f"[red]does not fit[/red]: {escape(str(exc))}")
            raise typer.Exit(2) from None


@app.command("cache-teacher")
def cache_teacher_cmd(config: str = typer.Argument(..., help="Preset or YAML file (its teacher and data sections)."),
                      overrides: Optional[List[str]] = typer.Argument(None, help="section.field=value ..."),
                      device: str = typer.Option("auto", help="cuda, cpu, or auto.")):
    """Compute the teacher's targets for every frame once (resumable; a stale cache is detected)."""
    with _refusals():
        cfg = _config(config, overrides or [])
        path = _ensure_cache(cfg, device)
    if _main_process():
        console.print(f"[green]cache ready[/green]: {path}")


def _ensure_cache(cfg, device: str = "auto") -> Path:
    """Build (or finish) the teacher cache: alone, or sharded over every process a launcher
    started (``torchrun`` / ``accelerate launch``: each takes whole episodes, then all meet)."""
    import time

    import torch
    from accelerate import PartialState

    from ..teacher.cache.errors import CacheError, IncompleteCacheError
    from ..train.data import check_dataset
    from ..train.distributed import launched_processes
    from ..train.targets import build_cache, open_cache, vla_grid

    if not cfg.data.root:
        raise typer.BadParameter("set data.root=<dataset directory>")
    settings = {"grid": vla_grid(cfg.policy), "dim": cfg.align.teacher_dim}
    try:
        return open_cache(cfg.data.root, cfg.teacher, **settings).path  # complete: nothing to compute
    except CacheError:
        check_dataset(cfg.data.root)  # the teacher is about to run on it: not on a damaged dataset
    if launched_processes() == 1:
        return build_cache(cfg.data.root, cfg.teacher, device=device, **settings).path
    state = PartialState(cpu=not torch.cuda.is_available())
    own = str(state.device) if device == "auto" else device
    build_cache(cfg.data.root, cfg.teacher, device=own, progress=state.is_local_main_process,
                shard=(state.process_index, state.num_processes), **settings)
    # The others' shards: waited for on the cache's own done flags rather than at a collective
    # barrier, which would time out (30 min by default) while the longest shard is still running.
    # If a process dies, the launcher stops them all.
    waited = False
    while True:
        try:
            return open_cache(cfg.data.root, cfg.teacher, **settings).path
        except IncompleteCacheError as exc:
            if not waited and state.is_main_process:
                console.print(f"waiting for the other processes' shards: {exc}")
            waited = True
            time.sleep(5)


def main() -> None:  # `accelerate launch -m sf_policy.cli.train ...`
    app()


if __name__ == "__main__":
    main()
