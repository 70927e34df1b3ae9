"""The reference denoiser of UIFace / IDiff-Face as a diffusers ``ModelMixin``.

Layout (constructor fields named as in the reference model YAML; defaults = UIFace's
``unet_cond_ca_cpd25_uncond20``, 216,341,187 parameters):

* ``image_proj`` 3x3 conv to ``initial_channels``; a sinusoidal time embedding (``[cos, sin]``
  of ``initial_channels`` frequencies, ``lin1``/``lin2`` to ``4 * initial_channels``);
* the ID vector (512) -> ``context_emb`` Linear -> ``context_channels`` (256); a learnable
  ``empty_context_embedding`` (256) replaces it for unconditional samples;
* ``down``: per resolution ``n_blocks_per_resolution`` blocks (a residual block with adaptive
  group norm from the time embedding, plus an attention block where ``is_attention``), a strided
  conv between resolutions; ``channel_multipliers`` are *cumulative* (96 x [1, 2, 2, 2] gives
  96 / 192 / 384 / 768);
* ``middle``: residual, attention, residual; ``up``: per resolution ``n_blocks + 1`` blocks on
  the concatenated skip connections, a transposed conv between resolutions;
* every attention block: 1x1 conv in, self-attention over positions, cross-attention over the
  context tokens (the 256-d context is projected *inside each block* by ``c_proj_in`` to
  ``context_channels x n_tokens``, 32 tokens of 256 channels, then group-normed), a GELU feed
  forward, 1x1 conv out (zero-initialised); ``attention_heads = -1`` means ``width //
  attention_head_channels`` heads.

The state-dict keys and shapes are the reference's, so its checkpoint loads with
``strict=True`` (:meth:`ConditionalUNet.from_reference_checkpoint`). GroupNorm(32) needs every
width to be a multiple of 32.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from facelab.core.diffusion.attention import AttentionController, AttentionSite, attend
from facelab.core.diffusion.hooks import resize_extra_input
from facelab.core.errors import (
    FormatError,
    KeyMismatchError,
    RangeError,
    ShapeError,
    UnknownNameError,
)

GROUPS = 32  # GroupNorm groups everywhere in the reference
#: buffers of the reference's diffusion wrapper (``DenoisingDiffusionProbabilisticModel``) that
#: its checkpoints also hold; they are the T = 1000 linear schedule, not denoiser weights
SCHEDULE_BUFFERS = (
    "betas",
    "alphas",
    "sigmas",
    "sqrt_alphas_inv",
    "alpha_bars",
    "sqrt_alpha_bars",
    "sqrt_one_minus_alpha_bars",
    "one_minus_alphas_over_sqrt_one_minus_alpha_bars",
)


def _group_norm(channels: int, where: str) -> nn.GroupNorm:
    if channels % GROUPS:
        raise RangeError(
            f"{where}: GroupNorm({GROUPS}) needs a width that is a multiple of {GROUPS}, "
            f"got {channels}"
        )
    return nn.GroupNorm(GROUPS, channels)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class SinusoidalTimeEmbedding(nn.Module):
    """``[cos(t f), sin(t f)]`` with ``f_k = 10000^(-k / half)`` -> Linear -> SiLU -> Linear."""

    def __init__(self, channels: int, max_period: float = 10000.0) -> None:
        super().__init__()
        width = channels // 4
        half = width // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        # not a buffer: the reference keeps it out of the state dict
        self._freqs = freqs
        self.lin1 = nn.Linear(width, channels)
        self.act = nn.SiLU()
        self.lin2 = nn.Linear(channels, channels)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t[:, None].float() * self._freqs.to(t.device)[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(self.lin1.weight.dtype)
        return self.lin2(self.act(self.lin1(emb)))


class AdaptiveGroupNorm(nn.Module):
    """``(1 + scale) * GroupNorm(x) + shift``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _group_norm(channels, "adaptive norm")

    def forward(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(shift, 1 + scale, self.norm(x))


class ResidualBlock(nn.Module):
    """GN-SiLU-conv, time embedding as AdaGN scale/shift, SiLU-conv (zero-init), shortcut."""

    def __init__(self, in_channels: int, out_channels: int, time_channels: int) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_channels, "residual block")
        self.act1 = nn.SiLU()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb = nn.Sequential(nn.SiLU(), nn.Linear(time_channels, out_channels))
        self.scale_emb = nn.Linear(out_channels, out_channels)
        self.shift_emb = nn.Linear(out_channels, out_channels)
        self.norm2 = AdaptiveGroupNorm(out_channels)
        self.act2 = nn.SiLU()
        self.conv2 = _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.shortcut: nn.Module = (
            nn.Conv2d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act1(self.norm1(x)))
        emb = self.time_emb(temb)
        h = self.norm2(
            h, self.scale_emb(emb)[:, :, None, None], self.shift_emb(emb)[:, :, None, None]
        )
        return self.conv2(self.act2(h)) + self.shortcut(x)


class MultiHeadAttention(nn.Module):
    """q/k/v/out as 1x1 ``Conv1d`` on ``(B, C, L)`` (the reference's key layout); channel
    ``head * head_channels + c`` belongs to head ``head``."""

    def __init__(
        self, channels: int, heads: int, head_channels: int, kv_channels: int | None = None
    ):
        super().__init__()
        inner = heads * head_channels
        self.heads, self.head_channels = heads, head_channels
        kv = channels if kv_channels is None else kv_channels
        self.to_q = nn.Conv1d(channels, inner, 1)
        self.to_k = nn.Conv1d(kv, inner, 1)
        self.to_v = nn.Conv1d(kv, inner, 1)
        self.proj_out = nn.Conv1d(inner, channels, 1)

    def _split(self, t: torch.Tensor) -> torch.Tensor:  # (B, H*C, L) -> (B, H, L, C)
        b, _, n = t.shape
        return t.view(b, self.heads, self.head_channels, n).transpose(-1, -2)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None,
        site: AttentionSite,
        controller: AttentionController | None,
    ) -> torch.Tensor:
        c = x if context is None else context
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(c)), self._split(self.to_v(c))
        out = attend(q, k, v, site, controller)  # (B, H, Lq, C)
        b, _, n, _ = out.shape
        return self.proj_out(out.transpose(-1, -2).reshape(b, -1, n).to(x.dtype))


class CrossAttentionBlock(nn.Module):
    """The reference ``SpatialEmbeddingCrossAttentionBlock`` (self- then cross-attention, feed
    forward, one shared ``x_norm``); ``extra_tokens`` (B, N, context_channels) are appended to
    the block's ID tokens after their norm (our extension: further condition sets)."""

    def __init__(
        self, channels: int, context_channels: int, heads: int, head_channels: int, n_tokens: int
    ) -> None:
        super().__init__()
        if heads <= 0:
            heads = channels // head_channels
        inner = heads * head_channels
        self.heads, self.n_tokens, self.context_channels = heads, n_tokens, context_channels
        self.x_proj_in = nn.Conv2d(channels, inner, 1)
        self.x_proj_out = _zero(nn.Conv2d(inner, channels, 1))
        self.self_attention = MultiHeadAttention(inner, heads, head_channels)
        self.c_proj_in = nn.Linear(context_channels, context_channels * n_tokens)
        self.cross_attention = MultiHeadAttention(inner, heads, head_channels, context_channels)
        self.x_norm = _group_norm(inner, "attention block")
        self.c_norm = _group_norm(context_channels, "context norm")
        self.ff = nn.Sequential(nn.Linear(inner, inner * 4), nn.GELU(), nn.Linear(inner * 4, inner))
        self.name = ""  # set by the UNet (its module path)
        self.controller: AttentionController | None = None

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, extra_tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, _, h, w = x.shape
        x_in = x
        x = self.x_proj_in(x).flatten(2)  # (B, inner, HW)
        # (B, ctx * n) -> (B, ctx, n): channel-major, as the reference's "b (n d) -> b n d"
        tokens = self.c_norm(self.c_proj_in(c).view(b, self.context_channels, self.n_tokens))
        if extra_tokens is not None:
            tokens = torch.cat([tokens, extra_tokens.transpose(1, 2).to(tokens.dtype)], dim=2)
        ctl = self.controller
        x = self.self_attention(self.x_norm(x), None, AttentionSite(self.name, "self"), ctl) + x
        x = self.cross_attention(self.x_norm(x), tokens, AttentionSite(self.name, "cross"), ctl) + x
        x = self.ff(self.x_norm(x).transpose(1, 2)).transpose(1, 2) + x
        return self.x_proj_out(x.reshape(b, -1, h, w)) + x_in


class ResAttnBlock(nn.Module):
    """A down/up block: a residual block, then an attention block where the level has one."""

    def __init__(self, in_ch: int, out_ch: int, time_ch: int, attn: CrossAttentionBlock | None):
        super().__init__()
        self.res = ResidualBlock(in_ch, out_ch, time_ch)
        if attn is not None:
            self.attn = attn
        self.has_attention = attn is not None

    def forward(self, x, temb, c, extra):
        x = self.res(x, temb)
        return self.attn(x, c, extra) if self.has_attention else x


class MiddleBlock(nn.Module):
    def __init__(self, ch: int, time_ch: int, attn: CrossAttentionBlock) -> None:
        super().__init__()
        self.res1 = ResidualBlock(ch, ch, time_ch)
        self.attn = attn
        self.res2 = ResidualBlock(ch, ch, time_ch)

    def forward(self, x, temb, c, extra):
        return self.res2(self.attn(self.res1(x, temb), c, extra), temb)


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x, temb, c, extra):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(ch, ch, 4, stride=2, padding=1)

    def forward(self, x, temb, c, extra):
        return self.conv(x)


class ConditionalUNet(ModelMixin, ConfigMixin):
    """The UIFace / IDiff-Face reference denoiser (condition type "CA": cross-attention on ID
    tokens). ``model(x, t, context, condition_flag)`` -> predicted noise, shape of ``x``.

    Args follow the reference YAML. Ours: ``first_sample_unconditional`` (the reference always
    drops the context of sample 0 of a training batch; False turns that off) and
    ``n_context_tokens`` (None = ``attention_head_channels`` tokens, the reference's rule) and
    ``extra_input_channels`` (> 0: ``forward(..., extra_input=maps)`` adds pixel-aligned maps
    through a zero-initialized conv ``extra_input_proj`` after ``image_proj``; 0, the default,
    is the reference's layout and key set).
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        input_channels: int = 3,
        initial_channels: int = 96,
        channel_multipliers: Sequence[int] = (1, 2, 2, 2),
        is_attention: Sequence[bool] = (False, True, True, True),
        attention_heads: int = -1,
        attention_head_channels: int = 32,
        n_blocks_per_resolution: int = 2,
        condition_type: str = "CA",
        context_input_channels: int = 512,
        context_channels: int = 256,
        is_context_conditional: bool = True,
        n_context_classes: int = 0,
        learn_empty_context: bool = True,
        context_dropout_probability: float = 0.25,
        unconditioned_probability: float = 0.2,
        first_sample_unconditional: bool = True,
        n_context_tokens: int | None = None,
        extra_input_channels: int = 0,
    ) -> None:
        super().__init__()
        if str(condition_type).lower() != "ca" or not is_context_conditional:
            raise UnknownNameError(
                "condition_type: only the cross-attention conditioning of the released UIFace / "
                f"IDiff-Face models is built ('CA' with is_context_conditional=True), got "
                f"{condition_type!r} with is_context_conditional={is_context_conditional}"
            )
        mults, attn_at = list(channel_multipliers), list(is_attention)
        if not mults or len(mults) != len(attn_at):
            raise ShapeError(
                f"channel_multipliers and is_attention: expected equal, non-zero lengths, got "
                f"{len(mults)} and {len(attn_at)}"
            )
        if any(int(m) < 1 for m in mults) or n_blocks_per_resolution < 1:
            raise RangeError("channel_multipliers / n_blocks_per_resolution: expected ints >= 1")
        for name, p in (
            ("context_dropout_probability", context_dropout_probability),
            ("unconditioned_probability", unconditioned_probability),
        ):
            if not 0.0 <= float(p) < 1.0:
                raise RangeError(f"{name}: expected a probability in [0, 1), got {p}")
        self.context_input_channels = int(context_input_channels)
        self.unconditioned_probability = float(unconditioned_probability)
        self.first_sample_unconditional = bool(first_sample_unconditional)
        n_tokens = int(n_context_tokens or attention_head_channels)

        self.image_proj = nn.Conv2d(input_channels, initial_channels, 3, padding=1)
        if int(extra_input_channels) < 0:
            raise RangeError(
                f"extra_input_channels: expected an int >= 0, got {extra_input_channels}"
            )
        self.extra_input_channels = int(extra_input_channels)
        if self.extra_input_channels:
            # pixel-aligned extra input (ours, not in the reference): a zero-initialized conv of
            # the maps summed with image_proj, so training starts from the plain denoiser
            self.extra_input_proj = _zero(
                nn.Conv2d(self.extra_input_channels, initial_channels, 3, padding=1)
            )
        time_ch = initial_channels * 4
        self.time_emb = SinusoidalTimeEmbedding(time_ch)
        self.context_dropout: nn.Module = (
            nn.Dropout(context_dropout_probability)
            if context_dropout_probability > 0
            else nn.Identity()
        )
        if n_context_classes > 0:
            self.context_emb: nn.Module = nn.Embedding(n_context_classes, context_channels)
        else:
            self.context_emb = nn.Linear(context_input_channels, context_channels)
        if learn_empty_context:
            self.empty_context_embedding = nn.Parameter(torch.randn(context_channels))
        else:
            self.register_buffer(
                "empty_context_embedding", torch.zeros(context_channels), persistent=False
            )

        def attn(ch: int) -> CrossAttentionBlock:
            return CrossAttentionBlock(
                ch, context_channels, attention_heads, attention_head_channels, n_tokens
            )

        down: list[nn.Module] = []
        ch_in = ch_out = initial_channels
        for i, m in enumerate(mults):
            ch_out = ch_in * int(m)
            for _ in range(n_blocks_per_resolution):
                down.append(
                    ResAttnBlock(ch_in, ch_out, time_ch, attn(ch_out) if attn_at[i] else None)
                )
                ch_in = ch_out
            if i < len(mults) - 1:
                down.append(Downsample(ch_in))
        self.down = nn.ModuleList(down)
        self.middle = MiddleBlock(ch_out, time_ch, attn(ch_out))
        up: list[nn.Module] = []
        ch_in = ch_out
        for i in reversed(range(len(mults))):
            for _ in range(n_blocks_per_resolution):
                up.append(
                    ResAttnBlock(2 * ch_in, ch_in, time_ch, attn(ch_in) if attn_at[i] else None)
                )
            ch_out = ch_in // int(mults[i])
            up.append(
                ResAttnBlock(ch_in + ch_out, ch_out, time_ch, attn(ch_out) if attn_at[i] else None)
            )
            ch_in = ch_out
            if i > 0:
                up.append(Upsample(ch_in))
        self.up = nn.ModuleList(up)
        self.norm = _group_norm(initial_channels, "output norm")
        self.act = nn.SiLU()
        self.final = _zero(nn.Conv2d(ch_in, input_channels, 3, padding=1))
        for name, module in self.named_modules():
            if isinstance(module, CrossAttentionBlock):
                module.name = name

    # ---------------------------------------------------------------- attention API

    def _attention_blocks(self) -> list[CrossAttentionBlock]:
        return [m for m in self.modules() if isinstance(m, CrossAttentionBlock)]

    def attention_sites(self) -> list[AttentionSite]:
        """Every (layer, kind) whose logits a controller sees, in forward order."""
        return [
            AttentionSite(b.name, k) for b in self._attention_blocks() for k in ("self", "cross")
        ]

    def set_attention_controller(self, controller: AttentionController | None) -> None:
        """Explicit logits through ``controller`` in every attention block (None: fused SDPA)."""
        for block in self._attention_blocks():
            block.controller = controller

    # ---------------------------------------------------------------- context

    @property
    def context_width(self) -> int:
        return self.context_input_channels

    def embed_context(
        self, context: torch.Tensor | None, batch: int, condition_flag: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The 256-d context of every sample: the projected ID vector, with the empty context
        where ``condition_flag`` is False, context dropout and the unconditional probability in
        training mode (reference order: dropout, then the unconditional replacement)."""
        empty = self.empty_context_embedding
        if context is None:
            return empty.unsqueeze(0).expand(batch, -1)
        c = self.context_emb(context)
        c = self.context_dropout(c)
        if self.training and self.unconditioned_probability > 0:
            drop = torch.rand(c.shape[0], device=c.device) < self.unconditioned_probability
            if self.first_sample_unconditional:
                drop[0] = True
            c = torch.where(drop[:, None], empty.to(c.dtype), c)
        if condition_flag is not None:
            c = torch.where(condition_flag.to(c.device)[:, None], c, empty.to(c.dtype))
        return c

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor | None = None,
        condition_flag: torch.Tensor | None = None,
        extra_context: torch.Tensor | None = None,
        extra_input: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted noise for latents ``x`` (B, C, H, W) at integer timesteps ``t`` (B,).

        ``context``: unit ID vectors (B, 512) or None (the empty context for every sample);
        ``condition_flag`` (B,) bool: False replaces a sample's context by the empty one;
        ``extra_context`` (B, N, context_channels): further tokens appended to every block's ID
        tokens (e.g. style tokens); ``extra_input`` (B, ``extra_input_channels``, H', W'):
        pixel-aligned maps resized to x's size and added after ``image_proj`` (None = zeros).
        """
        b = x.shape[0]
        _check_inputs(x, t, context, condition_flag, self.context_input_channels, self.config)
        temb = self.time_emb(t)
        c = self.embed_context(context, b, condition_flag).to(x.dtype)
        if extra_context is not None and (extra_context.dim() != 3 or extra_context.shape[0] != b):
            raise ShapeError(
                f"extra_context: expected (B={b}, N, {self.config.context_channels}), got "
                f"{tuple(extra_context.shape)}"
            )
        h = self.image_proj(x)
        maps = resize_extra_input(extra_input, x, self.extra_input_channels)  # checks
        if maps is not None:
            h = h + self.extra_input_proj(maps)
        elif self.extra_input_channels:  # zero maps: the conv's bias only
            h = h + self.extra_input_proj.bias.view(1, -1, 1, 1).to(h.dtype)
        skips = [h]
        for m in self.down:
            h = m(h, temb, c, extra_context)
            skips.append(h)
        h = self.middle(h, temb, c, extra_context)
        for m in self.up:
            if isinstance(m, Upsample):
                h = m(h, temb, c, extra_context)
            else:
                h = m(torch.cat([h, skips.pop()], dim=1), temb, c, extra_context)
        return self.final(self.act(self.norm(h)))

    # ---------------------------------------------------------------- reference checkpoints

    @classmethod
    def from_reference_checkpoint(
        cls, path: str | os.PathLike, config: Mapping | None = None, **overrides: object
    ) -> ConditionalUNet:
        """Load the authors' released checkpoint (or any file in the reference's layout).

        Safe loading only (safetensors, or ``torch.load(weights_only=True)``); strips the
        ``module.`` and ``eps_model.`` prefixes, checks and drops the diffusion wrapper's
        schedule buffers (they must be the T = 1000 linear schedule), then loads with
        ``strict=True``: a mismatch names the missing and unexpected keys.
        ``config``/``overrides``: constructor fields (default: the UIFace YAML).
        """
        state = load_reference_state_dict(path)
        model = cls(**{**dict(config or {}), **overrides})
        load_strict(model, state, str(path))
        return model.eval()


def _check_inputs(x, t, context, flag, width, config) -> None:
    if x.dim() != 4 or x.shape[1] != config.input_channels:
        raise ShapeError(
            f"x: expected (B, {config.input_channels}, H, W) latents, got {tuple(x.shape)}"
        )
    b = x.shape[0]
    if t.dim() != 1 or t.shape[0] != b or t.is_floating_point():
        raise ShapeError(
            f"t: expected integer timesteps of shape ({b},), got {t.dtype} {tuple(t.shape)}"
        )
    if context is not None:
        if config.n_context_classes > 0:
            if context.shape != (b,) or context.is_floating_point():
                raise ShapeError(
                    f"context: expected ({b},) class indices, got {tuple(context.shape)}"
                )
        elif context.dim() != 2 or context.shape != (b, width):
            raise ShapeError(
                f"context: expected ID vectors of shape ({b}, {width}), got {tuple(context.shape)}"
            )
    if flag is not None and (flag.shape != (b,) or flag.dtype != torch.bool):
        raise ShapeError(
            f"condition_flag: expected a ({b},) bool tensor, got {flag.dtype} {tuple(flag.shape)}"
        )
    levels = len(config.channel_multipliers) - 1
    if x.shape[-1] % (2**levels) or x.shape[-2] % (2**levels):
        raise ShapeError(f"x: expected a side divisible by {2**levels}, got {tuple(x.shape[-2:])}")


def load_reference_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a reference checkpoint safely and return the denoiser's state dict (prefixes
    stripped, schedule buffers checked and dropped)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint: {p} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            raw = load_file(str(p))
        except Exception as exc:
            raise FormatError(f"{p}: not a readable safetensors file ({exc})") from None
    else:
        try:
            raw = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle that needs more than tensors, truncated file ...
            raise FormatError(
                f"{p}: cannot be read with safe loading (torch.load weights_only=True): "
                f"{type(exc).__name__}: {str(exc)[:200]}"
            ) from None
    if isinstance(raw, Mapping) and "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise FormatError(f"{p}: expected a mapping of parameter names to tensors")
    state: dict[str, torch.Tensor] = {}
    schedule: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        k = key
        while k.startswith("module."):
            k = k[len("module.") :]
        k = k.removeprefix("eps_model.")
        if k in SCHEDULE_BUFFERS:
            schedule[k] = value
        else:
            state[k] = value
    if "betas" in schedule:
        check_reference_schedule(schedule["betas"], str(p))
    return state


def check_reference_schedule(betas: torch.Tensor, source: str = "checkpoint") -> None:
    """The reference trains with T = 1000 linear betas 1e-4 .. 0.02; anything else would make
    our sampler's schedule wrong for these weights."""
    want = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    if betas.shape != (1000,) or not torch.allclose(betas.double(), want, atol=1e-7, rtol=0):
        raise FormatError(
            f"{source}: expected the T = 1000 linear beta schedule (1e-4 .. 0.02) in 'betas', got "
            f"shape {tuple(betas.shape)}"
        )


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error naming missing/unexpected/mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(own[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or shapes:
        raise KeyMismatchError(
            f"{source}: state dict does not fit {type(model).__name__}: "
            f"missing keys {missing[:8]} ({len(missing)} in all), unexpected keys "
            f"{unexpected[:8]} ({len(unexpected)} in all), shape mismatches {shapes[:4]} "
            f"({len(shapes)} in all)"
        )
    model.load_state_dict(dict(state), strict=True)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "SCHEDULE_BUFFERS",
    "ConditionalUNet",
    "check_reference_schedule",
    "count_parameters",
    "load_reference_state_dict",
    "load_strict",
]
