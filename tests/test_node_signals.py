"""A node process ends with status 0 however many SIGINTs it gets: a terminal's Ctrl-C reaches the
whole process group and ``ros2 launch`` sends its own SIGINT after it, which used to land during
teardown with the default handler back (exit -2, "process has died")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import wait_for


def test_repeated_sigints_during_teardown_end_a_node_cleanly(tmp_path):
    log = tmp_path / "node.log"
    env = {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        node = subprocess.Popen([str(Path(sys.executable).parent / "teleop_link")], stdout=out,
                                stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: "software link for" in log.read_text(), timeout=60, what="teleop_link to start")
        deadline = time.monotonic() + 20
        while node.poll() is None and time.monotonic() < deadline:  # Ctrl-C, then launch's SIGINT, then more
            node.send_signal(signal.SIGINT)
            time.sleep(0.005)
        assert node.wait(timeout=5) == 0, log.read_text()[-2000:]
    finally:
        if node.poll() is None:
            node.kill()
