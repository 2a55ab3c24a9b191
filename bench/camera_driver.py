"""Camera driver delivery: 640x480 rgb8 at 30 fps from the camera node to a subscriber in
another process, for each subscriber QoS, with and without the large-data Fast DDS profile.

Runs the real camera_driver node (OpenCV backend on a generated test video) as its own
process and measures, per configuration, images per second received and the capture-stamp
to receive latency. This is the measurement behind IMAGE_QOS and
config/fastdds_large_data.xml (docs/interfaces.md).

  .venv/bin/python bench/camera_driver.py [--seconds 5] [--width 640 --height 480]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

from sf_policy.demo.ros_graphs import write_test_video  # noqa: E402
from sf_policy.bringup.env import PROFILE_VAR, ros_env  # noqa: E402

# The subscriber runs in its own process so that each configuration starts a fresh DDS
# participant with the environment under test.
SUBSCRIBER = textwrap.dedent("""
    import sys, time, json, numpy as np, rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy
    from sensor_msgs.msg import Image
    reliability, seconds = sys.argv[1], float(sys.argv[2])
    rclpy.init()
    node = rclpy.create_node("bench_camera_sub")
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2, reliability=ReliabilityPolicy.RELIABLE
                     if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT)
    rows = []
    def on_image(msg):
        rows.append((time.time_ns(), msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec))
    node.create_subscription(Image, "/camera_f/color/image_raw", on_image, qos)
    deadline = time.monotonic() + 20
    while not rows and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    rows.clear()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
    lat = np.array([(r - s) / 1e6 for r, s in rows]) if rows else np.array([float("nan")])
    print(json.dumps({"hz": round(len(rows) / seconds, 1), "latency_ms_p50": round(float(np.median(lat)), 2),
                      "latency_ms_p99": round(float(np.percentile(lat, 99)), 2)}))
""")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--results-dir", type=Path, default=None, help="default: bench/results")
    args = parser.parse_args()

    from sf_policy.bringup.plan import NodeSpec
    from sf_policy.bringup.launcher import Launch

    work = Path(tempfile.mkdtemp(prefix="bench_camera_"))
    video = work / "cam.avi"
    write_test_video(video, args.width, args.height, seconds=2.0)
    config = work / "cameras.yaml"
    config.write_text(f"cameras:\n  cam_high: {{backend: opencv, device: '{video}', width: {args.width}, "
                      f"height: {args.height}, fps: 30}}\n")
    spec = NodeSpec("camera_driver", "cam_high", {"role": "cam_high", "camera_config": str(config)})
    results = []
    print(f"camera driver -> subscriber in another process: {args.width}x{args.height} rgb8 at 30 fps, "
          f"{args.seconds:g} s each")
    print(f"{'Fast DDS profile':18} {'subscriber':11} {'images/s':>9} {'lat p50':>9} {'lat p99':>9}")
    for profile in ("large_data", "default"):
        env = ros_env(local=True)
        if profile == "default":
            env.pop(PROFILE_VAR, None)
        with Launch([spec], env=env, echo=lambda line: None):
            time.sleep(1.0)
            for reliability in ("reliable", "best_effort"):
                out = subprocess.run([sys.executable, "-c", SUBSCRIBER, reliability, str(args.seconds)], env=env,
                                     capture_output=True, text=True, timeout=args.seconds + 60)
                if out.returncode != 0:
                    print(out.stderr)
                    return 1
                row = {"profile": profile, "subscriber": reliability, **json.loads(out.stdout)}
                results.append(row)
                print(f"{profile:18} {reliability:11} {row['hz']:9.1f} {row['latency_ms_p50']:7.2f}ms "
                      f"{row['latency_ms_p99']:7.2f}ms")
    path = write_results("camera_driver", {"width": args.width, "height": args.height, "fps": 30,
                                           "seconds": args.seconds, "runs": results}, args.results_dir)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
