"""sf eval depth-probe: frames with depth from the MuJoCo twin, frozen layer-k tokens of a tiny real
π0 checkpoint, the DPT-style probe, metrics, and the CLI's report and figures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sf_policy.align.grid import letterbox_geometry
from sf_policy.cli.eval import app
from sf_policy.data.features import ACTION, STATE
from sf_policy.data.stats import vector_stats
from sf_policy.eval.depth_probe.features import extract_features
from sf_policy.eval.depth_probe.frames import DepthFrames, collect_twin_frames
from sf_policy.eval.depth_probe.metrics import constant_prediction, depth_metrics, metrics_by_camera
from sf_policy.eval.depth_probe.targets import depth_targets, letterbox_nearest
from sf_policy.eval.depth_probe.train import ProbeConfig, predict_depth, silog_loss, train_probe
from sf_policy.model.actions import action_stats
from sf_policy.model.policy import Policy, PolicyConfig
from sf_policy.model.tokenizer import tiny_tokenizer
from sf_policy.topics import CAMERA_ROLES
from sf_policy.train.checkpoint import POLICY_DIR, load_policy

#: What the fixture's frames are made with; the CLI test passes the same to reuse the cache.
FRAMES = {"task": "lift_pot", "episodes": 2, "seed": 0, "width": 64, "height": 48, "every": 15, "max_frames": 3}
SMALL_PROBE = {"channels": 16, "out_size": 32, "batch_size": 4}  # a head that trains in a blink on CPU


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A training-checkpoint-shaped directory (<ckpt>/policy/) holding a tiny random π0 (4 VLM layers)."""
    root = tmp_path_factory.mktemp("depth_probe_ckpt")
    tokenizer = tiny_tokenizer(root / "tokenizer")
    rng = np.random.default_rng(0)
    states = rng.normal(size=(100, 14))
    actions = states + 0.01 * rng.normal(size=(100, 14))
    stats = {STATE: vector_stats(states), ACTION: action_stats(actions, states, "delta", 50)}
    torch.manual_seed(0)
    policy = Policy.build(PolicyConfig(tiny=True), stats=stats, tokenizer=tokenizer)
    policy.save_pretrained(root / "step_000010" / POLICY_DIR)
    return root / "step_000010"


@pytest.fixture(scope="module")
def policy(checkpoint) -> Policy:
    return load_policy(checkpoint)


@pytest.fixture(scope="module")
def frames_file(tmp_path_factory) -> Path:
    """Two short scripted lift_pot episodes in the twin (3 frames each, 64×48 so letterboxed), cached."""
    path = tmp_path_factory.mktemp("depth_probe_frames") / "frames.npz"
    collect_twin_frames(**FRAMES).save(path)
    return path


@pytest.fixture(scope="module")
def frames(frames_file) -> DepthFrames:
    return DepthFrames.load(frames_file)


def test_twin_frames_have_metric_depth_per_camera_and_split_by_episode(frames):
    assert frames.roles == CAMERA_ROLES
    assert frames.images.shape == (6, 3, 48, 64, 3) and frames.images.dtype == np.uint8
    assert frames.depth.shape == (6, 3, 48, 64) and frames.depth.dtype == np.float32
    assert frames.meta["task"] == "lift_pot" and frames.prompts[0] == "Lift the pot by both handles and hold it level."
    train, test = frames.split(1)
    assert set(frames.episode[train]) == {0} and set(frames.episode[test]) == {1}
    with pytest.raises(ValueError):
        frames.split(2)  # nothing left to train on
    # the wrist cameras look at the table a few decimetres away: depth is metric
    near = frames.depth[:, 1:][frames.depth[:, 1:] < 5]
    assert 0.01 < np.median(near) < 1.5


def test_letterbox_targets_mask_padding_and_depth_without_reading():
    depth = np.full((480, 640), 0.5, np.float32)
    depth[:, :320] = 2.0  # left half farther
    depth[100:140, 200:260] = 0.0  # no reading
    depth[300:, 500:] = 81.0  # far clip plane (no geometry)
    values, content = letterbox_nearest(depth, 64)
    # 480×640 → 168×224 at rows 28..195 of the 224 canvas → rows 8..55 at 64², patch rows 2..13
    box = letterbox_geometry(480, 640)[-1]
    assert (box.row0, box.row1) == (2, 14)
    assert content[8:56].all() and not content[:8].any() and not content[56:].any()
    assert (values[:8] == 0).all() and (values[56:] == 0).all()
    assert values[30, 5] == 2.0 and values[30, 60] == 0.5  # nearest neighbour: no blending across the edge
    frames = DepthFrames(np.zeros((1, 1, 480, 640, 3), np.uint8), depth[None, None], np.zeros((1, 14), np.float32),
                         np.zeros(1, np.int64), ["x"], roles=("cam_high",))
    target, valid = depth_targets(frames, 64, max_depth=10.0)
    assert not valid[0, 0, :8].any() and not valid[0, 0, 56:].any()
    assert not valid[0, 0][target[0, 0] == 0].any() and not valid[0, 0][target[0, 0] > 10].any()
    assert valid[0, 0].sum() > 0.8 * 48 * 64


def test_silog_and_metrics_ignore_invalid_pixels():
    depth = torch.full((2, 8, 8), 2.0)
    valid = torch.zeros(2, 8, 8, dtype=torch.bool)
    valid[:, 2:6] = True
    pred = torch.full((2, 8, 8), 2.0)
    pred[~valid] = 100.0  # wrong only where nothing is measured
    assert float(silog_loss(pred.log(), depth, valid)) < 1e-3
    m = depth_metrics(pred, depth, valid)
    assert m["abs_rel"] == pytest.approx(0.0) and m["delta1"] == 1.0 and m["pixels"] == 64
    by_camera = metrics_by_camera(pred[None], depth[None], torch.zeros(1, 2, 8, 8, dtype=torch.bool), ["a", "b"])
    assert by_camera["a"]["abs_rel"] is None and by_camera["overall"]["pixels"] == 0


def test_features_are_the_requested_layers_hidden_states(policy, frames):
    early = {k: extract_features(policy, frames, k, batch_size=4) for k in (1, 3)}
    # reference: the same prefix forward with every hidden state returned, no hooks, no early stop
    pi0 = policy.pi0
    batch = policy.processor(frames.samples(range(len(frames))))
    with torch.no_grad():
        embeds = pi0.model.embed_prefix(batch["input_ids"], batch["pixel_values"], batch["pixel_attention_mask"])
        mask = batch["attention_mask"]
        hidden = pi0.model.vlm(inputs_embeds=embeds, attention_mask=mask, position_ids=mask.cumsum(-1) - 1,
                               token_type_ids=torch.zeros_like(batch["input_ids"]), output_hidden_states=True,
                               use_cache=False).hidden_states
    for k, features in early.items():
        assert features.shape == (len(frames), 768, 64) and features.dtype == torch.bfloat16
        torch.testing.assert_close(features.float(), hidden[k][:, :768].to(torch.bfloat16).float())
    assert not torch.allclose(early[1].float(), early[3].float())
    assert not any(p.grad is not None for p in policy.parameters())
    with pytest.raises(ValueError, match="out of range"):
        extract_features(policy, frames, 5)


def test_probe_loss_decreases_and_held_out_metrics_are_finite(policy, frames):
    features = extract_features(policy, frames, 3)
    depth, valid = depth_targets(frames, SMALL_PROBE["out_size"])
    train, test = frames.split(1)

    def loss_on(head, idx) -> float:  # SILog over every map of these frames (batch losses are noisy)
        n = len(idx)
        pred = predict_depth(head, features, np.repeat(idx, 3), np.tile(np.arange(3), n), 3).view(n, 3, 32, 32)
        return float(silog_loss(pred.log(), depth[idx], valid[idx])), pred

    untrained, _ = train_probe(features, depth, valid, train, ProbeConfig(steps=0, **SMALL_PROBE))
    head, losses = train_probe(features, depth, valid, train, ProbeConfig(steps=30, lr=3e-3, **SMALL_PROBE))
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert loss_on(head, train)[0] < loss_on(untrained, train)[0]
    # untrained, the probe is the report's no-information reference: per-camera constant depth
    torch.testing.assert_close(loss_on(untrained, test)[1], constant_prediction(depth, valid, train, test))
    _, pred = loss_on(head, test)
    metrics = metrics_by_camera(pred, depth[test], valid[test], frames.roles)
    for group in ("overall", *CAMERA_ROLES):
        m = metrics[group]
        assert m["pixels"] > 0 and all(np.isfinite([m["abs_rel"], m["rmse"], m["delta1"]]))


def test_cli_compares_checkpoints_at_the_sf_layer_and_writes_report_and_figures(checkpoint, frames_file, tmp_path):
    sf = tmp_path / "sf_run" / "checkpoints" / "step_000010"
    shutil.copytree(checkpoint, sf)
    (sf / "align.json").write_text(json.dumps({"layer": 2, "alpha": 0.5}))  # what an SF checkpoint carries
    out = tmp_path / "report"
    args = ["depth-probe", str(sf), str(checkpoint), "--out", str(out), "--frames", str(frames_file),
            "--task", FRAMES["task"], "--episodes", "2", "--width", "64", "--height", "48", "--every", "15",
            "--max-frames", "3", "--steps", "5", "--batch-size", "4", "--channels", "16", "--out-size", "16"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "frames: 6 from" in result.output  # the cache was reused, the twin not run again
    report = json.loads((out / "depth_probe.json").read_text())
    assert report["layer"] == 2 and [c["layer"] for c in report["checkpoints"]] == [2, 2]
    assert [c["label"] for c in report["checkpoints"]] == ["sf_run/step_000010", "step_000010"]
    assert report["split"] == {"train_episodes": [0], "test_episodes": [1], "train_frames": 3, "test_frames": 3}
    for entry in (*(c["metrics"] for c in report["checkpoints"]), report["constant_baseline"]):
        assert set(entry) == {"overall", *CAMERA_ROLES} and np.isfinite(entry["overall"]["abs_rel"])
    for name in ("depth_probe_examples.png", "depth_probe_metrics.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
