"""Episode-control keys without ROS: decoding terminal bytes, key maps, toggling, a real pty."""

from __future__ import annotations

import os
import pty
import termios

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO
from sf_policy.config import ConfigError
from sf_policy.teleop.episode_keys import EpisodeKeys, status_line
from sf_policy.teleop.keys import (CTRL_C, DEFAULT_KEYMAP, ESCAPE_WAIT_S, KeyDecoder, TerminalKeys, key_name,
                                   load_keymap)

SEQUENCES = {b"\x1b[A": "up", b"\x1bOB": "down", b"\x1b[1;5C": "right", b"\x1b[5~": "page_up",
             b"\x1b[6~": "page_down", b"\x1b[H": "home", b"\x1b[4~": "end", b"\x1b[15~": "f5", b"\x1bOP": "f1",
             b" ": "space", b"\r": "enter", b"\x7f": "backspace", b"\x03": CTRL_C, b"d": "d", b"B": "B",
             "é".encode(): "é"}


@pytest.mark.parametrize("data, name", SEQUENCES.items())
def test_decoder_names_each_key(data, name):
    assert KeyDecoder().feed(data, now=0.0) == [name]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list(SEQUENCES)), max_size=12), st.data())
def test_decoder_reads_any_key_stream_in_any_split(keys, data):
    """A terminal may deliver bytes in any chunks; the keys come out the same."""
    stream = b"".join(keys)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    decoder, out = KeyDecoder(), []
    for a, b in zip([0, *cuts], [*cuts, len(stream)]):
        out += decoder.feed(stream[a:b], now=0.0)  # no time passes: a split ESC sequence waits
    assert out == [SEQUENCES[k] for k in keys]


def test_a_lone_escape_is_the_escape_key_after_a_short_wait():
    decoder = KeyDecoder()
    assert decoder.feed(b"\x1b", now=0.0) == []
    assert decoder.flush(now=ESCAPE_WAIT_S / 2) == []
    assert decoder.flush(now=ESCAPE_WAIT_S * 2) == ["escape"]
    assert decoder.feed(b"\x1bq", now=1.0) == ["escape", "q"]  # Alt+q: Escape, then q


def test_key_names_as_people_write_them():
    assert [key_name(n) for n in ("PageDown", "page down", "pgup", "Page_Up", "b", " ", "ESC", "F5")] == \
        ["page_down", "page_down", "page_up", "page_up", "b", "space", "escape", "f5"]
    with pytest.raises(ValueError, match="unknown key 'pagedn'"):
        key_name("pagedn")


def test_pedal_keymap_file_extends_the_defaults(tmp_path):
    pedal = load_keymap(REPO / "teleop" / "pedal.yaml")
    assert pedal["page_down"] == "toggle" and pedal["b"] == "rerecord" and pedal["page_up"] == "discard"
    assert pedal["space"] == "toggle" and pedal[CTRL_C] == "quit"  # the keyboard keeps working
    path = tmp_path / "keys.yaml"
    path.write_text("keys:\n  d: none\n  Enter: stop\n")
    keymap = load_keymap(path)
    assert "d" not in keymap and keymap["enter"] == "stop" and keymap["space"] == DEFAULT_KEYMAP["space"]


@pytest.mark.parametrize("text, field, message", [
    ("keys:\n  b: explode\n", "keys.b", "unknown action 'explode'"),
    ("keys:\n  pagedn: stop\n", "keys.pagedn", "unknown key 'pagedn'"),
    ("keys:\n  on: stop\n", "keys.True", "quote this key name"),
    ("keys: [b]\n", "keys", "expected a mapping"),
    ("pedal: {}\n", "pedal", "unknown field"),
])
def test_bad_keymap_files_name_the_field(tmp_path, text, field, message):
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_keymap(path)
    assert f"{path}: {field}" in str(err.value)


def test_toggle_follows_the_recorder_and_our_own_recent_commands():
    keys = EpisodeKeys(prompt="  lift   the pot ")
    assert keys.command("toggle", now=0.0) == "start lift the pot"
    assert keys.command("toggle", now=0.2) == "stop"  # status not caught up yet: our own start counts
    keys.on_status({"state": "recording"}, now=0.3)   # a status older than our stop: not trusted
    assert keys.command("toggle", now=0.4) == "start lift the pot"
    keys.on_status({"state": "recording"}, now=2.0)   # the recorder says recording: toggle stops
    assert keys.command("toggle", now=2.1) == "stop"
    keys.on_status({"state": "idle"}, now=5.0)
    assert keys.command("discard", now=5.1) == "discard" and keys.command("rerecord", now=5.2) == "rerecord"
    assert keys.command("quit", now=5.3) is None
    assert EpisodeKeys().command("start", now=0.0) == "start"  # no prompt: the recorder's own


def test_status_line_shows_what_the_operator_needs():
    line = status_line({"state": "recording", "episode": 3, "duration_s": 12.34, "frames": 370, "rate_hz": 30.0,
                        "drops": 1, "backlog": 2, "prompt": "lift the pot", "last_error": "",
                        "silent": ["/camera_f/color/image_raw"]})
    assert line.startswith("RECORDING") and "ep 3" in line and "12.3 s" in line and "30.0 Hz" in line
    assert "drops 1" in line and "SILENT: /camera_f/color/image_raw" in line and "'lift the pot'" in line
    assert "no status" in status_line(None)


def test_terminal_keys_through_a_pty():
    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)
        with TerminalKeys(os.ttyname(slave)) as term:
            attrs = termios.tcgetattr(slave)
            assert not attrs[3] & (termios.ICANON | termios.ECHO), "the terminal still echoes or buffers lines"
            os.write(master, b" d\x1b[6~")
            keys = []
            for _ in range(20):
                keys += term.read(timeout=0.05)
                if len(keys) == 3:
                    break
            assert keys == ["space", "d", "page_down"]
            os.write(master, b"\x1b")
            assert term.read(timeout=0.05) == []
            assert term.read(timeout=ESCAPE_WAIT_S * 2) + term.read(0.0) == ["escape"]
        assert termios.tcgetattr(slave) == before, "the terminal settings were not restored"
    finally:
        os.close(master)
        os.close(slave)


def test_terminal_keys_refuses_what_is_not_a_terminal(tmp_path):
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(OSError, match="is not a terminal"):
        TerminalKeys(str(path))


def test_a_cut_off_character_is_dropped_not_taken_for_escape():
    decoder = KeyDecoder()
    assert decoder.feed("é".encode()[:1], now=0.0) == []
    assert decoder.flush(now=1.0) == []
    assert decoder.feed(b"\x80d", now=2.0) == ["\ufffd", "d"]  # a stray byte is one unknown key, not four
