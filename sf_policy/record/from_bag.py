"""Raw bags -> the recorder's frames -> LeRobot v3 episodes (``sf dataset from-bag``).

``convert_bag`` replays a bag in receive-time order through the same ``FrameSync`` as the
live recorder, with the bag's receive time as "now", and writes one episode per bag.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import topics
from ..embodiment import arm_positions
from .bag import (IMAGE_TYPE, JOINT_STATE_TYPE, PROMPT_KEY, STARTED_KEY, BagError, bag_custom_data, check_closed,
                  open_reader, recorder_streams, typestore)
from .images import image_to_rgb, size_mismatch, stamp_ns
from .sync import ARM_STREAMS, FrameSync, SyncedFrame, frame_row


@dataclass
class BagConversion:
    """What one bag became."""

    bag: Path
    task: str
    frames: int = 0
    messages: int = 0
    episode_index: int | None = None   # None: no frame, no episode
    drops: dict[str, int] = field(default_factory=dict)
    skew_ms_mean: float = 0.0
    skew_ms_max: float = 0.0
    before_start: int = 0              # frames older than the episode's start (not recorded)


@dataclass
class ConversionSummary:
    dataset_root: Path
    bags: list[BagConversion]

    @property
    def frames(self) -> int:
        return sum(b.frames for b in self.bags)

    @property
    def drops(self) -> int:
        return sum(sum(b.drops.values()) for b in self.bags)

    @property
    def skew_ms_max(self) -> float:
        return max((b.skew_ms_max for b in self.bags), default=0.0)

    @property
    def skew_ms_mean(self) -> float:
        frames = self.frames
        return sum(b.skew_ms_mean * b.frames for b in self.bags) / frames if frames else 0.0


def convert_bag(bag_paths: str | Path | Iterable[str | Path], dataset_root: str | Path, task: str | None = None,
                cameras: Iterable[str] | None = None, fps: int | None = None, progress: bool = True,
                robot_type: str | None = None, video=None) -> ConversionSummary:
    """Bags -> one dataset episode each, synchronized exactly as the live recorder does.

    An existing dataset at ``dataset_root`` is appended to (its fps and cameras apply);
    otherwise one is created at the first frame, with each camera's image size from the bag
    (fps 30 and all three cameras unless given). ``task`` overrides the prompt kept in each bag.
    """
    paths = [Path(bag_paths)] if isinstance(bag_paths, (str, Path)) else [Path(p) for p in bag_paths]
    if not paths:
        raise BagError("no bag given")
    sink = _DatasetSink(Path(dataset_root), fps, cameras, robot_type, video)
    results = []
    try:
        for path in paths:
            results.append(_convert_one(path, sink, task, progress))
    finally:
        sink.close()
    return ConversionSummary(Path(dataset_root), results)


def _convert_one(bag: Path, sink: _DatasetSink, task: str | None, progress: bool) -> BagConversion:
    prompt = bag_prompt(bag, task)
    result = BagConversion(bag, prompt)
    episode = None
    skews: list[float] = []
    try:
        for frame in bag_frames(bag, sink.cameras, sink.fps, progress, result):
            if episode is None:
                roles = sink.cameras
                episode = sink.begin(bag, prompt, {r: frame.images[r].shape[:2] for r in roles})
            episode.add_frame(frame_row(frame), images=frame.images)
            skews.append(frame.camera_skew_ms)
        result.frames = len(skews)
        if skews:
            result.skew_ms_mean, result.skew_ms_max = float(np.mean(skews)), float(np.max(skews))
        if episode is not None:
            saved, episode = episode.save(), None
            result.episode_index = saved.episode_index
        return result
    finally:
        if episode is not None:  # an error part way: leave the dataset as it was
            episode.discard()


def bag_prompt(bag: str | Path, task: str | None = None) -> str:
    """``task`` if given, else the prompt the recorder kept in the bag (an error naming the bag if none)."""
    bag = Path(bag)
    check_closed(bag)
    custom = bag_custom_data(bag) if (bag / "metadata.yaml").exists() else {}
    prompt = task or custom.get(PROMPT_KEY, "")
    if not prompt:
        raise BagError(f"{bag}: the bag keeps no task prompt ({PROMPT_KEY}); give one with --task")
    return prompt


def bag_cameras(bag: str | Path) -> tuple[str, ...]:
    """The camera roles whose image topic the bag holds, in CAMERA_ROLES order."""
    with open_reader(Path(bag)) as reader:
        present = {c.topic for c in reader.connections if c.msgcount}
    return tuple(role for role in topics.CAMERA_ROLES if topics.camera_image(role) in present)


def bag_frames(bag: str | Path, cameras: Iterable[str], fps: float = 30, progress: bool = False,
               result: BagConversion | None = None) -> Iterator[SyncedFrame]:
    """The episode's frames of one bag, exactly as the live recorder made them: the bag is
    replayed in receive-time order through ``FrameSync`` (receive time as "now", polled after
    every message), and frames older than the episode's start are skipped as the recorder does.
    ``result`` (optional) gets the message, drop and skipped-frame counts."""
    bag = Path(bag)
    custom = bag_custom_data(bag) if (bag / "metadata.yaml").exists() else {}
    started = int(custom.get(STARTED_KEY, 0))
    roles = tuple(cameras)
    sync = FrameSync(cameras=roles, fps=fps)
    with open_reader(bag) as reader:
        streams = _connections(bag, reader, recorder_streams(roles))
        by_id = {conn.id: stream for stream, conn in streams.items()}
        messages = reader.messages(connections=list(streams.values()))
        total = sum(conn.msgcount for conn in streams.values())
        for connection, received_ns, raw in _progress(messages, total, bag.name, progress):
            if result is not None:
                result.messages += 1
            _feed(sync, bag, by_id[connection.id], roles, connection, raw, received_ns)
            for frame in sync.poll(received_ns):
                if frame.stamp_ns < started:
                    if result is not None:
                        result.before_start += 1
                    continue
                yield frame
    if result is not None:
        result.drops = dict(sync.drops)


def _feed(sync: FrameSync, bag: Path, stream: str, roles: tuple[str, ...], connection, raw, received_ns: int):
    where = f"{bag}: {connection.topic} (message at {received_ns} ns)"
    try:
        msg = typestore().deserialize_cdr(raw, connection.msgtype)
    except Exception as error:
        raise BagError(f"{where}: cannot be decoded as {connection.msgtype}: {error}") from error
    try:
        if stream in roles:
            image = image_to_rgb(msg.encoding, msg.height, msg.width, msg.step, msg.data, connection.topic)
            sync.add_image(stream, stamp_ns(msg.header), image, received_ns)
        else:
            sync.add_arm(stream, stamp_ns(msg.header), arm_positions(msg.name, msg.position), received_ns)
    except ValueError as error:
        raise BagError(f"{where}: {error}") from error


def _connections(bag: Path, reader, streams: dict[str, str]) -> dict[str, object]:
    """Stream -> the bag's connection for its topic; an error naming what is missing."""
    by_topic = {}
    for connection in reader.connections:
        by_topic.setdefault(connection.topic, connection)
    missing = [f"{topic} ({stream})" for stream, topic in streams.items() if topic not in by_topic]
    if missing:
        raise BagError(f"{bag}: missing topic{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
                       f"the bag has {', '.join(sorted(by_topic)) or 'no topics'}")
    chosen = {}
    for stream, topic in streams.items():
        connection = by_topic[topic]
        wanted = JOINT_STATE_TYPE if stream in ARM_STREAMS else IMAGE_TYPE
        if connection.msgtype != wanted:
            raise BagError(f"{bag}: topic {topic} holds {connection.msgtype}, expected {wanted}")
        if connection.msgcount == 0:
            raise BagError(f"{bag}: topic {topic} ({stream}) has no messages")
        chosen[stream] = connection
    return chosen


def _progress(iterable, total: int, name: str, enabled: bool):
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:  # a progress bar is a nicety, not a reason to fail
        return iterable

    return tqdm(iterable, total=total, desc=name, unit="msg", unit_scale=True, leave=False)


class _DatasetSink:
    """The dataset: opened at once if it exists, else created at the first frame (image sizes)."""

    def __init__(self, root: Path, fps: int | None, cameras: Iterable[str] | None, robot_type: str | None, video):
        from ..data.features import INFO_PATH
        from ..data.writer import DatasetWriter

        self.root, self.robot_type, self.video = root, robot_type, video
        cameras = tuple(cameras) if cameras else None
        for role in cameras or ():
            topics.check_camera_role(role)
        self.writer = DatasetWriter.open(root) if (root / INFO_PATH).exists() else None
        if self.writer is None:
            self.fps, self.cameras = int(fps or 30), cameras or topics.CAMERA_ROLES
            return
        try:
            self.fps, self.cameras = self.writer.fps, tuple(self.writer.camera_roles)
            if fps and int(fps) != self.fps:
                raise BagError(f"{root} is a {self.fps} fps dataset; cannot add frames at {fps} fps")
            if cameras and set(cameras) != set(self.cameras):
                raise BagError(f"{root} has the cameras {', '.join(self.cameras)}, not {', '.join(cameras)}")
        except BaseException:
            self.close()
            raise

    def begin(self, bag: Path, task: str, sizes: dict[str, tuple[int, int]]):
        if self.writer is None:
            from ..data.writer import DatasetWriter, VideoOptions

            extra = {"robot_type": self.robot_type} if self.robot_type else {}
            self.writer = DatasetWriter.create(self.root, fps=self.fps, cameras=dict(sizes),
                                               video=self.video or VideoOptions(), **extra)
        self._check_sizes(bag, sizes)
        return self.writer.begin_episode(task=task)

    def _check_sizes(self, bag: Path, sizes: dict[str, tuple[int, int]]) -> None:
        wrong = size_mismatch(self.writer, sizes)
        if wrong:
            role, (height, width), shape = wrong
            raise BagError(f"{bag}: {topics.camera_image(role)} has {width}x{height} images but {self.root} "
                           f"holds {shape[1]}x{shape[0]}; convert into another dataset")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
