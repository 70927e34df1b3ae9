"""The SlerpFace template extractor: backbone body -> ``group_cov`` -> groups + attention weights.

As in the reference model (TFace ``slerpface/modules/model.py``):

* the backbone's body (stem + 4 stages, before ``bn2``/``fc``) gives a ``C x h x w`` map
  (512 x 7 x 7 for an IResNet-50 at 112 x 112);
* ``group_cov`` = 1x1 conv ``C -> d`` (with bias), BatchNorm, PReLU(d): a ``d x h x w`` map whose
  ``m = h * w`` spatial positions are the template's groups of ``d`` (16) dims, ordered row-major
  (the reference's ``transpose(0, 2, 3, 1)``);
* the map is computed on the image and on its horizontal mirror and the two are summed. The
  reference does *not* mirror the flipped image's map back before summing, so position (r, c)
  of the sum mixes the left and right side of the face; ``flip="sum"`` (default) keeps that for
  compatibility, ``flip="unflip"`` mirrors it back (both views then describe the same position),
  ``flip="none"`` uses the image alone;
* attention (the reference's ``XCosAttention``): conv3x3-BN-PReLU (``embedding_net``), then
  conv3x3-BN-PReLU, conv3x3 ``d -> 1``-BN-PReLU, and a softmax (temperature 1) over the m
  positions: weights that sum to 1.

The backbone also keeps its own embedding head (``forward_head``), used by our training recipe.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from facelab.core.backbones import get_backbone
from facelab.core.errors import (
    FacelabTypeError,
    RangeError,
    ShapeError,
    UnknownNameError,
    expect_tensor,
)
from facelab.core.hub import PretrainedMixin, register_model

Flip = Literal["sum", "unflip", "none"]
FLIPS: tuple[str, ...] = ("sum", "unflip", "none")


@dataclass(frozen=True)
class Extraction:
    """``templates`` ``(B, m, d)`` raw group features, ``weights`` ``(B, m)`` (sum 1) and, when
    asked for, the backbone's ``embedding`` ``(B, E)``."""

    templates: torch.Tensor
    weights: torch.Tensor
    embedding: torch.Tensor | None = None


class GroupAttention(nn.Module):
    """Softmax weights over the spatial positions of a ``d x h x w`` group map."""

    def __init__(self, group_size: int, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise RangeError(f"temperature: expected a positive number, got {temperature}")
        self.temperature = float(temperature)
        d = group_size
        self.embedding_net = nn.Sequential(
            nn.Conv2d(d, d, 3, padding=1), nn.BatchNorm2d(d), nn.PReLU()
        )
        self.attention = nn.Sequential(
            nn.Conv2d(d, d, 3, padding=1),
            nn.BatchNorm2d(d),
            nn.PReLU(),
            nn.Conv2d(d, 1, 3, padding=1),
            nn.BatchNorm2d(1),
            nn.PReLU(),
        )

    def forward(self, group_map: torch.Tensor) -> torch.Tensor:
        logits = self.attention(self.embedding_net(group_map)).flatten(1)  # (B, h*w)
        return torch.softmax(logits / self.temperature, dim=1)


@register_model(key="facelab.slerpface.SlerpFaceExtractor")
class SlerpFaceExtractor(nn.Module, PretrainedMixin):
    """Images ``(B, 3, H, W)`` in [-1, 1] -> group templates and attention weights.

    Args:
        backbone: a ``facelab.core.backbones`` name (``iresnet50`` as the paper, ``ir_se50``,
            ``iresnet18`` ...).
        backbone_options: passed to ``get_backbone`` (``input_size``, ``base_width`` ...).
        group_size: channels of ``group_cov`` = dims per group (16).
        flip: ``"sum"`` (reference), ``"unflip"`` or ``"none"`` (see the module docstring).
        temperature: softmax temperature of the attention (1).
    """

    def __init__(
        self,
        backbone: str = "iresnet50",
        backbone_options: Mapping[str, Any] | None = None,
        group_size: int = 16,
        flip: Flip = "sum",
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if flip not in FLIPS:
            raise UnknownNameError(f"flip: expected one of {FLIPS}, got {flip!r}")
        if not isinstance(group_size, int) or group_size < 2:
            raise RangeError(f"group_size: expected an integer >= 2, got {group_size!r}")
        opts = dict(backbone_options or {})
        self.backbone_name = backbone
        self.backbone_options = opts
        self.group_size = group_size
        self.flip = flip
        self.backbone = get_backbone(backbone, **opts)
        channels, h, w = self.backbone.stage_shapes[-1]
        self.map_size = (h, w)
        self.group_cov = nn.Sequential(
            nn.Conv2d(channels, group_size, 1), nn.BatchNorm2d(group_size), nn.PReLU(group_size)
        )
        self.group_attention = GroupAttention(group_size, temperature)

    @property
    def config(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone_name,
            "backbone_options": dict(self.backbone_options),
            "group_size": self.group_size,
            "flip": self.flip,
            "temperature": self.group_attention.temperature,
        }

    @property
    def num_groups(self) -> int:
        return self.map_size[0] * self.map_size[1]

    @property
    def input_size(self) -> tuple[int, int]:
        return self.backbone.input_size

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last stage map ``(B, C, h, w)`` (before ``bn2``/``fc``)."""
        h = self.backbone.forward_stem(x)
        for stage in self.backbone.stages:
            h = stage(h)
        return h

    def group_map(self, x: torch.Tensor, return_body: bool = False) -> Any:
        """``(B, d, h, w)`` group features with the configured flip; optionally the body map of
        the unflipped image too (for the backbone's embedding head)."""
        self.backbone.check_input(x)
        body = self.body(x)
        g = self.group_cov(body)
        if self.flip != "none":
            gf = self.group_cov(self.body(torch.flip(x, dims=(3,))))
            g = g + (torch.flip(gf, dims=(3,)) if self.flip == "unflip" else gf)
        return (g, body) if return_body else g

    @staticmethod
    def map_to_groups(group_map: torch.Tensor) -> torch.Tensor:
        """``(B, d, h, w)`` -> ``(B, h*w, d)``, positions row-major."""
        expect_tensor(group_map, "group_map", floating=True)
        if group_map.dim() != 4:
            raise ShapeError(f"group_map: expected (B, d, h, w), got {tuple(group_map.shape)}")
        return group_map.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor, return_embedding: bool = False) -> Extraction:
        g, body = self.group_map(x, return_body=True)
        weights = self.group_attention(g)
        emb = self.backbone.forward_head(body) if return_embedding else None
        return Extraction(self.map_to_groups(g), weights, emb)

    @torch.no_grad()
    def extract(
        self, images: torch.Tensor, batch_size: int = 128
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Templates ``(N, m, d)`` and weights ``(N, m)`` of a tensor of images, in eval mode."""
        images = expect_tensor(images, "images", floating=True)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise FacelabTypeError(f"batch_size: expected a positive int, got {batch_size!r}")
        if images.shape[0] == 0:
            raise ShapeError("images: expected at least one image, got none")
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        try:
            outs = [self(chunk.to(device)) for chunk in images.split(batch_size)]
        finally:
            self.train(was_training)
        return (
            torch.cat([o.templates for o in outs]).float().cpu(),
            torch.cat([o.weights for o in outs]).float().cpu(),
        )


def group_embedding(templates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``(B, m*d)``: ``concat_i(w_i * t_i / |t_i|)``, the vector our training recipe classifies
    (its dot product with another is ``sum_i w_i w'_i cos(t_i, t'_i)``)."""
    t = templates / torch.linalg.vector_norm(templates, dim=-1, keepdim=True).clamp_min(1e-12)
    return (t * weights.unsqueeze(-1)).flatten(1)
