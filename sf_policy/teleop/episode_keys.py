"""From key actions to recorder commands, and the recorder's status as one terminal line.

The recorder listens on ``/recorder/command`` (``start [prompt...]``, ``stop``, ``discard``,
``rerecord``) and reports JSON on ``/recorder/status`` (state idle|recording|saving,
episode, duration_s, frames, rate_hz, drops, backlog, prompt, last_error) about twice a
second. ``toggle`` needs to know whether an episode is recording: the recorder's status says
so, except right after a command of ours, which that status may not reflect yet; then the
state our command leads to is used (two quick presses are start then stop, not two starts).
"""

from __future__ import annotations

import math
from typing import Any

#: The state each command leads to, assumed until the recorder's status catches up.
_EXPECTED_STATE = {"start": "recording", "rerecord": "recording", "stop": "saving", "discard": "idle"}
#: A status received this soon after our command may predate it.
STATUS_CATCH_UP_S = 0.6
#: Older than this, the recorder's status is not trusted at all (recorder gone or restarted).
STATUS_STALE_S = 3.0


class EpisodeKeys:
    """Turns actions (``keys.ACTIONS``) into recorder command strings."""

    def __init__(self, prompt: str = ""):
        self.prompt = " ".join(prompt.split())
        self.status: dict[str, Any] = {}
        self._status_time = -math.inf
        self._sent: str | None = None
        self._sent_time = -math.inf

    def on_status(self, status: dict[str, Any], now: float) -> None:
        self.status, self._status_time = dict(status), now

    def recording(self, now: float) -> bool:
        """Whether an episode is being recorded, as best known at ``now``."""
        status_fresh = now - self._status_time <= STATUS_STALE_S
        status_after_us = self._status_time - self._sent_time >= STATUS_CATCH_UP_S
        if status_fresh and (status_after_us or self._sent is None):
            return self.status.get("state") == "recording"
        return self._sent is not None and _EXPECTED_STATE[self._sent] == "recording"

    def command(self, action: str, now: float) -> str | None:
        """The command string for ``action`` (None for ``quit``); remembers it as sent."""
        if action == "quit":
            return None
        if action == "toggle":
            action = "stop" if self.recording(now) else "start"
        if action not in _EXPECTED_STATE:
            raise ValueError(f"unknown action {action!r}")
        self._sent, self._sent_time = action, now
        return f"start {self.prompt}".rstrip() if action == "start" else action


def status_line(status: dict[str, Any] | None, age_s: float = 0.0) -> str:
    """The recorder's status in one plain line (no colour; the node may add some)."""
    if not status:
        return "recorder: no status yet (is the recorder running?)"
    state = str(status.get("state", "?"))
    parts = [f"{state.upper():9s}", f"ep {status.get('episode', '?')}",
             f"{_num(status.get('duration_s'), '.1f')} s", f"{status.get('frames', 0)} frames",
             f"{_num(status.get('rate_hz'), '.1f')} Hz", f"drops {status.get('drops', 0)}",
             f"backlog {status.get('backlog', 0)}"]
    saving = status.get("saving")
    if isinstance(saving, int) and not isinstance(saving, bool) and saving > 0:
        parts.append(f"saving {saving}")
    if status.get("prompt"):
        parts.append(f"'{status['prompt']}'")
    if status.get("silent"):
        silent = status["silent"]
        parts.append(f"SILENT: {', '.join(map(str, silent)) if isinstance(silent, list) else silent}")
    if status.get("last_error"):
        parts.append(f"ERROR: {status['last_error']}")
    if age_s > STATUS_STALE_S:
        parts.append(f"(status {age_s:.0f} s old)")
    return "  ".join(parts)


def _num(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else "?"
