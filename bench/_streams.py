"""Stand-in sensors for the recording soak: three cameras and four arm streams, free-running.

Publishes on the drivers' topics with the drivers' QoS: rgb8 images at ``--fps`` from
pre-rendered moving patterns (so encoders get real work and this process stays cheap), and
JointStates at ``--arm-rate``. The cameras run at fixed phase offsets from each other, as
unsynchronized real cameras do; every message is stamped with its scheduled capture time.

  python bench/_streams.py --width 640 --height 480 [--fps 30] [--arm-rate 200]
"""

from __future__ import annotations

import argparse
import heapq
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.signals import SignalHandlerOptions
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ros2_ws" / "src" / "sf_nodes"))
from sf_nodes.common import IMAGE_QOS, SENSOR_QOS, header  # noqa: E402

from sf_policy import topics  # noqa: E402
from sf_policy.embodiment import ARM_STATE_NAMES, SIDES  # noqa: E402

CAMERA_PHASES_S = {"cam_high": 0.0, "cam_left_wrist": 0.011, "cam_right_wrist": 0.023}


def patterns(width: int, height: int, count: int, seed: int) -> list[bytes]:
    """Moving gradients with a little noise: compressible like a scene, not trivially."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    frames = []
    for k in range(count):
        shift = 4 * k
        r = ((x + shift) % width) * 255 // width
        g = ((y + shift) % height) * 255 // height
        b = ((x + y + 2 * shift) % 256)
        rgb = np.stack([r, g, b], axis=-1).astype(np.uint8)
        rgb += rng.integers(0, 8, rgb.shape, dtype=np.uint8)
        frames.append(rgb.tobytes())
    return frames


class Streams(Node):
    def __init__(self, width: int, height: int, fps: float, arm_rate: float):
        super().__init__("bench_streams")
        self.width, self.height, self.fps, self.arm_rate = width, height, fps, arm_rate
        self.images = {role: self.create_publisher(Image, topics.camera_image(role), IMAGE_QOS)
                       for role in topics.CAMERA_ROLES}
        self.arms = {(kind, side): self.create_publisher(JointState, topic(side), SENSOR_QOS)
                     for kind, topic in (("puppet", topics.puppet_state), ("master", topics.master_state))
                     for side in SIDES}
        self.frames = {role: patterns(width, height, 30, seed) for seed, role in enumerate(topics.CAMERA_ROLES)}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            if self.stop.is_set() or not rclpy.ok():  # SIGTERM shut the context down mid-publish
                return
            raise

    def _run(self) -> None:
        start = time.monotonic() + 0.5
        self.epoch_ns = time.time_ns() + 500_000_000
        events = [(start + phase, "camera", role, 0) for role, phase in CAMERA_PHASES_S.items()]
        events.append((start, "arms", "", 0))
        heapq.heapify(events)
        while not self.stop.is_set() and rclpy.ok():
            due, kind, name, k = heapq.heappop(events)
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            # Stamped with the scheduled capture time, as a camera stamps its exposure: delivery may
            # be late under load, the stamps stay on the 1/fps grid, so gaps and repeats are exact.
            stamp = int(self.epoch_ns + (due - start) * 1e9)
            if kind == "camera":
                frames = self.frames[name]
                self.images[name].publish(Image(
                    header=header(stamp, f"{name}_color_optical_frame"), height=self.height, width=self.width,
                    encoding="rgb8", step=self.width * 3, data=frames[k % len(frames)]))
                heapq.heappush(events, (start + CAMERA_PHASES_S[name] + (k + 1) / self.fps, kind, name, k + 1))
            else:
                t = k / self.arm_rate
                for (kind_, side), pub in self.arms.items():
                    q = [0.3 * np.sin(t + j) for j in range(6)] + [0.035 + 0.03 * np.sin(t)]
                    pub.publish(JointState(header=header(stamp, f"{side}_base_link"), name=list(ARM_STATE_NAMES),
                                           position=q))
                heapq.heappush(events, (start + (k + 1) / self.arm_rate, kind, name, k + 1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--arm-rate", type=float, default=200.0)
    args = parser.parse_args()
    # Our own handlers only set a flag: the publishing thread is stopped and joined before the
    # publishers go (rclpy's handler shut the context down under it, and SIGTERM was sometimes lost).
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    node = Streams(args.width, args.height, args.fps, args.arm_rate)
    try:
        done.wait()  # nothing to spin: the node only publishes, from its own thread
    finally:
        node.stop.set()
        node.thread.join(2.0)
        node.destroy_node()
        rclpy.try_shutdown()

if __name__ == "__main__":
    main()
