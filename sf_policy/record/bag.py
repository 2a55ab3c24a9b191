"""Raw rosbag2 (MCAP) bags of the recorder's topics, and bags -> LeRobot v3 datasets.

Writing: the recorder subscribes with ``raw=True`` and hands the CDR bytes it received to
``RawBagWriter.write``; they go into the bag unchanged. (rclpy's ``serialize_message`` may
append padding that rosbags' reader rejects, so re-serializing a message is not an option.)
A writer thread owns the file: the caller, the recorder's 30 Hz executor thread, only
queues. ``EpisodeBags`` turns the recorder's episode state into one bag per episode.

Reading: ``convert_bag`` replays a bag in receive-time order through the same ``FrameSync``
as the live recorder, with the bag's receive time as "now", and writes one episode per bag.

rosbags is pure Python and needs no ROS install; its kilted typestore produces the same
type hashes as ROS 2 Kilted, so ``ros2 bag info/play`` accept the bags.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from .. import topics
from ..embodiment import arm_positions
from .images import image_to_rgb, stamp_ns
from .sync import ARM_STREAMS, FrameSync, SyncedFrame, frame_row

IMAGE_TYPE = "sensor_msgs/msg/Image"
JOINT_STATE_TYPE = "sensor_msgs/msg/JointState"

# Keys of the bag's metadata.yaml custom_data (rosbag2's own place for user data).
PROMPT_KEY = "sf.prompt"
STARTED_KEY = "sf.episode_started_ns"  # frames whose time is earlier were not part of the episode
DATASET_KEY = "sf.dataset"
EPISODE_KEY = "sf.episode"
OUTCOME_KEY = "sf.outcome"  # "recorded", "interrupted" (recorder closed mid-episode), "discarded" (if kept)
# rosbag2 writes metadata.yaml (and custom_data with it) only when a bag closes: a recorder
# killed mid-episode would lose the prompt. So the custom data also lives in this file beside
# the .mcap while the bag is open; a clean close removes it (metadata.yaml then holds it), and
# `sf dataset repair-bag` reads it back (sf_policy/record/repair.py).
OPEN_BAG_DATA = "sf_open_bag.yaml"

log = logging.getLogger(__name__)


class BagError(RuntimeError):
    """A bag that cannot be written or read; the message names the bag (and topic)."""


@lru_cache(maxsize=1)
def typestore():
    # Kilted's definitions: their RIHS01 hashes are the ones a Kilted graph announces.
    return get_typestore(Stores.ROS2_KILTED)


def arm_topic(stream: str) -> str:
    """"puppet_left" -> /puppet/joint_left, "master_right" -> /master/joint_right."""
    kind, side = stream.split("_")
    return topics.puppet_state(side) if kind == "puppet" else topics.master_state(side)


def recorder_streams(cameras: Iterable[str] = topics.CAMERA_ROLES) -> dict[str, str]:
    """Stream name (camera role or arm stream) -> topic, for the streams a frame needs."""
    streams = {role: topics.camera_image(role) for role in cameras}
    return streams | {name: arm_topic(name) for name in ARM_STREAMS}


def recorder_topics(cameras: Iterable[str] = topics.CAMERA_ROLES) -> dict[str, str]:
    """Topic -> ROS type name, the ``topics`` argument of RawBagWriter and EpisodeBags."""
    cameras = tuple(cameras)
    return {topic: IMAGE_TYPE if stream in cameras else JOINT_STATE_TYPE
            for stream, topic in recorder_streams(cameras).items()}


# -- writing ---------------------------------------------------------------------------------

@dataclass
class BagSummary:
    path: Path
    messages: int = 0
    bytes: int = 0
    dropped: int = 0          # messages refused: backlog full, or after a write error
    error: str | None = None  # the first error; the bag is then incomplete
    removed: bool = False     # discarded: the directory was deleted

    @property
    def ok(self) -> bool:
        return self.error is None


class RawBagWriter:
    """One rosbag2 MCAP bag, written from raw CDR bytes on a thread of its own.

    ``write`` never blocks and never raises for I/O problems: a failure (disk full, ...) is
    kept in ``error``, reported once through ``on_error``, and later messages are dropped.
    Memory is bounded by ``max_backlog_bytes``: past it messages are dropped and counted.
    """

    def __init__(self, path: str | Path, topics: dict[str, str], *, custom_data: dict[str, str] | None = None,
                 max_backlog_bytes: int = 512 << 20, on_error: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.max_backlog_bytes = max_backlog_bytes
        self._on_error = on_error
        self._bag = self._open(self.path)
        self._connections = self._add_connections(topics)
        self._custom = dict(custom_data or {})
        self._lock = threading.Lock()
        self._write_open_bag_data()
        self._backlog = 0
        self._backlog_bytes = 0
        self._closing = False
        self._discard = False
        self._warned_overflow = False
        self.summary = BagSummary(self.path)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._done = threading.Event()
        self._on_done: Callable[[BagSummary], None] | None = None
        self._thread = threading.Thread(target=self._run, name=f"bag-writer {self.path.name}", daemon=True)
        self._thread.start()

    @staticmethod
    def _open(path: Path) -> Writer:
        if path.exists():
            raise BagError(f"raw bag {path}: exists already (bags are never overwritten)")
        bag = Writer(path, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP)
        try:
            bag.open()
        except Exception as error:
            raise BagError(f"raw bag {path}: cannot be created: {error}") from error
        return bag

    def _add_connections(self, topic_types: dict[str, str]) -> dict[str, object]:
        connections = {}
        try:
            for topic, msgtype in topic_types.items():
                try:
                    connections[topic] = self._bag.add_connection(topic, msgtype, typestore=typestore())
                except Exception as error:
                    raise BagError(f"raw bag {self.path}: topic {topic}: type {msgtype!r} cannot be recorded: "
                                   f"{error}") from error
        except BagError:
            self._bag.abort()
            shutil.rmtree(self.path, ignore_errors=True)  # we created it a moment ago, empty
            raise
        return connections

    # -- the caller's side (any thread, never blocks) -------------------------------------
    def write(self, topic: str, data: bytes, receive_time_ns: int) -> bool:
        """Queue one message (``data``: the subscription's raw CDR bytes, not modified later).

        Returns False when the message was dropped (backlog full, bag failed or closing).
        """
        connection = self._connections.get(topic)
        if connection is None:  # a programming error, not a runtime condition: say so loudly
            raise ValueError(f"raw bag {self.path}: topic {topic} was not declared "
                             f"(declared: {', '.join(self._connections)})")
        size = len(data)
        warning = None
        with self._lock:
            refused = self._closing or self.summary.error is not None
            if not refused and self._backlog_bytes + size > self.max_backlog_bytes:
                refused = True
                if not self._warned_overflow:  # once per bag: a slow disk must not flood the log
                    self._warned_overflow = True
                    warning = (f"raw bag {self.path}: the writer is {self._backlog_bytes >> 20} MiB behind; "
                               "dropping messages (is the disk too slow?)")
            if refused:
                self.summary.dropped += 1
            else:
                self._backlog += 1
                self._backlog_bytes += size
                # Under the lock, so no message can land behind the end marker of finish().
                self._queue.put((connection, int(receive_time_ns), data))
        if warning:
            self._emit(warning)
        return not refused

    def set_custom_data(self, key: str, value: str) -> None:
        """A string kept in the bag's metadata.yaml ``custom_data`` (written at close)."""
        with self._lock:
            self._custom[key] = str(value)
        self._write_open_bag_data()

    def _write_open_bag_data(self) -> None:
        """The custom data so far, beside the .mcap (atomic: a kill leaves the old or the new)."""
        with self._lock:
            text = yaml.safe_dump({"custom_data": dict(self._custom)}, sort_keys=True)
        target = self.path / OPEN_BAG_DATA
        try:
            partial = target.with_suffix(".partial")
            partial.write_text(text)
            partial.replace(target)
        except OSError as error:  # the bag itself reports a failing disk; the prompt is a copy
            log.warning("raw bag %s: cannot write %s: %s", self.path, target.name, error)

    @property
    def backlog(self) -> int:
        """Messages queued and not yet written."""
        with self._lock:
            return self._backlog

    @property
    def backlog_bytes(self) -> int:
        with self._lock:
            return self._backlog_bytes

    @property
    def error(self) -> str | None:
        return self.summary.error

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def finish(self, discard: bool = False, on_done: Callable[[BagSummary], None] | None = None) -> None:
        """Stop accepting messages; the thread writes the backlog, then closes (or deletes) the bag.

        Returns at once; ``on_done(summary)`` is called from the writer thread when finished.
        """
        with self._lock:
            if self._closing:
                return
            self._closing, self._discard, self._on_done = True, discard, on_done
        self._queue.put(None)

    def close(self, timeout: float | None = None) -> BagSummary:
        """Write everything queued, close the bag and return what happened (never raises for I/O)."""
        self.finish()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"raw bag {self.path}: {self.backlog} messages still queued after {timeout} s")
        return self.summary

    def discard(self, timeout: float | None = None) -> BagSummary:
        """Drop the bag: close it and delete its directory."""
        self.finish(discard=True)
        self._thread.join(timeout)
        return self.summary

    def __enter__(self) -> RawBagWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the writer thread ----------------------------------------------------------------
    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            connection, stamp, data = item
            if self.summary.error is None:
                try:
                    self._bag.write(connection, stamp, data)
                    self.summary.messages += 1
                    self.summary.bytes += len(data)
                except Exception as error:  # disk full, file system gone: report, keep the caller alive
                    self._fail(f"writing failed: {error}")
                    self.summary.dropped += 1
            else:
                self.summary.dropped += 1
            with self._lock:
                self._backlog -= 1
                self._backlog_bytes -= len(data)
        self._finalize()

    def _finalize(self) -> None:
        try:
            if self._discard:
                self._bag.abort()
                shutil.rmtree(self.path, ignore_errors=True)
                self.summary.removed = True
            elif self.summary.error is None:
                with self._lock:
                    for key, value in self._custom.items():
                        self._bag.set_custom_data(key, value)
                self._bag.close()
                (self.path / OPEN_BAG_DATA).unlink(missing_ok=True)
            else:
                self._bag.abort()
        except Exception as error:
            self._fail(f"closing failed: {error}")
            try:
                self._bag.abort()
            except Exception:  # the file may already be closed; the error above says what matters
                pass
        finally:
            self._done.set()
            if self._on_done is not None:
                try:
                    self._on_done(self.summary)
                except Exception:  # a callback's bug must not hide the bag's own state
                    log.exception("raw bag %s: on_done callback failed", self.path)

    def _fail(self, what: str) -> None:
        message = (f"raw bag {self.path}: {what}; the bag is incomplete (no metadata.yaml: "
                   "`sf dataset repair-bag` recovers what was written) and later messages are dropped")
        with self._lock:
            if self.summary.error is not None:
                return  # the first error is the one that explains the rest
            self.summary.error = message
        self._emit(message)

    def _emit(self, message: str) -> None:
        # Never with the lock held: the callback may well ask for the backlog.
        (self._on_error or log.error)(message)


def episode_bag_path(bag_root: str | Path, dataset_name: str, episode: int, when: datetime | None = None) -> Path:
    """``<bag_root>/<dataset name>_episode_<k>_<UTC time>``: unique across sessions, sorted by time."""
    when = (when or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return Path(bag_root) / f"{dataset_name}_episode_{episode}_{when:%Y%m%dT%H%M%S_%fZ}"


class EpisodeBags:
    """One raw bag per recorded episode, following the recording session's state.

    The recorder calls ``follow(state, episode, prompt, started_ns)`` after every command and
    state change, and ``write`` for every message while recording. A bag opens when an
    episode starts; when the session goes idle, the bag is kept if the episode number moved
    on (the episode was saved) and deleted otherwise (discarded, aborted, or stopped with no
    frames). Nothing here raises into the recorder: problems land in ``last_error``.
    """

    def __init__(self, bag_root: str | Path, topics: dict[str, str], dataset_name: str = "dataset",
                 keep_discarded: bool = False, log: Callable[[str], None] | None = None,
                 max_backlog_bytes: int = 512 << 20):
        self.bag_root = Path(bag_root)
        self.topics, self.dataset_name = dict(topics), dataset_name
        self.keep_discarded, self.max_backlog_bytes = keep_discarded, max_backlog_bytes
        self._log = log or logging.getLogger(__name__).warning
        self._lock = threading.Lock()
        self.current: RawBagWriter | None = None
        self._current_key: tuple[int, int | None] | None = None
        self._finishing: list[RawBagWriter] = []
        self.kept: list[Path] = []
        self.last_error = ""
        for left in sorted(p for p in self.bag_root.glob("*") if p.is_dir() and needs_repair(p)):
            self._log(f"raw bag {left}: never closed (a recorder was killed mid-episode); "
                      f"`sf dataset repair-bag {left}` recovers it")

    def follow(self, state: str, episode: int, prompt: str = "", started_ns: int | None = None) -> None:
        try:
            if state == "recording":
                key = (episode, started_ns)
                if self.current is not None and self._current_key != key:
                    self._end(saved=False)  # a rerecord: the previous attempt was discarded
                if self.current is None:
                    self._begin(episode, prompt, started_ns)
            elif self.current is not None:
                self._end(saved=episode > self._current_key[0])
        except Exception as error:  # e.g. bag_root not writable: the episode is still recorded
            self._error(f"raw bags: {error}")

    def write(self, topic: str, data: bytes, receive_time_ns: int) -> None:
        bag = self.current
        if bag is not None:
            bag.write(topic, data, receive_time_ns)

    @property
    def backlog(self) -> int:
        """Messages queued across the open bag and the bags still being written."""
        with self._lock:
            bags = [b for b in (self.current, *self._finishing) if b is not None]
        return sum(b.backlog for b in bags)

    def close(self, timeout: float | None = 120.0) -> list[BagSummary]:
        """Finish every bag; one still recording is kept, marked "interrupted"."""
        if self.current is not None:
            self.current.set_custom_data(OUTCOME_KEY, "interrupted")
            self._end(saved=True)
        with self._lock:
            bags = list(self._finishing)
        summaries = []
        for bag in bags:
            try:
                summaries.append(bag.close(timeout))
            except TimeoutError as error:
                self._error(str(error))
        return summaries

    def _begin(self, episode: int, prompt: str, started_ns: int | None) -> None:
        started = time.time_ns() if started_ns is None else started_ns
        path = episode_bag_path(self.bag_root, self.dataset_name, episode)
        custom = {PROMPT_KEY: prompt, STARTED_KEY: str(started), DATASET_KEY: self.dataset_name,
                  EPISODE_KEY: str(episode), OUTCOME_KEY: "recorded"}
        path.parent.mkdir(parents=True, exist_ok=True)
        self.current = RawBagWriter(path, self.topics, custom_data=custom, on_error=self._error,
                                    max_backlog_bytes=self.max_backlog_bytes)
        self._current_key = (episode, started_ns)

    def _end(self, saved: bool) -> None:
        bag, self.current, self._current_key = self.current, None, None
        if not saved and self.keep_discarded:
            bag.set_custom_data(OUTCOME_KEY, "discarded")
        with self._lock:
            self._finishing.append(bag)
        bag.finish(discard=not (saved or self.keep_discarded), on_done=self._finished)

    def _finished(self, summary: BagSummary) -> None:
        # On the bag's own thread: forget finished bags so only live ones count in the backlog.
        with self._lock:
            self._finishing = [b for b in self._finishing if not b.done]
            if summary.ok and not summary.removed:
                self.kept.append(summary.path)
        if summary.dropped and summary.ok:
            self._error(f"raw bag {summary.path}: {summary.dropped} messages dropped (writer backlog full)")

    def _error(self, message: str) -> None:
        self.last_error = message
        self._log(message)


def needs_repair(bag: str | Path) -> bool:
    """A bag directory with an .mcap file but no metadata.yaml: its writer never closed it."""
    bag = Path(bag)
    return not (bag / "metadata.yaml").is_file() and any(bag.glob("*.mcap"))


def check_closed(bag: Path) -> None:
    """Refuse a bag its writer never closed, saying how to recover it."""
    if needs_repair(bag):
        raise BagError(f"{bag}: the bag was never closed (no metadata.yaml: the recorder was killed or its disk "
                       f"filled up); `sf dataset repair-bag {bag}` recovers what reached the disk")


def bag_custom_data(bag: str | Path) -> dict[str, str]:
    """The ``custom_data`` of a bag's metadata.yaml ({} when there is none)."""
    path = Path(bag) / "metadata.yaml"
    try:
        info = yaml.safe_load(path.read_text())["rosbag2_bagfile_information"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as error:
        raise BagError(f"{bag}: not a rosbag2 bag directory ({path} unreadable: {error})") from error
    return dict(info.get("custom_data") or {})


# -- reading: bag -> dataset -------------------------------------------------------------------

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
    with _open_reader(Path(bag)) as reader:
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
    with _open_reader(bag) as reader:
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


class _open_reader:
    """rosbags' Reader with errors that name the bag."""

    def __init__(self, bag: Path):
        self.bag = bag
        self.reader = None

    def __enter__(self):
        check_closed(self.bag)
        try:
            self.reader = Reader(self.bag)
            self.reader.open()
        except Exception as error:
            raise BagError(f"{self.bag}: cannot be read as a rosbag2 bag: {error}") from error
        return self.reader

    def __exit__(self, *exc) -> None:
        self.reader.close()


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
        from ..data.features import image_key

        for role, (height, width) in sizes.items():
            shape = tuple(self.writer.features[image_key(role)]["shape"][:2])
            if shape != (height, width):
                raise BagError(f"{bag}: {topics.camera_image(role)} has {width}x{height} images but {self.root} "
                               f"holds {shape[1]}x{shape[0]}; convert into another dataset")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
