"""Driver check: watches a running driver graph, exercises it, and writes a JSON report.

Used by ``sf demo`` (and handy on a real robot with ``exercise:=false``): it measures the
rate of every arm and camera stream, then, with ``exercise:=true`` (follow mode, simulated
arms, or a clear workspace!), moves each arm through a small wave around where it stands,
measures tracking error, triggers the e-stop and checks that the arms stay still.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger

from sf_policy import topics

from .common import COMMAND_QOS, DIAGNOSTICS_QOS, IMAGE_QOS, SENSOR_QOS, SIM_EPISODE_QOS, header

WAVE_AMPLITUDE = np.array([0.15, 0.1, -0.1, 0.15, 0.1, 0.2, 0.01])
WAVE_HZ = 0.5


class DriverMonitor(Node):
    def __init__(self, **kwargs):
        super().__init__(kwargs.pop("node_name", "driver_monitor"), **kwargs)
        self.sides = list(self.declare_parameter("sides", ["left", "right"]).value)
        self.roles = [r for r in self.declare_parameter("roles", [""]).value if r]
        self.measure_s = self.declare_parameter("measure_s", 3.0).value
        self.exercise = self.declare_parameter("exercise", True).value
        self.motion_s = self.declare_parameter("motion_s", 4.0).value
        self.report_path = self.declare_parameter("report", "").value
        self.episodes = self.declare_parameter("episodes", 0).value  # wait for this many /sim/episode reports
        self.episode_timeout = self.declare_parameter("episode_timeout_s", 60.0).value
        self.counts: dict[str, int] = {}
        self.latest: dict[str, object] = {}
        self.latency_ms: dict[str, list[float]] = {}
        self.diagnostics: dict[str, tuple[int, str]] = {}
        self.lock = threading.Lock()
        for side in self.sides:
            self._watch(topics.puppet_state(side), JointState, SENSOR_QOS)
        for role in self.roles:
            self._watch(topics.camera_image(role), Image, IMAGE_QOS)
        self.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, self._on_diag, DIAGNOSTICS_QOS)
        self.episode_reports: list[dict] = []
        if self.episodes:
            self.create_subscription(String, topics.SIM_EPISODE, self._on_episode, SIM_EPISODE_QOS)
        self.cmd_pubs = {s: self.create_publisher(JointState, topics.arm_command(s), COMMAND_QOS) for s in self.sides}

    def _watch(self, topic: str, msg_type, qos) -> None:
        self.counts[topic] = 0
        self.latency_ms[topic] = []

        def on_msg(msg, topic=topic):
            now = time.time_ns()
            with self.lock:
                self.counts[topic] += 1
                self.latest[topic] = msg
                stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                self.latency_ms[topic].append((now - stamp) / 1e6)

        self.create_subscription(msg_type, topic, on_msg, qos)

    def _on_episode(self, msg: String) -> None:
        with self.lock:
            self.episode_reports.append(json.loads(msg.data))

    def _on_diag(self, msg: DiagnosticArray) -> None:
        with self.lock:
            for status in msg.status:
                self.diagnostics[status.name] = (int.from_bytes(status.level, "little"), status.message)

    # --- the checks, run from a plain thread while the executor spins --------------------
    def run_checks(self) -> dict:
        report: dict = {"streams": {}, "checks": {}}
        ready = self._wait(lambda: all(self.counts[t] > 0 for t in self.counts), 20.0)
        report["checks"]["all streams present"] = ready
        if not ready:
            report["missing"] = [t for t, n in self.counts.items() if n == 0]
            return report
        with self.lock:
            start = dict(self.counts)
            for lat in self.latency_ms.values():
                lat.clear()
        time.sleep(self.measure_s)
        with self.lock:
            for topic, n in self.counts.items():
                lat = np.array(self.latency_ms[topic]) if self.latency_ms[topic] else np.array([math.nan])
                report["streams"][topic] = {"hz": round((n - start[topic]) / self.measure_s, 1),
                                            "age_p50_ms": round(float(np.median(lat)), 2),
                                            "age_p99_ms": round(float(np.percentile(lat, 99)), 2)}
        if self.exercise:
            report["motion"] = self._exercise_arms(report["checks"])
        if self.episodes:
            done = self._wait(lambda: len(self.episode_reports) >= self.episodes, self.episode_timeout * self.episodes)
            with self.lock:
                report["episodes"] = list(self.episode_reports)
            report["checks"][f"{self.episodes} episodes reported"] = done
        with self.lock:
            report["diagnostics"] = {k: {"level": v[0], "message": v[1]} for k, v in self.diagnostics.items()}
        return report

    def _wait(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate():
                    return True
            time.sleep(0.05)
        return False

    def _position(self, side: str) -> np.ndarray:
        with self.lock:
            return np.array(self.latest[topics.puppet_state(side)].position)

    def _send(self, side: str, position: np.ndarray) -> None:
        msg = JointState(name=["joint1", "joint2", "joint3", "joint4", "joint5", "joint6", "gripper"],
                         position=[float(v) for v in position])
        msg.header = header(time.time_ns(), "")
        self.cmd_pubs[side].publish(msg)

    def _exercise_arms(self, checks: dict) -> dict:
        centre = {s: self._position(s) for s in self.sides}
        errors = {s: [] for s in self.sides}
        t0 = time.monotonic()
        while (t := time.monotonic() - t0) < self.motion_s:  # a 30 Hz command stream, like the policy's
            for s in self.sides:
                target = centre[s] + WAVE_AMPLITUDE * math.sin(2 * math.pi * WAVE_HZ * t)
                self._send(s, target)
                errors[s].append(np.abs(self._position(s) - target))
            time.sleep(1 / 30)
        for _ in range(30):  # come back to the start and settle
            for s in self.sides:
                self._send(s, centre[s])
            time.sleep(1 / 30)
        motion = {s: {"max_tracking_error_rad": round(float(np.max(np.array(e)[:, :6])), 4),
                      "return_error_rad": round(float(np.max(np.abs(self._position(s) - centre[s])[:6])), 5)}
                  for s, e in errors.items()}
        checks["arms return to start (< 0.01 rad)"] = all(m["return_error_rad"] < 0.01 for m in motion.values())
        checks["e-stop holds the arms"] = self._check_estop()
        return motion

    def _check_estop(self) -> bool:
        for s in self.sides:
            client = self.create_client(Trigger, f"/{topics.arm_node_name(s)}/estop")
            if not client.wait_for_service(timeout_sec=5.0):
                return False
            future = client.call_async(Trigger.Request())
            if not self._wait(future.done, 5.0) or not future.result().success:
                return False
        time.sleep(0.2)
        held = {s: self._position(s) for s in self.sides}
        for i in range(15):  # commands after the e-stop must not move anything
            for s in self.sides:
                self._send(s, held[s] + 0.2 * math.sin(i))
            time.sleep(1 / 30)
        return all(np.max(np.abs(self._position(s) - held[s])) < 1e-4 for s in self.sides)


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args if args is not None else sys.argv)
    node = DriverMonitor()
    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        report = node.run_checks()
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    text = json.dumps(report, indent=2)
    if node.report_path:
        Path(node.report_path).write_text(text)
    print(text)
    return 0 if report["checks"] and all(report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
