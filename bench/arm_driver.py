"""Arm driver throughput and latency: 200 Hz CAN feedback -> ROS subscriber.

Starts both arm driver nodes as their own processes (real piper_sdk, each against a
simulated Piper sending the arm's real frames at 200 Hz on a virtual CAN bus), subscribes
from this process over DDS (loopback), and measures per arm:
  * state messages per second delivered to the subscriber;
  * CAN-frame-to-ROS-message latency: receive time minus header.stamp, which the driver
    sets to the CAN frame's timestamp (the frame that completed the joint set);
  * inter-arrival jitter (p99 of the gap between messages).

  .venv/bin/python bench/arm_driver.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

from sf_policy.bringup.env import ros_env  # noqa: E402

os.environ.update(ros_env(local=True))  # before rclpy starts: loopback, own domain


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--results-dir", type=Path, default=None, help="default: bench/results")
    args = parser.parse_args()

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import JointState

    from sf_nodes.common import SENSOR_QOS
    from sf_policy import topics
    from sf_policy.bringup.plan import driver_nodes
    from sf_policy.bringup.launcher import Launch

    arrivals: dict[str, list[tuple[int, int]]] = {"left": [], "right": []}
    lock = threading.Lock()
    recording = threading.Event()

    rclpy.init()
    node = rclpy.create_node("bench_arm_driver")
    for side in arrivals:
        def on_state(msg, side=side):
            now = time.time_ns()
            if recording.is_set():
                with lock:
                    arrivals[side].append((now, msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec))
        node.create_subscription(JointState, topics.puppet_state(side), on_state, SENSOR_QOS)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()

    specs = driver_nodes(sim=True, mode="follow", cameras=False)
    log: list[str] = []
    with Launch(specs, env=dict(os.environ), echo=log.append) as graph:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(node.count_publishers(topics.puppet_state(s)) for s in arrivals):
            time.sleep(0.1)
        time.sleep(2.0)  # warm-up: discovery, first cycles
        recording.set()
        time.sleep(args.seconds)
        recording.clear()
        dead = graph.dead()
    executor.shutdown()
    node.destroy_node()
    rclpy.try_shutdown()
    if dead:
        print("\n".join(log[-30:]))
        print(f"nodes died: {dead}")
        return 1

    figures = {"seconds": args.seconds, "feedback_rate_hz": 200, "arms": {}}
    print(f"arm driver: 200 Hz CAN feedback -> ROS subscriber in another process ({args.seconds:.0f} s per arm)")
    print(f"{'arm':6} {'msgs/s':>8} {'lat p50':>9} {'lat p99':>9} {'lat max':>9} {'gap p99':>9}")
    for side, rows in arrivals.items():
        if len(rows) < 2:
            print(f"{side}: no messages")
            return 1
        recv = np.array([r[0] for r in rows], dtype=np.int64)
        stamp = np.array([r[1] for r in rows], dtype=np.int64)
        latency_ms = (recv - stamp) / 1e6
        gaps_ms = np.diff(recv) / 1e6
        arm = {"messages": len(rows), "msgs_per_s": round(len(rows) / args.seconds, 1),
               "latency_ms": {"p50": round(float(np.percentile(latency_ms, 50)), 3),
                              "p99": round(float(np.percentile(latency_ms, 99)), 3),
                              "max": round(float(latency_ms.max()), 3)},
               "gap_ms": {"p50": round(float(np.percentile(gaps_ms, 50)), 3),
                          "p99": round(float(np.percentile(gaps_ms, 99)), 3)}}
        figures["arms"][side] = arm
        print(f"{side:6} {arm['msgs_per_s']:8.1f} {arm['latency_ms']['p50']:7.2f}ms {arm['latency_ms']['p99']:7.2f}ms "
              f"{arm['latency_ms']['max']:7.2f}ms {arm['gap_ms']['p99']:7.2f}ms")
    path = write_results("arm_driver", figures, args.results_dir)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
