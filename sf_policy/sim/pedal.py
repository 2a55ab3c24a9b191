"""The twin's scripted operator on the recorder's pedal (the sim node's ``recorder_control``).

Before an episode it waits until the recorder hears every stream, sends ``start <prompt>``
and holds still ``hold_s``; after the episode it sends ``stop`` (a success: saved) or
``discard`` (a failure) and holds still again, so the recorded frames begin and end at rest.
No ROS here: the node hands in how to send a command (``send``), whether the recorder's
command subscription is matched (``listening``) and how to keep the world running while it
waits (``hold``), and passes on every status the recorder publishes (``on_status``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..topics import RECORDER_STATUS

#: ``hold(seconds, until)``: keep the world running (masters still, streams flowing) for
#: ``seconds`` (None: no limit) or until ``until()`` is true, whichever comes first.
Hold = Callable[[float | None, Callable[[], bool] | None], None]

START_ATTEMPTS = 5
START_WAIT_S = 2.0  # how long one "start" may take to show in the recorder's status


class ScriptedPedal:
    def __init__(self, send: Callable[[str], None], listening: Callable[[], bool], hold_s: float = 0.3,
                 log: Callable[[str], None] = print, warn: Callable[[str], None] = print):
        self.send, self.listening, self.hold_s = send, listening, hold_s
        self.log, self.warn = log, warn
        self.status: dict[str, Any] = {}

    def on_status(self, status: dict[str, Any]) -> None:
        """The recorder's latest status (its JSON on topics.RECORDER_STATUS, decoded)."""
        self.status = status

    def ready(self) -> bool:
        """The recorder is idle, hears every stream, and hears us."""
        # Hearing its status does not mean it hears us: discovery matches each direction apart.
        return self.listening() and self.status.get("state") == "idle" and not self.status.get("silent", ["?"])

    def begin(self, prompt: str, hold: Hold) -> None:
        """Start recording an episode with ``prompt``; returns after the still lead-in."""
        if not self.ready():
            self.log(f"waiting for the recorder on {RECORDER_STATUS} to hear every stream")
            hold(None, self.ready)
        command = f"start {prompt}"
        # A command can be lost while discovery is still matching the recorder's subscription to
        # us: send again until its status says it records (a repeated start is refused, harmless).
        for attempt in range(START_ATTEMPTS):
            self.status = {}
            self.send(command)
            hold(START_WAIT_S, self._recording)
            if self._recording():
                break
            self.warn(f"the recorder did not start (attempt {attempt + 1}); sending start again")
        hold(self.hold_s, None)

    def end(self, success: bool, hold: Hold) -> None:
        """Save the episode after a success, discard it after a failure; then hold still."""
        self.send("stop" if success else "discard")
        hold(self.hold_s, None)
        # The recorder answers within one status period; a stale "recording" must not count as ready.
        self.status = {}

    def _recording(self) -> bool:
        return self.status.get("state") == "recording"
