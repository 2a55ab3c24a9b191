"""Offline replay (sf_policy/eval/replay.py): the real tiny π0 over a dataset recorded from the
twin's expert and over a raw bag made from it; the horizon alignment checked with stand-in
predictors that know the recorded future; the report files; errors that name the input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from sf_policy.data.features import ACTION, STATE
from sf_policy.eval.replay import ReplayError, replay
from sf_policy.record.bag import IMAGE_TYPE, JOINT_STATE_TYPE, PROMPT_KEY, recorder_topics, typestore
from sf_policy.record.bag_writer import RawBagWriter
from sf_policy.record.sync import ARM_STREAMS
from sf_policy.topics import CAMERA_ROLES, camera_image, master_state, puppet_state

T0 = 1_700_000_000_000_000_000
PERIOD = 33_333_333


def tiny_checkpoint(path: Path) -> Path:
    """A training-checkpoint-shaped directory with a random tiny policy (checkpoint/policy/)."""
    from sf_policy.model.policy import Policy, PolicyConfig
    from sf_policy.model.tokenizer import tiny_tokenizer

    tokenizer = tiny_tokenizer(path / "tokenizer")
    stats = {key: {"mean": np.zeros(14, np.float32), "std": np.full(14, 0.1, np.float32),
                   "q01": np.full(14, -0.3, np.float32), "q99": np.full(14, 0.3, np.float32),
                   "min": np.full(14, -0.5, np.float32), "max": np.full(14, 0.5, np.float32)}
             for key in (STATE, ACTION)}
    Policy.build(PolicyConfig(tiny=True), stats=stats, tokenizer=tokenizer).save_pretrained(path / "ckpt" / "policy")
    return path / "ckpt"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """(checkpoint, dataset, bag of the dataset's episode 0, {episode: (states, actions, prompt)})."""
    from sf_policy.data.reader import DatasetReader
    from sf_policy.sim.record_without_ros import record_expert

    root = tmp_path_factory.mktemp("replay")
    checkpoint = tiny_checkpoint(root)
    dataset = root / "dataset"
    record_expert(dataset, episodes=2, seed=0, width=64, height=48, every=4)
    with DatasetReader(dataset) as reader:
        recorded = {f"episode {ep.index}": (reader.episode_column(k, STATE), reader.episode_column(k, ACTION), ep.task)
                    for k, ep in enumerate(reader.episodes)}
        images = {role: list(reader.episode_frames(0, role)) for role in CAMERA_ROLES}
    states, actions, prompt = recorded["episode 0"]
    bag = write_episode_bag(root / "bag_ep0", states, actions, images, prompt)
    return checkpoint, dataset, bag, recorded


def _header(stamp: int):
    T = typestore().types
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=stamp // 10**9,
                                                                          nanosec=stamp % 10**9), frame_id="f")


def write_episode_bag(path: Path, states, actions, images, prompt: str) -> Path:
    """What the recorder would have bagged for these frames: cameras at 30 Hz, arms at every frame time."""
    T = typestore().types
    events = []
    for k in range(len(states)):
        stamp = T0 + k * PERIOD
        for role in CAMERA_ROLES:
            pixels = images[role][k]
            msg = T[IMAGE_TYPE](header=_header(stamp), height=pixels.shape[0], width=pixels.shape[1],
                                encoding="rgb8", is_bigendian=0, step=pixels.shape[1] * 3, data=pixels.reshape(-1))
            events.append((camera_image(role), bytes(typestore().serialize_cdr(msg, IMAGE_TYPE)), stamp + 3_000_000))
        for name in ARM_STREAMS:
            kind, side = name.split("_")
            side_slice = slice(0, 7) if side == "left" else slice(7, 14)
            values = (states if kind == "puppet" else actions)[k][side_slice]
            msg = T[JOINT_STATE_TYPE](header=_header(stamp), name=[], position=np.asarray(values, np.float64),
                                      velocity=np.zeros(0), effort=np.zeros(0))
            topic = puppet_state(side) if kind == "puppet" else master_state(side)
            events.append((topic, bytes(typestore().serialize_cdr(msg, JOINT_STATE_TYPE)), stamp + 500_000))
    with RawBagWriter(path, recorder_topics(), custom_data={PROMPT_KEY: prompt}) as writer:
        for topic, raw, received in sorted(events, key=lambda e: e[2]):
            writer.write(topic, raw, received)
    return path


class FuturePredictor:
    """Returns the recorded actions from frame t + shift on (the last one repeated past the end)."""

    def __init__(self, recorded, shift: int = 0, horizon: int = 50):
        self.recorded, self.shift, self.chunk_size = recorded, shift, horizon
        self.seen = []

    def __call__(self, sample, seed):
        self.seen.append((sample["episode"], sample["frame"], seed))
        actions = self.recorded[sample["episode"]][1].astype(np.float64)
        rows = np.minimum(np.arange(self.chunk_size) + sample["frame"] + self.shift, len(actions) - 1)
        return actions[rows]


def test_real_policy_on_dataset_writes_a_report_with_finite_metrics(assets, tmp_path):
    checkpoint, dataset, _, recorded = assets
    result = replay(checkpoint, dataset=dataset, out=tmp_path / "r", every=5, max_frames=3, device="cpu",
                    progress=False)
    m = result.metrics
    assert m["frames_evaluated"] == 6 and [e["evaluated"] for e in m["episodes"]] == [3, 3]
    mae = np.array(m["mae_per_step"], dtype=float)
    assert mae.shape == (50, 14) and np.isfinite(mae[0]).all() and (mae[0] > 0).all()
    assert m["pairs_per_step"][0] == 6
    assert np.isfinite(m["consistency"]).all() and m["consistency_pairs"] == 2 * 2 * 45  # two switches per episode
    assert all(np.isfinite(v) for k, v in m["summary"].items()), m["summary"]
    assert json.loads(result.metrics_path.read_text())["summary"] == m["summary"]

    html = result.report_path.read_text()
    figures = sorted((tmp_path / "r" / "figures").glob("*.png"))
    assert len(figures) == 4 + 2  # horizon, joints, consistency, latency + one trajectory plot per episode
    assert html.count('src="data:image/png;base64,') == len(figures) and "<table>" in html
    markdown = result.markdown_path.read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert sorted(linked) == sorted(f.relative_to(tmp_path / "r").as_posix() for f in figures)
    arrays = np.load(tmp_path / "r" / "replay.npz")
    assert arrays["ep0_chunks"].shape == (3, 50, 14)
    np.testing.assert_array_equal(arrays["ep0_actions"], recorded["episode 0"][1][:arrays["ep0_actions"].shape[0]])


def test_noise_depends_only_on_seed_episode_and_frame(assets):
    from sf_policy.eval.replay import PolicyPredictor, dataset_sources, run_episode

    checkpoint, dataset, _, _ = assets
    predictor = PolicyPredictor(checkpoint, device="cpu")
    source = dataset_sources(dataset, [1])[0]
    a = run_episode(source, predictor, 1, every=4, max_frames=2, seed=0)
    b = run_episode(source, predictor, 1, every=8, max_frames=2, seed=0)
    c = run_episode(source, predictor, 1, every=4, max_frames=1, seed=1)
    assert list(a.frames) == [0, 4] and list(b.frames) == [0, 8]
    # frame 0 is in both runs: the same chunk although `every` differs; another seed, another chunk
    np.testing.assert_allclose(a.chunks[0], b.chunks[0], atol=1e-6)
    assert np.abs(c.chunks[0] - a.chunks[0]).max() > 1e-4
    # reading stops once the last chunk's horizon is covered
    assert len(b.actions) == min(len(a.actions), 8 + 50)


def test_recorded_future_scores_zero_and_a_one_frame_shift_is_measured(assets, tmp_path):
    _, dataset, _, recorded = assets
    perfect = replay("oracle", dataset=dataset, out=tmp_path / "p", every=3, predictor=FuturePredictor(recorded),
                     progress=False)
    m = perfect.metrics
    assert np.nanmax(np.array(m["mae_per_step"], dtype=float)) == 0.0
    assert max(m["consistency"]) == 0.0 and m["consistency_pairs"] > 0
    lengths = [len(recorded[name][1]) for name in sorted(recorded)]
    frames = [list(range(0, n, 3)) for n in lengths]
    assert m["frames_evaluated"] == sum(map(len, frames))
    # pairs at step h: evaluated frames t with t + h inside the episode
    expected_pairs = [sum(t + h < n for n, ts in zip(lengths, frames) for t in ts) for h in range(50)]
    assert m["pairs_per_step"] == expected_pairs

    late = replay("late", dataset=dataset, out=tmp_path / "s", every=3, predictor=FuturePredictor(recorded, shift=1),
                  progress=False).metrics
    diffs, holds = [], []
    for name, ts in zip(sorted(recorded), frames):
        states, actions, _ = recorded[name]
        diffs += [np.abs(actions[min(t + 1, len(actions) - 1)] - actions[t]) for t in ts]
        holds += [np.abs(states[t] - actions[t]) for t in ts]
    np.testing.assert_allclose(late["mae_h0"], np.mean(diffs, axis=0), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(late["hold_mae_per_step"][0], np.mean(holds, axis=0), rtol=1e-5, atol=1e-9)
    assert late["summary"]["arm_mae_h0_deg"] > 0


def test_bag_goes_through_the_recorders_sync_and_matches_the_dataset(assets, tmp_path):
    checkpoint, _, bag, recorded = assets
    oracle = {bag.name: recorded["episode 0"]}
    perfect = replay(None, bags=[bag], out=tmp_path / "p", every=2, predictor=FuturePredictor(oracle),
                     progress=False)
    run = perfect.runs[0]
    np.testing.assert_array_equal(run.actions, recorded["episode 0"][1])
    np.testing.assert_array_equal(run.states, recorded["episode 0"][0])
    assert np.nanmax(np.array(perfect.metrics["mae_per_step"], dtype=float)) == 0.0
    real = replay(checkpoint, bags=[bag], out=tmp_path / "r", every=6, max_frames=2, device="cpu", progress=False)
    assert real.metrics["source"] == {"kind": "bags", "paths": [str(bag)]}
    assert real.runs[0].chunks.shape == (2, 50, 14) and np.isfinite(real.runs[0].chunks).all()
    assert real.report_path.is_file()


def test_bad_inputs_name_what_is_wrong(assets, tmp_path):
    checkpoint, dataset, bag, recorded = assets
    oracle = FuturePredictor(recorded)
    with pytest.raises(ReplayError, match=re.escape(str(tmp_path / "nope"))):
        replay(None, dataset=tmp_path / "nope", out=tmp_path / "o", predictor=oracle)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReplayError, match=re.escape(str(tmp_path / "empty")) + ".*meta/info.json"):
        replay(None, dataset=tmp_path / "empty", out=tmp_path / "o", predictor=oracle)
    with pytest.raises(ReplayError, match="no episode 7"):
        replay(None, dataset=dataset, episodes=[7], out=tmp_path / "o", predictor=oracle)
    with pytest.raises(ReplayError, match=re.escape(str(tmp_path / "nobag"))):
        replay(None, bags=[tmp_path / "nobag"], out=tmp_path / "o", predictor=oracle)
    with pytest.raises(ReplayError, match=re.escape(str(tmp_path / "empty"))):
        replay(None, bags=[tmp_path / "empty"], out=tmp_path / "o", predictor=oracle)
    with pytest.raises(ReplayError, match="exactly one"):
        replay(None, dataset=dataset, bags=[bag], out=tmp_path / "o", predictor=oracle)
    with pytest.raises(ReplayError, match=re.escape(str(tmp_path / "nockpt"))):
        replay(tmp_path / "nockpt", dataset=dataset, out=tmp_path / "o", device="cpu")
    assert not (tmp_path / "o").exists()


def test_cli_prints_the_report_path_and_refuses_a_missing_checkpoint(assets, tmp_path):
    from typer.testing import CliRunner

    from sf_policy.cli.eval import app

    checkpoint, dataset, _, _ = assets
    runner = CliRunner()
    ok = runner.invoke(app, ["replay", "--checkpoint", str(checkpoint), "--dataset", str(dataset), "--episodes", "0",
                             "--every", "10", "--max-frames", "2", "--device", "cpu", "--out", str(tmp_path / "cli")])
    assert ok.exit_code == 0, ok.output
    assert "report.html" in ok.output and (tmp_path / "cli" / "report.html").is_file()
    bad = runner.invoke(app, ["replay", "--checkpoint", str(tmp_path / "missing"), "--dataset", str(dataset)])
    assert bad.exit_code == 1 and str(tmp_path / "missing") in bad.output.replace("\n", "")
