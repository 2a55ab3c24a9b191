"""Normalisation, action representations and the π0 policy (a tiny real PI0ForConditionalGeneration)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from sf_policy.data.features import ACTION, STATE
from sf_policy.data.stats import vector_stats
from sf_policy.embodiment import GRIPPER_INDICES
from sf_policy.model.actions import action_stats, delta_mask, from_model, policy_stats, to_model
from sf_policy.model.normalize import Normalizer
from sf_policy.model.policy import LoraSettings, Policy, PolicyConfig, build_pi0, sincos_positions, unwrap
from sf_policy.model.tokenizer import tiny_tokenizer

GRIPPERS = list(GRIPPER_INDICES)
JOINTS = [i for i in range(14) if i not in GRIPPER_INDICES]


def _arrays(n: int = 400, seed: int = 0, gripper_open: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    states = np.cumsum(rng.normal(size=(n, 14)) * 0.02, axis=0)
    states[:, GRIPPERS] = rng.uniform(0.0, 0.07, size=(n, 2)) if gripper_open else 0.0
    actions = np.roll(states, -3, axis=0)
    return actions, states


def _stats(representation: str = "delta", gripper_open: bool = True) -> dict:
    actions, states = _arrays(gripper_open=gripper_open)
    return {STATE: vector_stats(states), ACTION: action_stats(actions, states, representation, 50)}


# -- normalisation -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["zscore", "quantile"])
def test_normalizer_round_trip_numpy_and_torch(mode):
    normalizer = Normalizer(_stats(), mode=mode)
    x = _arrays(50, seed=1)[1]
    y = normalizer.normalize(x, STATE)
    np.testing.assert_allclose(normalizer.unnormalize(y, STATE), x, rtol=0, atol=1e-12)
    yt = normalizer.normalize(torch.from_numpy(x).float(), STATE)
    assert yt.dtype == torch.float32
    np.testing.assert_allclose(yt.numpy(), y, atol=1e-5)
    np.testing.assert_allclose(normalizer.unnormalize(yt, STATE).numpy(), x, atol=1e-5)


def test_zscore_standardises_the_joints():
    actions, states = _arrays()
    normalizer = Normalizer({STATE: vector_stats(states), ACTION: vector_stats(actions)}, mode="zscore")
    y = normalizer.normalize(states, STATE)
    np.testing.assert_allclose(y[:, JOINTS].mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(y[:, JOINTS].std(0), 1, atol=1e-4)


def test_quantile_maps_q01_q99_to_minus_one_one_without_clipping():
    stats = _stats()
    normalizer = Normalizer(stats, mode="quantile")
    q01, q99 = stats[STATE]["q01"], stats[STATE]["q99"]
    np.testing.assert_allclose(normalizer.normalize(q01, STATE)[JOINTS], -1, atol=1e-4)
    np.testing.assert_allclose(normalizer.normalize(q99, STATE)[JOINTS], 1, atol=1e-4)
    beyond = q99 + (q99 - q01)
    assert (normalizer.normalize(beyond, STATE)[JOINTS] > 2.9).all()  # not clipped


def test_grippers_use_their_physical_range_even_when_the_data_never_opens_them():
    stats = _stats(gripper_open=False)  # gripper std is exactly 0
    assert (stats[STATE]["std"][GRIPPERS] == 0).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no degenerate-dimension warning: grippers are not from stats
        normalizer = Normalizer(stats, mode="zscore")
    x = np.zeros((3, 14))
    x[:, GRIPPERS] = np.array([[0.0], [0.035], [0.07]])
    for key in (STATE, ACTION):
        np.testing.assert_allclose(normalizer.normalize(x, key)[:, GRIPPERS], [[-1, -1], [0, 0], [1, 1]], atol=1e-12)


def test_gripper_stats_mode_warns_and_stays_finite_on_zero_std():
    stats = _stats(gripper_open=False)
    with pytest.warns(UserWarning, match="left_gripper"):
        normalizer = Normalizer(stats, gripper_mode="stats")
    x = np.zeros(14)
    x[GRIPPERS] = 0.07
    y = normalizer.normalize(x, STATE)
    assert np.all(np.isfinite(y)) and np.allclose(y[GRIPPERS], 7.0)  # centred on 0, degenerate scale 0.01


def test_constant_joint_warns_and_gets_a_small_finite_scale():
    stats = _stats()
    stats[STATE] = dict(stats[STATE], std=np.where(np.arange(14) == 2, 0.0, stats[STATE]["std"]))
    with pytest.warns(UserWarning, match=r"2 \(left_joint3\)"):
        normalizer = Normalizer(stats)
    assert normalizer.scale[STATE][2] == 0.01
    # an idle arm stays put when the model's output is off by 1 in normalised space...
    y = normalizer.normalize(np.zeros((1, 14)), STATE)
    y[0, 2] += 1.0
    assert normalizer.unnormalize(y, STATE)[0, 2] == pytest.approx(0.01)
    # ...and a deployed state 0.1 rad off its demonstrations is a finite input
    x = stats[STATE]["mean"][None].copy()
    x[0, 2] += 0.1
    assert abs(normalizer.normalize(x, STATE)[0, 2]) == pytest.approx(10.0)
    # a normaliser saved before the field existed loads with the scale it was trained with
    old = normalizer.to_dict()
    old.pop("degenerate_scale")
    assert Normalizer.from_dict(old).scale[STATE][2] == 1.0


def test_normalizer_json_round_trip_is_exact():
    normalizer = Normalizer(_stats(), mode="quantile", eps=1e-5)
    again = Normalizer.from_dict(json.loads(json.dumps(normalizer.to_dict())))
    x = _arrays(20, seed=3)[0]
    for key in (STATE, ACTION):
        assert np.array_equal(again.normalize(x, key), normalizer.normalize(x, key))
    assert (again.mode, again.gripper_mode, again.eps) == ("quantile", "range", 1e-5)


def test_normalizer_errors():
    with pytest.raises(KeyError, match="'action'"):
        Normalizer({STATE: _stats()[STATE]})
    with pytest.raises(ValueError, match="mode"):
        Normalizer(_stats(), mode="minmax")
    with pytest.raises(ValueError, match="last dimension of 14"):
        Normalizer(_stats()).normalize(np.zeros(7), STATE)


# -- action representations --------------------------------------------------------------------


def test_delta_is_relative_to_the_current_state_for_arm_joints_only():
    actions, states = _arrays()
    chunk, state = actions[:50], states[0]
    delta = to_model(chunk, state, "delta")
    np.testing.assert_allclose(delta[:, JOINTS], chunk[:, JOINTS] - state[JOINTS])
    np.testing.assert_array_equal(delta[:, GRIPPERS], chunk[:, GRIPPERS])
    np.testing.assert_allclose(from_model(delta, state, "delta"), chunk, atol=1e-12)
    assert to_model(chunk, state, "absolute") is chunk
    assert delta_mask().tolist() == [i not in GRIPPERS for i in range(14)]


def test_representations_round_trip_on_batched_tensors():
    actions = torch.randn(4, 50, 14, dtype=torch.float64)
    state = torch.randn(4, 14, dtype=torch.float64)
    for representation in ("absolute", "delta"):
        out = from_model(to_model(actions, state, representation), state, representation)
        assert torch.allclose(out, actions)
    with pytest.raises(ValueError, match="representation"):
        to_model(actions, state, "velocity")


def test_action_stats_are_over_chunk_relative_deltas_within_episodes():
    actions, states = _arrays(30)
    stats = action_stats(actions, states, "delta", chunk_size=4, episodes=[(0, 10), (10, 30)])
    chunks = []
    for start, stop in ((0, 10), (10, 30)):
        for t in range(start, stop):
            idx = [min(t + k, stop - 1) for k in range(4)]  # padded with the episode's last action
            chunks.append(to_model(actions[idx], states[t], "delta"))
    expected = np.concatenate(chunks)
    np.testing.assert_allclose(stats["mean"], expected.mean(0), atol=1e-12)
    np.testing.assert_allclose(stats["std"], expected.std(0), atol=1e-12)
    np.testing.assert_allclose(stats["q99"], np.quantile(expected, 0.99, axis=0), atol=1e-12)
    assert stats["count"][0] == 30 * 4


def test_policy_stats_from_a_real_dataset(tmp_path):
    from test_dataset_support import FPS, record

    from sf_policy.data.reader import DatasetReader
    from sf_policy.data.writer import DatasetWriter

    cams = {"cam_high": (24, 32)}
    with DatasetWriter.create(tmp_path / "ds", fps=FPS, cameras=cams) as writer:
        for e, n in enumerate((12, 7)):
            episode = writer.begin_episode(f"task {e}")
            record(episode, n, cams, episode_seed=e)
            episode.save()
    reader = DatasetReader(tmp_path / "ds")
    stats = policy_stats(reader, "delta", chunk_size=5)
    expected = action_stats(reader.column(ACTION), reader.column(STATE), "delta", 5, [(0, 12), (12, 19)])
    np.testing.assert_allclose(stats[ACTION]["mean"], expected["mean"])
    np.testing.assert_allclose(stats[STATE]["mean"], reader.column(STATE).mean(0), rtol=1e-6)
    Normalizer(stats)  # usable as is


# -- the policy ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer")
    tiny_tokenizer(path)
    return path


def _policy(tokenizer_dir, seed: int = 0, **config) -> Policy:
    torch.manual_seed(seed)
    config = PolicyConfig(tiny=True, tokenizer=str(tokenizer_dir), **config)
    return Policy.build(config, stats=_stats(config.representation))


@pytest.fixture(scope="module")
def policy(tokenizer_dir):
    return _policy(tokenizer_dir)


def _samples(n: int = 2, steps=(50, 30), seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    actions, states = _arrays(200, seed=seed)
    out = []
    for i in range(n):
        images = {"cam_high": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), "cam_left_wrist": None,
                  "cam_right_wrist": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)}
        t = 20 * i
        out.append({"images": images, "state": states[t], "prompt": "lift the pot",
                    "actions": actions[t:t + steps[i % len(steps)]]})
    return out


def _fixed(batch_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, 50, 32, generator=g), torch.rand(batch_size, generator=g) * 0.9 + 0.05


def test_tiny_model_builds_from_the_tokenizer(policy, tokenizer_dir):
    pi0 = policy.pi0
    assert type(pi0).__name__ == "PI0ForConditionalGeneration"
    assert pi0.config.vlm_config.text_config.vocab_size == len(policy.processor.tokenizer)
    assert pi0.config.vlm_config.image_token_id == policy.processor.image_token_id
    assert sum(p.numel() for p in pi0.parameters()) < 1_000_000


def test_scratch_vision_starts_with_2d_positions_that_tell_patches_apart(policy, tokenizer_dir):
    embeddings = policy.pi0.model.vlm.vision_tower.embeddings
    grid = embeddings.image_size // embeddings.patch_size
    codes = embeddings.position_embedding.weight.detach()
    assert torch.equal(codes, sincos_positions(grid, embeddings.embed_dim))
    # neighbours are closer than far patches, along rows and columns alike
    at = lambda r, c: codes[r * grid + c]  # noqa: E731
    assert torch.dist(at(0, 0), at(0, 1)) < torch.dist(at(0, 0), at(0, grid - 1))
    assert torch.dist(at(0, 0), at(1, 0)) < torch.dist(at(0, 0), at(grid - 1, 0))
    assert len({tuple(row.tolist()) for row in codes}) == grid * grid
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_positions(4, 30)
    default = _policy(tokenizer_dir, patch_positions="random").pi0.model.vlm.vision_tower.embeddings
    assert not torch.equal(default.position_embedding.weight.detach(), codes)
    with pytest.raises(ValueError, match="patch_positions must be sincos or random"):
        PolicyConfig(tiny=True, patch_positions="learned")


def test_checkpoint_round_trip_from_a_local_directory(policy, tmp_path, tokenizer_dir):
    policy.pi0.save_pretrained(tmp_path / "ckpt")
    loaded = build_pi0(PolicyConfig(checkpoint=str(tmp_path / "ckpt")))
    expected = policy.pi0.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_missing_checkpoint_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        build_pi0(PolicyConfig(checkpoint=str(tmp_path / "nowhere")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        build_pi0(PolicyConfig(checkpoint=str(tmp_path / "empty")))
    with pytest.raises(FileNotFoundError, match="tokenizer directory"):
        Policy.build(PolicyConfig(tiny=True, tokenizer=str(tmp_path / "nowhere")), stats=_stats())


def test_loss_is_finite_and_backpropagates(policy):
    batch = policy.processor(_samples())
    policy.zero_grad()
    loss, per_sample = policy.loss(batch, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and per_sample.shape == (2,) and torch.isfinite(per_sample).all()
    loss.backward()
    pi0 = policy.pi0
    for param in (pi0.action_out_proj.weight, pi0.embed_action_time.state_proj.weight,
                  pi0.model.vlm.language_model.layers[0].self_attn.k_proj.weight,
                  pi0.model.vlm.vision_tower.embeddings.patch_embedding.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0
    policy.zero_grad()


def test_loss_is_the_velocity_mse_over_real_steps_and_dims(policy):
    batch = policy.processor(_samples(steps=(30, 50)))
    noise, timestep = _fixed(2)
    with torch.no_grad():
        loss, per_sample = policy.loss(batch, noise, timestep)
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask", "state")}
        velocity = policy.pi0(**inputs, noise=noise, timestep=timestep, actions=batch["actions"]).logits
    error = (velocity - (noise - batch["actions"]))[..., :14].pow(2).mean(-1)  # dims 14..31 are padding
    expected = torch.stack([error[0, :30].mean(), error[1].mean()])  # steps past the episode end are out
    assert torch.allclose(per_sample, expected, atol=1e-6) and torch.allclose(loss, expected.mean(), atol=1e-6)
    # Flagging more steps as padding changes what counts, nothing else.
    flagged = dict(batch, action_pad=batch["action_pad"].clone())
    flagged["action_pad"][1, 10:] = True
    with torch.no_grad():
        assert torch.allclose(policy.loss(flagged, noise, timestep)[1][1], error[1, :10].mean(), atol=1e-6)


def test_every_trainable_weight_gets_a_gradient(tokenizer_dir):
    policy = _policy(tokenizer_dir)
    frozen = {n for n, p in policy.named_parameters() if not p.requires_grad}
    # The weights no loss reaches are frozen: the expert's token embedding, the last VLM layer's
    # query/output/MLP/post-norm and the VLM's final norm (the expert only reads keys and values).
    assert any("dit.embed_tokens" in n for n in frozen)
    assert any("language_model.layers.3.mlp" in n for n in frozen)
    assert not any("language_model.layers.3.self_attn.k_proj" in n for n in frozen)
    policy.loss(policy.processor(_samples()), *_fixed(2))[0].backward()
    assert [n for n, p in policy.named_parameters() if p.requires_grad and p.grad is None] == []


def test_sample_returns_absolute_joint_targets(policy):
    batch = policy.processor(_samples())
    noise = _fixed(2)[0]
    actions = policy.sample(batch, num_steps=3, noise=noise)
    assert actions.shape == (2, 50, 14) and actions.dtype == torch.float32 and torch.isfinite(actions).all()
    # The delta → absolute step uses the current state: shifting it moves the arm joints only.
    shifted = dict(batch, raw_state=batch["raw_state"] + 0.5)
    moved = policy.sample(shifted, num_steps=3, noise=noise) - actions
    assert torch.allclose(moved[..., JOINTS], torch.full_like(moved[..., JOINTS], 0.5), atol=1e-5)
    assert torch.allclose(moved[..., GRIPPERS], torch.zeros_like(moved[..., GRIPPERS]), atol=1e-6)
    # Same noise, same chunk; predict() is processor + sample.
    assert torch.allclose(policy.sample(batch, num_steps=3, noise=noise), actions)
    predicted = policy.predict(_samples(), num_steps=2, generator=torch.Generator().manual_seed(1))
    assert predicted.shape == (2, 50, 14) and np.isfinite(predicted).all()


def test_policy_save_and_load_round_trip(policy, tmp_path):
    policy.save_pretrained(tmp_path / "policy")
    loaded = Policy.from_pretrained(tmp_path / "policy")
    batch = policy.processor(_samples())
    noise = _fixed(2)[0]
    assert torch.equal(loaded.sample(batch, num_steps=2, noise=noise), policy.sample(batch, num_steps=2, noise=noise))
    assert loaded.processor.config == policy.processor.config
    assert loaded.config.state_input and loaded.processor.config.state_input
    assert loaded.processor.normalizer.to_dict() == policy.processor.normalizer.to_dict()


def test_lora_trains_only_adapters_and_action_heads(tokenizer_dir, tmp_path):
    policy = _policy(tokenizer_dir, lora=LoraSettings(rank=4, alpha=8))
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if ".lora_A." in n or ".lora_B." in n}
    heads = trainable - lora
    # 4 VLM + 4 expert layers x (q, k, v, o, gate, up, down) x (A, B), less the 5 unused
    # projections of the last VLM layer (q, o, gate, up, down: frozen, see freeze_unused)
    assert len(lora) == (8 * 7 - 5) * 2
    assert all(".model.vlm.language_model.layers." in n or ".model.dit.layers." in n for n in lora)
    assert heads and all(".modules_to_save." in n and ("embed_action_time" in n or "action_out_proj" in n)
                         for n in heads)
    assert not any("vision_tower" in n or "multi_modal_projector" in n for n in trainable)
    loss, _ = policy.loss(policy.processor(_samples()), *_fixed(2))
    loss.backward()
    assert all(p.grad is not None for n, p in policy.named_parameters() if n in trainable)
    # merged, the policy is a plain PI0 model again and saves like one
    policy.merge_lora()
    assert type(policy.model).__name__ == "PI0ForConditionalGeneration" and unwrap(policy.model) is policy.model
    policy.save_pretrained(tmp_path / "merged")
    assert (tmp_path / "merged" / "config.json").is_file()


def test_a_few_adamw_steps_overfit_one_batch(tokenizer_dir):
    policy = _policy(tokenizer_dir, seed=1)
    batch = policy.processor(_samples())
    noise, timestep = _fixed(2, seed=2)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(30):
        loss, _ = policy.loss(batch, noise, timestep)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.75 * losses[0], losses
