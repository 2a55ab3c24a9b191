"""Recording soak: three 640x480 cameras at 30 Hz and four arm streams at 200 Hz into one episode.

Starts the stand-in sensors (bench/_streams.py) and the real recorder node as processes on
loopback, records one episode of ``--seconds``, and reads the figures back from the saved
dataset (sync.stamps_ns) and the recorder's status:

* recorded rate, and frames dropped / duplicated (each camera's images must appear once,
  in order, with no gap: the publisher's stamps are on a 1/fps grid);
* tick jitter: spread of the frame times (each frame's tick is its top-camera capture stamp,
  docs/recording.md) around 1/fps; assembly jitter: the same for the moments the recorder
  assembled the frames (delivery and processing delays, which do not enter the data);
* assembly latency (tick - cam_high stamp) and camera skew (p50 / p99);
* CPU use of the recorder and its encoder processes, peak encoder backlog.

  .venv/bin/python bench/record.py [--seconds 300] [--width 640 --height 480]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live descendants (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = fields
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            total += (int(stats[p][11]) + int(stats[p][12])) / tick
        todo += children.get(p, [])
    return total


class StatusWatcher:
    """Follows /recorder/status from this process (its own rclpy context and thread)."""

    def __init__(self):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import String

        from sf_policy import topics

        self.rclpy, self.String = rclpy, String
        rclpy.init()
        self.node = rclpy.create_node("bench_record")
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.status: dict = {}
        self.peak_backlog = 0
        self.node.create_subscription(String, topics.RECORDER_STATUS, self._on_status, qos)
        self.commands = self.node.create_publisher(String, topics.RECORDER_COMMAND, 10)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_status(self, msg) -> None:
        self.status = json.loads(msg.data)
        self.peak_backlog = max(self.peak_backlog, int(self.status.get("backlog", 0)))

    def send(self, text: str) -> None:
        # The recorder's status can reach us before our publisher has matched its subscription.
        self.wait(lambda _: self.commands.get_subscription_count() > 0, 10, "the recorder to subscribe to commands")
        self.commands.publish(self.String(data=text))

    def wait(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.status):
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}; last status: {self.status}")
            time.sleep(0.05)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.shutdown()


def frame_figures(root: Path, fps: float) -> dict:
    from sf_policy.data.features import SKEW, STAMP_NAMES, STAMPS
    from sf_policy.data.reader import DatasetReader
    from sf_policy.topics import CAMERA_ROLES

    ds = DatasetReader(root)
    stamps = ds.column(STAMPS).astype(np.int64)
    period = 1e9 / fps
    figures: dict = {"frames": int(len(stamps))}
    per_camera = {}
    for role in CAMERA_ROLES:
        column = stamps[:, STAMP_NAMES.index(role)]
        steps = np.round(np.diff(column) / period)
        per_camera[role] = {"duplicated": int(np.sum(steps == 0)), "dropped": int(np.sum(np.clip(steps - 1, 0, None)))}
    figures["cameras"] = per_camera
    figures["dropped_frames"] = sum(c["dropped"] for c in per_camera.values())
    figures["duplicated_frames"] = sum(c["duplicated"] for c in per_camera.values())
    ticks = stamps[:, STAMP_NAMES.index("tick")]
    frame_times = stamps[:, STAMP_NAMES.index("cam_high")]
    jitter_ms = np.abs(np.diff(frame_times) - period) / 1e6
    assembly_jitter_ms = np.abs(np.diff(ticks) - period) / 1e6
    latency_ms = (ticks - frame_times) / 1e6
    skew_ms = ds.column(SKEW).reshape(-1)
    duration = (frame_times[-1] - frame_times[0]) / 1e9  # capture clock: the rate the data has
    figures.update({
        "recorded_rate_hz": round((len(ticks) - 1) / duration, 3),
        "tick_jitter_ms": _spread(jitter_ms),
        "assembly_jitter_ms": _spread(assembly_jitter_ms),
        "assembly_latency_ms": {"p50": round(float(np.percentile(latency_ms, 50)), 3),
                                "p99": round(float(np.percentile(latency_ms, 99)), 3)},
        "camera_skew_ms": {"p50": round(float(np.percentile(skew_ms, 50)), 3),
                           "p99": round(float(np.percentile(skew_ms, 99)), 3)},
    })
    return figures


def _spread(values: np.ndarray) -> dict:
    return {"p50": round(float(np.percentile(values, 50)), 3), "p99": round(float(np.percentile(values, 99)), 3),
            "max": round(float(values.max()), 3)}


def soak(seconds: float, width: int, height: int, workdir: Path, image_reliability: str) -> dict:
    from sf_policy.bringup.plan import recorder_node
    from sf_policy.bringup.launcher import Launch
    from sf_policy.bringup.env import ros_env

    env = ros_env(local=True)
    os.environ.update(env)
    root = workdir / "dataset"
    streams = subprocess.Popen([sys.executable, str(ROOT / "bench" / "_streams.py"), "--width", str(width),
                                "--height", str(height)], env=env)
    recorder = recorder_node(root, prompt="soak", max_duration_s=seconds + 60)
    recorder.parameters["image_reliability"] = image_reliability
    watcher = None
    try:
        with Launch([recorder], env=env, echo=lambda line: None) as graph:
            watcher = StatusWatcher()
            watcher.wait(lambda s: s.get("state") == "idle" and s.get("silent") == [], 30, "the recorder to hear all streams")
            pid = graph.procs[recorder.name].pid
            watcher.send("start")
            watcher.wait(lambda s: s.get("state") == "recording", 10, "recording to start")
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            time.sleep(seconds)
            cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
            status_at_stop = dict(watcher.status)
            watcher.send("stop")
            watcher.wait(lambda s: s.get("saved", 0) >= 1 and s.get("saving", 1) == 0, 300, "the episode to be saved")
            final = dict(watcher.status)
    finally:
        streams.terminate()
        streams.wait(10)
        if watcher is not None:
            watcher.close()
    figures = frame_figures(root, 30.0)
    figures.update({"seconds": seconds, "resolution": f"{width}x{height}", "image_reliability": image_reliability, "cameras": figures["cameras"],
                    "recorder_cpu_cores": round(cpu, 3), "peak_encoder_backlog_frames": watcher.peak_backlog,
                    "status_at_stop": status_at_stop, "final_status": final})
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--image-reliability", choices=("best_effort", "reliable"), default="best_effort",
                        help="the recorder's image subscriptions (its parameter image_reliability)")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sf-bench-record-") as tmp:
        figures = soak(args.seconds, args.width, args.height, Path(tmp), args.image_reliability)
    print(f"recording soak, {args.seconds:.0f} s, 3 cameras {figures['resolution']} @ 30 Hz + 4 arms @ 200 Hz, "
          f"images {args.image_reliability}:")
    print(f"  frames {figures['frames']}  rate {figures['recorded_rate_hz']:.2f} Hz  "
          f"dropped {figures['dropped_frames']}  duplicated {figures['duplicated_frames']}")
    print(f"  tick jitter p99 {figures['tick_jitter_ms']['p99']:.2f} ms  "
          f"assembly jitter p99 {figures['assembly_jitter_ms']['p99']:.1f} ms  "
          f"assembly latency p99 {figures['assembly_latency_ms']['p99']:.1f} ms  "
          f"camera skew p99 {figures['camera_skew_ms']['p99']:.1f} ms")
    print(f"  recorder CPU {figures['recorder_cpu_cores']:.2f} cores  "
          f"peak encoder backlog {figures['peak_encoder_backlog_frames']} frames")
    print(f"written: {write_results('record', figures, args.results_dir)}")


if __name__ == "__main__":
    main()
