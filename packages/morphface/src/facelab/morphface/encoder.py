"""The style encoder: 3DMM renderings -> style tokens for the denoiser's cross-attention.

MorphFace encodes the rendered style maps (surface normals, albedo, Lambertian rendering) with
"convolutional layers and a linear layer" into the style context, which joins the identity
context in cross-attention. Ours: stride-2 ``Conv-GroupNorm-SiLU`` stages down to an
``s x s`` feature map whose positions become ``s^2`` tokens (a linear layer to the denoiser's
context width, a learned position embedding, LayerNorm). Spatial tokens keep *where* the head
and its parts are, which is what pose and expression are.

The base denoisers append these tokens to their 32 ID tokens in every cross-attention layer
(``extra_context``). Style is droppable on its own: in training each sample's tokens are
replaced by a learned *null style* token set with probability ``style_dropout_probability``,
independently of the denoiser's own ID drop (``unconditioned_probability``), so the model learns
p(x | id, style), p(x | style), p(x | id) and p(x) and the sampler can guide each condition with
its own scale. ``forward(maps, keep=...)`` sets the choice explicitly (False = null style).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from facelab.core.errors import RangeError, ShapeError
from facelab.morphface.render import MAP_CHANNELS


class StyleEncoder(ModelMixin, ConfigMixin):
    """Renderings (B, ``in_channels``, ``map_size``, ``map_size``) -> tokens (B, N,
    ``context_channels``), N = (map_size / 2^len(widths))^2."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = MAP_CHANNELS,
        map_size: int = 64,
        widths: tuple[int, ...] = (32, 64, 128, 256),
        context_channels: int = 256,
        style_dropout_probability: float = 0.1,
    ) -> None:
        super().__init__()
        if not 0.0 <= style_dropout_probability < 1.0:
            raise RangeError(
                f"style_dropout_probability: expected a value in [0, 1), got "
                f"{style_dropout_probability}"
            )
        down = 2 ** len(widths)
        if map_size % down:
            raise RangeError(
                f"map_size: expected a multiple of {down} for {len(widths)} stride-2 stages, "
                f"got {map_size}"
            )
        layers: list[nn.Module] = []
        c_in = in_channels
        for c in widths:
            groups = 8 if c % 8 == 0 else 1
            layers += [
                nn.Conv2d(c_in, c, 3, stride=2, padding=1),
                nn.GroupNorm(groups, c),
                nn.SiLU(),
            ]
            c_in = c
        self.features = nn.Sequential(*layers)
        side = map_size // down
        self.n_tokens = side * side
        self.to_tokens = nn.Linear(c_in, context_channels)
        self.position = nn.Parameter(torch.zeros(1, self.n_tokens, context_channels))
        self.norm = nn.LayerNorm(context_channels)
        self.null_tokens = nn.Parameter(torch.randn(1, self.n_tokens, context_channels))
        self.style_dropout_probability = float(style_dropout_probability)
        self.in_channels, self.map_size = in_channels, map_size

    def null(self, batch: int) -> torch.Tensor:
        """The null-style tokens (B, N, C)."""
        return self.null_tokens.expand(batch, -1, -1)

    def forward(self, maps: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Style tokens of ``maps``; where ``keep`` is False (or, in training without ``keep``,
        with probability ``style_dropout_probability``) the null tokens instead."""
        b = maps.shape[0]
        if maps.dim() != 4 or maps.shape[1:] != (self.in_channels, self.map_size, self.map_size):
            raise ShapeError(
                f"style maps: expected (B, {self.in_channels}, {self.map_size}, {self.map_size}), "
                f"got {tuple(maps.shape)}"
            )
        h = self.features(maps)
        tokens = self.to_tokens(h.flatten(2).transpose(1, 2)) + self.position
        tokens = self.norm(tokens)
        if keep is None and self.training and self.style_dropout_probability > 0:
            keep = torch.rand(b, device=maps.device) >= self.style_dropout_probability
        if keep is not None:
            tokens = torch.where(keep.view(b, 1, 1), tokens, self.null(b).to(tokens.dtype))
        return tokens


__all__ = ["StyleEncoder"]
