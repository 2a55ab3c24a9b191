"""Time-sync check: real rclpy publishers with known stamp offsets; the tool, in a ROS context
of its own, must measure them."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy

from sf_policy import topics
from sf_policy.calibration.timesync import (Thresholds, analyse, default_streams, header_stamp_ns, measure,
                                            nearest_skew_ns, report_dict)

pytestmark = pytest.mark.ros

CAM_PERIOD_NS = 33_333_333
ARM_HZ = 100.0             # lighter than the real 200 Hz on a shared test machine
WRIST_OFFSET_NS = 12_000_000   # the left wrist camera captures 12 ms after cam_high
FUTURE_NS = 30_000_000     # master_right stamps 30 ms ahead of the host clock: a foreign clock


def _stamp(msg, ns: int):
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 1_000_000_000)
    return msg


def _publish_on_schedule(stop: threading.Event, period_ns: int, jobs, t0: int) -> None:
    """jobs: (publisher, make message, delay ns, stamp offset ns). Published at t0 + k*period + delay,
    stamped at that time + offset."""
    events = sorted(jobs, key=lambda j: j[2])
    k = 0
    while not stop.is_set():
        for pub, make, delay, offset in events:
            due = t0 + k * period_ns + delay
            wait = (due - time.time_ns()) / 1e9
            if wait > 0:
                time.sleep(wait)
            pub.publish(_stamp(make(), due + offset))
        k += 1


def test_measures_camera_skew_and_a_foreign_arm_clock(ros):
    from sensor_msgs.msg import Image, JointState

    node = ros.node("timesync_publishers")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)  # as the camera driver publishes
    image = lambda: Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(12))  # noqa: E731
    joints = lambda: JointState(name=["joint1"], position=[0.0])  # noqa: E731
    cams = [(node.create_publisher(Image, topics.camera_image(role), qos), image, delay, 0)
            for role, delay in (("cam_high", 0), ("cam_left_wrist", WRIST_OFFSET_NS), ("cam_right_wrist", 0))]
    arms = [(node.create_publisher(JointState, topics.puppet_state("left"), qos), joints, 0, 0),
            (node.create_publisher(JointState, topics.puppet_state("right"), qos), joints, 0, 0),
            (node.create_publisher(JointState, topics.master_state("right"), qos), joints, 0, FUTURE_NS)]
    # master_left is never published: the report must say so.
    stop = threading.Event()
    t0 = time.time_ns() + 100_000_000
    threads = [threading.Thread(target=_publish_on_schedule, args=(stop, CAM_PERIOD_NS, cams, t0), daemon=True),
               threading.Thread(target=_publish_on_schedule, args=(stop, int(1e9 / ARM_HZ), arms, t0), daemon=True)]
    for t in threads:
        t.start()
    streams = default_streams(arm_hz=ARM_HZ)
    try:
        samples = measure(streams, duration_s=3.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=2.0)

    limits = Thresholds()
    results = {r.stream.name: r for r in analyse(streams, samples, limits)}
    wrist = results["cam_left_wrist"]
    assert wrist.skew_ms[0] == pytest.approx(WRIST_OFFSET_NS / 1e6, abs=0.5)
    assert results["cam_right_wrist"].skew_ms[0] == pytest.approx(0.0, abs=0.5)
    for name in ("cam_high", "cam_left_wrist", "cam_right_wrist"):
        assert results[name].rate_hz == pytest.approx(30.0, rel=0.05)
        assert results[name].ok, results[name].problems
    assert results["puppet_left"].rate_hz == pytest.approx(ARM_HZ, rel=0.05) and results["puppet_left"].ok
    master = results["master_right"]
    assert master.latency_ms[0] == pytest.approx(-FUTURE_NS / 1e6, abs=8.0)
    assert any("ahead of the host clock" in p for p in master.problems)
    assert results["master_left"].messages == 0 and "/master/joint_left" in results["master_left"].problems[0]
    report = report_dict(list(results.values()), 3.0, limits)
    assert report["result"] == "FAIL" and report["streams"]["cam_left_wrist"]["result"] == "PASS"


def test_nearest_skew_and_a_dropping_camera_fail_on_skew():
    pivot = np.arange(0, 90) * CAM_PERIOD_NS
    assert list(nearest_skew_ns(pivot[1:3], pivot[:4] + 5_000_000)) == [5_000_000] * 2
    assert len(nearest_skew_ns(pivot[:1], pivot[:4] + 5_000_000)) == 0  # before the stream began: no pairing
    # Every other frame lost: the nearest image is up to a whole period away for half the frames.
    dropping = pivot[::2] + 1_000_000
    streams = default_streams()[:2]
    arrivals = lambda s: s + 3_000_000  # noqa: E731
    results = analyse(streams, {"cam_high": (pivot, arrivals(pivot)), "cam_left_wrist": (dropping, arrivals(dropping))})
    assert results[0].ok
    problems = " ".join(results[1].problems)
    assert "rate 15.0 Hz is below 80% of the expected 30 Hz" in problems and "skew to cam_high p99" in problems


def test_header_stamp_is_read_from_the_raw_bytes():
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image

    raw = serialize_message(_stamp(Image(), 1_700_000_123_456_789_012 // 1000))
    assert header_stamp_ns(raw) == 1_700_000_123_456_789_012 // 1000
