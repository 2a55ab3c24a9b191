"""The README's main job, end to end: `sf demo` starts the driver graph as processes, and the
monitor measures and exercises it over DDS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ros


def test_sf_demo_end_to_end(tmp_path):
    sf = Path(sys.executable).parent / "sf"
    env = {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    result = subprocess.run([str(sf), "demo", "--drivers", "--out", str(tmp_path), "--measure-s", "2",
                             "--motion-s", "2"],
                            capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stdout + result.stderr + (tmp_path / "launch.log").read_text()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["checks"] and all(report["checks"].values())
    streams = report["streams"]
    assert streams["/puppet/joint_left"]["hz"] > 100 and streams["/puppet/joint_right"]["hz"] > 100
    for ns in ("/camera_f", "/camera_l", "/camera_r"):
        assert streams[f"{ns}/color/image_raw"]["hz"] > 20
    assert "PASS" in result.stdout


@pytest.mark.slow  # about 70 s here
def test_sf_demo_walks_the_whole_loop(tmp_path):
    """The README's main command, scaled down: the twin's scripted operator works the recorder
    through ROS (+ in-process demonstrations) → teacher cache → SF and baseline → closed-loop eval
    on new scenes and on training scenes → replay report."""
    from sf_policy.data.reader import DatasetReader

    sf = Path(sys.executable).parent / "sf"
    env = {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "COLUMNS": "200"}
    result = subprocess.run([str(sf), "demo", "--task", "grasp_vegetable", "--episodes", "2", "--seed", "3",
                             "--extra-demos", "2", "--sf", "--seen-episodes", "1",
                             "--train-steps", "3", "--eval-episodes", "1", "--eval-seed", "500", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=900, env=env)
    log = tmp_path / "record" / "launch.log"
    assert result.returncode == 0, result.stdout + result.stderr + (log.read_text() if log.is_file() else "")
    summary = json.loads((tmp_path / "loop.json").read_text())
    assert summary["checks"] and all(summary["checks"].values()), summary["checks"]
    assert list(summary["stages"]) == ["record", "train", "eval", "replay"]
    # record: successful scripted episodes through the recorder, a valid dataset
    assert all(e["success"] for e in summary["record"]["episodes"])
    ds = DatasetReader(tmp_path / "record" / "dataset")
    assert ds.num_episodes == 2 + 2 and "pick up the" in ds.episodes[0].tasks[0] and ds.num_frames > 400
    assert [e.sim_seed for e in ds.episodes[2:]] == summary["record"]["extra_demos"]["seeds"]
    # train: two checkpoints that differ only in alpha
    artifacts = summary["artifacts"]
    for key in ("checkpoint_sf", "checkpoint_baseline"):
        assert (Path(artifacts[key]) / "policy" / "policy.json").is_file()
    assert summary["train"]["sf"]["step"] == summary["train"]["baseline"]["step"] == 3
    assert "align" in summary["train"]["sf"] and "align" not in summary["train"]["baseline"]
    # eval: both checkpoints, the expert and the oracle on the same unseen scene, then the
    # baseline on a scene it was trained on, in one table
    labels = [r["label"] for r in summary["eval"]]
    assert labels == ["π0 baseline (micro, α=0)", "SF (micro, α=0.5)", "scripted expert (direct)",
                      "expert plan via runtime (oracle)", "π0 baseline (micro, α=0) on its training scenes"]
    assert summary["eval"][2]["successes"] == summary["eval"][3]["successes"] == 1
    assert summary["eval"][4]["seeds"][0] == summary["record"]["extra_demos"]["seeds"][0]
    assert set(summary["headline"]) == set(labels)
    assert "95 % CI" in Path(artifacts["eval_table"]).read_text() and Path(artifacts["eval_plot"]).is_file()
    # replay: a report on the held-out episode
    assert Path(artifacts["replay_report"]).is_file() and Path(artifacts["replay_markdown"]).is_file()
    # ...and the same episode from the raw bag the live recorder wrote, through its frame sync again
    assert len(summary["record"]["bags"]) == 2 and Path(artifacts["replay_bag_report"]).is_file()
    assert summary["replay_bag"]["metrics"]["frames_read"] == summary["replay"]["metrics"]["frames_read"]
    assert "replay_report" in result.stdout and "loop.json" in result.stdout


@pytest.mark.slow  # 13 s: in the slow tier to keep the default one under its 5 minutes
def test_sf_demo_until_record_stops_after_the_dataset(tmp_path):
    sf = Path(sys.executable).parent / "sf"
    env = {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "COLUMNS": "300"}
    result = subprocess.run([str(sf), "demo", "--until", "record", "--episodes", "1", "--seed", "3",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "loop.json").read_text())
    assert list(summary["stages"]) == ["record"] and summary["record"]["dataset"]["episodes"] == 1
    assert "episodes 1" in result.stdout  # the dataset summary is printed
    bad = subprocess.run([str(sf), "demo", "--until", "deploy"], capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 2 and "until must be one of record, train, eval, replay" in bad.stderr
    bad = subprocess.run([str(sf), "demo", "--size", "huge", "--out", str(tmp_path / "never")], capture_output=True,
                         text=True, timeout=60, env=env)
    assert bad.returncode == 2 and "size must be one of" in bad.stderr and "micro" in bad.stderr
    assert not (tmp_path / "never").exists()  # refused before anything was recorded


def test_sf_config_check_names_the_bad_field(tmp_path):
    bad = tmp_path / "robot.yaml"
    bad.write_text("arms:\n  left: {can_port: can0}\nlimits:\n  joint2: [1.0, 0.5]\n")
    sf = Path(sys.executable).parent / "sf"
    result = subprocess.run([str(sf), "config", "check", "--robot", str(bad)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "limits.joint2" in result.stdout and "inverted" in result.stdout


@pytest.mark.slow  # 9 s: the default tier stays under 5 minutes
def test_sf_launch_drivers_sim_teleop(ros):
    """`sf launch drivers --sim --mode teleop`: the master arms' wave reaches ROS, the puppets follow."""
    import threading

    import numpy as np
    from sensor_msgs.msg import JointState

    from conftest import wait_for
    from sf_nodes.common import SENSOR_QOS

    received = {"/master/joint_left": [], "/puppet/joint_left": [], "/master/joint_right": []}
    lock = threading.Lock()
    listener = ros.node("teleop_listener")
    for topic in received:
        def keep(msg, topic=topic):
            with lock:
                received[topic].append(np.array(msg.position))
        listener.create_subscription(JointState, topic, keep, SENSOR_QOS)
    sf = Path(sys.executable).parent / "sf"
    proc = subprocess.Popen([str(sf), "launch", "drivers", "--sim", "--mode", "teleop", "--duration", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    try:
        wait_for(lambda: all(len(v) > 200 for v in received.values()), timeout=20, what="teleop streams")
        with lock:
            master = np.array(received["/master/joint_left"])
            puppet = np.array(received["/puppet/joint_left"][-1])
        assert np.ptp(master[:, 0]) > 0.01, "the simulated master arm should be moving"
        assert np.max(np.abs(puppet[:6] - master[-1][:6])) < 0.2, "the puppet should follow its master"
        assert np.all(master[:, 6] >= 0) and np.all(master[:, 6] <= 0.07)
    finally:
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out  # the launch stopped cleanly at its deadline


def test_sf_launch_twin_publishes_camera_images(ros):
    """`sf launch twin` as a process: its rendered camera images reach a subscriber over DDS."""
    import threading

    from sensor_msgs.msg import Image

    from conftest import wait_for
    from sf_nodes.common import IMAGE_QOS

    images, lock = [], threading.Lock()

    def keep(msg):
        with lock:
            images.append(msg)

    ros.node("twin_listener").create_subscription(Image, "/camera_l/color/image_raw", keep, IMAGE_QOS)
    sf = Path(sys.executable).parent / "sf"
    proc = subprocess.Popen([str(sf), "launch", "twin", "--operator", "none", "--width", "96", "--height", "72",
                             "--duration", "10"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ))
    try:
        wait_for(lambda: len(images) > 30, timeout=25, what="30 wrist-camera images from the twin")
        with lock:
            last = images[-1]
        assert (last.width, last.height, last.encoding) == (96, 72, "rgb8")
        assert len(set(bytes(last.data))) > 10  # a rendered scene, not a blank frame
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


@pytest.mark.slow  # 3 s: the default tier stays under 5 minutes
def test_sigterm_to_sf_launch_stops_its_nodes(tmp_path):
    """Nodes run in sessions of their own; `sf launch` must take them down when it is terminated."""
    import time

    sf = Path(sys.executable).parent / "sf"
    proc = subprocess.Popen([str(sf), "launch", "twin", "--operator", "none", "--width", "32", "--height", "24"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    deadline = time.monotonic() + 20
    children: list[int] = []
    while time.monotonic() < deadline and not children:
        children = children_of(proc.pid)
        time.sleep(0.2)
    assert children, "sf launch started no node"
    time.sleep(2.0)
    proc.terminate()
    proc.communicate(timeout=30)
    time.sleep(0.5)
    alive = [p for p in children if Path(f"/proc/{p}").exists()
             and "zombie" not in Path(f"/proc/{p}/status").read_text().lower()]
    assert not alive, f"nodes outlived sf launch: {alive}"


def children_of(pid: int) -> list[int]:
    """Child process ids, from /proc (no procps needed)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found
