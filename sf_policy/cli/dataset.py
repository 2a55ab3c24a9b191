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


# -- from-bag (raw bags -> dataset; sf_policy/record/from_bag.py) --------------------------------

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
    from ..record.bag import BagError
    from ..record.from_bag import convert_bag

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


# -- view (Rerun; sf_policy/data/view.py) -----------------------------------------------------

@app.command("view")
def view_cmd(
    source: Path = typer.Argument(..., help="Dataset root, or a rosbag2 bag directory (or its .mcap)."),
    episodes: list[int] = typer.Option(None, "--episode", "-e", help="Dataset episode_index to show (repeat; "
                                                                      "default: the first). A bag is one episode."),
    save: Path = typer.Option(None, "--save", help="Write FILE.rrd (several episodes: FILE_episode_<k>.rrd each). "
                                                   "The default without a display: ./<name>_episode_<k>.rrd."),
    spawn: bool = typer.Option(False, "--spawn", help="Open a Rerun viewer (the default with a display)."),
    connect: str = typer.Option(None, "--connect", help="Send to a running viewer: HOST:PORT or a rerun+http:// URL."),
    max_frames: int = typer.Option(None, "--max-frames", min=1, help="Show at most N frames of each episode."),
    downscale: int = typer.Option(2, "--downscale", min=1, max=16, help="Shrink images by this factor (1: full size)."),
    jpeg_quality: int = typer.Option(80, "--jpeg-quality", min=0, max=100, help="JPEG quality; 0 logs raw pixels."),
):
    """Show episodes in Rerun: the cameras, every joint's state vs action, the grippers and the prompt,
    on the recording's timelines (frame, timestamp, capture_time)."""
    from ..data.features import DatasetError
    from ..data.view import RerunMissing, ViewError, ViewOptions, episode_sources, has_display, import_rerun, view

    if sum((save is not None, spawn, connect is not None)) > 1:
        console.print("[red]error:[/red] give one of --save, --spawn, --connect")
        raise typer.Exit(2)
    try:
        import_rerun()
        sources = episode_sources(source, episodes)
        if save is None and not spawn and connect is None and not has_display():
            save = Path(f"{sources[0].path.name}_episode_{sources[0].episode}.rrd") if len(sources) == 1 \
                else Path(f"{sources[0].path.name}.rrd")
        spawn = spawn or (save is None and connect is None)
        done = view(sources, ViewOptions(max_frames, downscale, jpeg_quality), save=save, spawn=spawn, connect=connect)
    except RerunMissing as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1)
    except (ViewError, DatasetError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2)
    for src, frames, path in done:
        where = f" -> {path} ({_size(path.stat().st_size)}; open with `rerun {path}`)" if path else ""
        console.print(f"{escape(src.name)}: {frames} frames{escape(where)}")


# -- edit (delete / keep / split / merge / recompute-stats / reencode; sf_policy/data/edit.py) --

edit_app = typer.Typer(help="Edit datasets into a new one (--output) or in place; crash-safe "
                            "(docs/datasets.md, \"Editing\").", no_args_is_help=True)
app.add_typer(edit_app, name="edit")

_ROOT_ARG = typer.Argument(..., help="Dataset root (the folder holding meta/, data/, videos/).")
_EPISODES_HELP = "Episode numbers and ranges, e.g. 1,3-5."
_OUTPUT_HELP = "New dataset folder (must not exist); built next to it and renamed into place when complete."
_IN_PLACE_HELP = "Replace ROOT: a new copy is built and swapped in atomically, the old one deleted after."


def _run_edit(action) -> list:
    """Run an edit with a progress bar; a DatasetError is a clear message and exit code 2."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..data.features import DatasetError

    bars: dict[str, object] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        def report(what: str, done: int, total: int) -> None:
            if what not in bars:
                bars[what] = progress.add_task(escape(what), total=total)
            progress.update(bars[what], completed=done)

        try:
            results = action(report)
        except DatasetError as exc:
            progress.stop()
            console.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(2)
    results = results if isinstance(results, tuple) else (results,)
    for r in results:
        console.print(f"[green]wrote[/green] {escape(str(r.root))}: {r.episodes} episodes, {r.frames} frames, "
                      f"{r.tasks} task(s)")
    return list(results)


def _episodes(spec: str, option: str = "--episodes") -> list[int]:
    from ..data.episode_ranges import parse_episodes
    from ..data.features import DatasetError

    try:
        return parse_episodes(spec, option)
    except DatasetError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2)


@edit_app.command("delete")
def edit_delete_cmd(
    root: Path = _ROOT_ARG,
    episodes: str = typer.Option(..., "--episodes", "-e", help=_EPISODES_HELP),
    output: Path = typer.Option(None, "--output", "-o", help=_OUTPUT_HELP),
    in_place: bool = typer.Option(False, "--in-place", help=_IN_PLACE_HELP),
):
    """Delete episodes; the others are renumbered 0..n-1 (data, videos, meta, tasks, stats)."""
    from ..data.edit import delete_episodes

    chosen = _episodes(episodes)
    _run_edit(lambda p: delete_episodes(root, chosen, output=output, in_place=in_place, progress=p))


@edit_app.command("keep")
def edit_keep_cmd(
    root: Path = _ROOT_ARG,
    episodes: str = typer.Option(..., "--episodes", "-e", help=_EPISODES_HELP),
    output: Path = typer.Option(None, "--output", "-o", help=_OUTPUT_HELP),
    in_place: bool = typer.Option(False, "--in-place", help=_IN_PLACE_HELP),
):
    """Keep only these episodes, renumbered 0..n-1 in their order."""
    from ..data.edit import keep_episodes

    chosen = _episodes(episodes)
    _run_edit(lambda p: keep_episodes(root, chosen, output=output, in_place=in_place, progress=p))


@edit_app.command("split")
def edit_split_cmd(
    root: Path = _ROOT_ARG,
    output: Path = typer.Option(..., "--output", "-o", help="New dataset of the chosen episodes."),
    rest: Path = typer.Option(..., "--rest", help="New dataset of the other episodes."),
    episodes: str = typer.Option(None, "--episodes", "-e", help=_EPISODES_HELP + " Go to --output."),
    fraction: float = typer.Option(None, "--fraction", help="This fraction of the episodes goes to --output "
                                                            "(the first ones, or random ones with --seed)."),
    seed: int = typer.Option(None, "--seed", help="With --fraction: choose the episodes at random."),
):
    """Split into two new datasets (e.g. train and validation); ROOT is left as it is."""
    from ..data.edit import split_dataset

    chosen = _episodes(episodes) if episodes is not None else None
    _run_edit(lambda p: split_dataset(root, output, rest, episodes=chosen, fraction=fraction, seed=seed, progress=p))


@edit_app.command("merge")
def edit_merge_cmd(
    roots: list[Path] = typer.Argument(..., help="Datasets with the same fps, robot_type and features."),
    output: Path = typer.Option(..., "--output", "-o", help=_OUTPUT_HELP),
):
    """Merge datasets into a new one: their episodes in the order given, tasks united."""
    from ..data.edit import merge_datasets

    _run_edit(lambda p: merge_datasets(roots, output, progress=p))


@edit_app.command("recompute-stats")
def edit_recompute_stats_cmd(
    root: Path = _ROOT_ARG,
    output: Path = typer.Option(None, "--output", "-o", help=_OUTPUT_HELP),
    in_place: bool = typer.Option(False, "--in-place", help=_IN_PLACE_HELP),
    images: bool = typer.Option(False, help="Recompute image statistics too, decoding every 10th frame "
                                            "(default: keep those taken from the raw frames while recording)."),
):
    """Recompute meta/stats.json and each episode's statistics from the data as it is."""
    from ..data.edit import recompute_stats

    _run_edit(lambda p: recompute_stats(root, output=output, in_place=in_place, images=images, progress=p))


@edit_app.command("reencode")
def edit_reencode_cmd(
    root: Path = _ROOT_ARG,
    output: Path = typer.Option(None, "--output", "-o", help=_OUTPUT_HELP),
    in_place: bool = typer.Option(False, "--in-place", help=_IN_PLACE_HELP),
    codec: str = typer.Option(None, help="Encoder, e.g. libx264 or libsvtav1 (default: the dataset's)."),
    crf: int = typer.Option(None, help="Quality (lower is better; default: the dataset's)."),
    gop: int = typer.Option(None, help="Keyframe interval in frames (default: the dataset's)."),
    preset: str = typer.Option(None, help="Encoder preset (default: the dataset's, or the new codec's own)."),
    pix_fmt: str = typer.Option(None, "--pix-fmt", help="Pixel format (default: the dataset's, yuv420p)."),
    cameras: list[str] = typer.Option(None, "--camera", help="Camera role to re-encode (repeat; default: all)."),
):
    """Decode and encode every video again with other settings; same frames, same timestamps."""
    from ..data.edit import reencode_videos

    changes = {"codec": codec, "crf": crf, "gop": gop, "preset": preset, "pix_fmt": pix_fmt}
    _run_edit(lambda p: reencode_videos(root, changes, output=output, in_place=in_place, cameras=cameras or None,
                                        progress=p))


# -- check (quality report; sf_policy/data/quality.py) -----------------------------------------

@app.command("check")
def check_cmd(
    root: Path = typer.Argument(..., help="Dataset root (the folder holding meta/, data/, videos/)."),
    videos: bool = typer.Option(True, help="Decode the videos to find frozen cameras (--no-videos: stamps only)."),
    video_episodes: int = typer.Option(0, "--video-episodes", min=0,
                                       help="Decode only this many episodes, spread evenly (0: all)."),
    json_path: Path = typer.Option(None, "--json", help="Write the report (findings, per-episode figures) as JSON."),
    plot_path: Path = typer.Option(None, "--plot", help="Write a per-episode summary plot (PNG): motion, "
                                                        "gripper range and lag per arm."),
    strict: bool = typer.Option(False, help="Exit 1 on warnings too."),
):
    """Quality report: idle joints and arms, unused grippers, frozen cameras, rate shortfalls, the
    action-to-state lag, copied actions, NaN, limits, jumps, short episodes. An idle ARM is
    information (a one-arm task); exit 1 on errors (--strict: warnings too), 2 if ROOT is no dataset."""
    from rich.progress import Progress

    from ..data.features import DatasetError
    from ..data.quality import check, plot, write_json

    try:
        with Progress(console=console, transient=True) as progress:
            bar = progress.add_task("checking episodes", total=None)
            report = check(root, videos=videos, video_episodes=video_episodes,
                           progress=lambda done, total: progress.update(bar, completed=done, total=total))
    except DatasetError as exc:
        console.print(f"[red]error:[/red] not a dataset this check can read: {escape(str(exc))} "
                      "(`sf dataset validate` checks the layout)")
        raise typer.Exit(2)
    _print_quality(report)
    if json_path:
        console.print(f"report -> {escape(str(write_json(report, json_path)))}")
    if plot_path:
        console.print(f"plot -> {escape(str(plot(report, plot_path)))}")
    raise typer.Exit(report.exit_code(strict))


def _print_quality(report) -> None:
    styles = {"error": "red", "warning": "yellow", "info": "cyan"}
    table = Table(title=escape(f"quality of {report.root}: {len(report.episodes)} episode(s)"))
    for col in ("severity", "episodes", "field", "finding"):
        table.add_column(col, overflow="fold")
    for f in report.findings:
        shown = "; ".join(f.details[:3]) + (f"; +{len(f.details) - 3} more" if len(f.details) > 3 else "")
        style = styles[f.severity]
        table.add_row(f"[{style}]{f.severity}[/{style}]", f.where, escape(f.field),
                      escape(f.message + (f" ({shown})" if shown else "")))
    if report.findings:
        console.print(table)
    decoded = "videos not decoded" if not report.videos_checked else \
        f"videos decoded for {len(report.videos_checked)} of {len(report.episodes)} episode(s)"
    console.print(f"{report.count('error')} error(s), {report.count('warning')} warning(s), "
                  f"{report.count('info')} note(s); {decoded}")
