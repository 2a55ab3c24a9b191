"""The VGGT aggregator: the frozen 3-D teacher of Spatial Forcing.

Written for this project from the published architecture (VGGT, Wang et al. 2025) with the
parameter names and shapes of the official `facebookresearch/vggt` code, so that the
`aggregator.*` entries of the released `facebook/VGGT-1B` checkpoint load with strict=True.
Only the aggregator is here: SF needs its tokens, not the camera / depth / point / track heads.

Structure (full size, 909 M parameters):

    patch_embed      DINOv2 ViT-L/14 with 4 registers (its own 24 blocks, LayerNorm eps 1e-6,
                     LayerScale, no QK-norm, learned position embedding on a 37×37 grid that
                     is resized bicubically for other grids); its normalised patch tokens are
                     the input of the alternating-attention stack.
    camera_token     [1, 2, 1, C]  \\ set 0 is used by the first view, set 1 by all others:
    register_token   [1, 2, 4, C]  /  the first view is the reference frame, so order matters.
    frame_blocks.i   attention within each view    } 24 pairs, LayerNorm eps 1e-5, QK LayerNorm,
    global_blocks.i  attention across all views    } 2-D RoPE (base 100), LayerScale 0.01.

Per view the token sequence is [camera, 4 registers, h·w patches] (patch_start_idx = 5).
Layer i's output is concat(frame_block_i output, global_block_i output) → 2C = 2048 channels.

Unlike the official module, `forward` keeps only the layers asked for (the stock model keeps
all 24 outputs, ~405 MB per 3-view sample in bf16), stops after the deepest one, and returns
patch tokens only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AggregatorConfig:
    """Sizes of the aggregator. Defaults are facebook/VGGT-1B's."""

    img_size: int = 518  # the ViT's position embedding covers (img_size / patch_size)² patches
    patch_size: int = 14
    embed_dim: int = 1024  # ViT width == block width (the ViT's tokens feed the blocks directly)
    depth: int = 24  # frame/global block pairs
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4  # used by both the ViT and the aggregator
    qk_norm: bool = True
    rope_freq: float = 100.0  # <= 0 disables RoPE
    init_values: float = 0.01  # LayerScale init of the aggregator blocks
    vit_depth: int = 24
    vit_num_heads: int = 16
    vit_init_values: float = 1.0  # LayerScale init of the ViT blocks (as VGGT builds it)
    vit_interpolate_antialias: bool = True  # VGGT resizes the position embedding with antialias

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        for heads in (self.num_heads, self.vit_num_heads):
            if self.embed_dim % heads or (self.embed_dim // heads) % 4:
                raise ValueError(f"embed_dim {self.embed_dim} / {heads} heads must give a head dim divisible by 4")

    @classmethod
    def tiny(cls) -> AggregatorConfig:
        """A few-thousand-parameter model with the same structure, for CPU tests."""
        return cls(img_size=56, embed_dim=32, depth=2, num_heads=2, vit_depth=1, vit_num_heads=2)

    @property
    def grid(self) -> int:
        """Side of the ViT's native patch grid (37 for 518 / 14)."""
        return self.img_size // self.patch_size

    @property
    def patch_start_idx(self) -> int:
        """Index of the first patch token in a view's sequence: camera + registers come first."""
        return 1 + self.num_register_tokens

    @property
    def out_dim(self) -> int:
        """Channels of a layer output: frame ‖ global."""
        return 2 * self.embed_dim


# --------------------------------------------------------------------------- building blocks


class LayerScale(nn.Module):
    """Per-channel residual scale (CaiT); parameter `gamma`."""

    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """fc1 → exact GELU → fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def rope_tables(pos: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [N, 1, T, head_dim] for 2-D RoPE at integer positions `pos` [N, T, 2] (y, x).

    The head dimension is split in halves: the first half rotates with the row (y), the second
    with the column (x). Within a half of size d, channel j and j + d/2 form a rotation pair
    with angle p·base^(-2j/d), j < d/2 (the "rotate half" layout). Built once per forward and
    shared by every block, in float32.
    """
    d = head_dim // 2
    inv_freq = base ** (-torch.arange(0, d, 2, device=pos.device, dtype=torch.float32) / d)  # [d/2]
    halves = []
    for axis in (0, 1):
        angles = pos[..., axis].to(torch.float32)[..., None] * inv_freq  # [N, T, d/2]
        halves.append(torch.cat([angles, angles], dim=-1))  # [N, T, d]
    angles = torch.cat(halves, dim=-1)[:, None]  # [N, 1, T, head_dim]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate q or k [N, heads, T, head_dim] with tables from `rope_tables`."""

    def rotate_half(t: torch.Tensor) -> torch.Tensor:
        a, b = t.chunk(2, dim=-1)
        return torch.cat([-b, a], dim=-1)

    y, xx = x.chunk(2, dim=-1)  # row half, column half
    cy, cx = cos.chunk(2, dim=-1)
    sy, sx = sin.chunk(2, dim=-1)
    out = torch.cat([y * cy + rotate_half(y) * sy, xx * cx + rotate_half(xx) * sx], dim=-1)
    return out.to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with optional QK LayerNorm and 2-D RoPE.

    Parameters: qkv, q_norm/k_norm (LayerNorm over the head dim, eps 1e-5, only with
    qk_norm), proj.
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: bool):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        n, t, c = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = F.scaled_dot_product_attention(q, k, v.to(q.dtype))  # q/k may be float32 after QK-norm
        return self.proj(out.transpose(1, 2).reshape(n, t, c))


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1 x)); x + ls2(mlp(norm2 x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, init_values: float, qk_norm: bool, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qk_norm)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patches → tokens: a strided conv named `proj`."""

    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [N, h*w, C]


class DinoViT(nn.Module):
    """DINOv2 ViT with registers, used as VGGT's `patch_embed`; returns normalised patch tokens.

    Token order inside: [cls, registers, patches]; only cls and patches get the learned
    position embedding (registers are inserted after it is added, as in DINOv2).
    `mask_token` is unused at inference but part of the checkpoint.
    """

    def __init__(self, cfg: AggregatorConfig):
        super().__init__()
        dim = cfg.embed_dim
        self.patch_size = cfg.patch_size
        self.num_register_tokens = cfg.num_register_tokens
        self.antialias = cfg.vit_interpolate_antialias
        self.patch_embed = PatchEmbed(cfg.patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.grid**2, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.num_register_tokens, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.blocks = nn.ModuleList(
            Block(dim, cfg.vit_num_heads, cfg.mlp_ratio, cfg.vit_init_values, qk_norm=False, eps=1e-6)
            for _ in range(cfg.vit_depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """[1, 1 + h*w, C]: the cls entry plus the patch grid resized (bicubic) to h×w."""
        pos = self.pos_embed
        side = math.isqrt(pos.shape[1] - 1)
        if (h, w) == (side, side):
            return pos
        cls, grid = pos[:, :1], pos[:, 1:].float()
        grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", antialias=self.antialias)
        grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1).to(pos.dtype)
        return torch.cat([cls, grid], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images [N, 3, H, W] → normalised patch tokens [N, (H/p)·(W/p), C]."""
        n, _, height, width = images.shape
        x = self.patch_embed(images)
        # No casts here on purpose: under autocast the conv gives bf16 and torch.cat / + promote
        # to the float32 parameters, so the residual stream stays float32 as in the official model.
        x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1)
        x = x + self.position_embedding(height // self.patch_size, width // self.patch_size)
        x = torch.cat([x[:, :1], self.register_tokens.expand(n, -1, -1), x[:, 1:]], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 1 + self.num_register_tokens :]


# --------------------------------------------------------------------------- the aggregator


class AggregatorOutput(NamedTuple):
    """Patch tokens of the requested layers, each [B, V, h*w, 2C], and the patch grid (h, w)."""

    layers: list[torch.Tensor]
    grid: tuple[int, int]


def _per_view(tokens: torch.Tensor, num_views: int) -> torch.Tensor:
    """Special tokens [1, 2, n, C] → [V, n, C]: set 0 for the first view, set 1 for all others."""
    first, others = tokens[0, :1], tokens[0, 1:2]
    return torch.cat([first, others.expand(num_views - 1, -1, -1)], dim=0)


class Aggregator(nn.Module):
    """VGGT's alternating frame/global attention over a batch of multi-view images."""

    def __init__(self, config: AggregatorConfig | None = None):
        super().__init__()
        cfg = config or AggregatorConfig()
        self.config = cfg
        self.patch_embed = DinoViT(cfg)
        block = dict(
            dim=cfg.embed_dim,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            init_values=cfg.init_values,
            qk_norm=cfg.qk_norm,
            eps=1e-5,  # the aggregator's blocks use nn.LayerNorm's default, unlike the ViT's 1e-6
        )
        self.frame_blocks = nn.ModuleList(Block(**block) for _ in range(cfg.depth))
        self.global_blocks = nn.ModuleList(Block(**block) for _ in range(cfg.depth))
        self.camera_token = nn.Parameter(torch.zeros(1, 2, 1, cfg.embed_dim))
        self.register_token = nn.Parameter(torch.zeros(1, 2, cfg.num_register_tokens, cfg.embed_dim))
        self.reset_buffers()
        self._init_weights()

    def reset_buffers(self, device: torch.device | str | None = None) -> None:
        """(Re)create the ImageNet mean/std buffers. Not persistent: they are not in the checkpoint.

        Needed again after loading with assign=True into a model built on the meta device.
        """
        for name, value in (("_resnet_mean", IMAGENET_MEAN), ("_resnet_std", IMAGENET_STD)):
            self.register_buffer(name, torch.tensor(value, device=device).view(1, 1, 3, 1, 1), persistent=False)

    def _init_weights(self) -> None:
        # Only for random models (tests); the teacher always loads the released weights.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.patch_embed.pos_embed, std=0.02)
        for p in (self.patch_embed.cls_token, self.patch_embed.register_tokens, self.camera_token, self.register_token):
            nn.init.normal_(p, std=1e-6)

    def resolve_layers(self, layers: Sequence[int]) -> list[int]:
        """Layer indices (negative counts from the end) → distinct indices in 0..depth-1, in order."""
        depth = self.config.depth
        out: list[int] = []
        for i in layers:
            j = i + depth if i < 0 else i
            if not 0 <= j < depth:
                raise ValueError(f"layer {i} out of range for an aggregator of depth {depth}")
            if j not in out:
                out.append(j)
        if not out:
            raise ValueError("ask for at least one layer")
        return out

    def forward(self, images: torch.Tensor, layers: Sequence[int] = (-1,)) -> AggregatorOutput:
        """images [B, V, 3, H, W] in [0, 1] (H, W multiples of the patch size) → AggregatorOutput.

        `layers` picks which layer outputs to return (in that order); layer i is the output of
        the i-th frame/global pair. Blocks after the deepest requested layer are not run.
        """
        if images.ndim != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be [B, V, 3, H, W], got {tuple(images.shape)}")
        b, v, _, height, width = images.shape
        p = self.config.patch_size
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {p}")
        wanted = self.resolve_layers(layers)
        h, w = height // p, width // p
        start = self.config.patch_start_idx

        x = ((images - self._resnet_mean) / self._resnet_std).reshape(b * v, 3, height, width)
        x = x.to(self.patch_embed.patch_embed.proj.weight.dtype)  # float32 pixels into bf16 weights
        patches = self.patch_embed(x)  # [B*V, h*w, C]
        special = torch.cat([_per_view(self.camera_token, v), _per_view(self.register_token, v)], dim=1)
        special = special.repeat(b, 1, 1)  # [B*V, start, C], views vary fastest
        tokens = torch.cat([special, patches], dim=1)  # [B*V, T, C]
        t, c = tokens.shape[1:]

        frame_rope = global_rope = None
        if self.config.rope_freq > 0:
            pos = self._positions(h, w, images.device)  # [T, 2]
            head_dim = c // self.config.num_heads
            frame_rope = rope_tables(pos[None], head_dim, self.config.rope_freq)
            global_rope = rope_tables(pos.repeat(v, 1)[None], head_dim, self.config.rope_freq)

        outputs: dict[int, torch.Tensor] = {}
        for i in range(max(wanted) + 1):
            tokens = self.frame_blocks[i](tokens.reshape(b * v, t, c), frame_rope)
            frame_out = tokens.reshape(b, v, t, c)[:, :, start:] if i in wanted else None
            tokens = self.global_blocks[i](tokens.reshape(b, v * t, c), global_rope)
            if frame_out is not None:
                global_out = tokens.reshape(b, v, t, c)[:, :, start:]
                outputs[i] = torch.cat([frame_out, global_out], dim=-1)
        return AggregatorOutput([outputs[i] for i in wanted], (h, w))

    def _positions(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """(y, x) RoPE positions of one view's tokens [T, 2]: special tokens at 0, patch (r, c) at (r+1, c+1)."""
        rows = torch.arange(h, device=device).repeat_interleave(w)
        cols = torch.arange(w, device=device).repeat(h)
        patch = torch.stack([rows, cols], dim=-1) + 1
        special = torch.zeros(self.config.patch_start_idx, 2, dtype=patch.dtype, device=device)
        return torch.cat([special, patch], dim=0)
