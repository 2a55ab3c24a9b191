"""Playing raw bags back onto live topics: the logic behind the ``bag_player`` node.

``BagPlayback`` yields a bag's messages in receive-time order, as the recorder stored them
(raw CDR bytes, never re-serialized). ``Player`` publishes them from a thread of its own on
the recording's time line, rescaled by ``rate``: message k goes out at
``wall_start + (receive_k - receive_0) / rate``; pausing stops the time line, resuming goes on
where it stopped.

Restamping: our nodes judge freshness by ``header.stamp`` against the wall clock (the arm
driver refuses commands older than ``max_command_age``, the policy node holds on stale
cameras, the recorder's frame sync waits on stamps). A recording is hours old, so played as
is it would be refused. With ``restamp`` every stamped message gets
``wall_start + (stamp - receive_0) / rate``: the same mapping as its publish time, so the
offsets between streams (camera skew, capture-to-receive latency) are those of the recording.
The stamp is rewritten in the CDR bytes (sec and nanosec sit at fixed offsets when the
message begins with a ``std_msgs/Header``), so a 1 MB image is not decoded to change 8 bytes.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .bag import BagError, open_reader, typestore

HEADER_TYPE = "std_msgs/msg/Header"
# The QoS each kind of topic had live (sf_nodes.common): images reliable keep-last-2 like the
# camera driver, joint states best effort like the arm drivers, commands reliable depth 1.
QOS_KINDS = ("image", "sensor", "command", "default")
_IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/CameraInfo")


@dataclass(frozen=True)
class PlaybackMessage:
    bag: Path
    topic: str
    msgtype: str
    data: bytes
    time_ns: int   # receive time in the recording
    first: bool    # the first message of its bag: the time line restarts here


def qos_kind(topic: str, msgtype: str) -> str:
    """Which of the live QoS profiles a recorded topic is published with (one of QOS_KINDS)."""
    if msgtype in _IMAGE_TYPES:
        return "image"
    if "joint_cmd" in topic:
        return "command"
    if msgtype == "sensor_msgs/msg/JointState":
        return "sensor"
    return "default"


def has_header(msgtype: str) -> bool:
    """Whether the message's first field is a std_msgs/Header (its stamp can be rewritten in place)."""
    try:
        fields = typestore().fielddefs[msgtype][1]
    except KeyError:
        return False
    return bool(fields) and fields[0][0] == "header" and fields[0][1][1] == HEADER_TYPE


def restamp_cdr(data: bytes, stamp_ns: int) -> bytes:
    """CDR bytes of a message that begins with a Header, with header.stamp set to ``stamp_ns``.

    After the 4-byte encapsulation header come int32 sec and uint32 nanosec; byte 1 of the
    encapsulation says the byte order (1: little endian)."""
    if len(data) < 12 or data[0] != 0:
        raise ValueError(f"not a plain CDR message (encapsulation {data[:4].hex()})")
    order = "<" if data[1] & 1 else ">"
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return data[:4] + struct.pack(order + "iI", sec, nanosec) + data[12:]


def header_stamp_ns(data: bytes) -> int:
    order = "<" if data[1] & 1 else ">"
    sec, nanosec = struct.unpack_from(order + "iI", data, 4)
    return sec * 1_000_000_000 + nanosec


class BagPlayback:
    """The messages of one or more bags, bag after bag, each in receive-time order.

    ``topics`` keeps only those topics (all when None); asking for a topic that no bag holds
    is an error naming the bags, as is a topic recorded with two different types."""

    def __init__(self, bags: str | Path | Iterable[str | Path], topics: Iterable[str] | None = None):
        self.bags = [Path(bags)] if isinstance(bags, (str, Path)) else [Path(b) for b in bags]
        if not self.bags:
            raise BagError("no bag given")
        self.topic_types: dict[str, str] = {}
        self.counts: dict[str, int] = {}
        for bag in self.bags:
            with open_reader(bag) as reader:
                for connection in reader.connections:
                    self._add(bag, connection.topic, connection.msgtype, connection.msgcount)
        wanted = list(topics) if topics else None
        if wanted:
            missing = [t for t in wanted if t not in self.topic_types]
            if missing:
                raise BagError(f"{', '.join(map(str, self.bags))}: no topic {', '.join(missing)}; "
                               f"recorded: {', '.join(sorted(self.topic_types))}")
            self.topic_types = {t: self.topic_types[t] for t in wanted}
            self.counts = {t: self.counts[t] for t in wanted}

    def _add(self, bag: Path, topic: str, msgtype: str, count: int) -> None:
        known = self.topic_types.setdefault(topic, msgtype)
        if known != msgtype:
            raise BagError(f"{bag}: topic {topic} holds {msgtype}, another bag recorded it as {known}")
        self.counts[topic] = self.counts.get(topic, 0) + count

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __iter__(self) -> Iterator[PlaybackMessage]:
        for bag in self.bags:
            with open_reader(bag) as reader:
                chosen = [c for c in reader.connections if c.topic in self.topic_types]
                first = True
                for connection, time_ns, data in reader.messages(connections=chosen):
                    yield PlaybackMessage(bag, connection.topic, connection.msgtype, bytes(data), time_ns, first)
                    first = False


class PlaybackClock:
    """Recording time -> wall time: ``wall0 + (t - t0) / rate``, stopped while paused."""

    def __init__(self, rate: float = 1.0, now: Callable[[], int] = time.time_ns):
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.rate, self._now = float(rate), now
        self.t0 = self.wall0 = 0
        self._paused_at: int | None = None

    def restart(self, t0: int) -> None:
        """The time line begins again (a new bag, or the next loop): ``t0`` plays now."""
        self.t0, self.wall0 = int(t0), self._now()

    def wall(self, t: int) -> int:
        return self.wall0 + int((t - self.t0) / self.rate)

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = self._now()

    def resume(self) -> None:
        if self._paused_at is not None:
            self.wall0 += self._now() - self._paused_at  # the pause does not count
            self._paused_at = None


@dataclass
class PlayerStatus:
    published: int = 0
    passes: int = 0          # complete passes over the bags
    lag_ms_max: float = 0.0  # how late the latest-published message was, at worst
    current_bag: str = ""
    finished: bool = False
    error: str = ""


class Player:
    """Publishes a ``BagPlayback`` on time from its own thread through ``publish(topic, data)``."""

    def __init__(self, playback: BagPlayback, publish: Callable[[str, bytes], None], *, rate: float = 1.0,
                 loop: bool = False, restamp: bool = True, paused: bool = False,
                 now: Callable[[], int] = time.time_ns):
        self.playback, self._publish, self.loop, self.restamp = playback, publish, loop, restamp
        self.clock = PlaybackClock(rate, now)
        self._now = now
        self._stamped = {t: has_header(m) for t, m in playback.topic_types.items()}
        self.status = PlayerStatus()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        if paused:
            self.clock.pause()
        self._thread = threading.Thread(target=self._run, name="bag-player", daemon=True)

    def start(self) -> Player:
        self._thread.start()
        return self

    def pause(self) -> None:
        with self._lock:
            self.clock.pause()

    def resume(self) -> None:
        with self._lock:
            self.clock.resume()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def finished(self) -> bool:
        return self.status.finished

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._one_pass()
                self.status.passes += 1
                if not self.loop:
                    break
        except Exception as error:  # a broken bag: say which, and stop (the node reports it)
            self.status.error = str(error)
        finally:
            self.status.finished = True

    def _one_pass(self) -> None:
        for message in self.playback:
            if message.first:
                with self._lock:
                    self.clock.restart(message.time_ns)
                self.status.current_bag = str(message.bag)
            if not self._wait_until(message.time_ns):
                return
            self._publish(message.topic, self._stamped_data(message))
            self.status.published += 1

    def _stamped_data(self, message: PlaybackMessage) -> bytes:
        if not (self.restamp and self._stamped.get(message.topic)):
            return message.data
        with self._lock:
            stamp = self.clock.wall(header_stamp_ns(message.data))
        return restamp_cdr(message.data, stamp)

    def _wait_until(self, t: int) -> bool:
        """Sleep until recording time ``t`` is due (False: stopped). Short sleeps, so a pause,
        resume or stop takes effect within 20 ms."""
        while not self._stop.is_set():
            with self._lock:
                paused, due = self.clock.paused, self.clock.wall(t)
            delay = (due - self._now()) / 1e9
            if not paused and delay <= 0:
                self.status.lag_ms_max = max(self.status.lag_ms_max, -delay * 1e3)
                return True
            self._stop.wait(0.02 if paused else min(delay, 0.02))
        return False
