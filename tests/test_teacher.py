"""The VGGT teacher: official parameter layout, strict checkpoint loading, forward semantics, SF targets.

Everything runs on CPU in a few seconds: the full-size model is only built on the meta
device (names, shapes, counts), behaviour is checked on AggregatorConfig.tiny().
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sf_policy.align.grid import PatchBox, letterbox_geometry
from sf_policy.align.targets import sincos_2d, teacher_targets
from sf_policy.teacher import (
    Aggregator,
    AggregatorConfig,
    CheckpointMismatch,
    Teacher,
    load_aggregator,
    load_aggregator_state,
    official_state_dict,
    save_state_dict,
    teacher_input_size,
)
from sf_policy.teacher.vggt import apply_rope, rope_tables

TINY = AggregatorConfig.tiny()


# --------------------------------------------------------------------------- the official layout


def _official_block(prefix: str, dim: int, hidden: int, head_dim: int, qk_norm: bool) -> dict[str, tuple]:
    """One block as VGGT's vggt/layers/block.py + attention.py build it (Mlp fc1/fc2, LayerScale gamma)."""
    shapes = {
        "norm1.weight": (dim,), "norm1.bias": (dim,),
        "attn.qkv.weight": (3 * dim, dim), "attn.qkv.bias": (3 * dim,),
        "attn.proj.weight": (dim, dim), "attn.proj.bias": (dim,),
        "ls1.gamma": (dim,),
        "norm2.weight": (dim,), "norm2.bias": (dim,),
        "mlp.fc1.weight": (hidden, dim), "mlp.fc1.bias": (hidden,),
        "mlp.fc2.weight": (dim, hidden), "mlp.fc2.bias": (dim,),
        "ls2.gamma": (dim,),
    }  # fmt: skip
    if qk_norm:  # nn.LayerNorm(head_dim) for q and k
        shapes.update({f"attn.{n}_norm.{p}": (head_dim,) for n in "qk" for p in ("weight", "bias")})
    return {prefix + k: v for k, v in shapes.items()}


def official_aggregator_layout() -> dict[str, tuple]:
    """VGGT-1B's `aggregator.*` state dict (prefix stripped), written down from the official code.

    Sources: facebookresearch/vggt vggt/models/aggregator.py (camera_token [1,2,1,C],
    register_token [1,2,4,C], patch_embed = vit_large(img_size=518, patch_size=14,
    num_register_tokens=4, block_chunks=0, init_values=1.0), frame_blocks / global_blocks with
    qk_norm=True, init_values=0.01; _resnet_mean/_resnet_std registered persistent=False),
    vggt/layers/vision_transformer.py (cls_token, pos_embed [1, 1+37², C], register_tokens,
    mask_token [1, C], patch_embed.proj, blocks.N, norm; head = Identity), block.py, attention.py.
    """
    dim, hidden, depth = 1024, 4096, 24
    layout = {
        "camera_token": (1, 2, 1, dim),
        "register_token": (1, 2, 4, dim),
        "patch_embed.cls_token": (1, 1, dim),
        "patch_embed.pos_embed": (1, 1 + 37 * 37, dim),
        "patch_embed.register_tokens": (1, 4, dim),
        "patch_embed.mask_token": (1, dim),
        "patch_embed.patch_embed.proj.weight": (dim, 3, 14, 14),
        "patch_embed.patch_embed.proj.bias": (dim,),
        "patch_embed.norm.weight": (dim,),
        "patch_embed.norm.bias": (dim,),
    }
    for i in range(depth):
        layout.update(_official_block(f"patch_embed.blocks.{i}.", dim, hidden, 64, qk_norm=False))
        layout.update(_official_block(f"frame_blocks.{i}.", dim, hidden, 64, qk_norm=True))
        layout.update(_official_block(f"global_blocks.{i}.", dim, hidden, 64, qk_norm=True))
    return layout


def test_full_size_parameters_have_the_official_names_and_shapes():
    with torch.device("meta"):
        model = Aggregator()
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = official_aggregator_layout()
    assert state.keys() == official.keys(), (
        sorted(state.keys() - official.keys()),
        sorted(official.keys() - state.keys()),
    )
    assert state == official
    assert len(state) == 1210

    def count(prefix: str = "") -> int:
        return sum(v.numel() for k, v in model.state_dict().items() if k.startswith(prefix))

    # FACTS.md: aggregator ≈ 909 M = patch_embed 304 M + frame_blocks 302 M + global_blocks 302 M.
    assert count() == 909_112_320
    assert count("patch_embed.") == 304_372_736
    assert count("frame_blocks.") == count("global_blocks.") == 302_364_672
    # The ImageNet constants are buffers but not checkpoint entries (persistent=False upstream).
    assert {n for n, _ in model.named_buffers()} == {"_resnet_mean", "_resnet_std"}
    assert model.config.patch_start_idx == 5 and model.config.out_dim == 2048


# --------------------------------------------------------------------------- checkpoints


def _tiny_model(seed: int = 0, visible: bool = True) -> Aggregator:
    """A random tiny aggregator; `visible` makes the special tokens and LayerScales large
    enough that their effects are far above float noise (the official init is ~1e-6 / 0.01)."""
    torch.manual_seed(seed)
    model = Aggregator(TINY).eval()
    if visible:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("gamma", "camera_token", "register_token")):
                    p.normal_(0.0, 1.0)
    return model


def _images(b: int = 1, v: int = 3, h: int = 42, w: int = 56, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, v, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["model.pt", "model.safetensors"])
def test_official_layout_checkpoint_loads_strictly_and_reproduces_outputs(tmp_path, name):
    model = _tiny_model()
    state = official_state_dict(model)
    assert any(k.startswith("camera_head.") for k in state) and any(k.startswith("depth_head.") for k in state)
    path = save_state_dict(state, tmp_path / name)

    stripped = load_aggregator_state(path)
    assert stripped.keys() == model.state_dict().keys()  # heads dropped, prefix stripped
    loaded = load_aggregator(path, TINY)
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    x = _images()
    with torch.no_grad():
        assert torch.equal(loaded(x).layers[0], model(x).layers[0])


def test_a_file_holding_only_the_stripped_aggregator_also_loads(tmp_path):
    model = _tiny_model()
    path = save_state_dict(model.state_dict(), tmp_path / "aggregator.safetensors")
    loaded = load_aggregator(path, TINY)
    x = _images(v=2)
    with torch.no_grad():
        assert torch.equal(loaded(x).layers[0], model(x).layers[0])


def test_missing_key_fails_naming_the_key_and_the_file(tmp_path):
    state = official_state_dict(_tiny_model())
    del state["aggregator.frame_blocks.1.attn.q_norm.weight"]
    path = save_state_dict(state, tmp_path / "model.pt")
    with pytest.raises(CheckpointMismatch, match="1 missing keys: frame_blocks.1.attn.q_norm.weight") as err:
        load_aggregator(path, TINY)
    assert str(path) in str(err.value) and isinstance(err.value, ValueError)


def test_extra_aggregator_key_fails_naming_it(tmp_path):
    state = official_state_dict(_tiny_model())
    state["aggregator.scale_token"] = torch.zeros(1, 2, 1, TINY.embed_dim)  # e.g. a VGGT-derived model
    path = save_state_dict(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointMismatch, match="1 unexpected keys: scale_token"):
        load_aggregator(path, TINY)


def test_wrong_config_fails_with_shapes_and_counts(tmp_path):
    path = save_state_dict(official_state_dict(_tiny_model()), tmp_path / "model.pt")
    bigger = AggregatorConfig(img_size=56, embed_dim=32, depth=3, num_heads=2, vit_depth=1, vit_num_heads=2)
    with pytest.raises(CheckpointMismatch, match=r"36 missing keys: frame_blocks\.2\.attn\.k_norm\.bias") as err:
        load_aggregator(path, bigger)
    assert "global_blocks.2.attn.k_norm.bias" in str(err.value) and "depth=3" in str(err.value)
    wider = AggregatorConfig(img_size=70, embed_dim=32, depth=2, num_heads=2, vit_depth=1, vit_num_heads=2)
    with pytest.raises(CheckpointMismatch, match=r"patch_embed.pos_embed \(1, 17, 32\) in file vs \(1, 26, 32\)"):
        load_aggregator(path, wider)


def test_error_message_lists_at_most_twenty_keys_and_the_count(tmp_path):
    state = {k: v for k, v in official_state_dict(_tiny_model()).items() if "frame_blocks" not in k}
    path = save_state_dict(state, tmp_path / "model.pt")
    with pytest.raises(CheckpointMismatch, match=r"36 missing keys: .*\.\.\. \(16 more\)"):
        load_aggregator(path, TINY)


def test_checkpoint_without_aggregator_is_refused(tmp_path):
    path = save_state_dict({"depth_head.norm.weight": torch.ones(4)}, tmp_path / "heads.pt")
    with pytest.raises(CheckpointMismatch, match="no aggregator weights"):
        load_aggregator_state(path)
    with pytest.raises(FileNotFoundError):
        load_aggregator_state(tmp_path / "absent.pt")


# --------------------------------------------------------------------------- forward semantics


def test_non_square_input_gives_patch_tokens_of_the_requested_layers_only():
    model = _tiny_model()
    x = _images(b=2, v=3, h=42, w=70)  # 3×5 patches; the ViT's 4×4 position grid is resized
    with torch.no_grad():
        out = model(x)
        assert len(out.layers) == 1 and out.grid == (3, 5)
        assert out.layers[0].shape == (2, 3, 15, 2 * TINY.embed_dim)  # 5 special tokens dropped
        both = model(x, layers=[0, -1])
    assert [t.shape for t in both.layers] == [(2, 3, 15, 64)] * 2
    assert torch.equal(both.layers[1], out.layers[0])
    with pytest.raises(ValueError, match="out of range"):
        model(x, layers=[2])
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(_images(h=40))


def test_blocks_after_the_deepest_requested_layer_are_not_run():
    model = _tiny_model()
    calls = []
    model.global_blocks[1].register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        early = model(_images(), layers=[0]).layers[0]
        assert not calls
        assert torch.equal(early, model(_images(), layers=[0, 1]).layers[0])
    assert calls == [1]


def test_views_meet_only_in_global_attention():
    model = _tiny_model()
    x = _images(v=3)
    y = x.clone()
    y[:, 2] = torch.rand_like(y[:, 2])  # change view 2 only
    c = TINY.embed_dim
    with torch.no_grad():
        a, b = model(x, layers=[0, 1]).layers, model(y, layers=[0, 1]).layers
    # Layer 0: view 0's frame half comes before any global block, so it cannot see view 2 ...
    assert torch.equal(a[0][:, 0, :, :c], b[0][:, 0, :, :c])
    # ... its global half can, and from layer 1 on so can everything.
    assert not torch.allclose(a[0][:, 0, :, c:], b[0][:, 0, :, c:], atol=1e-4)
    assert not torch.allclose(a[1][:, 0, :, :c], b[1][:, 0, :, :c], atol=1e-4)


def test_first_view_gets_token_set_0_and_the_others_set_1():
    model = _tiny_model()
    one = _images(v=1)
    same = one.repeat(1, 3, 1, 1, 1)  # three identical views
    with torch.no_grad():
        out = model(same).layers[0]
        # Views 1 and 2 share token set 1 and identical pixels: identical outputs. View 0 differs.
        assert torch.allclose(out[:, 1], out[:, 2], atol=1e-6)
        assert not torch.allclose(out[:, 0], out[:, 1], atol=1e-3)
        # With the two sets made equal, the model no longer singles out the first view.
        model.camera_token[:, 1] = model.camera_token[:, 0]
        model.register_token[:, 1] = model.register_token[:, 0]
        out = model(same).layers[0]
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-5)


def _official_style_rope(x: torch.Tensor, pos: torch.Tensor, base: float) -> torch.Tensor:
    """RoPE 2-D as VGGT formulates it: per-axis cos/sin tables indexed by integer position."""
    d = x.shape[-1] // 2
    inv_freq = 1.0 / base ** (torch.arange(0, d, 2).float() / d)
    angles = torch.arange(int(pos.max()) + 1).float()[:, None] * inv_freq[None]
    angles = torch.cat([angles, angles], dim=-1)
    cos, sin = angles.cos(), angles.sin()

    def one_axis(t, p):
        c, s = F.embedding(p, cos)[:, None], F.embedding(p, sin)[:, None]
        t1, t2 = t.chunk(2, dim=-1)
        return t * c + torch.cat([-t2, t1], dim=-1) * s

    y, xx = x.chunk(2, dim=-1)
    return torch.cat([one_axis(y, pos[..., 0]), one_axis(xx, pos[..., 1])], dim=-1)


def test_rope_matches_the_table_lookup_formulation():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 30, 64)
    pos = torch.randint(0, 38, (2, 30, 2))
    ours = apply_rope(x, *rope_tables(pos, 64, 100.0))
    assert torch.allclose(ours, _official_style_rope(x, pos, 100.0), atol=1e-5)


def test_special_tokens_sit_at_position_zero_and_patches_are_shifted_by_one():
    pos = _tiny_model()._positions(2, 3, torch.device("cpu"))
    assert pos[:5].eq(0).all()
    assert pos[5:].tolist() == [[1, 1], [1, 2], [1, 3], [2, 1], [2, 2], [2, 3]]


# --------------------------------------------------------------------------- the Teacher


def test_teacher_input_size_keeps_aspect_at_width_518():
    assert teacher_input_size(480, 640) == (392, 518)  # 28×37 patches
    assert teacher_input_size(518, 518) == (518, 518)
    assert teacher_input_size(720, 1280) == (294, 518)
    assert teacher_input_size(480, 640, target_width=56) == (42, 56)


def _frames(b: int = 2, v: int = 3, h: int = 480, w: int = 640, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (b, v, h, w, 3), dtype=np.uint8)


def test_teacher_preprocess_resizes_uint8_frames_into_unit_range():
    teacher = Teacher(_tiny_model(), width=56)
    x = teacher.preprocess(_frames())
    assert x.shape == (2, 3, 3, 42, 56) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    flat = teacher.preprocess(np.full((1, 1, 480, 640, 3), 255, np.uint8))
    assert torch.allclose(flat, torch.ones_like(flat))
    with pytest.raises(TypeError, match="uint8"):
        teacher.preprocess(np.zeros((1, 3, 48, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[B, V, H, W, 3\]"):
        teacher.preprocess(np.zeros((3, 48, 64, 3), np.uint8))


def test_teacher_targets_for_640x480_cameras_cover_patch_rows_2_to_13():
    teacher = Teacher(_tiny_model(), width=56)
    assert not teacher.bf16  # CPU: float32
    targets, valid = teacher.targets(_frames())
    dim = 2 * TINY.embed_dim
    assert targets.shape == (2, 3, 16, 16, dim) and targets.dtype == torch.float32
    assert valid.shape == (2, 3, 16, 16) and valid.dtype == torch.bool
    rows = valid[0, 0].any(dim=1).nonzero().flatten().tolist()
    assert rows == list(range(2, 14)) and valid[0, 0, 2:14].all()
    assert targets[~valid].abs().max() == 0
    assert targets[valid].abs().min() > 0


def test_teacher_targets_are_resampled_features_plus_0_1_pe_where_valid():
    teacher = Teacher(_tiny_model(), width=56)
    frames = _frames()
    box = letterbox_geometry(480, 640)[-1]
    assert box == PatchBox(2, 14, 0, 16)
    targets, valid = teacher.targets(frames)
    feats = teacher.features(frames)  # [B, V, 3, 4, 2C]
    assert feats.shape == (2, 3, 3, 4, 2 * TINY.embed_dim)
    pe = 0.1 * sincos_2d(3, 4, feats.shape[-1])
    resampled_pe = teacher_targets(pe[None], box, pe_scale=0.0)[0]  # bilinear is linear: PE resamples alone
    assert resampled_pe[2:14].abs().max() > 0.05
    for v in range(3):
        raw = teacher_targets(feats[:, v], box, pe_scale=0.0)
        diff = targets[:, v] - raw
        assert torch.allclose(diff[valid[:, v]], resampled_pe.expand_as(diff)[valid[:, v]], atol=1e-5)
        assert diff[~valid[:, v]].abs().max() == 0


def test_teacher_leaves_cameraless_slots_out_of_the_teacher_input():
    teacher = Teacher(_tiny_model(), width=56)
    frames = _frames()
    box = letterbox_geometry(480, 640)[-1]
    targets, valid = teacher.targets(frames, [box, None, box])
    assert not valid[:, 1].any() and targets[:, 1].abs().max() == 0
    alone, _ = teacher.targets(frames[:, [0, 2]], [box, box])  # the same as if slot 1 did not exist
    assert torch.allclose(targets[:, [0, 2]], alone, atol=1e-6)
    with pytest.raises(ValueError, match="2 boxes for 3 views"):
        teacher.targets(frames, [box, box])


def test_teacher_from_checkpoint_is_frozen_and_can_emit_bf16(tmp_path):
    path = save_state_dict(official_state_dict(_tiny_model()), tmp_path / "model.safetensors")
    teacher = Teacher.from_checkpoint(path, TINY, width=56, layer=0, out_dtype=torch.bfloat16)
    assert teacher.layer == 0 and not any(p.requires_grad for p in teacher.aggregator.parameters())
    targets, _ = teacher.targets(_frames(b=1))
    assert targets.dtype == torch.bfloat16 and not targets.requires_grad
    halved = Teacher.from_checkpoint(path, TINY, width=56, dtype=torch.bfloat16)  # bf16 weights, no autocast
    assert next(halved.aggregator.parameters()).dtype == torch.bfloat16
    assert torch.isfinite(halved.targets(_frames(b=1))[0]).all()
