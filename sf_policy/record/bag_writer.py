"""Writing a raw rosbag2 (MCAP) bag from the bytes the recorder received, on a thread of its own.

The recorder subscribes with ``raw=True`` and hands the CDR bytes it received to
``RawBagWriter.write``; they go into the bag unchanged. (rclpy's ``serialize_message`` may
append padding that rosbags' reader rejects, so re-serializing a message is not an option.)
A writer thread owns the file: the caller, the recorder's 30 Hz executor thread, only
queues. ``episode_bags.EpisodeBags`` turns the recorder's episode state into one bag per episode.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from rosbags.rosbag2 import StoragePlugin, Writer

from .bag import OPEN_BAG_DATA, BagError, typestore

log = logging.getLogger(__name__)


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
