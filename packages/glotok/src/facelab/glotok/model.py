"""The GloTok tokenizer: VQGAN-style encoder -> two adapters -> two codebooks -> residual
refiners -> decoder on the channel-wise concatenation.

``GloTokConfig`` holds the paper's defaults (256 px, 16x downsampling, code dim 8, 4,096
semantic + 12,288 visual codes, beta 0.25); the encoder/decoder follow taming's VQGAN /
LlamaGen's VQ ds16 (``ch=128``, ``ch_mult=(1, 1, 2, 2, 4)``, 2 residual blocks per level,
self-attention in the middle block, ``z_channels=256``). The downsampling factor is
``2 ** (len(channel_mult) - 1)``.

Residual learning (paper): ``Z_res = R(Zq)`` with ``R`` one transformer block per branch over
the token grid; ``L_res = ||sg[Z] - Zq - Z_res||^2`` (mean squared, per branch, summed) with
``Zq`` the quantizer's straight-through output; the decoder receives ``Zq + Z_res``. Our block:
a linear lift of the ``code_dim`` channels to ``residual_width``, 2-D sin-cos positions (any
grid size), one pre-norm attention + MLP block, and a zero-initialized projection back (so
training starts from ``Z_res = 0``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from facelab.core.errors import FacelabTypeError, RangeError, ShapeError, expect_finite_in_range
from facelab.core.hub import PretrainedMixin, register_model
from facelab.glotok.quantize import Quantized, VectorQuantizer


@dataclass
class GloTokConfig:
    """Tokenizer architecture. Defaults: the paper (256 px, 16x, code dim 8, 4,096 + 12,288)."""

    image_size: int = 256
    in_channels: int = 3
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 256
    dropout: float = 0.0
    code_dim: int = 8
    semantic_codes: int = 4096
    visual_codes: int = 12288
    beta: float = 0.25
    l2_normalize: bool = True
    residual: bool = True
    residual_width: int = 256
    residual_heads: int = 8
    residual_mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        for name in (
            "image_size", "in_channels", "base_channels", "num_res_blocks", "z_channels",
            "code_dim", "semantic_codes", "visual_codes", "residual_width", "residual_heads",
        ):  # fmt: skip
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise RangeError(f"{name}: expected a positive int, got {v!r}")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise RangeError(f"channel_mult: expected positive ints, got {self.channel_mult}")
        if self.image_size % self.downsample:
            raise RangeError(
                f"image_size: expected a multiple of the downsampling factor {self.downsample}, "
                f"got {self.image_size}"
            )
        if self.residual_width % self.residual_heads:
            raise RangeError(
                f"residual_width {self.residual_width} must be divisible by residual_heads "
                f"{self.residual_heads}"
            )
        if not 0.0 <= self.dropout < 1.0 or self.beta < 0 or self.residual_mlp_ratio <= 0:
            raise RangeError("dropout in [0, 1), beta >= 0 and residual_mlp_ratio > 0 expected")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def grid(self) -> int:
        return self.image_size // self.downsample


def _groups(ch: int) -> int:
    for g in (32, 16, 8, 4, 2):
        if ch % g == 0:
            return g
    return 1


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(ch), ch, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention (VQGAN's middle block)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = _norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)  # (b, hw, c)
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


class Encoder(nn.Module):
    def __init__(self, cfg: GloTokConfig) -> None:
        super().__init__()
        ch = cfg.base_channels
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        blocks: list[nn.Module] = []
        cin = ch
        for level, mult in enumerate(cfg.channel_mult):
            cout = ch * mult
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(cin, cout, cfg.dropout))
                cin = cout
            if level != len(cfg.channel_mult) - 1:
                blocks.append(nn.Conv2d(cin, cin, 3, stride=2, padding=1))
        self.down = nn.Sequential(*blocks)
        self.mid = nn.Sequential(
            ResBlock(cin, cin, cfg.dropout), AttnBlock(cin), ResBlock(cin, cin, cfg.dropout)
        )
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    def __init__(self, cfg: GloTokConfig) -> None:
        super().__init__()
        ch = cfg.base_channels
        cin = ch * cfg.channel_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = nn.Sequential(
            ResBlock(cin, cin, cfg.dropout), AttnBlock(cin), ResBlock(cin, cin, cfg.dropout)
        )
        blocks: list[nn.Module] = []
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            cout = ch * mult
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock(cin, cout, cfg.dropout))
                cin = cout
            if level != 0:
                blocks.append(Upsample(cin))
        self.up = nn.Sequential(*blocks)
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))


def sincos_2d(h: int, w: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """``(h*w, dim)`` 2-D sine-cosine positions (half the channels for rows, half for columns)."""
    quarter = dim // 4
    freq = 1.0 / (
        10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / max(quarter, 1))
    )
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    parts = []
    for coord in (ys.flatten(), xs.flatten()):
        ang = coord[:, None] * freq[None, :]
        parts += [ang.sin(), ang.cos()]
    pos = torch.cat(parts, dim=1)
    if pos.shape[1] < dim:
        pos = F.pad(pos, (0, dim - pos.shape[1]))
    return pos.to(dtype or torch.float32)


class ResidualRefiner(nn.Module):
    """``R``: one pre-norm transformer block over the token grid predicting the quantization
    residual of one branch (``(B, D, H, W)`` -> ``(B, D, H, W)``)."""

    def __init__(self, dim: int, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.lift = nn.Linear(dim, width)
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.attn_out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, zq: torch.Tensor) -> torch.Tensor:
        b, d, h, w = zq.shape
        x = self.lift(zq.flatten(2).transpose(1, 2))
        x = x + sincos_2d(h, w, x.shape[-1], x.device, x.dtype)
        q, k, v = self.qkv(self.norm1(x)).view(b, h * w, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, -1)
        x = x + self.attn_out(a)
        x = x + self.mlp(self.norm2(x))
        return self.out(x).transpose(1, 2).reshape(b, d, h, w)


@dataclass
class GloTokOutput:
    """``recon`` images; the two quantizer results; residual predictions (None without the
    residual module); ``loss_q`` = sum of both branches' L_Q; ``loss_res`` = sum of both
    branches' L_res (0 without the module)."""

    recon: torch.Tensor
    semantic: Quantized
    visual: Quantized
    residual_semantic: torch.Tensor | None
    residual_visual: torch.Tensor | None
    loss_q: torch.Tensor
    loss_res: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


def check_images(
    images: object, size: int, channels: int = 3, name: str = "images"
) -> torch.Tensor:
    """A float ``(B, channels, size, size)`` batch with finite values in [-1, 1]."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        got = (
            f"{images.dtype} tensor" if isinstance(images, torch.Tensor) else type(images).__name__
        )
        raise FacelabTypeError(f"{name}: expected a float tensor in [-1, 1], got {got}")
    if images.dim() != 4 or images.shape[1] != channels or tuple(images.shape[2:]) != (size, size):
        raise ShapeError(
            f"{name}: expected (B, {channels}, {size}, {size}) images, got shape {tuple(images.shape)}"
        )
    expect_finite_in_range(images, -1.0, 1.0, name)
    return images


@register_model(key="facelab.glotok.GloTok")
class GloTok(nn.Module, PretrainedMixin):
    """The dual-codebook tokenizer. ``GloTok(GloTokConfig(...))`` or ``GloTok(**fields)``."""

    def __init__(self, config: GloTokConfig | None = None, **fields: Any) -> None:
        super().__init__()
        if config is not None and fields:
            raise FacelabTypeError("GloTok: pass a GloTokConfig or keyword fields, not both")
        cfg = config if config is not None else GloTokConfig(**fields)
        if not isinstance(cfg, GloTokConfig):
            raise FacelabTypeError(f"GloTok: expected a GloTokConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.semantic_adapter = nn.Conv2d(cfg.z_channels, cfg.code_dim, 1)
        self.visual_adapter = nn.Conv2d(cfg.z_channels, cfg.code_dim, 1)
        self.semantic_quantizer = VectorQuantizer(
            cfg.semantic_codes, cfg.code_dim, cfg.beta, cfg.l2_normalize
        )
        self.visual_quantizer = VectorQuantizer(
            cfg.visual_codes, cfg.code_dim, cfg.beta, cfg.l2_normalize
        )
        if cfg.residual:
            args = (cfg.code_dim, cfg.residual_width, cfg.residual_heads, cfg.residual_mlp_ratio)
            self.semantic_residual: ResidualRefiner | None = ResidualRefiner(*args)
            self.visual_residual: ResidualRefiner | None = ResidualRefiner(*args)
        else:
            self.semantic_residual = self.visual_residual = None
        self.post_quant = nn.Conv2d(2 * cfg.code_dim, cfg.z_channels, 1)
        self.decoder = Decoder(cfg)

    @property
    def config(self) -> dict[str, Any]:
        return dataclasses.asdict(self.cfg)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> GloTok:
        return cls(GloTokConfig(**config))

    @property
    def semantic_codebook(self) -> torch.nn.Parameter:
        """The learnable semantic codebook ``(K_sem, code_dim)`` (what L_hist supervises)."""
        return self.semantic_quantizer.codebook

    @property
    def grid(self) -> int:
        return self.cfg.grid

    def check_images(self, images: object) -> torch.Tensor:
        return check_images(images, self.cfg.image_size, self.cfg.in_channels)

    def quantize(self, images: torch.Tensor) -> tuple[Quantized, Quantized]:
        z = self.encoder(self.check_images(images))
        return self.semantic_quantizer(self.semantic_adapter(z)), self.visual_quantizer(
            self.visual_adapter(z)
        )

    def _refine(self, zq_sem: torch.Tensor, zq_vis: torch.Tensor):
        if self.semantic_residual is None:
            return zq_sem, zq_vis, None, None
        r_sem, r_vis = self.semantic_residual(zq_sem), self.visual_residual(zq_vis)
        return zq_sem + r_sem, zq_vis + r_vis, r_sem, r_vis

    def decode_features(self, feat_sem: torch.Tensor, feat_vis: torch.Tensor) -> torch.Tensor:
        """Images from the (refined) quantized maps: the decoder on their concatenation."""
        return self.decoder(self.post_quant(torch.cat([feat_sem, feat_vis], dim=1)))

    def forward(self, images: torch.Tensor) -> GloTokOutput:
        sem, vis = self.quantize(images)
        f_sem, f_vis, r_sem, r_vis = self._refine(sem.z_q, vis.z_q)
        if r_sem is not None:
            loss_res = F.mse_loss(sem.z_q + r_sem, sem.z.detach()) + F.mse_loss(
                vis.z_q + r_vis, vis.z.detach()
            )
        else:
            loss_res = sem.loss.new_zeros(())
        recon = self.decode_features(f_sem, f_vis)
        return GloTokOutput(recon, sem, vis, r_sem, r_vis, sem.loss + vis.loss, loss_res)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token indices ``(semantic (B, h, w), visual (B, h, w))``."""
        sem, vis = self.quantize(images)
        return sem.indices, vis.indices

    def decode(self, semantic: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """Images from token indices (the residual module applied to the looked-up codes)."""
        if semantic.shape != visual.shape:
            raise ShapeError(
                f"decode: semantic and visual indices must have one shape, got "
                f"{tuple(semantic.shape)} and {tuple(visual.shape)}"
            )
        zq_sem, zq_vis = (
            self.semantic_quantizer.lookup(semantic),
            self.visual_quantizer.lookup(visual),
        )
        f_sem, f_vis, _, _ = self._refine(zq_sem, zq_vis)
        return self.decode_features(f_sem, f_vis)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Reconstructions in [-1, 1] (clamped), batch by batch, in eval mode."""
        was = self.training
        self.eval()
        try:
            out = [
                self(images[s : s + batch_size]).recon.clamp(-1, 1)
                for s in range(0, images.shape[0], batch_size)
            ]
        finally:
            self.train(was)
        return torch.cat(out)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def grid_tokens(cfg: GloTokConfig) -> int:
    return cfg.grid * cfg.grid


__all__ = [
    "AttnBlock",
    "Decoder",
    "Encoder",
    "GloTok",
    "GloTokConfig",
    "GloTokOutput",
    "ResBlock",
    "ResidualRefiner",
    "check_images",
    "count_parameters",
    "grid_tokens",
    "math",
    "sincos_2d",
]
