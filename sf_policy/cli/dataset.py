"""``sf dataset``: inspect and check LeRobot v3.0 datasets (docs/datasets.md).

Heavy imports (pyarrow, PyAV) happen inside the commands so that ``sf`` starts fast.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape  # messages name fields like [lower, upper]: not markup
from rich.table import Table

app = typer.Typer(help="Inspect and check LeRobot v3.0 datasets.", no_args_is_help=True)
console = Console()


@app.command("validate")
def validate_cmd(
    root: Path = typer.Argument(..., help="Dataset root (the folder holding meta/, data/, videos/)."),
    videos: bool = typer.Option(True, help="Open every video and check its frame count and times."),
    strict: bool = typer.Option(False, help="Exit 1 on warnings too (episodes recorded below the dataset's rate)."),
):
    """Check the layout, metadata, frame indices, timestamps and videos; exit 1 on any problem.
    Warnings (an episode whose cameras delivered less than the dataset's fps) exit 0 unless --strict."""
    from ..data.validate import validate_with_warnings

    problems, warnings = validate_with_warnings(root, videos=videos)
    for title, found, style in ((f"{len(problems)} problem(s) in {root}", problems, "red"),
                                (f"{len(warnings)} warning(s) in {root}", warnings, "yellow")):
        if found:
            table = Table(title=f"[{style}]{escape(title)}[/{style}]")
            for col in ("file", "field", "problem" if found is problems else "warning"):
                table.add_column(col, overflow="fold")
            for p in found:
                table.add_row(escape(p.path), escape(p.field), escape(p.message))
            console.print(table)
    if not problems:
        console.print(f"[green]valid[/green]: {escape(str(root))}" + (f" ({len(warnings)} warning(s))" if warnings else ""))
    raise typer.Exit(1 if problems or (strict and warnings) else 0)


@app.command("info")
def info_cmd(root: Path = typer.Argument(..., help="Dataset root.")):
    """Summary: episodes, frames, duration, tasks, cameras, size on disk, per-episode lengths."""
    from ..data.features import DatasetError
    from ..data.reader import DatasetReader

    try:
        ds = DatasetReader(root)
    except DatasetError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2)
    frames = ds.num_frames
    console.print(f"[bold]{root}[/bold]  LeRobot {ds.info['codebase_version']}, robot {ds.info.get('robot_type')}")
    console.print(f"episodes {ds.num_episodes}   frames {frames}   duration {_duration(frames / ds.fps)}   "
                  f"fps {ds.fps}   size {_size(_disk_usage(Path(root)))}")
    _print_tasks(ds)
    _print_cameras(ds)
    _print_episodes(ds)


def _print_tasks(ds) -> None:
    per_task = Counter(ep.task for ep in ds.episodes)
    table = Table(title="tasks")
    for col in ("index", "task", "episodes"):
        table.add_column(col)
    for index, task in sorted(ds.tasks.items()):
        table.add_row(str(index), task, str(per_task.get(task, 0)))
    console.print(table)


def _print_cameras(ds) -> None:
    table = Table(title="cameras")
    for col in ("role", "codec", "pix_fmt", "resolution"):
        table.add_column(col)
    for role, key in zip(ds.camera_roles, ds.video_keys):
        ft = ds.features[key]
        block = ft.get("info") or {}
        table.add_row(role, str(block.get("video.codec", "?")), str(block.get("video.pix_fmt", "?")),
                      f"{ft['shape'][1]}x{ft['shape'][0]}")
    console.print(table)


def _print_episodes(ds) -> None:
    table = Table(title="episodes")
    for col in ("#", "task", "frames", "duration"):
        table.add_column(col)
    for ep in ds.episodes:
        table.add_row(str(ep.index), ep.task, str(ep.length), _duration(ep.length / ds.fps))
    console.print(table)


def _disk_usage(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes)}:{secs:04.1f}" if minutes else f"{secs:.1f} s"


# -- from-bag (raw bags -> dataset; sf_policy/record/bag.py) -----------------------------------

@app.command("from-bag")
def from_bag_cmd(
    bags: list[Path] = typer.Argument(..., help="rosbag2 bag directories (one episode each), e.g. from bag_root."),
    root: Path = typer.Option(..., "--root", help="Dataset root: created if missing, else appended to."),
    task: str = typer.Option(None, help="Prompt for every episode (default: the prompt kept in each bag)."),
    cameras: list[str] = typer.Option(None, "--camera", help="Camera role to use (repeat; default: all three, "
                                                                "or the existing dataset's)."),
    fps: int = typer.Option(None, help="Frame rate of a new dataset (default 30; an existing one keeps its own)."),
):
    """Convert raw bags into LeRobot episodes with the live recorder's frame synchronization."""
    from ..data.features import DatasetError
    from ..record.bag import BagError, convert_bag

    try:
        summary = convert_bag(bags, root, task=task, cameras=cameras or None, fps=fps)
    except (BagError, DatasetError, ValueError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2)
    table = Table(title=f"{len(summary.bags)} bag(s) -> {root}")
    for col in ("bag", "episode", "task", "frames", "drops", "skew mean ms", "skew max ms"):
        table.add_column(col, overflow="fold")
    for b in summary.bags:
        episode = "-" if b.episode_index is None else str(b.episode_index)
        table.add_row(b.bag.name, episode, b.task, str(b.frames), str(sum(b.drops.values())),
                      f"{b.skew_ms_mean:.1f}", f"{b.skew_ms_max:.1f}")
    console.print(table)
    console.print(f"frames {summary.frames}   drops {summary.drops}   "
                  f"camera skew mean {summary.skew_ms_mean:.1f} ms, max {summary.skew_ms_max:.1f} ms")


@app.command("repair-bag")
def repair_bag_cmd(
    bags: list[Path] = typer.Argument(..., help="Bag directories left without metadata.yaml (recorder killed)."),
    keep_original: bool = typer.Option(True, help="Keep the truncated file as <name>.mcap.truncated."),
):
    """Recover bags whose recorder died mid-episode: every message that reached the disk is
    rewritten into a bag rosbags and `ros2 bag` open, with the prompt the recorder kept."""
    from ..record.bag import BagError
    from ..record.repair import repair_bag

    failed = False
    for bag in bags:
        try:
            summary = repair_bag(bag, keep_original=keep_original)
        except (BagError, OSError) as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}")
            failed = True
            continue
        if not summary.repaired:
            console.print(f"{escape(str(bag))}: complete (has metadata.yaml): nothing to repair")
            continue
        tail = f"; stopped at the crash: {summary.stopped_at}" if summary.stopped_at else ""
        kept = f"; the original is kept as {summary.kept.name}" if summary.kept else ""
        console.print(f"[green]repaired[/green] {escape(str(bag))}: {summary.messages} messages on "
                      f"{summary.topics} topics recovered{escape(tail)}{escape(kept)}")
    raise typer.Exit(2 if failed else 0)
