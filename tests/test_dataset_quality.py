"""``sf dataset check``: the quality report (sf_policy/data/quality.py) on signals whose truth is known.

Most cases feed ``check_episode`` / ``summarize`` arrays directly: smooth joint trajectories
(sums of incommensurate sines, inside the Piper's limits) where the state is the action k frames
later. A small dataset with one camera frozen for exactly 1 s goes through the writer, the
decoder and the CLI; a twin recording (slow tier) checks the scripted expert reads as clean.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from sf_policy.cli.main import app
from sf_policy.data.features import ACTION, SKEW, STAMP_NAMES, STAMPS, STATE
from sf_policy.data.episode_ranges import format_episodes
from sf_policy.data.quality import (
    ERROR,
    INFO,
    WARNING,
    EpisodeData,
    Finding,
    Thresholds,
    check,
    check_episode,
    estimate_lag,
    frozen_runs,
    group,
    summarize,
    video_freezes,
)
from sf_policy.data.writer import DatasetWriter
from sf_policy.embodiment import JOINT_NAMES, PIPER_LIMITS

FPS = 30
N = 90  # 3 s: above the 2 s "short episode" threshold
CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
LEFT_GRIPPER, RIGHT_GRIPPER = JOINT_NAMES.index("left_gripper"), JOINT_NAMES.index("right_gripper")
runner = CliRunner()


# -- synthetic signals ------------------------------------------------------------------------

def trajectory(n: int, seed: int = 0) -> np.ndarray:
    """[n, 14] smooth motion around the middle of each joint's range: three sines per channel
    at 0.2-0.9 Hz (0.2-0.45 Hz for the grippers), never periodic over a few seconds."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None] / FPS
    out = np.empty((n, 14))
    for c, name in enumerate(JOINT_NAMES):
        lim = PIPER_LIMITS[name.split("_", 1)[1]]
        gripper = name.endswith("gripper")
        freqs = rng.uniform(0.2, 0.45 if gripper else 0.9, 3)
        phases = rng.uniform(0, 2 * math.pi, 3)
        amplitude = 0.008 if gripper else 0.12  # per sine: up to 24 mm / 0.36 rad
        out[:, c] = (lim.lower + lim.upper) / 2 + amplitude * np.sin(2 * math.pi * freqs * t + phases).sum(axis=1)
    return out


OFFSET = 0.002  # master and puppet encoders never agree exactly (calibration)


def episode(lag: int = 2, n: int = N, seed: int = 0, index: int = 0) -> EpisodeData:
    """The puppet (state) reproduces the master (action) ``lag`` frames later, up to a small
    calibration offset: state[t] = action[t - lag] + OFFSET."""
    motion = trajectory(n + abs(lag), seed)
    if lag >= 0:
        action, state = motion[lag:], motion[:n] + OFFSET
    else:  # the "action" follows the "state": columns swapped
        state, action = motion[-lag:], motion[:n] + OFFSET
    return EpisodeData(index, state.copy(), action.copy(), stamps(n))


def stamps(n: int, hz: float = FPS) -> np.ndarray:
    times = 1_760_000_000_000_000_000 + (np.arange(n) * 1e9 / hz).astype(np.int64)
    return np.repeat(times[:, None], len(STAMP_NAMES), axis=1)


def rest(data: EpisodeData, channels, value: float | None = None) -> EpisodeData:
    """Hold these channels (state and action) still, at ``value`` or at their first value."""
    for key in ("state", "action"):
        values = getattr(data, key)
        values[:, channels] = values[0, channels] if value is None else value
    return data


def run(*episodes: EpisodeData, cameras=CAMERAS, t: Thresholds = Thresholds()):
    """(per-episode qualities, grouped findings) as ``check`` makes them from disk."""
    qualities, findings = [], []
    for data in episodes:
        quality, found = check_episode(data, FPS, list(cameras), t)
        qualities.append(quality)
        findings += found
    return qualities, summarize(qualities, findings, FPS, t)


def worst(findings) -> str:
    return max((f.severity for f in findings), key=[INFO, WARNING, ERROR].index, default=INFO)


def by_code(findings, code: str) -> list[Finding]:
    return [f for f in findings if f.code == code]


LEFT_ARM, RIGHT_ARM = list(range(0, 7)), list(range(7, 14))


# -- episodes ---------------------------------------------------------------------------------

def test_a_clean_bimanual_episode_gives_only_information():
    qualities, findings = run(episode(lag=2))
    assert worst(findings) == INFO, findings
    assert [f.code for f in findings] == ["lag", "lag"]
    assert "follows the action by 2 frame(s) (67 ms)" in findings[0].message
    arms = qualities[0].arms
    assert all(arms[s].moves and arms[s].lag_frames == 2 and arms[s].lag_corr > 0.99 for s in ("left", "right"))


def test_a_resting_arm_is_information_not_a_warning():
    """The false positive of lerobot-doctor/lint: a whole arm still through a one-arm task."""
    eps = [rest(episode(seed=e, index=e), LEFT_ARM) for e in range(5)]
    qualities, findings = run(*eps)
    assert worst(findings) == INFO, findings
    idle = by_code(findings, "arm_idle")
    assert len(idle) == 1 and idle[0].episodes == (0, 1, 2, 3, 4) and idle[0].where == "0-4"
    assert "left arm idle" in idle[0].message and "one-arm task" in idle[0].message
    assert not any(f.field.startswith("left") or "left_" in f.field for f in findings if f.code != "arm_idle")
    assert all(not q.arms["left"].moves and q.arms["right"].lag_frames == 2 for q in qualities)


def test_one_stuck_joint_of_a_moving_arm_is_named():
    stuck = JOINT_NAMES.index("right_joint3")
    data = episode(index=1)
    data.state[:, stuck] = data.state[0, stuck]  # the puppet's motor does not follow; its command moves
    _, findings = run(episode(seed=5, index=0), data)
    idle = by_code(findings, "joint_idle")
    assert [(f.field, f.episodes, f.severity) for f in idle] == [("observation.state[right_joint3]", (1,), WARNING)]
    assert "dead motor" in idle[0].message
    assert not by_code(findings, "joint_idle_dataset")  # it moves in episode 0


def test_a_joint_idle_in_the_whole_dataset_is_an_error_said_once():
    stuck = JOINT_NAMES.index("left_joint5")
    eps = [rest(episode(seed=e, index=e), [stuck], value=0.1) for e in range(3)]  # one reading everywhere
    _, findings = run(*eps)
    assert [(f.code, f.field, f.episodes) for f in findings if f.severity != INFO] == \
        [("joint_idle_dataset", "action[left_joint5]", ()),
         ("joint_idle_dataset", "observation.state[left_joint5]", ())]  # the per-episode warnings folded in
    assert findings[0].severity == ERROR and "std is 0" in findings[0].message
    # Still in each episode but at another angle each time: per episode only.
    eps = [rest(episode(seed=e, index=e), [stuck]) for e in range(3)]
    _, findings = run(*eps)
    assert {(f.code, f.episodes) for f in findings if f.severity != INFO} == {("joint_idle", (0, 1, 2))}


def test_a_gripper_never_used():
    everywhere = [rest(episode(seed=e, index=e), [RIGHT_GRIPPER]) for e in range(2)]
    _, findings = run(*everywhere)
    assert [(f.code, f.field, f.episodes) for f in findings if f.severity != INFO] == \
        [("gripper_unused_dataset", "observation.state[right_gripper]", ())]
    once = [episode(seed=0, index=0), rest(episode(seed=1, index=1), [LEFT_GRIPPER])]
    _, findings = run(*once)
    assert [(f.code, f.field, f.episodes) for f in findings if f.severity != INFO] == \
        [("gripper_unused", "observation.state[left_gripper]", (1,))]


@pytest.mark.parametrize("k", [0, 1, 3, 7])
def test_the_lag_estimate_is_exact(k):
    data = episode(lag=k, seed=k)
    assert estimate_lag(data.action[:, :6], data.state[:, :6], 30)[0] == k
    qualities, findings = run(data)
    assert qualities[0].arms["left"].lag_frames == k and qualities[0].arms["left"].lag_ms == round(k * 1000 / FPS, 1)
    assert worst(findings) == INFO, findings


def test_a_stale_state_is_flagged():
    qualities, findings = run(episode(lag=14))
    assert qualities[0].arms["right"].lag_frames == 14
    assert {(f.code, f.severity) for f in findings if f.severity != INFO} == {("lag_large", WARNING)}
    assert by_code(findings, "lag_large")[0].details[0].startswith("episode 0: 14 frames (466.7 ms)")


def test_action_copied_from_state_is_an_error():
    data = episode()
    data.action = data.state.copy()
    qualities, findings = run(data)
    copied = by_code(findings, "copied")
    assert [(f.field, f.severity) for f in copied] == [("action[left]", ERROR), ("action[right]", ERROR)]
    assert qualities[0].arms["left"].lag_frames is None  # no lag is claimed for a copy


def test_swapped_columns_show_a_negative_lag():
    qualities, findings = run(episode(lag=-3))
    assert qualities[0].arms["left"].lag_frames == -3
    negative = by_code(findings, "lag_negative")
    assert [f.field for f in negative] == ["left arm", "right arm"] and negative[0].severity == ERROR
    assert "swapped" in negative[0].message and "-3 frames (-100 ms)" in negative[0].details[0]


def test_nan_is_an_error_and_stops_the_other_checks():
    data = episode()
    data.state[10, 4] = np.nan
    qualities, findings = run(data)
    assert [(f.code, f.field, f.severity) for f in findings] == \
        [("non_finite", "observation.state[left_joint5]", ERROR)]
    assert findings[0].details == ("episode 0: 1 frame(s): [10]",) and not qualities[0].finite


def test_limits_jumps_and_short_episodes():
    data = episode(n=45)
    j2 = JOINT_NAMES.index("left_joint2")
    data.state[:, j2] = data.state[:, j2] - data.state[:, j2].min() - 0.2  # down to -0.2 rad: below 0 - margin
    data.action[20, 0] += 0.5  # one command 0.5 rad off: > 2 x pi rad/s x 1/30 s
    _, findings = run(data)
    assert {(f.code, f.field) for f in findings if f.severity == WARNING} == {
        ("short", "length"), ("limits", "observation.state[left_joint2]"), ("jump", "action[left_joint1]")}
    jump = by_code(findings, "jump")[0]
    assert "2 step(s) at frame(s) [20, 21], the largest 0.5" in jump.details[0]  # out and back


def test_rate_shortfall_says_what_validate_says():
    from sf_policy.data.rates import measured_rates, shortfalls

    data = episode()
    data.stamps = stamps(N, hz=18.0)
    _, findings = run(data)
    rate = by_code(findings, "rate")
    assert [f.message for f in rate] == shortfalls(measured_rates(data.stamps, CAMERAS), FPS)
    assert rate[0].severity == WARNING and "18.0 Hz" in rate[0].message


def test_a_camera_whose_stamps_stop():
    data = episode()
    column = STAMP_NAMES.index("cam_left_wrist")
    data.stamps[30:60, column] = data.stamps[30, column]  # 30 frames show one image: 1.00 s
    data.stamps[70:80, column] = data.stamps[70, column]  # 0.33 s: under the threshold
    qualities, findings = run(data)
    stalled = by_code(findings, "camera_stalled")
    assert [(f.field, f.episodes, f.severity) for f in stalled] == \
        [("observation.images.cam_left_wrist", (0,), WARNING)]
    assert stalled[0].details == ("episode 0: 1.00 s, t = 1.00-2.00 s (frames 30-59)",)
    assert qualities[0].frozen == [{"camera": "cam_left_wrist", "start": 30, "stop": 60, "seconds": 1.0,
                                    "source": "stamps"}]


def test_still_images_count_only_while_an_arm_the_camera_sees_moves():
    """One-arm task: the resting left arm's wrist camera sees a still table, rightly."""
    data = rest(episode(), LEFT_ARM)
    still = [np.full((24, 32, 3), 90, np.uint8)] * N
    assert video_freezes(0, "cam_left_wrist", still, data.state, data.stamps, FPS)[1] == []
    spans, found = video_freezes(0, "cam_high", still, data.state, data.stamps, FPS)
    assert spans == [{"camera": "cam_high", "start": 0, "stop": N, "seconds": 3.0, "source": "video"}]
    assert found[0].code == "camera_frozen"
    assert found[0].details == ("episode 0: 3.00 s, t = 0.00-3.00 s (frames 0-89)",)


def test_frozen_runs_compare_with_the_start_of_the_stretch():
    """A slow drift (2 levels a frame, under the 3-level threshold) is motion, not a freeze."""
    still = [np.full((8, 8, 3), 100, np.uint8)] * 10
    drift = [np.full((8, 8, 3), 100 + 2 * i, np.uint8) for i in range(10)]
    assert frozen_runs(still) == ([(0, 10)], 10)
    assert frozen_runs(drift)[0] == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]  # never more than 2 frames


def test_grouping_and_episode_ranges():
    assert format_episodes([9, 0, 1, 2, 3, 4, 7, 10]) == "0-4, 7, 9-10"
    same = [Finding(WARNING, "x", "f", "m", (e,), (f"episode {e}",)) for e in (3, 1, 2)]
    grouped = group(same + [Finding(ERROR, "y", "g", "n")])
    assert [(f.severity, f.where, f.details) for f in grouped] == \
        [(ERROR, "dataset", ()), (WARNING, "1-3", ("episode 3", "episode 1", "episode 2"))]


# -- on disk: a frozen camera, decoded; the CLI -----------------------------------------------

HW = (48, 64)


def moving_image(i: int) -> np.ndarray:
    """A bright square crossing a dark, textured background: every frame differs."""
    h, w = HW
    y, x = np.mgrid[0:h, 0:w]
    image = np.stack([40 + 20 * np.sin(x / 5), 40 + 20 * np.cos(y / 4), np.full((h, w), 60.0)], -1)
    left = (3 * i) % (w - 12)
    image[10:26, left:left + 12] = 230
    return image.astype(np.uint8)


def write(root, episodes: list[EpisodeData], frozen: dict[int, range] | None = None, cameras=("cam_high",)) -> None:
    """Episodes through the project's writer; in ``frozen[e]`` the camera repeats one image
    while its header stamps keep advancing (a stalled camera re-sending its last frame)."""
    frozen = frozen or {}
    with DatasetWriter.create(root, fps=FPS, cameras={role: HW for role in cameras}) as writer:
        for data in episodes:
            ep = writer.begin_episode("lift the pot")
            span = frozen.get(data.index, range(0))
            for k in range(len(data.state)):
                shown = span.start if k in span else k
                ep.add_frame({STATE: data.state[k].astype(np.float32), ACTION: data.action[k].astype(np.float32),
                              STAMPS: data.stamps[k], SKEW: np.zeros(1, np.float32)},
                             images={role: moving_image(shown) for role in cameras})
            ep.save()


@pytest.fixture(scope="module")
def camera_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality") / "ds"
    write(root, [episode(seed=0, index=0, n=75), episode(seed=1, index=1, n=75)], frozen={1: range(30, 60)})
    return root


def sf(*args):
    return runner.invoke(app, ["dataset", "check", *[str(a) for a in args]], env={"COLUMNS": "300"})


def test_a_frozen_camera_is_found_by_decoding(camera_root):
    report = check(camera_root)
    assert report.videos_checked == [0, 1]
    frozen = by_code(report.findings, "camera_frozen")
    assert [(f.field, f.episodes, f.severity) for f in frozen] == [("observation.images.cam_high", (1,), WARNING)]
    assert frozen[0].details[0].startswith("episode 1: 0.9") and "t = 1.00-1.9" in frozen[0].details[0]
    span = report.episodes[1].frozen[0]
    # Frames 30-59 repeat one image; x264 requantizes the last one or two before the scene moves on.
    assert span["source"] == "video" and span["start"] == 30 and 58 <= span["stop"] <= 60
    assert report.episodes[0].frozen == []
    assert worst(report.findings) == WARNING
    assert not by_code(check(camera_root, videos=False).findings, "camera_frozen")  # --no-videos: not decoded
    sampled = check(camera_root, video_episodes=1)  # one episode decoded: the first
    assert sampled.videos_checked == [0] and not by_code(sampled.findings, "camera_frozen")


def test_cli_reports_exits_and_writes_json_and_plot(camera_root, tmp_path):
    result = sf(camera_root, "--json", tmp_path / "q.json", "--plot", tmp_path / "q.png")
    assert result.exit_code == 0, result.output  # warnings only
    assert "cam_high images frozen" in result.output and "t = 1.00-1.9" in result.output
    assert "0 error(s), 1 warning(s)" in result.output
    report = json.loads((tmp_path / "q.json").read_text())
    assert report["counts"] == {"error": 0, "warning": 1, "info": 2}
    frozen = [f for f in report["findings"] if f["code"] == "camera_frozen"]
    assert frozen[0]["episodes"] == [1] and report["thresholds"]["frozen_s"] == 0.5
    assert [e["arms"]["left"]["lag_frames"] for e in report["episodes"]] == [2, 2]
    assert (tmp_path / "q.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sf(camera_root, "--strict").exit_code == 1
    assert sf(camera_root, "--no-videos", "--strict").exit_code == 0


def test_cli_errors_exit_1_and_not_a_dataset_exits_2(tmp_path):
    bad = episode()
    bad.action = bad.state.copy()
    write(tmp_path / "ds", [bad], cameras=())
    result = sf(tmp_path / "ds", "--json", tmp_path / "q.json")
    assert result.exit_code == 1, result.output
    assert {f["code"] for f in json.loads((tmp_path / "q.json").read_text())["findings"]} >= {"copied"}
    missing = sf(tmp_path / "nothing")
    assert missing.exit_code == 2 and str(tmp_path / "nothing") in missing.output.replace("\n", "")
    (tmp_path / "empty").mkdir()
    empty = sf(tmp_path / "empty")
    assert empty.exit_code == 2 and "not a LeRobot dataset" in empty.output.replace("\n", "")


# -- a twin recording -------------------------------------------------------------------------

@pytest.mark.slow  # 4 s: the scripted expert in MuJoCo
def test_the_twin_expert_reads_as_clean(tmp_path):
    from sf_policy.sim.record_without_ros import record_expert

    record_expert(tmp_path / "twin", episodes=1, width=32, height=32)
    report = check(tmp_path / "twin")
    assert worst(report.findings) == INFO, report.findings
    for arm in report.episodes[0].arms.values():
        assert arm.moves and 1 <= arm.lag_frames <= 3 and arm.lag_corr > 0.9
