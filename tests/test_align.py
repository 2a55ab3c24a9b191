"""Spatial Forcing alignment pieces (sf_policy.align) on CPU, with the real transformers π0 at a tiny size."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

from sf_policy.align import (
    AlignConfig,
    LayerCapture,
    LayerGate,
    PatchBox,
    Projector,
    SpatialAligner,
    alignment_loss,
    attach,
    box_mask,
    letterbox_geometry,
    sincos_2d,
    teacher_targets,
    visual_token_mask,
)


N_VIS = 768
N_TEXT = 10
IMAGE_TOKEN = 299


# --------------------------------------------------------------------------- grid


@pytest.mark.parametrize(
    ("hw", "expected"),
    [
        ((480, 640), (0.35, 168, 224, 28, 0, PatchBox(2, 14, 0, 16))),  # landscape 4:3: patch rows 2..13
        ((640, 480), (0.35, 224, 168, 0, 28, PatchBox(0, 16, 2, 14))),  # portrait
        ((224, 224), (1.0, 224, 224, 0, 0, PatchBox(0, 16, 0, 16))),  # already square: everything valid
        ((720, 1280), (0.175, 126, 224, 49, 0, PatchBox(3, 12, 0, 16))),  # 16:9: centre of row 3 is pixel 49 = top
    ],
)
def test_letterbox_geometry(hw, expected):
    scale, new_h, new_w, top, left, box = letterbox_geometry(*hw)
    assert scale == pytest.approx(expected[0])
    assert (new_h, new_w, top, left, box) == expected[1:]


def _rendered_box(h: int, w: int, size: int = 224, patch: int = 14) -> PatchBox:
    """Letterbox an all-ones image for real and read which patch centres are lit."""
    _, new_h, new_w, top, left, _ = letterbox_geometry(h, w, size, patch)
    content = F.interpolate(torch.ones(1, 1, h, w), size=(new_h, new_w), mode="bilinear")
    canvas = torch.zeros(size, size)
    canvas[top : top + new_h, left : left + new_w] = content[0, 0]
    centres = canvas[patch // 2 :: patch, patch // 2 :: patch] > 0.5  # pixel (14i+7, 14j+7)
    rows, cols = centres.any(1).nonzero().flatten(), centres.any(0).nonzero().flatten()
    if len(rows) == 0 or len(cols) == 0:
        return PatchBox(0, 0, 0, 0)
    return PatchBox(int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)


@pytest.mark.parametrize("hw", [(479, 641), (481, 640), (333, 517), (517, 333), (100, 224), (15, 3000), (7, 9)])
def test_letterbox_odd_sizes_match_a_rendered_letterbox(hw):
    _, new_h, new_w, top, left, box = letterbox_geometry(*hw)
    assert max(new_h, new_w) == 224 and min(new_h, new_w) >= 1
    assert top == (224 - new_h) // 2 and left == (224 - new_w) // 2
    assert abs(new_h / new_w - hw[0] / hw[1]) < 2 / min(new_h, new_w)  # aspect kept to a pixel
    rendered = _rendered_box(*hw)
    if box.empty:  # e.g. a 1-px-high strip: no patch centre falls on it
        assert rendered.empty
    else:
        assert box == rendered


def test_letterbox_other_grid_sizes():
    _, _, _, _, _, box = letterbox_geometry(480, 640, size=448, patch=14)  # a 32×32 grid
    assert box == PatchBox(4, 28, 0, 32)
    with pytest.raises(ValueError):
        letterbox_geometry(480, 640, size=225)


def test_box_and_visual_token_masks():
    box = PatchBox(2, 14, 0, 16)
    m = box_mask(box)
    assert m.shape == (16, 16) and m.dtype == torch.bool
    assert m.sum() == 12 * 16 and not m[1].any() and m[2].all() and m[13].all() and not m[14].any()
    assert not box_mask(None).any()

    present = torch.tensor([[True, True, True], [True, False, True]])
    mask = visual_token_mask([box, PatchBox.full(), None], present)
    assert mask.shape == (2, 768)
    slots = mask.view(2, 3, 16, 16)
    assert torch.equal(slots[0, 0], m) and slots[0, 1].all() and not slots[0, 2].any()  # None → nothing
    assert not slots[1, 1].any()  # absent camera → nothing
    assert mask[0, 2 * 16 : 14 * 16].all() and not mask[0, : 2 * 16].any()  # row-major, slot 0 first
    assert mask[0, 256:512].all()
    with pytest.raises(ValueError):
        visual_token_mask([box], present)


# --------------------------------------------------------------------------- targets


def test_sincos_2d_properties():
    pe = sincos_2d(28, 37, 64)
    assert pe.shape == (28, 37, 64) and pe.dtype == torch.float32
    assert pe.abs().max() <= 1.0
    flat = pe.reshape(-1, 64)
    assert torch.cdist(flat, flat).add(torch.eye(len(flat)) * 10).min() > 1e-3  # every position distinct
    # first half depends on the row only, second half on the column only
    assert torch.equal(pe[5, 0, :32], pe[5, 36, :32]) and torch.equal(pe[0, 7, 32:], pe[27, 7, 32:])
    # the documented formula at one position
    r, c, q = 3, 11, 16
    omega = 1.0 / 10000 ** (np.arange(q) / q)
    expected = np.concatenate([np.sin(r * omega), np.cos(r * omega), np.sin(c * omega), np.cos(c * omega)])
    np.testing.assert_allclose(pe[r, c].numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError):
        sincos_2d(2, 2, 30)


def _bilinear_align_corners(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Reference resize of [h, w, D] written from the definition (source = i·(h−1)/(out_h−1))."""
    h, w, _ = img.shape
    ys = np.arange(out_h) * (h - 1) / max(out_h - 1, 1)
    xs = np.arange(out_w) * (w - 1) / max(out_w - 1, 1)
    out = np.zeros((out_h, out_w, img.shape[2]))
    for i, y in enumerate(ys):
        y0 = min(int(math.floor(y)), h - 2)
        fy = y - y0
        for j, x in enumerate(xs):
            x0 = min(int(math.floor(x)), w - 2)
            fx = x - x0
            out[i, j] = (
                (1 - fy) * (1 - fx) * img[y0, x0]
                + (1 - fy) * fx * img[y0, x0 + 1]
                + fy * (1 - fx) * img[y0 + 1, x0]
                + fy * fx * img[y0 + 1, x0 + 1]
            )
    return out


def test_teacher_targets_pe_before_resampling():
    torch.manual_seed(0)
    tokens = torch.randn(2, 28, 37, 8)
    box = PatchBox(2, 14, 0, 16)
    out = teacher_targets(tokens, box)
    assert out.shape == (2, 16, 16, 8) and out.dtype == torch.float32

    with_pe = (tokens[1] + 0.1 * sincos_2d(28, 37, 8)).double().numpy()
    expected = _bilinear_align_corners(with_pe, 12, 16)
    np.testing.assert_allclose(out[1, 2:14].numpy(), expected, atol=1e-5)
    # outside the box: zeros
    assert not out[:, :2].any() and not out[:, 14:].any()
    # align_corners: the box's corner patches are the teacher's corner tokens (+PE) exactly
    for (tr, tc), (vr, vc) in {(0, 0): (2, 0), (0, 36): (2, 15), (27, 0): (13, 0), (27, 36): (13, 15)}.items():
        torch.testing.assert_close(out[1, vr, vc], torch.from_numpy(with_pe[tr, tc]).float(), atol=1e-6, rtol=0)
    # the order matters: PE added after resampling (on the 12×16 grid) gives something else
    after = _bilinear_align_corners(tokens[1].double().numpy(), 12, 16) + 0.1 * sincos_2d(12, 16, 8).double().numpy()
    assert np.abs(out[1, 2:14].numpy() - after).max() > 1e-2


def test_teacher_targets_dtype_and_options():
    tokens = torch.randn(1, 37, 37, 16).to(torch.bfloat16)
    out = teacher_targets(tokens, PatchBox.full())
    assert out.dtype == torch.bfloat16 and out.shape == (1, 16, 16, 16)
    plain = teacher_targets(tokens.float(), PatchBox(0, 16, 2, 14), pe_scale=0.0)
    torch.testing.assert_close(plain[0, 0, 2], tokens[0, 0, 0].float())
    assert not plain[:, :, :2].any() and not plain[:, :, 14:].any()
    assert not teacher_targets(tokens.float(), PatchBox(0, 0, 0, 16)).any()


# --------------------------------------------------------------------------- loss


def test_alignment_loss_values():
    torch.manual_seed(0)
    pred = torch.randn(3, 10, 8)
    mask = torch.ones(3, 10, dtype=torch.bool)
    loss, per = alignment_loss(pred, pred.clone(), mask)
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and per.shape == (3,)
    loss, _ = alignment_loss(pred, -pred, mask)
    assert loss.item() == pytest.approx(2.0, abs=1e-6)
    loss, _ = alignment_loss(pred, 5.0 * pred, mask)  # cosine ignores scale
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    # per sample first, then over samples: a sample with 1 token weighs as much as one with 10
    target = pred.clone()
    target[0] = -pred[0]
    mask[0, 1:] = False
    loss, per = alignment_loss(pred, target, mask)
    assert per.tolist() == pytest.approx([2.0, 0.0, 0.0], abs=1e-6)
    assert loss.item() == pytest.approx(2.0 / 3, abs=1e-6)


def test_alignment_loss_mask_excludes_tokens_and_empty_samples():
    torch.manual_seed(0)
    pred = torch.randn(3, 10, 8, requires_grad=True)
    target = torch.randn(3, 10, 8)
    mask = torch.rand(3, 10) > 0.3
    mask[2] = False  # a sample with no valid token (e.g. every camera missing)
    loss, per = alignment_loss(pred, target, mask)

    changed_pred, changed_target = pred.detach().clone(), target.clone()
    changed_pred[~mask] = float("nan")
    changed_target[~mask] = 1e6
    loss2, per2 = alignment_loss(changed_pred.requires_grad_(), changed_target, mask)
    assert torch.equal(loss, loss2) and torch.equal(per, per2)
    loss2.backward()
    assert torch.isfinite(loss) and per[2] == 0
    # mean over the two samples that have tokens only
    assert loss.item() == pytest.approx(per[:2].mean().item(), abs=1e-6)

    loss.backward()
    assert torch.isfinite(pred.grad).all() and not pred.grad[~mask].any()

    empty, per_empty = alignment_loss(pred, target, torch.zeros(3, 10, dtype=torch.bool))
    assert empty.item() == 0.0 and not per_empty.any()
    empty.backward()  # still connected, gradients zero and finite
    zero = torch.zeros(2, 4, 8, requires_grad=True)  # zero vectors: finite value and gradient
    z, _ = alignment_loss(zero, torch.zeros(2, 4, 8), torch.ones(2, 4, dtype=torch.bool))
    z.backward()
    assert z.item() == pytest.approx(1.0) and torch.isfinite(zero.grad).all()


def test_alignment_loss_bf16_inputs():
    pred = torch.randn(2, 5, 16).bfloat16()
    loss, per = alignment_loss(pred, pred, torch.ones(2, 5, dtype=torch.bool))
    assert loss.dtype == torch.float32 and per.dtype == torch.float32 and loss.item() == pytest.approx(0, abs=1e-5)


# --------------------------------------------------------------------------- projector


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_projector_shapes_and_gradients(norm):
    torch.manual_seed(0)
    proj = Projector(32, teacher_dim=24, hidden_dim=48, norm=norm)
    x = torch.randn(2, 20, 32, requires_grad=True)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, 10:] = False
    y = proj(x, mask)
    assert y.shape == (2, 20, 24) and not y[1, 10:].any()
    assert y.shape == proj(x).shape
    y[mask].square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in proj.parameters())
    assert x.grad[0].abs().sum() > 0 and not x.grad[1, 10:].any()
    with pytest.raises(ValueError):
        Projector(32, norm="group")


def test_projector_batchnorm_statistics_skip_masked_tokens():
    torch.manual_seed(0)
    proj = Projector(8, teacher_dim=4, hidden_dim=8, norm="batch")
    proj.norm.momentum = 1.0  # running stats = this batch's stats
    x = torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    x_padded = x.clone()
    x_padded[~mask] = 1e4  # padding that would wreck the statistics if it were included
    proj(x_padded, mask)
    torch.testing.assert_close(proj.norm.running_mean, x[mask].mean(0))
    torch.testing.assert_close(proj.norm.running_var, x[mask].var(0, unbiased=True))
    one = torch.zeros(1, 6, dtype=torch.bool)
    one[0, 0] = True
    assert torch.isfinite(proj(x[:1], one)).all()  # one valid token in training: falls back to running stats
    proj.eval()
    assert torch.isfinite(proj(x_padded, mask)).all()


# --------------------------------------------------------------------------- gating


def test_layer_gate_weights_and_gradients():
    torch.manual_seed(0)
    gate = LayerGate(num_layers=4, dim=8)
    layers = [torch.randn(3, 10, 8, requires_grad=True) for _ in range(4)]
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[2] = False
    fused = gate(layers, mask)
    assert fused.shape == (3, 10, 8)
    torch.testing.assert_close(gate.last_weights, torch.full((3, 4), 0.25))  # zero init → uniform
    torch.testing.assert_close(fused, torch.stack(layers).mean(0))
    fused.square().sum().backward()
    assert gate.gate.grad is not None and gate.gate.grad.abs().sum() > 0

    with torch.no_grad():
        gate.gate.normal_()
    fused = gate(torch.stack(layers, 1), mask)
    w = gate.last_weights
    torch.testing.assert_close(w.sum(-1), torch.ones(3))
    assert not w.requires_grad and gate.mean_weights().shape == (4,)
    torch.testing.assert_close(w[2], torch.full((4,), 0.25))  # no valid token → pooled 0 → uniform
    manual = sum(w[0, i] * layers[i][0] for i in range(4))
    torch.testing.assert_close(fused[0], manual)
    # pooling ignores masked tokens
    mask2 = mask.clone()
    mask2[0, 5:] = False
    moved = [t.detach().clone() for t in layers]
    gate(moved, mask2)
    w_ref = gate.last_weights[0].clone()
    for t in moved:
        t[0, 5:] = 100.0
    gate(moved, mask2)
    torch.testing.assert_close(gate.last_weights[0], w_ref)


# --------------------------------------------------------------------------- tiny π0


def _tiny_pi0():
    from transformers import PI0Config, PI0ForConditionalGeneration

    config = PI0Config(
        vlm_config={
            "text_config": {
                "hidden_size": 64,
                "num_hidden_layers": 4,
                "intermediate_size": 128,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "head_dim": 32,
                "vocab_size": 300,
            },
            "vision_config": {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "patch_size": 14,
                "image_size": 224,
                "vision_use_head": False,
            },
            "projection_dim": 64,
            "image_token_id": IMAGE_TOKEN,
        },
        dit_config={
            "hidden_size": 32,
            "num_hidden_layers": 4,
            "intermediate_size": 64,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 32,
        },
        chunk_size=50,
    )
    torch.manual_seed(0)
    return PI0ForConditionalGeneration(config)


@pytest.fixture(scope="module")
def pi0():
    return _tiny_pi0()


def _batch(b: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((b, N_VIS + N_TEXT), IMAGE_TOKEN)
    ids[:, N_VIS:] = torch.randint(0, IMAGE_TOKEN - 1, (b, N_TEXT), generator=g)
    attention = torch.ones(b, N_VIS + N_TEXT, dtype=torch.long)
    attention[-1, 256:512] = 0  # the last sample has no left-wrist camera
    attention[0, -2:] = 0  # right padding of the prompt
    return {
        "input_ids": ids,
        "pixel_values": torch.randn(b, 3, 3, 224, 224, generator=g),
        "pixel_attention_mask": torch.ones(b, 3, dtype=torch.bool),
        "attention_mask": attention,
        "state": torch.randn(b, 32, generator=g),
        "actions": torch.randn(b, 50, 32, generator=g),
        "noise": torch.randn(b, 50, 32, generator=g),
        "timestep": torch.full((b,), 0.5),
    }


def _reference_hidden_states(model, batch) -> tuple[torch.Tensor, ...]:
    """hidden_states of the VLM for the same prefix, by calling it the way PI0Model does."""
    embeds = model.model.embed_prefix(batch["input_ids"], batch["pixel_values"], batch["pixel_attention_mask"])
    attention = batch["attention_mask"]
    out = model.model.vlm(
        inputs_embeds=embeds,
        attention_mask=attention,
        position_ids=attention.cumsum(-1) - 1,
        token_type_ids=torch.zeros_like(embeds)[:, :, 0],
        output_hidden_states=True,
    )
    return out.hidden_states


def test_capture_matches_hidden_states(pi0):
    batch = _batch()
    lm = pi0.model.vlm.language_model
    pi0.eval()
    with torch.no_grad():
        ref = _reference_hidden_states(pi0, batch)
        assert len(ref) == 5  # embeddings + 4 layers
        hooks_before = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in (*lm.layers, lm, lm.norm)]
        with LayerCapture(lm.layers, [0, 1, 3, 4], final_norm=lm.norm, root=lm) as cap:
            pi0(**batch)
            assert set(cap.outputs) == {0, 1, 3, 4}
            for k, tokens in cap.outputs.items():
                assert tokens.shape == (2, N_VIS, 64)
                torch.testing.assert_close(tokens, ref[k][:, :N_VIS], atol=1e-5, rtol=1e-5)
            # layer k is not layer k±1: the index convention is really the one documented
            assert (cap.outputs[3] - ref[2][:, :N_VIS]).abs().max() > 1e-3
            assert (cap.outputs[3] - ref[4][:, :N_VIS]).abs().max() > 1e-3
            assert cap.calls == {0: 1, 1: 1, 3: 1, 4: 1}
            # the root hook clears at the next forward: a second batch gives fresh tokens
            other = _batch(seed=1)
            pi0(**other)
            torch.testing.assert_close(cap.outputs[1], _reference_hidden_states(pi0, other)[1][:, :N_VIS])
        hooks_after = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in (*lm.layers, lm, lm.norm)]
        assert hooks_after == hooks_before  # every hook of ours is removed on exit
    with pytest.raises(ValueError):
        LayerCapture(lm.layers, [4])  # the final norm's output needs final_norm
    with pytest.raises(ValueError):
        LayerCapture(lm.layers, [5], final_norm=lm.norm)
    pi0.train()


def test_capture_under_transformers_gradient_checkpointing(pi0):
    """transformers 5 checkpoints a layer's forward, not __call__: hooks fire once, with the graph."""
    lm = pi0.model.vlm.language_model
    torch.manual_seed(0)
    embeds = torch.randn(2, N_VIS + 4, 64)

    def run(reentrant: bool | None):
        pi0.zero_grad()
        if reentrant is not None:
            lm.activation_checkpointing_enable({"use_reentrant": reentrant})
        x = embeds.clone().requires_grad_(reentrant is True)  # reentrant needs an input that wants grad
        with LayerCapture(lm.layers, [2], root=lm) as cap:
            lm(inputs_embeds=x, use_cache=False)
            tokens = cap.outputs[2]
            tokens.square().mean().backward()
            calls = cap.calls[2]
        grad = lm.layers[0].mlp.down_proj.weight.grad.clone()
        if reentrant is not None:
            lm.activation_checkpointing_disable()
        return tokens.detach(), grad, calls

    plain = run(None)
    for reentrant in (False, True):
        tokens, grad, calls = run(reentrant)
        assert calls == 1
        torch.testing.assert_close(tokens, plain[0])
        torch.testing.assert_close(grad, plain[1], atol=1e-6, rtol=1e-4)
    pi0.zero_grad()


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return torch.tanh(self.fc(x)), None  # tuple output, like transformers 4 decoder layers


def test_capture_survives_recomputation_in_backward():
    """A module wrapped in torch.utils.checkpoint runs its hooks again during backward."""
    torch.manual_seed(0)
    blocks = nn.ModuleList([_Block(), _Block()])
    x = torch.randn(2, 5, 8)

    def run(wrap: str | None):
        blocks.zero_grad()
        cap = LayerCapture(blocks, [1], n_visual=3)
        h = x.clone().requires_grad_(wrap == "reentrant")
        with set_checkpoint_early_stop(False):  # backward recomputes the whole block, hooks included
            for block in blocks:
                if wrap is None:
                    h = block(h)[0]
                else:
                    h = checkpoint(block, h, use_reentrant=wrap == "reentrant")[0]
        (cap.outputs[1].sum() + h.sum()).backward()
        out, calls = cap.outputs[1].detach(), cap.calls[1]
        cap.remove()
        return out, blocks[0].fc.weight.grad.clone(), calls

    tokens, grad, calls = run(None)
    assert tokens.shape == (2, 3, 8) and calls == 1
    tokens_ck, grad_ck, calls_ck = run("non-reentrant")
    assert calls_ck == 2  # forward + recomputation in backward; the first one is kept
    torch.testing.assert_close(tokens_ck, tokens)
    torch.testing.assert_close(grad_ck, grad)

    with warnings.catch_warnings(record=True) as caught:  # reentrant: no graph at capture time → warned
        warnings.simplefilter("always")
        run("reentrant")
    assert any("without autograd" in str(w.message) for w in caught)


def test_aligner_end_to_end_with_tiny_pi0(pi0):
    config = AlignConfig(layer=2, teacher_dim=48, hidden_dim=96)
    aligner = SpatialAligner.for_model(pi0, config)
    cap = attach(pi0, config)
    batch = _batch()
    b = batch["input_ids"].shape[0]
    boxes = [PatchBox(2, 14, 0, 16), PatchBox(2, 14, 0, 16), PatchBox.full()]
    present = torch.tensor([[True, True, True], [True, False, True]])
    valid = visual_token_mask(boxes, present).view(b, 3, 16, 16)
    torch.manual_seed(1)
    targets = torch.stack(
        [torch.stack([teacher_targets(torch.randn(1, 28, 37, 48), box)[0] for box in boxes]) for _ in range(b)]
    )  # [B, 3, 16, 16, 48], zeros outside the boxes

    pi0.train()
    pi0.zero_grad()
    out = pi0(**batch)
    align = aligner(cap.outputs, targets, valid)
    assert align.loss.shape == () and 0.0 < align.loss.item() < 2.0
    assert align.per_sample.shape == (b,) and align.layer_weights is None
    assert align.cosine_mean.item() == pytest.approx(1.0 - align.loss.item())
    total = aligner.combine(out.loss, align)
    assert total.item() == pytest.approx(out.loss.item() + 0.5 * align.loss.item(), rel=1e-6)
    total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in aligner.parameters())
    layers = pi0.model.vlm.language_model.layers
    # the action loss reads every VLM layer's keys/values (the last layer's output itself is unused by π0)
    assert all(layers[i].self_attn.k_proj.weight.grad.abs().sum() > 0 for i in range(4))

    # The align term alone: gradients reach the vision tower and layers 0..k-1, not layers >= k.
    pi0.zero_grad()
    aligner.zero_grad()
    pi0(**batch)
    aligner(cap.outputs, targets, valid).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in aligner.parameters())
    for i in range(2):
        assert layers[i].mlp.down_proj.weight.grad.abs().sum() > 0
    for i in range(2, 4):
        assert all(p.grad is None or not p.grad.any() for p in layers[i].parameters())
    assert pi0.model.vlm.multi_modal_projector.linear.weight.grad.abs().sum() > 0
    assert all(p.grad is None or not p.grad.any() for p in pi0.model.dit.parameters())

    # flat layout [B, 768, T] gives the same loss; state_dict round trip gives the same module
    again = aligner(cap.outputs, targets.flatten(1, 3), valid.flatten(1))
    torch.testing.assert_close(again.loss, align.loss)
    clone = SpatialAligner.for_model(pi0, config)
    clone.load_state_dict(aligner.state_dict())
    torch.testing.assert_close(clone(cap.outputs, targets, valid).loss, align.loss)
    cap.remove()
    pi0.zero_grad()


def test_adaptive_aligner_with_tiny_pi0(pi0):
    config = AlignConfig(adaptive=True, adaptive_layers=(1, 2, 3, 4), norm="batch", teacher_dim=48, hidden_dim=64)
    assert config.capture_layers == (1, 2, 3, 4)
    aligner = SpatialAligner.for_model(pi0, config)
    batch = _batch()
    valid = torch.ones(2, N_VIS, dtype=torch.bool)
    valid[1, 256:512] = False
    targets = torch.randn(2, N_VIS, 48)
    with attach(pi0, config) as cap:  # k = 4 = L comes from the final norm
        pi0.train()
        pi0.zero_grad()
        pi0(**batch)
        assert set(cap.outputs) == {1, 2, 3, 4}
        out = aligner(cap.outputs, targets, valid)
        out.loss.backward()
    torch.testing.assert_close(out.layer_weights, torch.full((4,), 0.25))
    assert aligner.gate.gate.grad.abs().sum() > 0
    names = set(aligner.state_dict())
    assert {"gate.gate", "projector.norm.running_mean", "projector.fc1.weight"} <= names
    with pytest.raises(KeyError):
        aligner({2: out.loss}, targets, valid)
    with pytest.raises(ValueError):
        AlignConfig(norm="group")
    pi0.zero_grad()


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft → transformers
def test_attach_looks_through_a_peft_wrapper():
    import peft

    model = peft.get_peft_model(_tiny_pi0(), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    config = AlignConfig(layer=2, teacher_dim=16, hidden_dim=16)
    batch = {k: v[:1] for k, v in _batch().items()}
    with attach(model, config) as cap:
        model(**batch)
        out = SpatialAligner.for_model(model, config)(cap.outputs, torch.randn(1, N_VIS, 16), torch.ones(1, N_VIS))
    out.loss.backward()  # the align term alone reaches the LoRA weights of layers below k
    layers = model.base_model.model.model.vlm.language_model.layers
    assert layers[0].self_attn.q_proj.lora_B["default"].weight.grad.abs().sum() > 0
    assert layers[2].self_attn.q_proj.lora_B["default"].weight.grad is None
