"""PolicyProcessor: robot samples → π0 batch tensors (layout, letterbox, masks, prompt, errors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sf_policy.data.features import ACTION, STATE
from sf_policy.data.stats import vector_stats
from sf_policy.embodiment import GRIPPER_INDICES
from sf_policy.model.actions import action_stats
from sf_policy.model.normalize import Normalizer
from sf_policy.model.processor import PolicyProcessor, ProcessorConfig
from sf_policy.model.tokenizer import IMAGE_TOKEN, tiny_tokenizer

P = 48  # prompt tokens
V = 768  # visual tokens: 3 cameras x 256


def _stats(representation: str = "delta") -> dict:
    rng = np.random.default_rng(0)
    states = rng.normal(size=(300, 14)) * 0.4
    states[:, GRIPPER_INDICES] = rng.uniform(0.0, 0.07, size=(300, 2))
    actions = states + rng.normal(size=(300, 14)) * 0.05
    return {STATE: vector_stats(states), ACTION: action_stats(actions, states, representation, 50)}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def _processor(tokenizer, representation: str = "delta", **config) -> PolicyProcessor:
    normalizer = Normalizer(_stats(representation))
    image_token = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    return PolicyProcessor(tokenizer, normalizer, image_token, ProcessorConfig(representation=representation, **config))


@pytest.fixture(scope="module")
def processor(tokenizer):
    return _processor(tokenizer)


def _sample(rng, height=480, width=640, steps=50, missing=(), prompt="pick up the red cube") -> dict:
    images = {role: None if role in missing else rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
              for role in ("cam_high", "cam_left_wrist", "cam_right_wrist")}
    state = rng.normal(size=14) * 0.3
    state[list(GRIPPER_INDICES)] = 0.03
    actions = state + rng.normal(size=(steps, 14)) * 0.05
    return {"images": images, "state": state, "prompt": prompt, "actions": actions}


def test_batch_shapes_and_dtypes(processor):
    rng = np.random.default_rng(1)
    batch = processor([_sample(rng), _sample(rng, steps=20)])
    expected = {
        "input_ids": ((2, V + P), torch.long), "attention_mask": ((2, V + P), torch.long),
        "pixel_values": ((2, 3, 3, 224, 224), torch.float32), "pixel_attention_mask": ((2, 3), torch.bool),
        "state": ((2, 32), torch.float32), "raw_state": ((2, 14), torch.float32),
        "actions": ((2, 50, 32), torch.float32), "action_pad": ((2, 50), torch.bool),
        "visual_valid": ((2, V), torch.bool), "camera_present": ((2, 3), torch.bool),
    }
    assert set(batch) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert tuple(batch[key].shape) == shape and batch[key].dtype == dtype, key
    assert batch["pixel_attention_mask"].all()
    assert batch["pixel_values"].min() >= -1.0 and batch["pixel_values"].max() <= 1.0
    assert (batch["state"][:, 14:] == 0).all() and (batch["actions"][..., 14:] == 0).all()
    assert (batch["input_ids"][:, :V] == processor.image_token_id).all()


def test_without_actions_there_are_no_labels(processor):
    sample = _sample(np.random.default_rng(2))
    del sample["actions"]
    batch = processor([sample])
    assert "actions" not in batch and "action_pad" not in batch


def test_letterbox_of_640x480_is_centred_with_black_rows(processor):
    white = np.full((480, 640, 3), 255, dtype=np.uint8)
    canvas, box = processor.letterbox(white)
    # 640x480 -> 224x168 content at rows 28..195, black (-1) above and below.
    assert (canvas[:, :28] == -1).all() and (canvas[:, 196:] == -1).all()
    assert torch.allclose(canvas[:, 28:196], torch.ones(3, 168, 224))
    assert (box.row0, box.row1, box.col0, box.col1) == (2, 14, 0, 16)
    batch = processor([{"images": {"cam_high": white, "cam_left_wrist": white, "cam_right_wrist": white},
                        "state": np.zeros(14), "prompt": "x"}])
    grid = batch["visual_valid"][0, :256].view(16, 16)
    assert grid[2:14].all() and not grid[:2].any() and not grid[14:].any()


def test_letterbox_of_a_portrait_image_pads_columns(processor):
    canvas, box = processor.letterbox(np.full((640, 480, 3), 255, dtype=np.uint8))
    assert (canvas[:, :, :28] == -1).all() and (canvas[:, :, 196:] == -1).all()
    assert (box.row0, box.row1, box.col0, box.col1) == (0, 16, 2, 14)


def test_a_224_square_image_is_only_rescaled_to_minus_one_one(processor):
    image = np.random.default_rng(3).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    canvas, box = processor.letterbox(image)
    expected = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0 * 2.0 - 1.0
    assert torch.allclose(canvas, expected, atol=1e-6)
    assert (box.row0, box.row1, box.col0, box.col1) == (0, 16, 0, 16)


def test_downscaling_is_antialiased(processor):
    # A one-pixel checkerboard averages to grey when antialiased; plain bilinear would alias it.
    board = ((np.indices((480, 640)).sum(0) % 2) * 255).astype(np.uint8)  # plain bilinear: max |x| 0.73
    canvas, _ = processor.letterbox(np.repeat(board[..., None], 3, axis=2))
    assert canvas[:, 28:196].abs().max() < 0.05


def test_missing_camera_is_black_masked_and_not_valid(processor):
    batch = processor([_sample(np.random.default_rng(4), missing=("cam_left_wrist",))])
    slot = slice(256, 512)
    assert (batch["attention_mask"][0, slot] == 0).all()
    assert (batch["attention_mask"][0, :256] == 1).all() and (batch["attention_mask"][0, 512:V] == 1).all()
    assert not batch["visual_valid"][0, slot].any()
    assert (batch["pixel_values"][0, 1] == -1).all()
    assert batch["pixel_attention_mask"].all()  # all slots stay: embed_prefix maps cameras by rank
    assert batch["camera_present"][0].tolist() == [True, False, True]


def test_prompt_follows_the_images_as_bos_prompt_newline(processor, tokenizer):
    batch = processor([_sample(np.random.default_rng(5), prompt="  pick_up the   red cube ")])
    ids, mask = batch["input_ids"][0, V:], batch["attention_mask"][0, V:]
    expected = [tokenizer.bos_token_id] + tokenizer.encode("pick up the red cube\n", add_special_tokens=False)
    n = len(expected)
    assert ids[:n].tolist() == expected
    assert mask[:n].all() and not mask[n:].any()
    assert (ids[n:] == tokenizer.pad_token_id).all()


def test_long_prompts_are_cut_with_a_warning_and_keep_the_newline(tokenizer):
    processor = _processor(tokenizer, max_prompt_tokens=8)
    with pytest.warns(UserWarning, match="max_prompt_tokens=8"):
        ids, mask = processor.tokenize("stack the green block on top of the blue block please")
    newline = tokenizer.encode("\n", add_special_tokens=False)
    assert mask.all() and len(ids) == 8
    assert ids[0] == tokenizer.bos_token_id and ids[-len(newline):].tolist() == newline


def test_short_chunks_repeat_the_last_action_and_are_marked(processor):
    sample = _sample(np.random.default_rng(6), steps=20)
    batch = processor([sample])
    pad = batch["action_pad"][0]
    assert not pad[:20].any() and pad[20:].all()
    assert (batch["actions"][0, 20:] == batch["actions"][0, 19]).all()
    # postprocess inverts the processor: back to absolute joint targets
    recovered = processor.postprocess(batch["actions"], batch["raw_state"])[0, :20]
    np.testing.assert_allclose(recovered.numpy(), sample["actions"], atol=1e-5)


@pytest.mark.parametrize("representation", ["absolute", "delta"])
def test_actions_are_normalised_in_the_representation(tokenizer, representation):
    processor = _processor(tokenizer, representation)
    sample = _sample(np.random.default_rng(7))
    batch = processor([sample])
    model = processor.normalizer.unnormalize(batch["actions"][0, :, :14].double().numpy(), ACTION)
    expected = sample["actions"] - (sample["state"] * (representation == "delta"))
    expected[:, list(GRIPPER_INDICES)] = sample["actions"][:, list(GRIPPER_INDICES)]
    np.testing.assert_allclose(model, expected, atol=1e-5)


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s["images"].__setitem__("cam_high", np.zeros((48, 64, 3), np.float32)),
     r"images\['cam_high'\]: expected HxWx3 uint8, got float32"),
    (lambda s: s["images"].__setitem__("cam_left_wrist", np.zeros((48, 64), np.uint8)),
     r"images\['cam_left_wrist'\]: expected HxWx3 uint8"),
    (lambda s: s["images"].__setitem__("cam_top", None), r"images\['cam_top'\]: unknown camera role"),
    (lambda s: s.__setitem__("state", np.zeros(7)), r"sample 0: state: expected shape \(14,\)"),
    (lambda s: s.__setitem__("state", np.full(14, np.nan)), r"state: contains NaN"),
    (lambda s: s.__setitem__("actions", np.zeros((51, 14))), r"actions: expected \[T, 14\] with 1 <= T <= 50"),
    (lambda s: s.__setitem__("prompt", 3), r"prompt must be a str"),
    (lambda s: s.pop("state"), r"missing field 'state'"),
    (lambda s: s.__setitem__("action", None), r"unknown field\(s\) action"),
])
def test_errors_name_the_field(processor, mutate, message):
    sample = _sample(np.random.default_rng(8), height=48, width=64)
    mutate(sample)
    with pytest.raises((ValueError, TypeError), match=message):
        processor([sample])


def test_either_all_or_no_samples_have_actions(processor):
    rng = np.random.default_rng(9)
    unlabeled = _sample(rng)
    del unlabeled["actions"]
    with pytest.raises(ValueError, match="every sample or none"):
        processor([_sample(rng), unlabeled])


def test_processor_config_round_trips():
    config = ProcessorConfig(max_prompt_tokens=32, representation="absolute")
    assert ProcessorConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="representation"):
        ProcessorConfig(representation="velocity")


def test_without_state_input_the_model_state_is_blank_and_actions_stay_relative(tokenizer):
    rng = np.random.default_rng(3)
    sample = _sample(rng)
    blind, seeing = _processor(tokenizer, state_input=False)([sample]), _processor(tokenizer)([sample])
    assert torch.count_nonzero(blind["state"]) == 0 and torch.count_nonzero(seeing["state"]) > 0
    assert torch.equal(blind["raw_state"], seeing["raw_state"])
    assert torch.equal(blind["actions"], seeing["actions"])  # delta actions still use the true state
    config = ProcessorConfig(state_input=False)
    assert ProcessorConfig.from_dict(config.to_dict()) == config
