"""One raw bag per recorded episode, following the recording session's state."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from .bag import DATASET_KEY, EPISODE_KEY, OUTCOME_KEY, PROMPT_KEY, STARTED_KEY, needs_repair
from .bag_writer import BagSummary, RawBagWriter


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
