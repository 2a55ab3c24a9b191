"""Looking at recorded episodes in Rerun (``sf dataset view``), and the Foxglove layout of the live topics.

A dataset episode and a raw bag become the same thing here: a stream of :class:`ViewFrame`
(three camera images, the 14-d state and action, the frame's times, the prompt). One
function logs such a stream to a ``rerun.RecordingStream``, so a dataset and the bag it was
recorded from look alike in the viewer. Bags go through ``bag_frames``, the live recorder's
own synchronization, so the viewer shows the frames a conversion would write.

Entities (one recording per episode):

* ``cameras/<role>``: the images (downscaled and JPEG-compressed by default, to keep
  ``.rrd`` files small: raw 640x480 RGB is 0.9 MB per image).
* ``arms/<side>/<joint>/state`` and ``.../action``: one scalar series each, both under the
  joint's entity so one plot per joint shows the action leading the state (the puppet
  reaches the master's command a servo delay later). Grippers are the ``gripper`` joint.
* ``prompt``: the task as a text log, at the first frame and wherever it changes.
* ``sync/camera_skew_ms``: the spread of the cameras' stamps in each frame, when known.

Timelines: ``frame`` (frame_index), ``timestamp`` (seconds since the episode's first frame,
the dataset's ``timestamp`` column) and ``capture_time`` (wall clock of the top camera's
image, from ``sync.stamps_ns`` or the bag's headers).

rerun is imported inside the functions that need it: ``sf`` must start fast, and a missing
rerun must say how to install it rather than break unrelated commands.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from .. import topics
from ..embodiment import ARM_STATE_NAMES, GRIPPER, JOINT_NAMES, SIDES
from .episode_ranges import format_episodes

APPLICATION_ID = "sf_dataset_view"
INSTALL_HINT = "pip install rerun-sdk (or pip install 'sf-policy[view]')"
STATE_COLOR, ACTION_COLOR = (31, 119, 180), (255, 127, 14)  # matplotlib's first two: familiar, colour-blind safe


class ViewError(ValueError):
    """Input that cannot be shown (not a dataset or bag, unknown episode); names the path or option."""


class RerunMissing(ImportError):
    """rerun-sdk is not installed."""


@dataclass(frozen=True)
class ViewOptions:
    max_frames: int | None = None  # per episode, from its start
    downscale: int = 2             # integer factor on both image sides (1: full size)
    jpeg_quality: int = 80         # 1..100; 0 logs raw pixels (lossless, ~10x bigger)

    def __post_init__(self):
        if self.max_frames is not None and self.max_frames < 1:
            raise ViewError(f"--max-frames must be at least 1, got {self.max_frames}")
        if self.downscale < 1:
            raise ViewError(f"--downscale must be at least 1, got {self.downscale}")
        if not 0 <= self.jpeg_quality <= 100:
            raise ViewError(f"--jpeg-quality must be 0..100, got {self.jpeg_quality}")


@dataclass
class ViewFrame:
    """One frame as logged: the same for a dataset row and a synchronized bag frame."""

    frame_index: int
    timestamp_s: float
    capture_ns: int | None          # None when the source keeps no wall-clock stamps
    state: np.ndarray               # (14,) in JOINT_NAMES order
    action: np.ndarray
    images: dict[str, np.ndarray]   # camera role -> HxWx3 uint8 RGB
    task: str
    skew_ms: float | None = None


@dataclass(frozen=True)
class EpisodeSource:
    """One episode to show: a name for the viewer and a way to produce its frames."""

    recording_id: str   # stable: the same episode sent to a viewer twice lands in one recording
    name: str           # e.g. "pots episode 3"
    episode: int
    cameras: tuple[str, ...]
    description: str    # markdown shown in the "episode" document
    path: Path

    def frames(self, options: ViewOptions) -> Iterator[ViewFrame]:
        if is_dataset(self.path):
            return dataset_frames(self.path, self.episode, options.max_frames)
        return bag_view_frames(self.path, self.cameras, options.max_frames)


# -- sources -----------------------------------------------------------------------------------


def is_dataset(path: Path) -> bool:
    return (Path(path) / "meta" / "info.json").is_file()


def is_bag(path: Path) -> bool:
    """A rosbag2 directory: metadata.yaml, or an .mcap its recorder never closed (refused later, by name)."""
    path = Path(path)
    return path.is_dir() and ((path / "metadata.yaml").is_file() or any(path.glob("*.mcap")))


def episode_sources(path: str | Path, episodes: Iterable[int] | None = None) -> list[EpisodeSource]:
    """What ``sf dataset view PATH --episode ...`` shows; a ViewError for anything else.

    ``episodes`` are dataset episode indices (default: the first episode). A bag is one
    episode, so it takes none. An ``.mcap`` file stands for its bag directory.
    """
    path = Path(path)
    if path.suffix == ".mcap" and path.is_file():
        path = path.parent
    wanted = list(episodes or [])
    if is_dataset(path):
        return _dataset_sources(path, wanted)
    if is_bag(path):
        if wanted:
            raise ViewError(f"{path} is a bag, which holds one episode: --episode applies to datasets only")
        return [_bag_source(path)]
    what = "does not exist" if not path.exists() else "is neither a LeRobot dataset (no meta/info.json) nor a " \
                                                      "rosbag2 bag (no metadata.yaml or .mcap)"
    raise ViewError(f"{path} {what}")


def _dataset_sources(root: Path, wanted: list[int]) -> list[EpisodeSource]:
    from .features import DatasetError
    from .reader import DatasetReader

    try:
        with DatasetReader(root) as reader:
            by_index = {ep.index: ep for ep in reader.episodes}
            cameras = tuple(reader.camera_roles)
            fps, total = reader.fps, reader.num_episodes
    except DatasetError as error:
        raise ViewError(str(error)) from None
    if not by_index:
        raise ViewError(f"{root}: the dataset has no episodes")
    wanted = wanted or [min(by_index)]
    unknown = [e for e in wanted if e not in by_index]
    if unknown:
        raise ViewError(f"--episode {', '.join(map(str, unknown))}: not in {root}, whose episodes are "
                        f"{format_episodes(by_index)}")
    sources = []
    for index in dict.fromkeys(wanted):  # in the order given, each once
        ep = by_index[index]
        text = (f"**{root.name}**, episode {index} of {total}: {ep.length} frames at {fps} fps\n\n"
                f"task: {ep.task}\n\ndataset: `{root}`")
        sources.append(EpisodeSource(f"{root.resolve()}#episode_{index}", f"{root.name} episode {index}", index,
                                     cameras, text, root))
    return sources


def _bag_source(bag: Path) -> EpisodeSource:
    from ..record import from_bag
    from ..record.bag import EPISODE_KEY, PROMPT_KEY, BagError, bag_custom_data, check_closed

    try:
        check_closed(bag)  # an unclosed bag: the error says to run `sf dataset repair-bag`
        cameras = from_bag.bag_cameras(bag)
        custom = bag_custom_data(bag)
    except BagError as error:
        raise ViewError(str(error)) from None
    if "cam_high" not in cameras:  # frames are built around the top camera (record/sync.py)
        raise ViewError(f"{bag}: no messages on {topics.camera_image('cam_high')}, the camera every frame "
                        f"is built around")
    episode = int(custom.get(EPISODE_KEY, 0) or 0)
    prompt = custom.get(PROMPT_KEY) or "(the bag keeps no prompt)"
    text = f"**{bag.name}** (raw bag, episode {episode} of {custom.get('sf.dataset', '?')})\n\nprompt: {prompt}"
    return EpisodeSource(f"{bag.resolve()}", bag.name, episode, cameras, text, bag)


def dataset_frames(root: Path, episode: int, max_frames: int | None = None) -> Iterator[ViewFrame]:
    """The frames of one dataset episode (by episode_index), videos decoded by the reader."""
    from .features import ACTION, FRAME_INDEX, SKEW, STAMPS, STATE, TASK_INDEX, TIMESTAMP
    from .reader import DatasetReader

    with DatasetReader(root) as reader:
        pos = next(i for i, ep in enumerate(reader.episodes) if ep.index == episode)
        ep = reader.episodes[pos]
        n = ep.length if max_frames is None else min(ep.length, max_frames)
        column = lambda key: reader.episode_column(pos, key)[:n] if key in reader.features else None  # noqa: E731
        state, action, skew = column(STATE), column(ACTION), column(SKEW)
        frame_index, timestamp, task_index = column(FRAME_INDEX), column(TIMESTAMP), column(TASK_INDEX)
        capture = _capture_ns(reader.features, column(STAMPS))
        videos = {role: islice(reader.episode_frames(pos, role), n) for role in reader.camera_roles}
        for i in range(n):
            images = {role: next(frames) for role, frames in videos.items()}
            task = reader.tasks.get(int(task_index[i]), ep.task) if task_index is not None else ep.task
            yield ViewFrame(int(frame_index[i]), float(timestamp[i]), None if capture is None else int(capture[i]),
                            state[i], action[i], images, task, None if skew is None else float(skew[i]))


def _capture_ns(features: dict, stamps: np.ndarray | None) -> np.ndarray | None:
    """The top camera's stamp of each frame (the frame time, record/sync.py), if all are known."""
    if stamps is None:
        return None
    names = features["sync.stamps_ns"].get("names") or []
    column = stamps[:, names.index("cam_high")] if "cam_high" in names else None
    return column if column is not None and (column > 0).all() else None


def bag_view_frames(bag: Path, cameras: tuple[str, ...], max_frames: int | None = None) -> Iterator[ViewFrame]:
    """The frames of a raw bag, synchronized exactly as the recorder (and from-bag) make them."""
    from ..record import from_bag
    from ..record.bag import PROMPT_KEY, BagError, bag_custom_data

    first = None
    try:
        prompt = bag_custom_data(bag).get(PROMPT_KEY, "")
        for i, frame in enumerate(islice(from_bag.bag_frames(bag, cameras), max_frames)):
            first = frame.stamp_ns if first is None else first
            yield ViewFrame(i, (frame.stamp_ns - first) / 1e9, frame.stamp_ns, frame.state, frame.action,
                            dict(frame.images), prompt, frame.camera_skew_ms)
    except BagError as error:
        raise ViewError(str(error)) from None


# -- logging -----------------------------------------------------------------------------------


def import_rerun():
    try:
        import rerun
    except ImportError as error:
        raise RerunMissing(f"sf dataset view needs rerun-sdk ({error}): {INSTALL_HINT}") from None
    return rerun


def joint_entity(name: str) -> str:
    """"left_joint3" -> "arms/left/joint3": state and action series live under it."""
    side, joint = name.split("_", 1)
    return f"arms/{side}/{joint}"


def log_episode(rec, source: EpisodeSource, options: ViewOptions = ViewOptions()) -> int:
    """Log one episode to ``rec`` (a rerun.RecordingStream); returns the number of frames.

    Images go out frame by frame (an episode's decoded video does not fit in memory);
    the scalar series are sent as columns at the end (one chunk each instead of 14x2xN rows).
    """
    rr = import_rerun()
    rec.log("episode", rr.TextDocument(source.description, media_type="text/markdown"), static=True)
    _log_series_styles(rr, rec)
    rows: list[ViewFrame] = []
    last_task = None
    for frame in source.frames(options):
        _set_times(rec, frame)
        for role, image in frame.images.items():
            rec.log(f"cameras/{role}", _image(rr, image, options))
        if frame.task != last_task:
            rec.log("prompt", rr.TextLog(frame.task, level="INFO"))
            last_task = frame.task
        frame.images = {}  # keep only the scalars for the columns below
        rows.append(frame)
    if rows:
        _send_scalars(rr, rec, rows)
    return len(rows)


def _set_times(rec, frame: ViewFrame) -> None:
    rec.set_time("frame", sequence=frame.frame_index)
    rec.set_time("timestamp", duration=frame.timestamp_s)
    if frame.capture_ns is not None:
        rec.set_time("capture_time", timestamp=np.datetime64(frame.capture_ns, "ns"))


def _image(rr, image: np.ndarray, options: ViewOptions):
    image = downscale(image, options.downscale)
    logged = rr.Image(image, color_model="RGB")
    return logged.compress(jpeg_quality=options.jpeg_quality) if options.jpeg_quality else logged


def downscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor x factor blocks (no aliasing, unlike plain striding); edges that do not
    fill a block are cropped. Summed as factor^2 strided slices: 10x faster than reshape+sum.
    uint16 holds 256 values of 255, so factors up to 16."""
    if factor == 1:
        return image
    h, w = image.shape[0] // factor * factor, image.shape[1] // factor * factor
    total = np.zeros((h // factor, w // factor, *image.shape[2:]), np.uint16)
    for dy in range(factor):
        for dx in range(factor):
            total += image[dy:h:factor, dx:w:factor]
    return (total // (factor * factor)).astype(np.uint8)


def _log_series_styles(rr, rec) -> None:
    for name in JOINT_NAMES:
        for kind, color in (("state", STATE_COLOR), ("action", ACTION_COLOR)):
            rec.log(f"{joint_entity(name)}/{kind}", rr.SeriesLines(colors=[color], names=[kind]), static=True)


def _send_scalars(rr, rec, rows: list[ViewFrame]) -> None:
    indexes = [rr.TimeColumn("frame", sequence=[r.frame_index for r in rows]),
               rr.TimeColumn("timestamp", duration=[r.timestamp_s for r in rows])]
    if all(r.capture_ns is not None for r in rows):
        indexes.append(rr.TimeColumn("capture_time", timestamp=np.array([r.capture_ns for r in rows],
                                                                         dtype="datetime64[ns]")))
    state = np.stack([r.state for r in rows]).astype(np.float64)
    action = np.stack([r.action for r in rows]).astype(np.float64)
    for j, name in enumerate(JOINT_NAMES):
        for kind, values in (("state", state), ("action", action)):
            rec.send_columns(f"{joint_entity(name)}/{kind}", indexes=indexes,
                             columns=rr.Scalars.columns(scalars=values[:, j]))
    if all(r.skew_ms is not None for r in rows):
        rec.send_columns("sync/camera_skew_ms", indexes=indexes,
                         columns=rr.Scalars.columns(scalars=[r.skew_ms for r in rows]))


def blueprint(cameras: Iterable[str]):
    """Cameras and the prompt on the left; one plot per joint (state vs action), a tab per arm."""
    import rerun.blueprint as rrb

    camera_views = [rrb.Spatial2DView(origin=f"cameras/{role}", name=role) for role in cameras]
    left = rrb.Vertical(*camera_views, rrb.TextLogView(origin="prompt", name="prompt"),
                        row_shares=[3] * len(camera_views) + [1])
    arms = [rrb.Grid(*[rrb.TimeSeriesView(origin=joint_entity(f"{side}_{joint}"),
                                          name=f"{side} {joint} ({'m' if joint == GRIPPER else 'rad'})")
                       for joint in ARM_STATE_NAMES], grid_columns=2, name=f"{side} arm")
            for side in SIDES]
    other = rrb.Vertical(rrb.TimeSeriesView(origin="sync", name="camera skew (ms)"),
                         rrb.TextDocumentView(origin="episode", name="episode"), name="sync")
    return rrb.Blueprint(rrb.Horizontal(left, rrb.Tabs(*arms, other), column_shares=[2, 3]),
                         collapse_panels=True)


# -- where the log goes ------------------------------------------------------------------------


def has_display() -> bool:
    """A viewer window can open (macOS and Windows always can; elsewhere X11 or Wayland)."""
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def grpc_url(addr: str) -> str:
    """"host:port" -> rerun's proxy URL; full rerun+http(s):// URLs pass unchanged."""
    if "://" in addr:
        return addr
    if ":" not in addr:
        raise ViewError(f"--connect {addr}: expected HOST:PORT (e.g. 127.0.0.1:9876) or a rerun+http:// URL")
    return f"rerun+http://{addr}/proxy"


def save_paths(save: Path, sources: list[EpisodeSource]) -> list[Path]:
    """One .rrd per episode: rerun cannot append a second recording to a finished file, so
    several episodes go to FILE_episode_<k>.rrd each (the viewer opens them together)."""
    if len(sources) == 1:
        return [save]
    return [save.with_name(f"{save.stem}_episode_{s.episode}{save.suffix or '.rrd'}") for s in sources]


def view(sources: list[EpisodeSource], options: ViewOptions = ViewOptions(), *, save: Path | None = None,
         spawn: bool = False, connect: str | None = None) -> list[tuple[EpisodeSource, int, Path | None]]:
    """Log every episode to its own recording, sent to files, a spawned viewer or a running one.

    Returns (source, frames, file or None) per episode."""
    rr = import_rerun()
    paths = save_paths(save, sources) if save is not None else [None] * len(sources)
    done = []
    for source, path in zip(sources, paths):
        rec = rr.RecordingStream(APPLICATION_ID, recording_id=source.recording_id)
        rr.set_log_time_enabled(False, recording=rec)  # when we logged says nothing about the recording
        layout = blueprint(source.cameras)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            rec.save(path, default_blueprint=layout)
        elif spawn:
            rec.spawn(default_blueprint=layout)
        else:
            rec.connect_grpc(grpc_url(connect), default_blueprint=layout)
        rec.send_recording_name(source.name)
        try:
            frames = log_episode(rec, source, options)
        finally:
            rec.flush()
            rec.disconnect()
        done.append((source, frames, path))
    return done


# -- Foxglove: a layout of the live topics, generated from sf_policy/topics.py ----------------

FOXGLOVE_LAYOUT = "ros2_ws/src/sf_bringup/config/foxglove_layout.json"


def foxglove_topics() -> list[str]:
    """Every topic the layout shows, for the test that each is a real topic of the stack."""
    names = [topics.camera_image(role) for role in topics.CAMERA_ROLES]
    for side in SIDES:
        names += [topics.puppet_state(side), topics.arm_command(side), topics.master_state(side)]
    return names + [topics.DIAGNOSTICS, topics.PROMPT, topics.RECORDER_STATUS]


def _series(path: str, label: str, color: str) -> dict:
    return {"value": path, "enabled": True, "timestampMethod": "receiveTime", "label": label, "color": color}


def _joint_plot(side: str, index: int, joint: str) -> dict:
    """Puppet (measured) vs command vs master for one joint: the lag between them is the servo delay."""
    field = f".position[{index}]"
    series = [_series(topics.puppet_state(side) + field, "puppet (state)", "#1f77b4"),
              _series(topics.arm_command(side) + field, "command", "#ff7f0e"),
              _series(topics.master_state(side) + field, "master (teleop)", "#2ca02c")]
    unit = "m" if joint == GRIPPER else "rad"
    return {"foxglovePanelTitle": f"{side} {joint} ({unit})", "paths": series, "showXAxisLabels": True,
            "showYAxisLabels": True, "showLegend": True, "legendDisplay": "floating", "showPlotValuesInLegend": False,
            "isSynced": True, "xAxisVal": "timestamp", "followingViewWidth": 10, "sidebarDimension": 240}


def foxglove_layout() -> dict:
    """A Foxglove Studio layout (its export format: configById + a layout tree of panel ids).

    Columns: the three cameras; one tab per arm with a plot per joint (positions are the
    JointState's ``position[i]``, in ARM_STATE_NAMES order, grippers last); the prompt,
    the recorder's status and /diagnostics."""
    config: dict[str, dict] = {}
    for role in topics.CAMERA_ROLES:
        config[f"Image!{role}"] = {"cameraState": {}, "imageMode": {"imageTopic": topics.camera_image(role)},
                                   "topicsToLayerIds": {}, "layers": {}}
    tabs = []
    for side in SIDES:
        ids = []
        for index, joint in enumerate(ARM_STATE_NAMES):
            panel = f"Plot!{side}_{joint}"
            config[panel] = _joint_plot(side, index, joint)
            ids.append(panel)
        tabs.append({"title": f"{side} arm", "layout": _grid(ids)})
    config["Tab!arms"] = {"activeTabIdx": 0, "tabs": tabs}
    config["RawMessages!prompt"] = {"topicPath": topics.PROMPT, "diffEnabled": False, "diffMethod": "custom",
                                    "diffTopicPath": "", "showFullMessageForDiff": False, "expansion": "all"}
    config["RawMessages!recorder_status"] = {"topicPath": topics.RECORDER_STATUS, "diffEnabled": False,
                                             "diffMethod": "custom", "diffTopicPath": "",
                                             "showFullMessageForDiff": False, "expansion": "all"}
    config["DiagnosticSummary!diagnostics"] = {"topicToRender": topics.DIAGNOSTICS, "minLevel": 0,
                                               "pinnedIds": [], "hardwareIdFilter": "", "sortByLevel": True}
    cameras = _split([f"Image!{role}" for role in topics.CAMERA_ROLES], "column")
    side = _split(["RawMessages!prompt", "RawMessages!recorder_status", "DiagnosticSummary!diagnostics"], "column")
    layout = {"first": cameras, "second": {"first": "Tab!arms", "second": side, "direction": "row",
                                           "splitPercentage": 72}, "direction": "row", "splitPercentage": 30}
    return {"configById": config, "globalVariables": {}, "userNodes": {},
            "playbackConfig": {"speed": 1}, "layout": layout}


def _split(ids: list, direction: str) -> dict | str:
    """A binary split tree sharing space equally among ids (Foxglove's react-mosaic layout)."""
    if len(ids) == 1:
        return ids[0]
    first = len(ids) // 2
    return {"first": _split(ids[:first], direction), "second": _split(ids[first:], direction),
            "direction": direction, "splitPercentage": round(100 * first / len(ids), 2)}


def _grid(ids: list[str]) -> dict:
    """Plots in rows of two (the gripper last, alone): readable on a laptop screen."""
    rows = [_split(ids[i:i + 2], "row") for i in range(0, len(ids), 2)]
    return _split(rows, "column")


def foxglove_layout_json() -> str:
    """The layout file's exact text (the test compares the shipped file with it)."""
    return json.dumps(foxglove_layout(), indent=2) + "\n"


def write_foxglove_layout(repo: Path) -> Path:
    path = Path(repo) / FOXGLOVE_LAYOUT
    path.write_text(foxglove_layout_json())
    return path
