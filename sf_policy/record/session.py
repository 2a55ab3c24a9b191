"""The recorder's brain, without ROS: episode control, frame assembly, saving, health.

The recorder node feeds it messages and commands and publishes what ``status()`` says.
Everything here runs on the node's one executor thread; the only other threads are the
saver below and the dataset writer's encoder feeders, so the 30 Hz path never waits on disk
or on a video encoder.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..topics import RECORDER_COMMANDS
from .sync import FrameSync, SyncedFrame, frame_row


@dataclass
class SessionConfig:
    max_duration_s: float = 60.0   # an episode is saved when it reaches this length
    stall_s: float = 0.5           # a stream silent this long aborts the episode
    episodes: int = 0              # stop accepting starts after this many saved (0: no limit)
    default_prompt: str = ""


class CommandError(Exception):
    """A command that cannot be carried out now (the message says why)."""


class RecordingSession:
    def __init__(self, writer, sync: FrameSync, stream_topics: dict[str, str], config: SessionConfig,
                 log: Callable[[str], None] = print, clock: Callable[[], int] = time.time_ns):
        self.writer, self.sync, self.config = writer, sync, config
        self.stream_topics = stream_topics  # stream name -> topic, for messages users can act on
        self.log, self.clock = log, clock
        self.state = "idle"
        self.prompt = config.default_prompt
        self.episode = None          # the dataset writer's episode being recorded
        self.episode_started_ns = 0
        self.saved: list[dict] = []
        self.aborted = 0
        self.last_error = ""
        self.frames_total = 0
        self._tick_ns: deque[int] = deque(maxlen=300)
        self._saver = _Saver(self._saved, self._save_failed)
        self.listening_since_ns = clock()
        # Appending to an existing dataset: its episode count. The recorder node's writer opens at the
        # first start (image sizes are known then), so its count is read there (see start()).
        self._first_index: int | None = getattr(writer, "num_episodes", None)

    # -- commands ----------------------------------------------------------------------
    def command(self, text: str) -> str:
        """"start [prompt]", "stop", "discard" or "rerecord"; returns what happened."""
        word, _, rest = text.strip().partition(" ")
        if word not in RECORDER_COMMANDS:
            raise CommandError(f"unknown recorder command {word!r}; expected one of {', '.join(RECORDER_COMMANDS)}")
        if word == "start":
            return self.start(rest.strip() or None)
        return getattr(self, word)()

    def start(self, prompt: str | None = None) -> str:
        if self.state == "recording":
            raise CommandError(f"already recording episode {self.episode_number}")
        if self.config.episodes and len(self.saved) + len(self._saver) >= self.config.episodes:
            raise CommandError(f"the {self.config.episodes} requested episodes are recorded")
        now = self.clock()
        silent = self.sync.silent_streams(now, self.config.stall_s, self.listening_since_ns)
        if silent:
            raise CommandError("cannot start: nothing received for "
                               f"{self.config.stall_s} s on {', '.join(self._topics(silent))}")
        self.prompt = prompt or self.prompt
        if not self.prompt:
            raise CommandError("cannot start: no task prompt (give one after 'start' or set the task parameter)")
        self.episode = self.writer.begin_episode(task=self.prompt)
        if self._first_index is None:  # the writer has just opened: nothing of this session is in it yet
            self._first_index = int(getattr(self.writer, "num_episodes", None) or 0)
        self.episode_started_ns = now
        self.sync.reset_counters()
        self._tick_ns.clear()
        self.state = "recording"
        self.log(f"episode {self.episode_number}: recording \"{self.prompt}\"")
        return f"recording episode {self.episode_number}"

    def stop(self) -> str:
        number = self.episode_number
        episode = self._take_episode("stop")
        frames = episode.num_frames
        if frames == 0:
            episode.discard()
            return "stopped; the episode had no frames and was dropped"
        self._saver.submit(episode)
        self.log(f"episode {number}: {frames} frames, saving in the background")
        return f"saving {frames} frames"

    def discard(self) -> str:
        episode = self._take_episode("discard")
        episode.discard()
        self.log("episode discarded")
        return "discarded"

    def rerecord(self) -> str:
        prompt = self.prompt
        self.discard()
        return self.start(prompt)

    def _take_episode(self, what: str):
        if self.state != "recording":
            raise CommandError(f"nothing to {what}: not recording")
        episode, self.episode, self.state = self.episode, None, "idle"
        return episode

    # -- messages ----------------------------------------------------------------------
    def on_image(self, role: str, stamp_ns: int, image: np.ndarray, now_ns: int | None = None) -> None:
        now = self.clock() if now_ns is None else now_ns
        self.sync.add_image(role, stamp_ns, image, now)
        self._drain(now)

    def on_arm(self, name: str, stamp_ns: int, positions, now_ns: int | None = None) -> None:
        now = self.clock() if now_ns is None else now_ns
        self.sync.add_arm(name, stamp_ns, positions, now)
        self._drain(now)

    def _drain(self, now: int) -> None:
        for frame in self.sync.poll(now):
            if self.state == "recording" and frame.stamp_ns >= self.episode_started_ns:
                self._record(frame)

    def _record(self, frame: SyncedFrame) -> None:
        self.episode.add_frame(frame_row(frame), images=frame.images)
        self._tick_ns.append(frame.emitted_ns)
        self.frames_total += 1

    # -- time-driven checks (call at ~10 Hz) --------------------------------------------
    def check(self, now_ns: int | None = None) -> None:
        now = self.clock() if now_ns is None else now_ns
        if self.state != "recording":
            return
        silent = self.sync.silent_streams(now, self.config.stall_s, self.episode_started_ns)
        if silent:
            self.abort(f"{', '.join(self._topics(silent))} stalled for more than {self.config.stall_s} s")
        elif self.duration_s(now) >= self.config.max_duration_s:
            self.log(f"episode reached its maximum duration of {self.config.max_duration_s} s")
            self.stop()

    def abort(self, reason: str) -> None:
        episode, self.episode, self.state = self.episode, None, "idle"
        episode.discard()
        self.aborted += 1
        self.last_error = f"episode aborted: {reason}"
        self.log(self.last_error)

    # -- status ------------------------------------------------------------------------
    @property
    def episode_number(self) -> int:
        """1-based number of the episode being (or next to be) recorded in this session."""
        return len(self.saved) + len(self._saver) + 1

    @property
    def dataset_index(self) -> int:
        """The ``episode_index`` the episode being (or next to be) recorded gets in the dataset
        when it is saved (saves commit in order): what its raw bag is named after."""
        return (self._first_index or 0) + len(self.saved) + len(self._saver)

    def duration_s(self, now_ns: int | None = None) -> float:
        if self.state != "recording":
            return 0.0
        return ((self.clock() if now_ns is None else now_ns) - self.episode_started_ns) / 1e9

    def measured_rate(self) -> float:
        ticks = list(self._tick_ns)[-31:]
        if len(ticks) < 2:
            return 0.0
        return (len(ticks) - 1) / ((ticks[-1] - ticks[0]) / 1e9)

    def status(self) -> dict:
        episode = self.episode
        return {
            "state": self.state,
            "episode": self.episode_number,
            "prompt": self.prompt,
            "duration_s": round(self.duration_s(), 2),
            "frames": episode.num_frames if episode else 0,
            "rate_hz": round(self.measured_rate(), 2),
            "drops": int(sum(self.sync.drops.values())),
            "duplicates": int(sum(self.sync.duplicates.values())),
            "backlog": (episode.backlog if episode else 0) + self._saver.backlog(),
            "saving": len(self._saver),
            "saved": len(self.saved),
            "aborted": self.aborted,
            "last_error": self.last_error,
        }

    def close(self, timeout: float = 120.0) -> None:
        """Finish saving what was stopped; an episode still recording is discarded."""
        if self.state == "recording":
            self.discard()
        self._saver.close(timeout)

    def _saved(self, summary) -> None:
        self.saved.append({"episode_index": summary.episode_index, "length": summary.length, "task": summary.task})
        self.log(f"saved episode {summary.episode_index} ({summary.length} frames)")
        for warning in summary.rate_warnings:
            self.log(f"episode {summary.episode_index}: {warning}")

    def _save_failed(self, error: Exception) -> None:
        self.last_error = f"saving failed: {error}"
        self.log(self.last_error)

    def _topics(self, streams: list[str]) -> list[str]:
        return [self.stream_topics.get(s, s) for s in streams]


class _Saver:
    """Saves stopped episodes one at a time on a thread of its own (video flush, commit)."""

    def __init__(self, on_saved, on_error):
        self._queue: queue.Queue = queue.Queue()
        self._pending: list = []
        self._lock = threading.Lock()
        self._on_saved, self._on_error = on_saved, on_error
        self._thread = threading.Thread(target=self._run, name="episode-saver", daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def backlog(self) -> int:
        with self._lock:
            return sum(getattr(e, "backlog", 0) for e in self._pending)

    def submit(self, episode) -> None:
        with self._lock:
            self._pending.append(episode)
        self._queue.put(episode)

    def _run(self) -> None:
        while (episode := self._queue.get()) is not None:
            try:
                self._on_saved(episode.save())
            except Exception as error:  # reported, never fatal: the next episode can still be recorded
                self._on_error(error)
            finally:
                with self._lock:
                    self._pending.remove(episode)

    def close(self, timeout: float) -> None:
        self._queue.put(None)
        self._thread.join(timeout)
