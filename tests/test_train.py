"""sf train: configs, batch order, the tiny SF run end to end on a twin dataset, resume, NaN stop.

Real parts throughout: the twin's scripted operator recorded into a LeRobot v3 dataset, the
transformers PI0 at a tiny size, a tiny VGGT aggregator as teacher, its on-disk cache,
accelerate. CPU only; no timing assertions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sf_policy.config import ConfigError
from sf_policy.train.config import PRESETS_DIR, load_config
from sf_policy.train.data import ResumableBatches, split_episodes


@pytest.fixture(scope="module")
def twin_dataset(tmp_path_factory) -> Path:
    from sf_policy.sim.record_without_ros import record_expert

    root = tmp_path_factory.mktemp("twin") / "dataset"
    record_expert(root, "grasp_vegetable", episodes=3, width=64, height=48, every=3)
    return root


def tiny(root: Path, out: Path, *overrides: str):
    return load_config("tiny", [f"data.root={root}", f"output_dir={out}", f"teacher.cache_root={out / 'cache'}",
                                "log.every=1", *overrides])


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# -- configs and batches


def test_presets_load_and_the_baseline_differs_from_sf_only_in_alpha():
    sf, base = load_config("pi0_sf").to_dict(), load_config("pi0_baseline").to_dict()
    assert sf["align"]["alpha"] == 0.5 and sf["align"]["layer"] == 12 and base["align"]["alpha"] == 0.0
    sf["align"]["alpha"], sf["name"] = 0.0, "pi0_baseline"
    assert sf == base
    assert {p.stem for p in PRESETS_DIR.glob("*.yaml")} >= {"tiny", "pi0_sf", "pi0_baseline"}
    cfg = load_config("tiny", ["optim.lr=1e-3", "align.adaptive=true", "teacher.mode=online"])
    assert (cfg.optim.lr, cfg.align.adaptive, cfg.teacher.mode) == (1e-3, True, "online")
    assert load_config("tiny", ["optim.mixed_precision=no"]).optim.mixed_precision == "no"  # not YAML's False


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_config("tiny", ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="teacher.mode must be cache or online"):
        load_config("tiny", ["teacher.mode=sometimes"])
    with pytest.raises(ConfigError, match="known presets: .*pi0_sf"):
        load_config("pi0_sff")
    for override, message in (("optim.steps=-5", "optim.steps must be an integer >= 1, got -5"),
                              ("optim.grad_accum=0", "optim.grad_accum must be an integer >= 1"),
                              ("optim.ema_decay=1.0", "optim.ema_decay must be below 1"),
                              ("optim.lr=0", "optim.lr must be > 0"), ("log.every=0", "log.every must be")):
        with pytest.raises(ConfigError, match=message):
            load_config("tiny", [override])


def test_batches_resume_exactly_where_an_uninterrupted_stream_was():
    stream = iter(ResumableBatches(size=10, batch_size=4, seed=3))
    straight = [next(stream) for _ in range(8)]
    resumed = iter(ResumableBatches(size=10, batch_size=4, seed=3, start=5))
    assert [next(resumed) for _ in range(3)] == straight[5:]
    flat = [i for batch in straight[:5] for i in batch]  # 20 draws = two full epochs
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))


def test_whole_episodes_are_held_out(twin_dataset):
    from sf_policy.data.reader import DatasetReader

    train, held = split_episodes(twin_dataset, heldout=1, seed=0)
    episodes = DatasetReader(twin_dataset).episodes
    held_eps = {e.index for e in episodes if e.from_index <= held[0] < e.to_index}
    assert len(held_eps) == 1 and len(train) + len(held) == sum(e.length for e in episodes)
    (ep,) = [e for e in episodes if e.index in held_eps]
    assert sorted(held.tolist()) == list(range(ep.from_index, ep.to_index))


def test_a_held_out_count_that_leaves_nothing_to_train_on_is_refused_naming_the_field(twin_dataset):
    with pytest.raises(ValueError, match=r"data.heldout_episodes=3 holds out all 3 episode\(s\)"):
        split_episodes(twin_dataset, heldout=3, seed=0)
    with pytest.raises(ValueError, match="data.heldout_episodes must be >= 0"):
        split_episodes(twin_dataset, heldout=-1, seed=0)
    train, held = split_episodes(twin_dataset, heldout=0.9, seed=0)  # a fraction always leaves one episode
    assert len(train) > 0 and len(held) > 0


def test_episode_starts_are_drawn_more_often_and_nothing_else_changes(twin_dataset):
    from collections import Counter

    from sf_policy.data.reader import DatasetReader
    from sf_policy.train.data import emphasise_starts

    train, _ = split_episodes(twin_dataset, heldout=1, seed=0)
    with DatasetReader(twin_dataset) as reader:
        window = int(round(0.5 * reader.fps))
        starts = {ep.from_index for ep in reader.episodes}
    emphasised = emphasise_starts(twin_dataset, train, seconds=0.5, weight=3)
    counts = Counter(emphasised.tolist())
    assert set(counts) == set(train.tolist())
    early = {row for row in train.tolist() if any(0 <= row - s < window for s in starts)}
    assert early and all(counts[row] == (3 if row in early else 1) for row in counts)
    assert len(early) == 2 * window  # the two training episodes' first half second
    assert np.array_equal(emphasise_starts(twin_dataset, train, seconds=0.5, weight=1), train)
    with pytest.raises(ConfigError, match="data.start_weight must be an integer >= 1"):
        load_config("tiny", ["data.start_weight=0"])


def test_recorded_twin_episodes_know_their_scene_and_a_split_knows_what_it_trained_on(twin_dataset):
    from sf_policy.data.reader import DatasetReader
    from sf_policy.train.data import training_scenes

    with DatasetReader(twin_dataset) as reader:
        seeds = [ep.sim_seed for ep in reader.episodes]
    assert seeds == [0, 1, 2]  # record_expert tags each episode with the twin seed it was recorded in
    trained, unknown = training_scenes(twin_dataset, heldout=1, seed=0)
    assert len(trained) == 2 and trained < {0, 1, 2} and unknown == 0


def test_decoded_frames_equal_the_videos_and_feed_the_same_samples(twin_dataset, tmp_path):
    from sf_policy.data.decoded import DecodedFrames
    from sf_policy.train.data import ChunkDataset

    decoded = DecodedFrames.ensure(twin_dataset, cache_root=tmp_path, progress=False)
    again = DecodedFrames.ensure(twin_dataset, cache_root=tmp_path, progress=False)  # built once, then found
    assert again.paths == decoded.paths and all(p.is_file() for p in decoded.paths.values())
    assert not list(tmp_path.glob("*.tmp"))
    from_video, from_disk = ChunkDataset(twin_dataset), ChunkDataset(twin_dataset, decoded=decoded)
    assert len(decoded) == len(from_video)
    for i in (0, len(from_video) // 2, len(from_video) - 1):
        a, b = from_video[i], from_disk[i]
        assert a["prompt"] == b["prompt"] and a["index"] == b["index"]
        np.testing.assert_array_equal(a["actions"], b["actions"])
        for role, image in a["images"].items():
            np.testing.assert_array_equal(image, b["images"][role])


# -- training


def test_tiny_sf_trains_end_to_end_and_its_checkpoint_loads_without_the_teacher(twin_dataset, tmp_path):
    from sf_policy.train.loop import train
    from sf_policy.train.targets import build_cache

    cfg = tiny(twin_dataset, tmp_path, "optim.steps=50", "optim.warmup_steps=5", "log.eval_every=50",
               "log.save_every=25")
    build_cache(twin_dataset, cfg.teacher, progress=False)
    final = train(cfg, progress=False)

    rows = [r for r in metrics(tmp_path / "tiny") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 51))
    assert all(np.isfinite([r["action"], r["align"], r["grad_norm"]]).all() for r in rows)
    # Both losses fall on the held-out episode, measured with the same noise and times each time.
    evals = {r["step"]: r for r in metrics(tmp_path / "tiny") if "eval/action" in r}
    assert sorted(evals) == [0, 50]
    assert evals[50]["eval/action"] < 0.95 * evals[0]["eval/action"], evals
    assert evals[50]["eval/align"] < 0.8 * evals[0]["eval/align"], evals
    assert np.isfinite(evals[50]["eval/joint_mae_rad"]) and np.isfinite(evals[50]["eval/gripper_mae_m"])

    assert final.name == "step_000050" and (final / "aligner.safetensors").is_file()
    assert json.loads((final / "dataset.json").read_text())["frames"] > 0
    assert sorted(p.name for p in final.parent.glob("step_*")) == ["step_000025", "step_000050"]
    assert (tmp_path / "tiny" / "checkpoints" / "latest").read_text().strip() == "step_000050"

    probe = f"""
import sys, numpy as np
from sf_policy.train.checkpoint import load_policy
policy = load_policy({str(tmp_path / 'tiny')!r})
rng = np.random.default_rng(0)
images = {{r: rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for r in ("cam_high", "cam_left_wrist", "cam_right_wrist")}}
chunk = policy.predict([{{"images": images, "state": np.zeros(14, np.float32), "prompt": "pick"}}], num_steps=2)
assert chunk.shape == (1, 50, 14) and np.isfinite(chunk).all(), chunk.shape
training_only = ("sf_policy.teacher", "sf_policy.train.loop", "sf_policy.align.aligner", "sf_policy.align.targets")
heavy = sorted(m for m in sys.modules if m.startswith(training_only))  # align.grid is the letterbox contract
print("imported:", heavy)
assert not heavy
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_resume_follows_the_same_loss_trajectory(twin_dataset, tmp_path):
    from sf_policy.train.loop import train
    from sf_policy.train.targets import build_cache

    steps = ["optim.steps=6", "optim.warmup_steps=2", "log.eval_every=0", "log.save_every=3"]
    straight = tiny(twin_dataset, tmp_path / "a", *steps)
    build_cache(twin_dataset, straight.teacher, progress=False)
    train(straight, progress=False)
    expected = metrics(tmp_path / "a" / "tiny")

    first = tiny(twin_dataset, tmp_path / "b", *steps[1:], "optim.steps=3")
    build_cache(twin_dataset, first.teacher, progress=False)
    train(first, progress=False)
    second = tiny(twin_dataset, tmp_path / "b", *steps)
    before = (tmp_path / "b" / "tiny" / "metrics.jsonl").read_text()
    with pytest.raises(FileExistsError, match=r"already holds a training run .*--resume"):
        train(second, progress=False)  # a fresh run into the same directory: refused, nothing touched
    assert (tmp_path / "b" / "tiny" / "metrics.jsonl").read_text() == before
    train(second, resume=tmp_path / "b" / "tiny" / "checkpoints" / "step_000003", progress=False)
    got = [r for r in metrics(tmp_path / "b" / "tiny") if r["step"] > 3]
    assert [r["step"] for r in got] == [4, 5, 6]
    for mine, theirs in zip(got, expected[3:]):
        for key in ("loss", "action", "align", "lr"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-7), (mine["step"], key)


def test_cached_and_online_targets_give_the_same_alignment_loss(twin_dataset, tmp_path):
    from sf_policy.train.loop import Trainer
    from sf_policy.train.targets import build_cache

    losses = {}
    for mode in ("cache", "online"):
        cfg = tiny(twin_dataset, tmp_path / mode, f"teacher.mode={mode}", "optim.steps=1")
        if mode == "cache":
            build_cache(twin_dataset, cfg.teacher, progress=False)
        trainer = Trainer(cfg)
        batch = next(iter(trainer.loader))
        trainer.policy.eval()
        with torch.no_grad():
            losses[mode] = float(trainer.losses(batch)["align"])
    assert losses["cache"] == pytest.approx(losses["online"], rel=2e-3)


def test_a_nan_loss_stops_training_naming_the_term_and_the_last_checkpoint(twin_dataset, tmp_path):
    from sf_policy.train.loop import Trainer, TrainingDiverged
    from sf_policy.train.targets import build_cache

    cfg = tiny(twin_dataset, tmp_path, "optim.steps=5", "log.eval_every=0", "log.save_every=2")
    build_cache(twin_dataset, cfg.teacher, progress=False)
    trainer = Trainer(cfg)
    lookup, calls = trainer.targets, []

    def poisoned(batch):
        calls.append(1)
        targets, valid = lookup(batch)
        return (targets * float("nan") if len(calls) >= 3 else targets), valid

    trainer.targets = poisoned
    with pytest.raises(TrainingDiverged, match=r"step 2: the align loss is nan.*step_000002"):
        trainer.train(progress=False)
    saved = tmp_path / "tiny" / "checkpoints"
    assert (saved / "latest").read_text().strip() == "step_000002"
    assert not list(saved.glob("*.tmp"))


def test_ema_accumulation_and_lora_export_a_merged_ema_policy(twin_dataset, tmp_path):
    from safetensors.torch import load_file

    from sf_policy.train.checkpoint import load_policy
    from sf_policy.train.loop import Trainer
    from sf_policy.train.targets import build_cache

    cfg = tiny(twin_dataset, tmp_path, "optim.steps=3", "optim.grad_accum=2", "optim.ema_decay=0.5",
               "log.eval_every=0", "log.save_every=0", "policy.lora={rank: 4, alpha: 8}")
    build_cache(twin_dataset, cfg.teacher, progress=False)
    trainer = Trainer(cfg)
    trainable = {n for n, p in trainer.policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "embed_action_time" in n or "action_out_proj" in n for n in trainable)
    final = trainer.train(progress=False)

    ema = load_file(final / "train_state" / "ema.safetensors")
    live = dict(trainer.policy.named_parameters())
    head = "model.base_model.model.action_out_proj.modules_to_save.default.weight"  # peft trains a copy
    assert set(ema) == trainable and not torch.equal(ema[head], live[head].detach().cpu())
    exported = load_policy(final)  # LoRA merged, EMA weights in
    assert not any("lora_" in n for n, _ in exported.named_parameters())
    torch.testing.assert_close(exported.pi0.action_out_proj.weight, ema[head])


def test_sim_eval_refuses_training_scenes_unless_told_and_then_says_seen(twin_dataset, tmp_path):
    from sf_policy.eval.sim import SeenScenesError, evaluate_checkpoints
    from sf_policy.train.checkpoint import trained_scenes
    from sf_policy.train.loop import train

    cfg = tiny(twin_dataset, tmp_path, "optim.steps=2", "align.alpha=0", "log.eval_every=0", "data.heldout_episodes=1")
    final = train(cfg, progress=False)
    trained = trained_scenes(final)
    assert len(trained) == 2 and json.loads((final / "dataset.json").read_text())["train_sim_seeds"] == sorted(trained)
    seen = min(trained)
    quick = {"width": 32, "height": 32, "max_ticks": 3, "expert": False, "progress": False, "plots": 0}
    with pytest.raises(SeenScenesError, match=rf"trained on 1 of the 1 evaluation scenes \(seeds {seen}\).*--seen-scenes"):
        evaluate_checkpoints([final], "grasp_vegetable", 1, seen, out=tmp_path / "eval", **quick)
    (result,) = evaluate_checkpoints([final], "grasp_vegetable", 1, seen, out=tmp_path / "eval", seen_scenes=True,
                                     **quick)
    assert result.seen_seeds == [seen]
    report = (tmp_path / "eval" / "results.md").read_text()
    assert "**Seen scenes**" in report and "(seen scenes: 1/1)" in report
    (unseen,) = evaluate_checkpoints([final], "grasp_vegetable", 1, 100, out=tmp_path / "eval2", **quick)
    assert unseen.seen_seeds == []
    cli = subprocess.run([str(Path(sys.executable).parent / "sf"), "eval", "sim", "-c", str(final), "--task",
                          "grasp_vegetable", "--episodes", "1", "--seed", str(seen), "--no-expert",
                          "--out", str(tmp_path / "eval3")], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 2 and "--seen-scenes" in cli.stdout + cli.stderr


def test_state_dropout_blanks_the_state_input_of_some_samples_only_in_training(twin_dataset, tmp_path):
    from sf_policy.train.loop import Trainer

    trainer = Trainer(tiny(twin_dataset, tmp_path, "optim.steps=1", "align.alpha=0", "log.eval_every=0",
                           "data.state_dropout=0.5", "data.workers=0"))
    batch = next(iter(trainer.loader))
    state = torch.randn(64, batch["state"].shape[1])
    dropped = trainer._drop_state({**batch, "state": state}, torch.rand(64))["state"]
    blank = (dropped == 0).all(dim=1)
    assert 10 < int(blank.sum()) < 54  # about half, and whole samples: kept rows are untouched
    torch.testing.assert_close(dropped[~blank], state[~blank])
    with pytest.raises(ConfigError, match=r"data.state_dropout must be in \[0, 1\)"):
        tiny(twin_dataset, tmp_path, "data.state_dropout=1.0")


def test_state_noise_perturbs_only_the_real_state_dimensions(twin_dataset, tmp_path):
    from sf_policy.embodiment import STATE_DIM
    from sf_policy.train.loop import Trainer

    trainer = Trainer(tiny(twin_dataset, tmp_path, "optim.steps=1", "align.alpha=0", "log.eval_every=0",
                           "data.state_noise=0.2", "data.workers=0"))
    state = torch.zeros(256, 32)
    noisy = trainer._noisy_state({"state": state}, torch.randn(256, STATE_DIM))["state"]
    assert noisy.shape == state.shape and torch.count_nonzero(noisy[:, STATE_DIM:]) == 0
    assert abs(float(noisy[:, :STATE_DIM].std()) - 0.2) < 0.02
    with pytest.raises(ConfigError, match="data.state_noise must be >= 0"):
        tiny(twin_dataset, tmp_path, "data.state_noise=-1")


def test_the_small_recipe_tokenizer_knows_the_task_words(twin_dataset, tmp_path):
    from sf_policy.data.reader import DatasetReader
    from sf_policy.train.loop import Trainer

    cfg = load_config("small", [f"data.root={twin_dataset}", f"output_dir={tmp_path}", "optim.steps=1",
                                "align.alpha=0", "data.frames=video", "data.workers=0"])
    trainer = Trainer(cfg)
    tokenizer = trainer.policy.processor.tokenizer
    with DatasetReader(twin_dataset) as reader:
        prompt = reader.episodes[0].task
    vegetable = prompt.split()[3]  # "pick up the <vegetable> with the right gripper"
    assert f"Ġ{vegetable}" in tokenizer.tokenize(prompt)  # one token, not five pieces
    assert trainer.policy.processor.config.image_size == 112  # the small size's cameras


def test_scene_reading_probe_measures_a_policy_at_the_episodes_first_frame(twin_dataset, tmp_path):
    from sf_policy.data.reader import DatasetReader
    from sf_policy.eval.scene_reading import scene_reading
    from sf_policy.model.actions import policy_stats
    from sf_policy.model.policy import Policy, PolicyConfig
    from sf_policy.model.tokenizer import tiny_tokenizer

    tiny_tokenizer(tmp_path / "tok")
    with DatasetReader(twin_dataset) as reader:
        stats = policy_stats(reader, "delta", chunk_size=50)
    torch.manual_seed(0)
    policy = Policy.build(PolicyConfig(tiny=True, tokenizer=str(tmp_path / "tok")), stats=stats).eval()
    reading = scene_reading(policy, twin_dataset, frame=0, num_steps=2)
    assert reading.episodes == 3 and reading.joints and all(name.startswith("right_") for name in reading.joints)
    for values in (reading.spread, reading.error, reading.blind_error, reading.swap):
        assert len(values) == len(reading.joints) and np.isfinite(values).all() and min(values) >= 0
    assert max(reading.spread) > 0  # grasp_vegetable's scenes differ: its right arm's chunk end does too
    summary = reading.summary()
    assert "scene-blind" in summary and f"ratio {reading.error_ratio:.2f}" in summary
    assert set(reading.to_dict()) >= {"error_ratio", "swap_ratio", "correlation"}
    with pytest.raises(ValueError, match="at least 2 episodes"):
        scene_reading(policy, twin_dataset, episodes=[0])
    with pytest.raises(ValueError, match="have no frame 100000"):
        scene_reading(policy, twin_dataset, frame=100_000)
    from typer.testing import CliRunner

    from sf_policy.cli.main import app

    result = CliRunner().invoke(app, ["eval", "scene-reading", "-c", str(tmp_path), "--dataset",
                                      str(tmp_path / "missing")])
    assert result.exit_code == 2 and "Invalid value for --dataset" in result.output


def test_gradient_checkpointing_trains_on_the_same_losses(twin_dataset, tmp_path):
    """optim.gradient_checkpointing (every SigLIP, VLM and expert layer: model/checkpointing.py)
    with SF on: the same losses, step after step, as without it."""
    from sf_policy.model.checkpointing import checkpointable_layers, is_checkpointed
    from sf_policy.train.loop import Trainer
    from sf_policy.train.targets import build_cache

    runs = {}
    for on in ("false", "true"):
        cfg = tiny(twin_dataset, tmp_path / on, "optim.steps=3", "log.eval_every=0",
                   f"teacher.cache_root={tmp_path / 'cache'}", f"optim.gradient_checkpointing={on}")
        build_cache(twin_dataset, cfg.teacher, progress=False)
        trainer = Trainer(cfg, progress=False)
        layers = checkpointable_layers(trainer.policy.model).values()
        assert all(is_checkpointed(layer) == (on == "true") for layer in layers)
        trainer.train(progress=False)
        runs[on] = [r for r in metrics(tmp_path / on / "tiny") if "loss" in r]
    assert [r["step"] for r in runs["false"]] == [r["step"] for r in runs["true"]] == [1, 2, 3]
    assert runs["true"][0]["align"] > 0
    for plain, checkpointed in zip(runs["false"], runs["true"]):
        for key in ("loss", "action", "align"):
            assert checkpointed[key] == pytest.approx(plain[key], rel=1e-6), (plain["step"], key)


@pytest.mark.slow  # 8 s (a CLI run): in the slow tier to keep the default one under 5 minutes
def test_training_refuses_a_damaged_dataset_naming_the_file_before_any_cache_is_built(twin_dataset, tmp_path):
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from sf_policy.data.features import STATE, DatasetError
    from sf_policy.train.loop import Trainer

    damaged = tmp_path / "damaged"
    shutil.copytree(twin_dataset, damaged)
    data = sorted((damaged / "data").rglob("*.parquet"))[0]
    table = pq.read_table(data)
    i = table.schema.get_field_index(STATE)
    states = np.stack(table.column(STATE).to_numpy(zero_copy_only=False)).astype(np.float32)
    states[3, 1] = np.nan
    pq.write_table(table.set_column(i, table.schema.field(i), pa.array(list(states), type=table.schema.field(i).type)),
                   data)
    rel = str(data.relative_to(damaged))
    with pytest.raises(DatasetError, match=rf"(?s)not a valid dataset .*{rel} \[observation.state\]: episode 0: NaN"):
        Trainer(tiny(damaged, tmp_path, "optim.steps=1"))
    cli = subprocess.run([str(Path(sys.executable).parent / "sf"), "train", "run", "tiny", f"data.root={damaged}",
                          f"output_dir={tmp_path / 'cli'}", f"teacher.cache_root={tmp_path / 'cache'}"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "300"})
    assert cli.returncode == 2 and f"{rel} [observation.state]" in cli.stdout and "Traceback" not in cli.stderr
    assert not (tmp_path / "cache").exists()  # refused before the teacher ran on it
