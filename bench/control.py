"""Control loop: command period jitter and gaps at 30 Hz while inference takes 100 ms.

The real policy node (scheduler + safety filter, one process, single-threaded executor) runs
against the stand-in sensors (bench/_streams.py, another process); the model is replaced at
its boundary by a function that sleeps ``--latency`` and returns a smooth chunk, so the
figures are the runtime's own, not the model's. A gap is an interval between consecutive
commands longer than 1.5 control periods (a tick without a command while running).

  .venv/bin/python bench/control.py [--seconds 20] [--latency 0.1] [--mode blend]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ros2_ws" / "src" / "sf_nodes"))
from _common import write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def slow_model(latency: float):
    """A chunk that sways around the current state, after ``latency`` seconds (a stand-in for π0)."""

    def infer(sample):
        time.sleep(latency)
        t = np.arange(50)[:, None] / 30.0
        return np.asarray(sample["state"], np.float32)[None] + 0.02 * np.sin(2 * np.pi * 0.5 * t).astype(np.float32)

    return infer


def run(seconds: float, latency: float, mode: str) -> dict:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import JointState
    from sf_nodes.common import COMMAND_QOS
    from sf_nodes.policy_node import PolicyNode

    from sf_policy import topics
    from sf_policy.bringup.env import ros_env

    env = ros_env(local=True)
    os.environ.update(env)
    streams = subprocess.Popen([sys.executable, str(ROOT / "bench" / "_streams.py"), "--width", "224",
                                "--height", "224"], env=env)
    rclpy.init()
    executor = SingleThreadedExecutor()
    received: list[tuple[int, int]] = []  # (command stamp ns, receive time ns)
    listener = rclpy.create_node("bench_control_listener")
    listener.create_subscription(JointState, topics.arm_command("left"),
                                 lambda m: received.append((m.header.stamp.sec * 10**9 + m.header.stamp.nanosec,
                                                            time.time_ns())), COMMAND_QOS)
    node = PolicyNode(infer=slow_model(latency), parameter_overrides=[
        Parameter("prompt", value="bench"), Parameter("mode", value=mode), Parameter("max_obs_age", value=0.5)])
    for n in (listener, node):
        executor.add_node(n)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    try:
        node.trigger_configure()
        node.trigger_activate()
        deadline = time.monotonic() + 30
        while len(received) < 5 and time.monotonic() < deadline:  # sensors up, first chunk in
            time.sleep(0.05)
        received.clear()
        time.sleep(seconds)
        stats = node.scheduler.stats()
        holds = node.holds
    finally:
        node.close()
        executor.shutdown()
        streams.terminate()
        streams.wait(10)
        rclpy.try_shutdown()
    return figures(received, 1.0 / 30.0, seconds, latency, mode, stats, holds)


def figures(received, period, seconds, latency, mode, stats, holds) -> dict:
    stamps = np.array([s for s, _ in received], dtype=np.int64)
    arrivals = np.array([r for _, r in received], dtype=np.int64)
    tick_ms = np.diff(stamps) / 1e6
    arrival_ms = np.diff(arrivals) / 1e6
    jitter = np.abs(tick_ms - period * 1e3)
    return {
        "seconds": seconds, "inference_latency_s": latency, "mode": mode, "commands": int(len(stamps)),
        "rate_hz": round(len(stamps) / seconds, 2),
        "gaps": int(np.sum(tick_ms > 1.5 * period * 1e3)),
        "tick_period_jitter_ms": {"p50": round(float(np.percentile(jitter, 50)), 3),
                                  "p99": round(float(np.percentile(jitter, 99)), 3),
                                  "max": round(float(jitter.max()), 3)},
        "arrival_period_ms": {"p1": round(float(np.percentile(arrival_ms, 1)), 3),
                              "p99": round(float(np.percentile(arrival_ms, 99)), 3)},
        "scheduler": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in vars(stats).items()},
        "held_ticks": holds,
    }


def safety_cost(ticks: int = 3000) -> dict:
    """Microseconds per tick of the safety path on this CPU, side by side: the filter alone, with
    the workspace guard (forward kinematics of both arms, table, boxes, arm-to-arm distance), and
    the tracking watchdog, on a sway around the home pose."""
    from sf_policy.runtime.safety import SafetyFilter
    from sf_policy.runtime.watchdog import TrackingWatchdog
    from sf_policy.runtime.workspace import Box, Workspace, WorkspaceGuard

    home = np.array([0.0, 0.6, -0.9, 0.0, 0.5, 0.0, 0.035] * 2)
    sway = home + 0.2 * np.sin(np.arange(ticks)[:, None] / 30.0 + np.arange(14))
    guard = WorkspaceGuard(Workspace(keep_out=(Box("mast", (-0.05, 0.3, 0.74), (0.05, 0.4, 1.4)),)))
    out = {}
    for name, make, dog in (("filter", lambda: SafetyFilter(), None),
                            ("filter+workspace", lambda: SafetyFilter(workspace=guard), None),
                            ("filter+workspace+watchdog", lambda: SafetyFilter(workspace=guard), TrackingWatchdog())):
        f = make()
        started = time.perf_counter()
        for k, q in enumerate(sway):
            decision = f.filter(q, q, 0.0, k / 30.0)
            if dog is not None:
                dog.update(decision.action, q, k / 30.0)
        out[name] = round((time.perf_counter() - started) / ticks * 1e6, 1)
    return {"us_per_tick": out, "ticks": ticks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--mode", choices=("blend", "replace"), default="blend")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory():
        result = run(args.seconds, args.latency, args.mode)
    print(f"control loop, {args.seconds:.0f} s at 30 Hz, inference {args.latency * 1e3:.0f} ms ({args.mode}):")
    print(f"  commands {result['commands']} ({result['rate_hz']} Hz)  gaps {result['gaps']}  "
          f"tick jitter p99 {result['tick_period_jitter_ms']['p99']:.2f} ms  "
          f"arrival period p1/p99 {result['arrival_period_ms']['p1']:.1f}/{result['arrival_period_ms']['p99']:.1f} ms")
    print(f"  starved ticks {result['scheduler'].get('starved')}  held ticks {result['held_ticks']}")
    result["safety_cost"] = safety_cost()
    print(f"  safety path per tick (us): {result['safety_cost']['us_per_tick']}")
    print(f"written: {write_results('control', result, args.results_dir)}")


if __name__ == "__main__":
    main()
