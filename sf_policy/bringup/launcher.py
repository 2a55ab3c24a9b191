"""Run a bringup plan (``NodeSpec``s) as processes: ``sf launch`` where ``ros2 launch`` is absent.

A deliberately small process supervisor: start every node with ``--ros-args``, prefix each
output line with the node's name, stop everything on Ctrl-C, on a deadline, or when a node
dies (a robot graph missing a driver is not one to keep running).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .plan import NodeSpec


def resolve_executable(spec: NodeSpec) -> list[str]:
    """The node's console script: beside this Python (venv), in an ament-style prefix
    (`<prefix>/lib/<package>/`, where colcon and a legacy `setup.py develop` put it), or on PATH."""
    beside = Path(sys.executable).parent / spec.executable
    if beside.is_file():
        return [str(beside)]
    prefixes = [sys.prefix, *filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep))]
    for prefix in prefixes:
        candidate = Path(prefix) / "lib" / spec.package / spec.executable
        if candidate.is_file():
            return [str(candidate)]
    found = shutil.which(spec.executable)
    if found:
        return [found]
    raise FileNotFoundError(f"node executable {spec.executable!r} (package {spec.package}) not found; "
                            "run scripts/setup.sh or source your colcon install")


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


class Launch:
    def __init__(self, specs: list[NodeSpec], env: dict[str, str] | None = None, echo=print):
        self.specs, self.env, self.echo = specs, env, echo
        self.procs: dict[str, subprocess.Popen] = {}
        self._threads: list[threading.Thread] = []

    def start(self) -> "Launch":
        for spec in self.specs:
            cmd = shlex.split(spec.prefix) + resolve_executable(spec) + spec.ros_args()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    env=self.env, start_new_session=True)
            self.procs[spec.name] = proc
            thread = threading.Thread(target=self._pump, args=(spec.name, proc), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _pump(self, name: str, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.echo(f"[{name}] {line.rstrip()}")

    def dead(self) -> dict[str, int]:
        return {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}

    def wait(self, duration: float | None = None) -> int:
        """Until Ctrl-C or SIGTERM, `duration` seconds, or a node exits; returns the first failure's code."""
        deadline = None if duration is None else time.monotonic() + duration
        if threading.current_thread() is threading.main_thread():
            # A SIGTERM (systemd, docker stop, a test's terminate()) must stop the nodes too:
            # they run in sessions of their own and would otherwise outlive us.
            signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            while deadline is None or time.monotonic() < deadline:
                if self.dead():
                    break
                time.sleep(0.1)
        except KeyboardInterrupt:
            pass
        codes = self.dead()
        return next((c for c in codes.values() if c != 0), 0)

    def stop(self, grace: float = 5.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for thread in self._threads:
            thread.join(timeout=1.0)

    def __enter__(self) -> "Launch":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
