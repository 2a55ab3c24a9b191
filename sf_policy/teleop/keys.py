"""Keys for episode control: key names, key maps (keyboard, foot pedal) and a terminal reader.

A foot pedal is a USB HID keyboard that types configurable keys (page up / page down, a
letter), so one reader serves both; the terminal it types into must have the focus.

* Key names: a printable character is its own name (``d``, ``B``: case matters); other keys
  have names (``space``, ``enter``, ``page_down``, ``up``, ``f5``, ...; see ``NAMED_KEYS``).
* A key map binds names to actions (``ACTIONS``). ``DEFAULT_KEYMAP`` is the keyboard's; a
  YAML file (``keys: {page_down: toggle, b: rerecord}``) adds to it or overrides it, and
  ``none`` unbinds a key. Ctrl-C always quits.
* ``KeyDecoder`` turns the bytes a terminal sends into key names, escape sequences included
  (a lone ESC is told from the start of a sequence by a short wait).
* ``TerminalKeys`` puts a terminal in non-canonical, no-echo mode and reads keys without
  blocking; it works on any tty, including one end of ``pty.openpty()`` in tests.
"""

from __future__ import annotations

import os
import select
import termios
import time
from pathlib import Path

from ..config import ConfigError, load_yaml

#: What a key can do. ``toggle`` starts an episode when none is recording, else stops it.
ACTIONS: tuple[str, ...] = ("toggle", "start", "stop", "discard", "rerecord", "quit")
DEFAULT_KEYMAP: dict[str, str] = {"space": "toggle", "d": "discard", "r": "rerecord", "q": "quit"}
#: Always bound, whatever the map says: the way out of a terminal in cbreak mode.
CTRL_C = "ctrl_c"

# Escape sequences (xterm and the Linux console; ESC [ and ESC O forms).
_FINAL = {"A": "up", "B": "down", "C": "right", "D": "left", "H": "home", "F": "end",
          "P": "f1", "Q": "f2", "R": "f3", "S": "f4"}  # the last byte of ESC [ ... x and ESC O x
_CSI_TILDE = {1: "home", 2: "insert", 3: "delete", 4: "end", 5: "page_up", 6: "page_down", 7: "home", 8: "end",
              11: "f1", 12: "f2", 13: "f3", 14: "f4", 15: "f5", 17: "f6", 18: "f7", 19: "f8", 20: "f9",
              21: "f10", 23: "f11", 24: "f12"}
_CONTROL = {0x03: CTRL_C, 0x09: "tab", 0x0A: "enter", 0x0D: "enter", 0x08: "backspace", 0x7F: "backspace",
            0x20: "space"}
NAMED_KEYS: frozenset[str] = frozenset({*_FINAL.values(), *_CSI_TILDE.values(), *_CONTROL.values(), "escape"})
_ALIASES = {"esc": "escape", "return": "enter", "pgup": "page_up", "pageup": "page_up", "prior": "page_up",
            "pgdn": "page_down", "pagedown": "page_down", "next": "page_down", "del": "delete", "ins": "insert",
            "arrow_up": "up", "arrow_down": "down", "arrow_left": "left", "arrow_right": "right", " ": "space"}
#: How long an ESC waits for the rest of a sequence before it counts as the Escape key.
ESCAPE_WAIT_S = 0.05


def key_name(text: str) -> str:
    """The canonical name of a key as a person writes it: ``PageDown`` -> ``page_down``, ``b`` -> ``b``."""
    if len(text) == 1:
        return _ALIASES.get(text, text)
    name = text.strip().lower().replace("-", "_").replace(" ", "_")
    name = _ALIASES.get(name, _ALIASES.get(name.replace("_", ""), name))
    if name not in NAMED_KEYS:
        raise ValueError(f"unknown key {text!r}; use a single character or one of {', '.join(sorted(NAMED_KEYS))}")
    return name


def load_keymap(path: str | Path | None = None) -> dict[str, str]:
    """DEFAULT_KEYMAP with the file's ``keys:`` applied (file entries win; ``none`` unbinds)."""
    keymap = dict(DEFAULT_KEYMAP)
    if path:
        data = load_yaml(path)
        unknown = sorted(set(data) - {"keys"})
        if unknown:
            raise ConfigError(path, unknown[0], "unknown field; allowed: keys")
        entries = data.get("keys") or {}
        if not isinstance(entries, dict):
            raise ConfigError(path, "keys", f"expected a mapping of key -> action, got {entries!r}")
        for raw, action in entries.items():
            if isinstance(raw, bool):  # YAML 1.1 reads on/off/yes/no as booleans
                raise ConfigError(path, f"keys.{raw}", "quote this key name in the YAML file")
            field = f"keys.{raw}"
            try:
                name = key_name(str(raw))
            except ValueError as exc:
                raise ConfigError(path, field, str(exc)) from None
            if action is None or action == "none":
                keymap.pop(name, None)
            elif action in ACTIONS:
                keymap[name] = action
            else:
                raise ConfigError(path, field, f"unknown action {action!r}; expected one of "
                                               f"{', '.join(ACTIONS)} or none")
    keymap[CTRL_C] = "quit"
    return keymap


class KeyDecoder:
    """Bytes from a terminal -> key names. Feed bytes as they come; a partial escape sequence
    is kept until the rest arrives or ``ESCAPE_WAIT_S`` passes (then it is the Escape key)."""

    def __init__(self):
        self._pending = b""
        self._pending_since = 0.0

    def feed(self, data: bytes, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        had_pending = bool(self._pending)
        buf, keys = self._pending + data, []
        i = 0
        while i < len(buf):
            name, used = self._one(buf, i)
            if used == 0:  # an incomplete escape sequence: wait for more bytes
                break
            if name:
                keys.append(name)
            i += used
        self._pending = buf[i:]
        if self._pending and (i > 0 or not had_pending):  # a new partial sequence starts waiting now
            self._pending_since = now
        return keys + self.flush(now)

    def flush(self, now: float | None = None) -> list[str]:
        """The Escape key, once an ESC has waited long enough with nothing after it."""
        now = time.monotonic() if now is None else now
        if not self._pending or now - self._pending_since < ESCAPE_WAIT_S:
            return []
        head, rest, self._pending = self._pending[:1], self._pending[1:], b""
        # What waited was an ESC (the Escape key) or a cut-off UTF-8 character (dropped).
        return (["escape"] if head == b"\x1b" else []) + self.feed(rest, now)

    def _one(self, buf: bytes, i: int) -> tuple[str, int]:
        """(key name or "" for an unknown sequence, bytes used); used 0: need more bytes."""
        byte = buf[i]
        if byte != 0x1B:
            if byte in _CONTROL:
                return _CONTROL[byte], 1
            if byte < 0x20:
                return f"ctrl_{chr(byte + 0x60)}", 1
            return self._utf8(buf, i)
        if i + 1 >= len(buf):
            return "", 0
        kind = buf[i + 1]
        if kind == ord("O"):
            if i + 2 >= len(buf):
                return "", 0
            return _FINAL.get(chr(buf[i + 2]), ""), 3
        if kind != ord("["):
            return "escape", 1  # ESC then an ordinary key (Alt+key): the Escape key, then the key
        j = i + 2
        while j < len(buf) and 0x30 <= buf[j] <= 0x3F:  # parameter bytes: digits and ';'
            j += 1
        if j >= len(buf):
            return "", 0
        final, params = chr(buf[j]), buf[i + 2:j].decode("ascii", "replace")
        if final == "~":
            first = params.split(";")[0]
            return (_CSI_TILDE.get(int(first), "") if first.isdigit() else ""), j + 1 - i
        return _FINAL.get(final, ""), j + 1 - i  # modifiers (ESC [ 1 ; 5 A) are ignored

    @staticmethod
    def _utf8(buf: bytes, i: int) -> tuple[str, int]:
        lead = buf[i]
        size = 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4 if lead >> 3 == 0b11110 else 1
        if i + size > len(buf):
            return "", 0
        return buf[i:i + size].decode("utf-8", "replace"), size


class TerminalKeys:
    """Keys typed into a terminal (a tty path or an open fd), read without blocking.

    While open, the terminal neither echoes nor waits for Enter; ISIG stays on, so Ctrl-C
    still interrupts the process. The previous settings are restored on close.
    """

    def __init__(self, tty: str | int | None = None):
        # A path (or None: this process's controlling terminal) is opened and closed here;
        # an fd belongs to the caller.
        self._own_fd = not isinstance(tty, int)
        self.fd = tty if isinstance(tty, int) else os.open(tty or "/dev/tty", os.O_RDONLY | os.O_NOCTTY)
        if not os.isatty(self.fd):
            if self._own_fd:
                os.close(self.fd)
            raise OSError(f"{tty!r} is not a terminal (key input needs one: a keyboard or a foot pedal)")
        self._saved = termios.tcgetattr(self.fd)
        attrs = termios.tcgetattr(self.fd)
        attrs[3] &= ~(termios.ICANON | termios.ECHO)  # lflags
        attrs[6][termios.VMIN], attrs[6][termios.VTIME] = 0, 0
        termios.tcsetattr(self.fd, termios.TCSANOW, attrs)
        self.decoder = KeyDecoder()

    def read(self, timeout: float = 0.0) -> list[str]:
        """The keys typed since the last call (waiting up to ``timeout`` s for the first)."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        data = os.read(self.fd, 1024) if ready else b""
        return self.decoder.feed(data) if data else self.decoder.flush()

    def close(self) -> None:
        if self.fd is None:
            return
        try:
            termios.tcsetattr(self.fd, termios.TCSANOW, self._saved)
        except termios.error:  # the terminal went away first
            pass
        if self._own_fd:
            os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "TerminalKeys":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
