"""Depth probe: how much metric depth can a small head read from a frozen VLA's visual tokens?

The Spatial Forcing paper (figure 3) freezes a VLA, trains a DPT-style depth head on its
visual tokens and shows that an SF-trained model's tokens carry far more depth than the
baseline's. This module does the same for our checkpoints, on frames of the MuJoCo twin,
whose renderer gives exact metric depth per camera:

1. Frames: the task's scripted expert plays a few seeded episodes in ``Twin(depth=True)``;
   one frame every ``every`` ticks keeps the three cameras' RGB, their depth maps and the
   puppet state. The split is by episode (the last seeds are held out), so the probe is
   tested on scenes it never saw. (Datasets keep at most a coarse depth for the geometry
   teacher, ``record_expert(geometry=True)``: the probe renders its own at full size.)
2. Targets: each depth map goes through the VLA's own letterbox geometry
   (``align.grid.letterbox_geometry``) and is sampled, nearest neighbour, at the pixel
   centres of an ``out_size``² canvas (64² by default: 4×4 pixels per 14-px patch).
   Nearest, not bilinear, so no depth is invented across object edges. A pixel is valid
   iff it lies inside the letterboxed content and 0 < depth < ``max_depth`` (the twin has
   no walls: rays that miss everything report the far clip plane, ~81 m).
3. Features: the checkpoint's policy, frozen, in eval mode. Its processor builds the usual
   prefix (3 letterboxed cameras + the task prompt); we run SigLIP, the prefix embedding
   and the VLM decoder with π0's prefix attention (exactly what ``sample_actions`` does
   before denoising) and copy ``hidden_states[k][:, :768]`` with ``align.LayerCapture``.
   The forward is cut right after layer k: later layers and the action expert are never run.
   Tokens are kept on the CPU in bfloat16 (768 × D per frame), computed once per checkpoint.
4. Probe: ``DepthProbeHead``, a small DPT-style head shared by the three cameras: a
   per-token LayerNorm + Linear "reassemble" to a 16×16 feature map, then residual conv
   units and ×2 bilinear upsampling to ``out_size``, predicting log-depth, plus a learned
   per-camera offset; untrained, it is exactly the constant reference below. Loss: the
   scale-invariant log loss (SILog) over valid pixels. AdamW with cosine decay for
   ``steps`` steps on batches of (frame, camera) maps.
5. Report: AbsRel, RMSE (m) and δ<1.25 over the held-out episodes' valid pixels (pooled),
   per camera and overall, next to a constant per-camera predictor (the train set's mean
   log-depth) that says what "no depth information" scores. Every checkpoint is probed on
   the same frames, split, layer, head initialisation and batch order, so differences come
   from the features alone.
"""

from __future__ import annotations

import gc
import inspect
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..align.capture import LayerCapture
from ..align.grid import VLA_IMAGE_SIZE, VLA_PATCH, letterbox_geometry
from ..topics import CAMERA_ROLES
from ..train.checkpoint import ALIGN_CONFIG_FILE  # checkpoint.py does not import the trainer

#: Depths at or beyond this many metres are "no reading" (sky, far clip plane, sensor limit).
MAX_DEPTH = 10.0
REPORT_FILE = "depth_probe.json"
EXAMPLES_FIGURE = "depth_probe_examples.png"
METRICS_FIGURE = "depth_probe_metrics.png"


# --------------------------------------------------------------------------------------------
# Frames with depth


@dataclass
class DepthFrames:
    """Frames of several episodes: per frame the cameras' RGB and metric depth, the state, the prompt."""

    images: np.ndarray  # [N, C, H, W, 3] uint8, cameras in `roles` order
    depth: np.ndarray  # [N, C, H, W] float32, metres along the optical axis (0: no reading)
    state: np.ndarray  # [N, 14] float32 puppet joints
    episode: np.ndarray  # [N] int64: the episode's seed
    prompts: list[str]  # [N]
    meta: dict = field(default_factory=dict)  # how the frames were made (the cache key)
    roles: tuple[str, ...] = CAMERA_ROLES

    def __len__(self) -> int:
        return len(self.state)

    def samples(self, indices: Sequence[int]) -> list[dict]:
        """Processor samples (images by role, state, prompt) for these frames."""
        return [{"images": {role: self.images[i, c] for c, role in enumerate(self.roles)},
                 "state": self.state[i], "prompt": self.prompts[i]} for i in indices]

    def split(self, test_episodes: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, test) frame indices; the last ``test_episodes`` episodes are held out whole."""
        seeds = list(dict.fromkeys(self.episode.tolist()))  # in recording order
        if not 1 <= test_episodes < len(seeds):
            raise ValueError(f"need 1 <= test_episodes < episodes, got {test_episodes} of {len(seeds)} episodes")
        test = np.isin(self.episode, seeds[-test_episodes:])
        return np.flatnonzero(~test), np.flatnonzero(test)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a bare name
            np.savez_compressed(f, images=self.images, depth=self.depth, state=self.state, episode=self.episode,
                                prompts=np.array(self.prompts), roles=np.array(self.roles),
                                meta=np.array(json.dumps(self.meta)))

    @classmethod
    def load(cls, path: str | Path) -> DepthFrames:
        with np.load(Path(path), allow_pickle=False) as data:
            return cls(data["images"], data["depth"], data["state"], data["episode"],
                       [str(p) for p in data["prompts"]], json.loads(str(data["meta"])),
                       tuple(str(r) for r in data["roles"]))


def collect_twin_frames(task: str = "lift_pot", episodes: int = 6, seed: int = 0, width: int = 320,
                        height: int = 240, every: int = 5, max_frames: int = 0,
                        log: Callable[[str], None] | None = None) -> DepthFrames:
    """Run the scripted expert for seeds ``seed .. seed+episodes-1`` and keep one frame in ``every`` ticks.

    An episode ends at success, at the task's step limit, or after ``max_frames`` kept frames
    (0: no cap). Failed episodes are kept: depth does not care whether the pot was lifted.
    """
    from ..sim.experts import make_expert
    from ..sim.twin import Twin

    if episodes < 2:
        raise ValueError("the depth probe needs at least 2 episodes (train and held-out test)")
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    meta = {"source": "twin", "task": task, "episodes": episodes, "seed": seed, "width": width, "height": height,
            "every": every, "max_frames": max_frames}
    images, depth, state, episode, prompts = [], [], [], [], []
    twin = Twin(task, width=width, height=height, depth=True)
    try:
        for s in range(seed, seed + episodes):
            twin.reset(s)
            expert = make_expert(twin)
            prompt = twin.info["prompt"]
            kept = 0
            while not twin.done():
                if twin.tick % every == 0:
                    obs = twin.observe()
                    images.append(np.stack([obs.images[r] for r in twin.cameras]))
                    depth.append(np.stack([obs.depth[r] for r in twin.cameras]))
                    state.append(obs.state.astype(np.float32))
                    episode.append(s)
                    prompts.append(prompt)
                    kept += 1
                    if max_frames and kept >= max_frames:
                        break
                twin.step(expert.act())
                if twin.success():
                    break
            if log is not None:
                log(f"episode {s}: {kept} frames ({twin.tick} ticks, {'success' if twin.success() else 'no success'})")
    finally:
        twin.close()
    return DepthFrames(np.stack(images), np.stack(depth).astype(np.float32), np.stack(state),
                       np.asarray(episode, dtype=np.int64), prompts, meta, tuple(twin.cameras))


def load_or_collect(path: str | Path | None, log: Callable[[str], None] | None = None, **kwargs) -> DepthFrames:
    """``collect_twin_frames(**kwargs)``, cached at ``path``: reused when it was made with the same arguments."""
    if path is not None and Path(path).is_file():
        frames = DepthFrames.load(path)
        made = {k: v for k, v in frames.meta.items() if k != "source"}
        defaults = {name: p.default for name, p in inspect.signature(collect_twin_frames).parameters.items()
                    if name != "log"}
        if made == defaults | kwargs:
            if log is not None:
                log(f"frames: {len(frames)} from {path}")
            return frames
        if log is not None:
            log(f"{path} holds frames made with other settings ({made}); collecting again")
    frames = collect_twin_frames(log=log, **kwargs)
    if path is not None:
        frames.save(path)
    return frames


# --------------------------------------------------------------------------------------------
# Targets on the VLA's letterbox canvas


def letterbox_nearest(array: np.ndarray, out_size: int = 64, fill: float = 0,
                      image_size: int = VLA_IMAGE_SIZE, patch: int = VLA_PATCH) -> tuple[np.ndarray, np.ndarray]:
    """``array`` [H, W, ...] as the VLA sees it: letterboxed into ``image_size``², then sampled
    (nearest) at the centres of an ``out_size``² grid of pixels over that canvas.

    Returns (values [out, out, ...], content mask [out, out] bool); padding pixels are ``fill``.
    The geometry is ``letterbox_geometry``'s, so the content mask agrees with the PatchBox
    wherever patch edges fall on output pixel edges (e.g. 480×640 at 64²: rows 8..55).
    """
    height, width = array.shape[:2]
    _, new_h, new_w, top, left, _ = letterbox_geometry(height, width, image_size, patch)
    centres = (np.arange(out_size) + 0.5) * (image_size / out_size)  # canvas pixel coordinates
    ys, xs = centres - top, centres - left
    inside_y, inside_x = (ys >= 0) & (ys < new_h), (xs >= 0) & (xs < new_w)
    rows = np.clip(np.floor(ys * height / new_h), 0, height - 1).astype(np.int64)
    cols = np.clip(np.floor(xs * width / new_w), 0, width - 1).astype(np.int64)
    values = array[rows[:, None], cols[None, :]].copy()
    mask = inside_y[:, None] & inside_x[None, :]
    values[~mask] = fill
    return values, mask


def depth_targets(frames: DepthFrames, out_size: int = 64,
                  max_depth: float = MAX_DEPTH) -> tuple[torch.Tensor, torch.Tensor]:
    """(depth [N, C, S, S] float32 metres, valid [N, C, S, S] bool) on the letterbox canvas."""
    n, c = frames.depth.shape[:2]
    depth = np.zeros((n, c, out_size, out_size), np.float32)
    valid = np.zeros((n, c, out_size, out_size), bool)
    for i in range(n):
        for k in range(c):
            d, content = letterbox_nearest(frames.depth[i, k], out_size)
            depth[i, k] = d
            valid[i, k] = content & (d > 0) & (d < max_depth) & np.isfinite(d)
    return torch.from_numpy(depth), torch.from_numpy(valid)


# --------------------------------------------------------------------------------------------
# Frozen features


class _StopForward(Exception):
    """Raised by a hook once layer k is captured: nothing after it is needed."""


def default_layer(num_layers: int) -> int:
    """SF's choice scaled to the model: π0 aligns hidden_states[12] of 18, i.e. two thirds deep."""
    return max(1, round(2 * num_layers / 3))


def checkpoint_align_layer(checkpoint: str | Path) -> int | None:
    """The layer an SF checkpoint aligned (``align.json``), or None (a baseline, or a bare policy dir)."""
    path = Path(checkpoint) / ALIGN_CONFIG_FILE
    if not path.is_file():
        return None
    return int(json.loads(path.read_text())["layer"])


def _stop_after(language_model: nn.Module, layer: int) -> torch.utils.hooks.RemovableHandle:
    """A hook that ends the forward once hidden_states[layer] exists; register it AFTER the capture's
    hooks (hooks run in registration order) so the capture sees the tokens first."""
    def stop(*_args) -> None:
        raise _StopForward

    layers = language_model.layers
    if layer == 0:
        return layers[0].register_forward_pre_hook(stop)
    if layer < len(layers):
        return layers[layer - 1].register_forward_hook(stop)
    return language_model.norm.register_forward_hook(stop)


def _prefix_forward(pi0: nn.Module, batch: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> None:
    """The VLM pass over π0's prefix, as ``sample_actions`` runs it (bidirectional prefix attention)."""
    ids = batch["input_ids"].to(device)
    mask = batch["attention_mask"].to(device)
    embeds = pi0.model.embed_prefix(ids, batch["pixel_values"].to(device, dtype),
                                    batch["pixel_attention_mask"].to(device))
    pi0.model.vlm(inputs_embeds=embeds, attention_mask=mask, position_ids=mask.cumsum(-1) - 1,
                  token_type_ids=torch.zeros_like(ids), use_cache=False)


@torch.no_grad()
def extract_features(policy, frames: DepthFrames, layer: int, batch_size: int = 8,
                     storage_dtype: torch.dtype = torch.bfloat16, stop_early: bool = True) -> torch.Tensor:
    """hidden_states[layer] of the visual tokens for every frame: [N, 768, D] on the CPU.

    ``layer`` follows transformers' ``output_hidden_states`` indexing (0 = embeddings).
    """
    config = policy.processor.config
    if tuple(config.camera_roles) != tuple(frames.roles):
        raise ValueError(f"the policy's cameras {config.camera_roles} are not the frames' {frames.roles}")
    pi0 = policy.pi0
    lm = pi0.model.vlm.language_model
    if not 0 <= layer <= len(lm.layers):
        raise ValueError(f"layer {layer} out of range: the VLM has hidden_states 0..{len(lm.layers)}")
    policy.eval()
    device, dtype = policy.device, policy.dtype
    capture = LayerCapture(lm.layers, [layer], n_visual=config.num_visual_tokens, final_norm=lm.norm, root=lm)
    stop = _stop_after(lm, layer) if stop_early else None
    out = []
    try:
        for start in range(0, len(frames), batch_size):
            batch = policy.processor(frames.samples(range(start, min(start + batch_size, len(frames)))))
            try:
                _prefix_forward(pi0, batch, device, dtype)
            except _StopForward:
                pass
            out.append(capture.pop()[layer].to("cpu", storage_dtype))
    finally:
        capture.remove()
        if stop is not None:
            stop.remove()
    return torch.cat(out)


# --------------------------------------------------------------------------------------------
# The probe head


class ResidualConvUnit(nn.Module):
    """DPT's fusion unit: x + conv(relu(conv(relu(x))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class DepthProbeHead(nn.Module):
    """Visual tokens of one camera [B, grid², D] + its slot [B] → log-depth [B, out_size, out_size].

    DPT-style, one scale: reassemble the tokens into a feature map (LayerNorm + Linear per
    token), then (residual conv unit, ×2 bilinear upsample, 3×3 conv) per octave, halving
    the channels (not below 32), and a small conv head, shared by the cameras. Each camera
    slot adds a learned log-depth offset, initialised to the train set's mean log-depth of
    that camera (``init_log_depth``), and the last conv starts at zero: before training the
    probe IS the constant per-camera predictor of the report, and every gain over it comes
    from the tokens. (Which slot a map belongs to is known without looking at the tokens.)
    """

    def __init__(self, dim: int, grid: int = 16, out_size: int = 64, channels: int = 128,
                 init_log_depth: Sequence[float] = (0.0, 0.0, 0.0)) -> None:
        super().__init__()
        octaves = math.log2(out_size / grid)
        if octaves < 0 or octaves != int(octaves):
            raise ValueError(f"out_size must be grid × a power of two (grid {grid}), got {out_size}")
        self.grid = grid
        self.reassemble = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, channels))
        stages: list[nn.Module] = []
        ch = channels
        for _ in range(int(octaves)):
            nxt = max(ch // 2, min(ch, 32))
            stages += [ResidualConvUnit(ch), nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       nn.Conv2d(ch, nxt, 3, padding=1)]
            ch = nxt
        self.fuse = nn.Sequential(*stages, ResidualConvUnit(ch))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU(), nn.Conv2d(ch, 1, 1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        self.camera_offset = nn.Parameter(torch.tensor([float(v) for v in init_log_depth]))

    def forward(self, tokens: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        b, n, _ = tokens.shape
        if n != self.grid * self.grid:
            raise ValueError(f"expected {self.grid ** 2} tokens per camera, got {n}")
        x = self.reassemble(tokens.float())  # [B, g², C]
        x = x.transpose(1, 2).reshape(b, -1, self.grid, self.grid)
        return self.head(self.fuse(x))[:, 0] + self.camera_offset[camera][:, None, None]


def silog_loss(log_pred: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor, lam: float = 0.85) -> torch.Tensor:
    """Scale-invariant log loss (Eigen et al.): sqrt(mean(g²) − λ·mean(g)²), g = log pred − log true,
    over the valid pixels of the batch. λ < 1 keeps part of the scale error, so depth stays metric."""
    g = log_pred[valid] - torch.log(depth[valid])
    if g.numel() == 0:
        return log_pred.sum() * 0.0
    return (g.pow(2).mean() - lam * g.mean().pow(2)).clamp(min=1e-8).sqrt()


@dataclass
class ProbeConfig:
    steps: int = 300
    batch_size: int = 16  # (frame, camera) maps per step
    lr: float = 1e-3
    weight_decay: float = 1e-4
    channels: int = 128
    out_size: int = 64  # depth resolution on the 224² letterbox canvas (16 × 2^n)
    silog_lambda: float = 0.85
    max_depth: float = MAX_DEPTH
    seed: int = 0
    feature_batch: int = 8  # frames per VLM forward when extracting features
    log_every: int = 10  # loss-curve resolution in the report

    def to_dict(self) -> dict:
        return asdict(self)


def _slot_tokens(features: torch.Tensor, frame: torch.Tensor, camera: torch.Tensor, n_cams: int) -> torch.Tensor:
    """[B, grid², D]: the tokens of camera slot ``camera[b]`` of frame ``frame[b]`` (slot c owns c*256..)."""
    n, tokens, dim = features.shape
    return features.view(n, n_cams, tokens // n_cams, dim)[frame, camera]


def train_probe(features: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor, train_idx: np.ndarray,
                config: ProbeConfig, device: str | torch.device = "cpu") -> tuple[DepthProbeHead, list[float]]:
    """Fit a ``DepthProbeHead`` on the (frame, camera) maps of ``train_idx``; returns it and the per-step loss."""
    n_cams = depth.shape[1]
    grid = math.isqrt(features.shape[1] // n_cams)
    pairs = torch.tensor([(i, c) for i in train_idx for c in range(n_cams) if valid[i, c].any()], dtype=torch.long)
    if len(pairs) == 0:
        raise ValueError("no training frame has valid depth")
    init = mean_log_depth(depth, valid, train_idx)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # the same head initialisation for every checkpoint of a width
        head = DepthProbeHead(features.shape[-1], grid, config.out_size, config.channels, init).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(config.steps, 1), eta_min=config.lr * 0.05)
    generator = torch.Generator().manual_seed(config.seed)  # the same batches for every checkpoint
    losses = []
    head.train()
    for _ in range(config.steps):
        pick = pairs[torch.randint(len(pairs), (config.batch_size,), generator=generator)]
        tokens = _slot_tokens(features, pick[:, 0], pick[:, 1], n_cams).to(device)
        target, mask = depth[pick[:, 0], pick[:, 1]].to(device), valid[pick[:, 0], pick[:, 1]].to(device)
        loss = silog_loss(head(tokens, pick[:, 1].to(device)), target, mask, config.silog_lambda)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    head.eval()
    return head, losses


@torch.no_grad()
def predict_depth(head: DepthProbeHead, features: torch.Tensor, frames: Sequence[int], cameras: Sequence[int],
                  n_cams: int, batch_size: int = 32) -> torch.Tensor:
    """Predicted depth (metres) [len, S, S] for the (frame, camera) pairs, on the CPU."""
    device = next(head.parameters()).device
    frame_t, camera_t = torch.as_tensor(frames, dtype=torch.long), torch.as_tensor(cameras, dtype=torch.long)
    out = []
    for s in range(0, len(frame_t), batch_size):
        tokens = _slot_tokens(features, frame_t[s:s + batch_size], camera_t[s:s + batch_size], n_cams)
        out.append(head(tokens.to(device), camera_t[s:s + batch_size].to(device)).exp().cpu())
    return torch.cat(out) if out else torch.zeros(0)


# --------------------------------------------------------------------------------------------
# Metrics


def depth_metrics(pred: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor) -> dict[str, float | int | None]:
    """AbsRel, RMSE (m) and δ<1.25 over the valid pixels (pooled); None where there are none."""
    p, d = pred[valid].double(), depth[valid].double()
    if p.numel() == 0:
        return {"abs_rel": None, "rmse": None, "delta1": None, "pixels": 0}
    ratio = torch.maximum(p / d, d / p)
    return {"abs_rel": _finite(((p - d).abs() / d).mean()), "rmse": _finite((p - d).pow(2).mean().sqrt()),
            "delta1": _finite((ratio < 1.25).double().mean()), "pixels": int(p.numel())}


def metrics_by_camera(pred: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor,
                      roles: Sequence[str]) -> dict[str, dict]:
    """pred/depth/valid [N, C, S, S] → {"overall": ..., role: ...}."""
    result = {"overall": depth_metrics(pred, depth, valid)}
    for c, role in enumerate(roles):
        result[role] = depth_metrics(pred[:, c], depth[:, c], valid[:, c])
    return result


def mean_log_depth(depth: torch.Tensor, valid: torch.Tensor, idx: np.ndarray) -> list[float]:
    """Per camera, the mean log-depth over the valid pixels of frames ``idx`` (all cameras' where one has none)."""
    overall = torch.log(depth[idx][valid[idx]]).mean()
    means = []
    for c in range(depth.shape[1]):
        d, m = depth[idx, c], valid[idx, c]
        means.append(float(torch.log(d[m]).mean() if m.any() else overall))
    return means


def constant_prediction(depth: torch.Tensor, valid: torch.Tensor, train_idx: np.ndarray,
                        test_idx: np.ndarray) -> torch.Tensor:
    """The no-information reference: per camera, the train set's geometric mean depth, everywhere
    (what the untrained probe predicts)."""
    pred = torch.ones(len(test_idx), *depth.shape[1:])
    for c, mean in enumerate(mean_log_depth(depth, valid, train_idx)):
        pred[:, c] = math.exp(mean)
    return pred


# --------------------------------------------------------------------------------------------
# Probing checkpoints


def checkpoint_label(checkpoint: str | Path) -> str:
    """A short name: ``run/step_N`` for a training checkpoint, else the directory's name."""
    path = Path(checkpoint).resolve()
    if path.parent.name == "checkpoints":
        return f"{path.parent.parent.name}/{path.name}"
    return path.name


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class ProbeRun:
    """One checkpoint's probe: what goes into the report, plus the example maps for the figure."""

    report: dict
    examples: torch.Tensor  # [n_examples, S, S] predicted depth (m)
    losses: list[float]


def probe_checkpoint(checkpoint: str | Path, frames: DepthFrames, depth: torch.Tensor, valid: torch.Tensor,
                     train_idx: np.ndarray, test_idx: np.ndarray, layer: int | None, config: ProbeConfig,
                     examples: Sequence[tuple[int, int]] = (), device: str = "auto", dtype: str | None = None,
                     log: Callable[[str], None] | None = None) -> ProbeRun:
    """Freeze ``checkpoint``'s policy, extract layer-``layer`` tokens, fit and test the probe.

    ``layer`` None: the checkpoint's aligned layer, else ``default_layer``. ``examples`` are
    (frame, camera) pairs whose predicted maps are returned for the figure.
    """
    from ..train.checkpoint import load_policy, resolve_checkpoint

    torch_device = _resolve_device(device)
    dtype = dtype or ("bfloat16" if torch_device.type == "cuda" else "float32")
    resolved = resolve_checkpoint(checkpoint)
    policy = load_policy(resolved, dtype=dtype).to(torch_device)
    policy.requires_grad_(False)
    num_layers = len(policy.pi0.model.vlm.language_model.layers)
    hidden = policy.pi0.config.vlm_config.text_config.hidden_size
    if layer is None:
        layer = checkpoint_align_layer(resolved)
        layer = default_layer(num_layers) if layer is None else layer
    if log is not None:
        log(f"{checkpoint_label(resolved)}: features of hidden_states[{layer}] of {num_layers} "
            f"(width {hidden}) for {len(frames)} frames on {torch_device}")
    features = extract_features(policy, frames, layer, config.feature_batch)
    del policy
    gc.collect()
    if torch_device.type == "cuda":
        torch.cuda.empty_cache()
    head, losses = train_probe(features, depth, valid, train_idx, config, torch_device)
    n_cams = depth.shape[1]
    frame_ids = np.repeat(test_idx, n_cams)
    camera_ids = np.tile(np.arange(n_cams), len(test_idx))
    pred = predict_depth(head, features, frame_ids, camera_ids, n_cams).view(len(test_idx), n_cams, *depth.shape[2:])
    metrics = metrics_by_camera(pred, depth[test_idx], valid[test_idx], frames.roles)
    shown = predict_depth(head, features, [f for f, _ in examples], [c for _, c in examples], n_cams)
    window = max(config.log_every, 1)
    curve = [_finite(np.mean(losses[s:s + window])) for s in range(0, len(losses), window)]
    report = {"checkpoint": str(resolved), "label": checkpoint_label(resolved), "layer": layer,
              "num_layers": num_layers, "hidden_size": hidden, "dtype": dtype, "metrics": metrics,
              "loss_curve": curve, "loss_curve_every": window}
    return ProbeRun(report, shown, losses)


def pick_examples(test_idx: np.ndarray, n_cams: int, count: int = 3) -> list[tuple[int, int]]:
    """``count`` (frame, camera) pairs spread over the test frames, cycling through the cameras."""
    if len(test_idx) == 0 or count <= 0:
        return []
    spots = np.linspace(0, len(test_idx) - 1, count).round().astype(int)
    return [(int(test_idx[s]), k % n_cams) for k, s in enumerate(spots)]


def run_depth_probe(checkpoints: Sequence[str | Path], frames: DepthFrames, out: str | Path | None = None,
                    layer: int | None = None, config: ProbeConfig | None = None, test_episodes: int = 1,
                    device: str = "auto", dtype: str | None = None, n_examples: int = 3,
                    log: Callable[[str], None] | None = None) -> dict:
    """Probe each checkpoint on the same frames, split, layer and probe settings; write the report.

    The layer is resolved once for all (``layer``, else the first checkpoint that has an
    align.json, else ``default_layer``) so that an SF checkpoint and its baseline are compared
    at the same depth. Writes ``depth_probe.json`` and two figures under ``out`` when given.
    """
    if not checkpoints:
        raise ValueError("give at least one checkpoint")
    config = config or ProbeConfig()
    train_idx, test_idx = frames.split(test_episodes)
    depth, valid = depth_targets(frames, config.out_size, config.max_depth)
    if layer is None:
        from ..train.checkpoint import resolve_checkpoint

        layer = next((k for k in (checkpoint_align_layer(resolve_checkpoint(c)) for c in checkpoints)
                      if k is not None), None)
    examples = pick_examples(test_idx, len(frames.roles), n_examples)
    runs = []
    for checkpoint in checkpoints:
        run = probe_checkpoint(checkpoint, frames, depth, valid, train_idx, test_idx, layer, config, examples,
                               device, dtype, log)
        layer = run.report["layer"]  # a default resolved on the first model holds for the rest
        runs.append(run)
        if log is not None:
            m = run.report["metrics"]["overall"]
            log(f"{run.report['label']}: AbsRel {_fmt(m['abs_rel'])}  RMSE {_fmt(m['rmse'])} m  "
                f"δ<1.25 {_fmt(m['delta1'])}")
    _dedupe_labels([r.report for r in runs])
    constant = constant_prediction(depth, valid, train_idx, test_idx)
    seeds = lambda idx: sorted(set(frames.episode[idx].tolist()))  # noqa: E731
    report = {
        "frames": frames.meta | {"roles": list(frames.roles), "count": len(frames)},
        "split": {"train_episodes": seeds(train_idx), "test_episodes": seeds(test_idx),
                  "train_frames": int(len(train_idx)), "test_frames": int(len(test_idx))},
        "layer": layer,
        "probe": config.to_dict(),
        "metrics_pixels": "pooled over the valid pixels of the held-out episodes' frames",
        "constant_baseline": metrics_by_camera(constant, depth[test_idx], valid[test_idx], frames.roles),
        "checkpoints": [r.report for r in runs],
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / REPORT_FILE).write_text(json.dumps(report, indent=1, allow_nan=False))
        plot_examples(out / EXAMPLES_FIGURE, frames, depth, valid, examples, runs)
        plot_metrics(out / METRICS_FIGURE, report)
    return report


def _dedupe_labels(reports: list[dict]) -> None:
    seen: dict[str, int] = {}
    for r in reports:
        n = seen.get(r["label"], 0)
        seen[r["label"]] = n + 1
        if n:
            r["label"] = f"{r['label']} ({n + 1})"


def _finite(value: float) -> float | None:
    """JSON has no NaN: a diverged loss is reported as null."""
    value = float(value)
    return value if math.isfinite(value) else None


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


# --------------------------------------------------------------------------------------------
# Figures (matplotlib's object API: no pyplot, no display backend)


def plot_examples(path: Path, frames: DepthFrames, depth: torch.Tensor, valid: torch.Tensor,
                  examples: Sequence[tuple[int, int]], runs: Sequence[ProbeRun]) -> None:
    """Rows: held-out (frame, camera) examples; columns: the letterboxed image, true depth, each probe."""
    from matplotlib.figure import Figure

    if not examples:
        return
    cols = 2 + len(runs)
    fig = Figure(figsize=(2.4 * cols, 2.4 * len(examples)), layout="constrained")
    axes = fig.subplots(len(examples), cols, squeeze=False)
    for row, (f, c) in enumerate(examples):
        rgb, _ = letterbox_nearest(frames.images[f, c], 4 * depth.shape[-1])
        true = depth[f, c].numpy()
        mask = valid[f, c].numpy()
        lo, hi = (np.percentile(true[mask], [2, 98]) if mask.any() else (0.0, 1.0))
        panels = [("image", None), ("true depth", true)] + [(r.report["label"], r.examples[row].numpy()) for r in runs]
        for col, (title, value) in enumerate(panels):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if value is None:
                ax.imshow(rgb)
                ax.set_ylabel(f"{frames.roles[c]}\nepisode {frames.episode[f]}", fontsize=8)
            else:
                shown = np.ma.masked_where(~mask, value)
                image = ax.imshow(shown, cmap="turbo", vmin=lo, vmax=hi, interpolation="nearest")
                if col == cols - 1:
                    fig.colorbar(image, ax=ax, shrink=0.8, label="m")
            if row == 0:
                ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=100)


def plot_metrics(path: Path, report: dict) -> None:
    """Grouped bars per camera (and overall): AbsRel (lower is better) and δ<1.25 (higher is better)."""
    from matplotlib.figure import Figure

    groups = ["overall", *report["frames"]["roles"]]
    series = [(r["label"], r["metrics"]) for r in report["checkpoints"]] + [("constant", report["constant_baseline"])]
    fig = Figure(figsize=(4 + 1.2 * len(groups) * len(series) / 2, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    width = 0.8 / len(series)
    x = np.arange(len(groups))
    for ax, key, title in ((axes[0], "abs_rel", "AbsRel ↓"), (axes[1], "delta1", "δ < 1.25 ↑")):
        for k, (label, metrics) in enumerate(series):
            values = [metrics[g][key] if metrics[g][key] is not None else np.nan for g in groups]
            ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, label=label,
                   hatch="//" if label == "constant" else None, alpha=0.6 if label == "constant" else 1.0)
        ax.set_xticks(x, groups, fontsize=8)
        ax.set_title(f"{title}  (layer {report['layer']})", fontsize=10)
    axes[1].set_ylim(0, 1)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.savefig(path, dpi=100)


__all__ = ["DepthFrames", "DepthProbeHead", "ProbeConfig", "ProbeRun", "checkpoint_align_layer", "collect_twin_frames",
           "constant_prediction", "default_layer", "depth_metrics", "depth_targets", "extract_features",
           "letterbox_nearest", "load_or_collect", "mean_log_depth", "metrics_by_camera", "pick_examples",
           "predict_depth", "probe_checkpoint", "run_depth_probe", "silog_loss", "train_probe"]
