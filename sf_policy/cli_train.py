"""``sf train``: Spatial Forcing training (docs/training.md).

  sf train run tiny data.root=outputs/demo/record/dataset          # CPU, minutes
  sf train cache-teacher pi0_sf data.root=... teacher.checkpoint=.../model.pt
  sf train run pi0_sf data.root=... policy.checkpoint=~/models/pi0_base
  sf train run pi0_sf data.root=... --resume outputs/train/pi0_sf
  sf train config pi0_sf optim.lr=1e-5                      # print the resolved config

A config is a preset name or a YAML file; ``section.field=value`` arguments override it.
Multi-GPU: ``accelerate launch -m sf_policy.cli_train run pi0_sf ...``.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

app = typer.Typer(help="Train π0 with Spatial Forcing.", no_args_is_help=True)
console = Console()


def _config(config: str, overrides: list[str]):
    from .train.config import load_config

    return load_config(config, overrides)


@app.command("config")
def config_cmd(config: str = typer.Argument(..., help="Preset (tiny, pi0_sf, pi0_baseline) or YAML file."),
               overrides: Optional[List[str]] = typer.Argument(None, help="section.field=value ...")):
    """Print the resolved config (what a run would use), as YAML."""
    print(_config(config, overrides or []).to_yaml(), end="")


@app.command("run")
def run_cmd(config: str = typer.Argument(..., help="Preset (tiny, pi0_sf, pi0_baseline) or YAML file."),
            overrides: Optional[List[str]] = typer.Argument(None, help="section.field=value ..."),
            resume: Optional[Path] = typer.Option(None, help="A run directory or checkpoint to continue."),
            progress: bool = typer.Option(True, help="Show a progress bar.")):
    """Train; checkpoints, TensorBoard logs and metrics.jsonl go to <output_dir>/<name>/."""
    from .train.loop import train

    cfg = _config(config, overrides or [])
    if cfg.aligned and cfg.teacher.mode == "cache" and resume is None:
        _ensure_cache(cfg)
    try:
        final = train(cfg, resume=resume, progress=progress)
    except FileExistsError as exc:
        raise typer.BadParameter(str(exc), param_hint="name") from None
    console.print(f"[green]done[/green]: {final}  (load it with sf_policy.train.checkpoint.load_policy)")


@app.command("cache-teacher")
def cache_teacher_cmd(config: str = typer.Argument(..., help="Preset or YAML file (its teacher and data sections)."),
                      overrides: Optional[List[str]] = typer.Argument(None, help="section.field=value ..."),
                      device: str = typer.Option("auto", help="cuda, cpu, or auto.")):
    """Compute the teacher's targets for every frame once (resumable; a stale cache is detected)."""
    cfg = _config(config, overrides or [])
    path = _ensure_cache(cfg, device)
    console.print(f"[green]cache ready[/green]: {path}")


def _ensure_cache(cfg, device: str = "auto") -> Path:
    from .train.targets import build_cache, vla_grid

    if not cfg.data.root:
        raise typer.BadParameter("set data.root=<dataset directory>")
    return build_cache(cfg.data.root, cfg.teacher, device=device, grid=vla_grid(cfg.policy),
                       dim=cfg.align.teacher_dim).path


def main() -> None:  # `accelerate launch -m sf_policy.cli_train ...`
    app()


if __name__ == "__main__":
    main()
