"""diffusers' ``UNet2DConditionModel`` as an identity-conditioned denoiser.

``UNet2DConditionDenoiser`` has the call signature of the reference ``ConditionalUNet``
(``model(x, t, context, condition_flag, extra_context)``): the unit ID vector (512) is projected
by one Linear to ``n_tokens`` tokens of ``cross_attention_dim`` channels (layer-normed), which the
UNet's transformer blocks cross-attend to; a learnable empty token set stands for "no identity".
Context dropout, the unconditional probability and the per-sample ``condition_flag`` behave as in
the reference model. ``extra_input_channels`` > 0 adds pixel-aligned maps (``extra_input``) as
extra input channels of the UNet's first conv, their weights zero-initialized (missing maps =
zeros). This layout is ours (the reference is the other denoiser).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from facelab.core.diffusion.attention import (
    AttentionController,
    AttentionSite,
    attention_sites,
    set_attention_controller,
)
from facelab.core.diffusion.hooks import resize_extra_input
from facelab.core.errors import RangeError, ShapeError


class UNet2DConditionDenoiser(ModelMixin, ConfigMixin):
    """An ID-conditioned ``UNet2DConditionModel`` (see the module docstring)."""

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 3,
        block_out_channels: Sequence[int] = (128, 256, 512),
        layers_per_block: int = 2,
        down_block_types: Sequence[str] | None = None,
        up_block_types: Sequence[str] | None = None,
        cross_attention_dim: int = 256,
        attention_head_dim: int = 32,
        norm_num_groups: int = 32,
        n_tokens: int = 32,
        context_input_channels: int = 512,
        context_dropout_probability: float = 0.25,
        unconditioned_probability: float = 0.2,
        first_sample_unconditional: bool = True,
        extra_input_channels: int = 0,
    ) -> None:
        super().__init__()
        widths = list(block_out_channels)
        if any(w % norm_num_groups for w in widths):
            raise RangeError(
                f"block_out_channels: expected multiples of norm_num_groups={norm_num_groups}, "
                f"got {widths}"
            )
        for name, p in (
            ("context_dropout_probability", context_dropout_probability),
            ("unconditioned_probability", unconditioned_probability),
        ):
            if not 0.0 <= float(p) < 1.0:
                raise RangeError(f"{name}: expected a probability in [0, 1), got {p}")
        if int(extra_input_channels) < 0:
            raise RangeError(
                f"extra_input_channels: expected an int >= 0, got {extra_input_channels}"
            )
        self.extra_input_channels = int(extra_input_channels)
        n = len(widths)
        down = list(down_block_types or ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (n - 1))
        up = list(up_block_types or ["CrossAttnUpBlock2D"] * (n - 1) + ["UpBlock2D"])
        self.unet = UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=in_channels + self.extra_input_channels,
            out_channels=in_channels,
            block_out_channels=tuple(widths),
            layers_per_block=layers_per_block,
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=attention_head_dim,
            norm_num_groups=norm_num_groups,
        )
        if self.extra_input_channels:
            # the maps' input-conv weights start at zero: training starts from the plain model
            with torch.no_grad():
                self.unet.conv_in.weight[:, in_channels:].zero_()
        self.context_input_channels = int(context_input_channels)
        self.context_proj = nn.Linear(context_input_channels, n_tokens * cross_attention_dim)
        self.context_norm = nn.LayerNorm(cross_attention_dim)
        self.empty_context = nn.Parameter(torch.randn(n_tokens, cross_attention_dim))
        self.context_dropout: nn.Module = (
            nn.Dropout(context_dropout_probability)
            if context_dropout_probability > 0
            else nn.Identity()
        )

    @property
    def context_width(self) -> int:
        return self.context_input_channels

    def attention_sites(self) -> list[AttentionSite]:
        return [AttentionSite(f"unet.{s.layer}", s.kind) for s in attention_sites(self.unet)]

    def set_attention_controller(self, controller: AttentionController | None) -> None:
        set_attention_controller(self.unet, _Prefixed(controller) if controller else None)

    def embed_context(
        self, context: torch.Tensor | None, batch: int, condition_flag: torch.Tensor | None = None
    ) -> torch.Tensor:
        cfg = self.config
        empty = self.empty_context.unsqueeze(0)
        if context is None:
            return empty.expand(batch, -1, -1)
        tokens = self.context_proj(context).view(batch, cfg.n_tokens, cfg.cross_attention_dim)
        tokens = self.context_dropout(self.context_norm(tokens))
        keep = torch.ones(batch, dtype=torch.bool, device=tokens.device)
        if self.training and cfg.unconditioned_probability > 0:
            keep = torch.rand(batch, device=tokens.device) >= cfg.unconditioned_probability
            if cfg.first_sample_unconditional:
                keep[0] = False
        if condition_flag is not None:
            keep = keep & condition_flag.to(tokens.device)
        return torch.where(keep[:, None, None], tokens, empty.to(tokens.dtype))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor | None = None,
        condition_flag: torch.Tensor | None = None,
        extra_context: torch.Tensor | None = None,
        extra_input: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b = x.shape[0]
        if t.shape != (b,) or t.is_floating_point():
            raise ShapeError(f"t: expected integer timesteps of shape ({b},), got {tuple(t.shape)}")
        if context is not None and context.shape != (b, self.context_input_channels):
            raise ShapeError(
                f"context: expected ID vectors of shape ({b}, {self.context_input_channels}), "
                f"got {tuple(context.shape)}"
            )
        if condition_flag is not None and (
            condition_flag.shape != (b,) or condition_flag.dtype != torch.bool
        ):
            raise ShapeError(
                f"condition_flag: expected a ({b},) bool tensor, got {tuple(condition_flag.shape)}"
            )
        tokens = self.embed_context(context, b, condition_flag).to(x.dtype)
        if extra_context is not None:
            if extra_context.dim() != 3 or extra_context.shape[0] != b:
                raise ShapeError(
                    f"extra_context: expected (B={b}, N, {self.config.cross_attention_dim}), got "
                    f"{tuple(extra_context.shape)}"
                )
            tokens = torch.cat([tokens, extra_context.to(tokens.dtype)], dim=1)
        maps = resize_extra_input(extra_input, x, self.extra_input_channels)  # checks
        if self.extra_input_channels:
            if maps is None:
                maps = x.new_zeros(b, self.extra_input_channels, *x.shape[2:])
            x = torch.cat([x, maps], dim=1)
        return self.unet(x, t, encoder_hidden_states=tokens).sample


class _Prefixed(AttentionController):
    """Names the inner UNet's layers ``unet.<path>`` like the wrapper's own module paths."""

    def __init__(self, inner: AttentionController) -> None:
        self.inner = inner

    def begin_forward(self, state: object | None = None) -> None:
        self.inner.begin_forward(state)

    def __call__(self, site: AttentionSite, logits: torch.Tensor) -> torch.Tensor:
        return self.inner(AttentionSite(f"unet.{site.layer}", site.kind), logits)
