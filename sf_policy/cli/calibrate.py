"""``sf calibrate``: calibration tools for the real robot (docs/calibration.md).

  sf calibrate cameras --list
  sf calibrate cameras --assign cam_high=123456789012 --assign cam_left_wrist=... --assign cam_right_wrist=...
  sf calibrate intrinsics --camera cam_high --board charuco --cols 8 --rows 6 --square-m 0.035 --marker-m 0.026
  sf calibrate intrinsics --images shots/ --role cam_left_wrist --cols 9 --rows 6 --square-m 0.025
  sf calibrate arms --gripper command
  sf calibrate timesync --duration 10

Each tool writes what the nodes read: ``cameras`` and ``intrinsics`` edit cameras.yaml
(serials; ``intrinsics:`` -> the ROS calibration file the camera driver publishes as
CameraInfo), ``arms`` sets robot.yaml ``limits.gripper`` (the arm driver clamps to it);
``arms`` and ``timesync`` also write a report. Exit status: 0 PASS, 1 FAIL, 2 usage error.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import List, Optional

import typer
import yaml
from rich.console import Console
from rich.markup import escape  # messages name fields like [lower, upper]: not markup
from rich.table import Table

app = typer.Typer(help="Calibrate cameras and arms and check their time sync (docs/calibration.md).",
                  no_args_is_help=True)
console = Console()
REPORTS = Path("outputs/calibration")


def _default_config(name: str) -> Path:
    from ..bringup.plan import bringup_share

    return bringup_share() / "config" / name


def _fail(message: str, code: int = 2):
    console.print(f"[red]error:[/red] {escape(str(message))}")
    raise typer.Exit(code)


def _verdict(ok: bool) -> str:
    return "[green]PASS[/green]" if ok else "[red]FAIL[/red]"


def _write_report(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    console.print(f"report: {path}")


# --- cameras ---------------------------------------------------------------------------
@app.command("cameras")
def cameras_cmd(
    assign: List[str] = typer.Option([], "--assign", "-a", help="ROLE=SERIAL (repeat); without it: asked for."),
    camera_config: Optional[Path] = typer.Option(None, help="cameras.yaml to update (default: sf_bringup's)."),
    list_only: bool = typer.Option(False, "--list", help="Only list the cameras found."),
    sysfs: Path = typer.Option(Path("/sys"), hidden=True, help="sysfs root (tests)."),
    dev: Path = typer.Option(Path("/dev"), hidden=True, help="/dev root (tests)."),
):
    """Discover RealSense and UVC cameras and assign the roles by serial number in cameras.yaml."""
    from ..calibration.cameras import (AssignmentError, ask_assignments, discover, parse_assignments,
                                      plan_assignments, write_assignments)

    devices = discover(sysfs=sysfs, dev=dev)
    _print_devices(devices)
    if list_only:
        raise typer.Exit(0)
    config = camera_config or _default_config("cameras.yaml")
    try:
        wanted = parse_assignments(assign) if assign else ask_assignments(
            devices, lambda role: typer.prompt(f"{role}: number or serial (Enter: leave as it is)", default="",
                                               show_default=False))
        if not wanted:
            _fail("nothing to assign")
        chosen = plan_assignments(wanted, devices)
        kept = write_assignments(config, chosen)
    except AssignmentError as exc:
        _fail(str(exc))
    for role, device in chosen.items():
        console.print(f"{role} -> {device.describe()}")
    note = "" if kept else " (its layout was not understood: rewritten without comments)"
    console.print(f"[green]wrote[/green] {config}{note}")


def _print_devices(devices) -> None:
    table = Table(title="cameras found")
    for col in ("#", "kind", "serial", "name", "firmware", "device / port"):
        table.add_column(col)
    for i, d in enumerate(devices, 1):
        table.add_row(str(i), d.kind, d.serial or "(none)", d.name, d.firmware, d.device or d.usb)
    console.print(table if devices else "[yellow]no cameras found[/yellow] (USB plugged in? udev rules for "
                                        "RealSense installed?)")


# --- intrinsics ------------------------------------------------------------------------
@app.command("intrinsics")
def intrinsics_cmd(
    images: Optional[Path] = typer.Option(None, help="A folder of images of the board."),
    video: Optional[Path] = typer.Option(None, help="A video file of the board moving."),
    camera: Optional[str] = typer.Option(None, help="A live camera: its role in --camera-config."),
    role: Optional[str] = typer.Option(None, help="The camera role calibrated (default: --camera)."),
    board: str = typer.Option("checkerboard", help="checkerboard or charuco."),
    cols: int = typer.Option(9, help="Checkerboard: inner corners across; ChArUco: squares across."),
    rows: int = typer.Option(6, help="Checkerboard: inner corners down; ChArUco: squares down."),
    square_m: float = typer.Option(0.025, help="Square side in metres (measure the print)."),
    marker_m: float = typer.Option(0.018, help="ChArUco marker side in metres."),
    dictionary: str = typer.Option("DICT_4X4_50", help="ChArUco ArUco dictionary."),
    k_coefficients: int = typer.Option(2, help="Radial terms: 2 (k3 fixed, as ROS does), 3, or 6 (rational)."),
    camera_config: Optional[Path] = typer.Option(None, help="cameras.yaml (default: sf_bringup's)."),
    out: Optional[Path] = typer.Option(None, help="Calibration file (default: <config dir>/intrinsics/<role>.yaml)."),
    update_config: bool = typer.Option(True, help="Point cameras.<role>.intrinsics at the file."),
    duration: float = typer.Option(60.0, help="Live camera: seconds to collect views."),
    views: int = typer.Option(25, help="Live camera: stop once this many distinct sharp views are collected."),
    every: int = typer.Option(5, help="Video: use every N-th frame."),
):
    """Camera intrinsics from a checkerboard or ChArUco board; writes the ROS calibration file."""
    from ..calibration.intrinsics import Board, CalibrationError

    sources = [s for s in (images, video, camera) if s is not None]
    if len(sources) != 1:
        _fail("give exactly one of --images, --video, --camera")
    role = role or camera
    config = camera_config or _default_config("cameras.yaml")
    try:
        spec = Board(board, cols, rows, square_m, marker_m, dictionary)
        calib, selection = _run_intrinsics(spec, images, video, camera, config, duration, views, every, k_coefficients)
    except (CalibrationError, ValueError) as exc:
        _fail(str(exc))
    _print_calibration(calib, selection)
    target = out or (config.parent / "intrinsics" / f"{role}.yaml" if role else Path(f"{calib_name(images, video)}.yaml"))
    _save_intrinsics(target, calib, spec, role or target.stem, len(selection.kept))
    if role and update_config:
        _point_config_at(config, role, target, calib)


def calib_name(images: Optional[Path], video: Optional[Path]) -> str:
    return (images or video or Path("camera")).stem or "camera"


def _run_intrinsics(spec, images, video, camera, config, duration, views, every, k_coefficients):
    from ..calibration.intrinsics import (MIN_VIEWS, CalibrationError, calibrate, detect_all, frames_from_video,
                                         images_from_folder, select_views)

    console.print(f"board: {spec.describe()}")
    if images is not None:
        frames = images_from_folder(images)
    elif video is not None:
        frames = frames_from_video(video, every)
    else:
        frames = _live_frames(spec, camera, config, duration, views)
    found: list = []
    with console.status("detecting the board...") as status:
        def progress(name: str, ok: bool) -> None:
            found.append(ok)
            status.update(f"{name}: board {'found' if ok else 'not found'} ({sum(found)}/{len(found)} frames)")
        detections, seen = detect_all(frames, spec, progress)
    selection = select_views(detections)
    console.print(f"{seen} frames, board found in {len(detections)}; kept {len(selection.kept)} "
                  f"({len(selection.blurry)} blurry, {len(selection.duplicates)} near-duplicates dropped)")
    if len(selection.kept) < MIN_VIEWS:
        raise CalibrationError(f"{len(selection.kept)} usable views; at least {MIN_VIEWS} are needed: show the board "
                               "at more positions and angles (check --cols/--rows: "
                               f"{'inner corners' if spec.kind == 'checkerboard' else 'squares'})")
    with console.status("calibrating..."):
        return calibrate(selection.kept, spec, k_coefficients), selection


def _live_frames(spec, camera: str, config: Path, duration: float, views: int):
    """Live frames; stops early once enough distinct views have been seen (counted as it goes)."""
    from ..calibration.intrinsics import Detector, frames_from_camera, select_views
    from ..config import camera_for_role

    cfg = camera_for_role(config, camera)
    detector, seen = Detector(spec), []
    console.print(f"live: {camera} ({cfg.backend} {cfg.serial or cfg.device}); move the board through the whole "
                  f"image, tilted, for up to {duration:g} s")

    def enough() -> bool:
        return len(select_views(seen).kept) >= views

    for name, frame in frames_from_camera(cfg, duration, enough=enough):
        det = detector(frame, name)
        if det is not None:
            seen.append(det)
        yield name, frame


def _print_calibration(calib, selection) -> None:
    from ..calibration.intrinsics import GOOD_RMS_PX, coverage_warnings

    i = calib.intrinsics
    console.print(f"fx {i.fx:.2f}  fy {i.fy:.2f}  cx {i.cx:.2f}  cy {i.cy:.2f}  ({i.width}x{i.height}, "
                  f"{i.distortion_model} {', '.join(f'{c:.4f}' for c in i.coefficients)})")
    table = Table(title="reprojection error per view (px)")
    table.add_column("view")
    table.add_column("rms")
    for name, err in sorted(calib.view_errors.items(), key=lambda kv: -kv[1]):
        table.add_row(name, f"{err:.3f}")
    console.print(table)
    colour = "green" if calib.rms_px <= GOOD_RMS_PX else "yellow"
    console.print(f"RMS reprojection error: [{colour}]{calib.rms_px:.3f} px[/{colour}] over {len(calib.view_errors)} "
                  f"views" + (f"; outliers dropped: {', '.join(calib.outliers)}" if calib.outliers else ""))
    for warning in coverage_warnings(selection.kept, calib):
        console.print(f"[yellow]warning:[/yellow] {warning}")


def _save_intrinsics(target: Path, calib, spec, name: str, views: int) -> None:
    from ..calibration.camera_info import save_camera_info

    comment = (f"sf calibrate intrinsics, {time.strftime('%Y-%m-%d %H:%M')}: {spec.describe()}\n"
               f"{views} views, RMS reprojection error {calib.rms_px:.3f} px")
    save_camera_info(target, calib.intrinsics, name, comment)
    console.print(f"[green]wrote[/green] {target}")


def _point_config_at(config: Path, role: str, target: Path, calib) -> None:
    from ..calibration.yaml_edit import update_checked
    from ..config import ConfigError, load_camera_config

    try:
        cfg = load_camera_config(config).get(role)
    except ConfigError as exc:
        _fail(f"{exc}; the calibration file is written but cameras.yaml was not updated")
    if cfg is None:
        _fail(f"{config}: cameras.{role}: no entry for this role; assign it first (sf calibrate cameras)")
    size = (calib.intrinsics.width, calib.intrinsics.height)
    if size != (cfg.width, cfg.height):
        _fail(f"{config}: cameras.{role}: configured for {cfg.width}x{cfg.height} but calibrated at "
              f"{size[0]}x{size[1]}; calibrate at the configured size (cameras.yaml not updated)")
    try:
        value = str(target.resolve().relative_to(config.resolve().parent))
    except ValueError:
        value = str(target.resolve())
    update_checked(config, [(["cameras", role, "intrinsics"], value)], load_camera_config)
    console.print(f"[green]updated[/green] {config}: cameras.{role}.intrinsics = {value}")


# --- arms ----------------------------------------------------------------------------
@app.command("arms")
def arms_cmd(
    robot_config: Optional[Path] = typer.Option(None, help="robot.yaml (default: sf_bringup's)."),
    side: List[str] = typer.Option([], "--side", help="left / right (repeat; default: every arm in the file)."),
    gripper: str = typer.Option("command", help="command: the tool moves the gripper; manual: you do; skip."),
    joint_tol_deg: float = typer.Option(1.0, help="Allowed zero offset per joint (deg)."),
    gripper_closed_tol_mm: float = typer.Option(2.0, help="Fully closed must read within this of 0 mm."),
    gripper_open_tol_mm: float = typer.Option(5.0, help="Fully open must read within this of 70 mm."),
    speed_percent: int = typer.Option(30, help="Gripper speed for --gripper command (percent)."),
    write_limits: bool = typer.Option(True, help="Write the measured gripper range to robot.yaml limits.gripper."),
    report: Path = typer.Option(REPORTS / "arms.yaml", help="Report file."),
):
    """Zero-pose offsets per joint and the gripper's range, against the embodiment contract."""
    from ..calibration.arms import ArmCheckError, Tolerances, check_arm, connect_arm
    from ..config import ConfigError, load_robot_config

    path = robot_config or _default_config("robot.yaml")
    try:
        robot = load_robot_config(path)
    except ConfigError as exc:
        _fail(str(exc))
    tolerances = Tolerances(math.radians(joint_tol_deg), gripper_closed_tol_mm / 1000, gripper_open_tol_mm / 1000)
    console.print("Rest each puppet arm in its zero pose (all joints at 0: folded on its rest) and keep it still.")
    reports = []
    for name in side or list(robot.arms):
        try:
            arm = connect_arm(robot, name, speed_percent)
            try:
                reports.append(check_arm(arm, name, gripper, tolerances, prompt=lambda m: typer.prompt(
                    m, default="", show_default=False)))
            finally:
                arm.close()
        except ArmCheckError as exc:
            _fail(str(exc), 1)
        _print_arm(reports[-1], tolerances)
    _write_arm_results(path, reports, write_limits, report)
    raise typer.Exit(0 if all(r.ok for r in reports) else 1)


def _print_arm(report, tolerances) -> None:
    table = Table(title=f"{report.side} arm ({report.can_port}): zero pose")
    for col in ("joint", "reading (deg)", "offset (deg)", f"within {math.degrees(tolerances.joint_rad):g} deg"):
        table.add_column(col)
    for j in report.joints:
        table.add_row(j.name, f"{math.degrees(j.measured):.3f}", f"{math.degrees(j.offset):+.3f}", _verdict(j.ok))
    console.print(table)
    if report.gripper is not None:
        g = report.gripper
        console.print(f"gripper: closed {g.closed_m * 1000:.2f} mm {_verdict(g.closed_ok)}, "
                      f"open {g.open_m * 1000:.2f} mm {_verdict(g.open_ok)} (contract 0-70 mm)")
    console.print(f"{report.side} arm: {_verdict(report.ok)}")


def _write_arm_results(path: Path, reports, write_limits: bool, report: Path) -> None:
    from ..calibration.arms import gripper_limits, write_gripper_limits

    data = {"robot_config": str(path), "arms": {r.side: r.as_dict() for r in reports}}
    limits = gripper_limits(reports)
    if limits is not None:
        data["gripper_limits_m"] = limits
        if write_limits:
            kept = write_gripper_limits(path, limits)
            console.print(f"[green]updated[/green] {path}: limits.gripper = {limits} (the arm driver clamps to it)"
                          + ("" if kept else " (file rewritten without comments)"))
    _write_report(report, data)


# --- time sync -----------------------------------------------------------------------
@app.command("timesync")
def timesync_cmd(
    duration: float = typer.Option(10.0, help="Seconds of listening."),
    camera_config: Optional[Path] = typer.Option(None, help="cameras.yaml: namespaces and fps (default: "
                                                            "sf_bringup's when present)."),
    arm_hz: float = typer.Option(200.0, help="Expected arm state rate."),
    skip: List[str] = typer.Option([], "--skip", help="A stream left out (cam_right_wrist, master_left, ...)."),
    max_latency_ms: float = typer.Option(100.0, help="FAIL above this p99 arrival - stamp."),
    max_skew_ms: Optional[float] = typer.Option(None, help="FAIL above this p99 |skew| to cam_high "
                                                           "(default: half of cam_high's period)."),
    out: Path = typer.Option(REPORTS / "timesync.yaml", help="Report file."),
):
    """Rates, stamp latency and skew to cam_high of the camera and arm topics (needs the drivers running)."""
    from ..calibration.timesync import Thresholds, analyse, default_streams, measure, report_dict

    streams = [s for s in default_streams(*_camera_topics(camera_config), arm_hz=arm_hz) if s.name not in skip]
    unknown = set(skip) - {s.name for s in default_streams()}
    if unknown:
        _fail(f"--skip {', '.join(sorted(unknown))}: unknown stream; streams: "
              f"{', '.join(s.name for s in default_streams())}")
    limits = Thresholds(max_latency_ms=max_latency_ms, max_skew_ms=max_skew_ms)
    with console.status("listening...") as status:
        samples = measure(streams, duration, progress=lambda t, counts: status.update(
            f"listening {t:.0f}/{duration:g} s: " + ", ".join(f"{k} {v}" for k, v in counts.items())))
    results = analyse(streams, samples, limits)
    _print_timesync(results)
    data = report_dict(results, duration, limits)
    _write_report(out, data)
    raise typer.Exit(0 if data["result"] == "PASS" else 1)


def _camera_topics(camera_config: Optional[Path]):
    from ..config import ConfigError, load_camera_config

    path = camera_config or _default_config("cameras.yaml")
    if camera_config is None and not path.is_file():
        return None, None
    try:
        cams = load_camera_config(path)
    except ConfigError as exc:
        _fail(str(exc))
    return {r: c.namespace for r, c in cams.items()}, {r: c.fps for r, c in cams.items()}


def _print_timesync(results) -> None:
    table = Table(title="time sync (stamps on the host clock; skew to cam_high by nearest stamp)")
    for col in ("stream", "topic", "msgs", "rate Hz", "latency p50/p99 ms", "skew p50 / |p99| ms", "result"):
        table.add_column(col)
    for r in results:
        table.add_row(r.stream.name, r.stream.topic, str(r.messages), f"{r.rate_hz:.1f}",
                      f"{r.latency_ms[0]:.1f} / {r.latency_ms[1]:.1f}", f"{r.skew_ms[0]:+.1f} / {r.skew_ms[1]:.1f}",
                      _verdict(r.ok))
    console.print(table)
    for r in results:
        for problem in r.problems:
            console.print(f"[red]{r.stream.name}:[/red] {problem}")
