"""Shared fixtures. DDS is confined to loopback and to a domain of this run's own."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sf_policy.bringup.env import ros_env  # noqa: E402

os.environ.update(ros_env(local=True))  # loopback, this run's own domain, the large-data profile
os.environ.setdefault("MUJOCO_GL", "egl")  # offscreen rendering through Mesa; set before mujoco loads

REPO = Path(__file__).resolve().parents[1]
BRINGUP = REPO / "ros2_ws" / "src" / "sf_bringup"


def wait_for(predicate: Callable[[], object], timeout: float = 5.0, period: float = 0.01, what: str = "") -> object:
    """Poll until predicate() is truthy; fail the test with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(period)
    pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")


@pytest.fixture
def channel(request) -> str:
    """A CAN channel name of this test's own (python-can virtual buses are per name)."""
    return f"vcan_{request.node.name}_{os.getpid()}_{time.monotonic_ns() % 1_000_000}"


class RosGraph:
    """Real rclpy nodes in one process, spun by an executor in a background thread."""

    def __init__(self):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        # Single-threaded on purpose: see sf_nodes.common.run_node.
        self.executor = SingleThreadedExecutor(context=self.context)
        self.nodes = []
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        try:
            self.executor.spin()
        except Exception:  # the executor is shut down under us at teardown
            pass

    def add(self, node):
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def node(self, name: str):
        from rclpy.node import Node

        return self.add(Node(name, context=self.context))

    def close(self):
        import rclpy

        for node in reversed(self.nodes):
            close = getattr(node, "close", None)
            if close is not None:
                close()
        self.executor.shutdown(timeout_sec=2.0)
        for node in self.nodes:
            node.destroy_node()
        rclpy.shutdown(context=self.context)
        self._thread.join(timeout=2.0)


@pytest.fixture
def ros() -> Iterator[RosGraph]:
    graph = RosGraph()
    try:
        yield graph
    finally:
        graph.close()
