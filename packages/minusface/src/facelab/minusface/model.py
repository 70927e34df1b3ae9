"""MinusFace's client model: the encoder ``e``, the decoder ``d`` and the generator ``g``.

* ``e`` / ``d`` (:class:`ResidueCodec`): in the paper's frequency domain (``domain="freq"``)
  ``e`` is core's :class:`~facelab.core.freq.FrequencyCodec` in reference mode (bilinear x8
  upsampling + 8x8 block DCT: a 3 x H x W face becomes 192 x H x W) and ``d`` its exact inverse,
  returned in [0, 1] and clamped there (a decoded residue is not an image of a face and may
  leave the range). ``domain="rgb"`` is the paper's toy mode: ``e`` is the identity on the
  [-1, 1] image and ``d(z) = clamp((z + 1) / 2, 0, 1)``.
* ``g`` (:class:`UNet`): a U-Net ``C -> C`` without normalization layers (the reference's): per
  level conv3-ReLU-conv3-ReLU, 2x2 max-pooling between levels, a bottleneck (returned as the
  latent), transposed-conv (k3, s2) upsampling with skip concatenation and a final 1x1 conv.
  Widths ``(64, 128, 256, 512, 1024)`` are the paper's (1024 @ 7x7 for a 112 face); any
  length >= 2 works, so tests use tiny ones.

:class:`MinusFaceGenerator` bundles the three: ``forward(images)`` returns the encoding
``x = e(X)``, the regeneration ``x' = g(x)`` and the latent; ``residue(images)`` gives
``r = x - x'``. It is what a MinusFace client runs, and it is saved with ``save_pretrained``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from facelab.core.errors import (
    FacelabTypeError,
    RangeError,
    ShapeError,
    UnknownNameError,
    expect_finite,
    expect_range,
    expect_rank,
    expect_tensor,
)
from facelab.core.freq import NUM_CHANNELS, FrequencyCodec
from facelab.core.hub import PretrainedMixin, register_model

Domain = Literal["freq", "rgb"]
DOMAINS: tuple[str, ...] = ("freq", "rgb")
RGB_CHANNELS = 3
#: the paper's U-Net widths: 4 levels and the 1024-channel bottleneck
PAPER_WIDTHS: tuple[int, ...] = (64, 128, 256, 512, 1024)


def check_domain(domain: object) -> str:
    if domain not in DOMAINS:
        raise UnknownNameError(f"unknown domain {domain!r}; valid domains: {list(DOMAINS)}")
    return str(domain)


def check_images(images: object, name: str = "images", size: int | None = None) -> torch.Tensor:
    """An RGB face batch ``(B, 3, H, W)`` in [-1, 1], finite, non-empty."""
    x = expect_tensor(images, name, floating=True)
    expect_rank(x, 4, name, "B, 3, H, W")
    if x.shape[1] != RGB_CHANNELS:
        raise ShapeError(f"{name}: expected 3 RGB channels at dim 1, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ShapeError(f"{name}: expected at least one image, got shape {tuple(x.shape)}")
    if size is not None and tuple(x.shape[2:]) != (size, size):
        raise ShapeError(
            f"{name}: expected {size}x{size} images (the model's image_size), got shape "
            f"{tuple(x.shape)}"
        )
    expect_finite(x, name)
    expect_range(x, -1.0, 1.0, f"{name} (RGB in [-1, 1])")
    return x


class ResidueCodec:
    """The encoder ``e`` (images in [-1, 1] -> C channels) and decoder ``d`` (-> [0, 1]).

    ``channels`` is 192 for ``"freq"`` and 3 for ``"rgb"``. ``decode`` always clamps to
    [0, 1] (the spec's ``d``); ``decode(encode(X)) == (X + 1) / 2`` up to float round-off.
    The codec does no input checks (it runs inside training steps); the public entry points of
    the package check their inputs.
    """

    def __init__(self, domain: Domain = "freq") -> None:
        self.domain = check_domain(domain)
        self.channels = NUM_CHANNELS if self.domain == "freq" else RGB_CHANNELS
        # range checks would cost a host sync per call; callers validate at the API boundary
        self._freq = FrequencyCodec("reference", input_range=(-1.0, 1.0), check=False)

    def __repr__(self) -> str:
        return f"ResidueCodec(domain={self.domain!r}, channels={self.channels})"

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> ``(B, C, H, W)``."""
        if self.domain == "rgb":
            return images
        return self._freq.encode(images)

    def decode(self, coeffs: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, 3, H, W)`` in [0, 1], clamped (the spec's ``d``)."""
        if self.domain == "rgb":
            return ((coeffs + 1.0) * 0.5).clamp(0.0, 1.0)
        return ((self._freq.decode(coeffs) + 1.0) * 0.5).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------
# the U-Net


class DoubleConv(nn.Sequential):
    """conv3 -> ReLU -> conv3 -> ReLU (with biases, no normalization: the reference block)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1),
            nn.ReLU(inplace=True),
        )


def check_widths(widths: Sequence[int]) -> tuple[int, ...]:
    if isinstance(widths, str | bytes) or not isinstance(widths, Sequence):
        raise FacelabTypeError(f"widths: expected a sequence of ints, got {widths!r}")
    out = tuple(widths)
    if len(out) < 2:
        raise RangeError(
            f"widths: expected at least 2 values (one level and the bottleneck), got {out!r}"
        )
    for w in out:
        if not isinstance(w, int) or isinstance(w, bool) or w < 1:
            raise RangeError(f"widths: expected positive ints, got {out!r}")
    return out


class UNet(nn.Module):
    """U-Net ``in_channels -> out_channels`` with ``len(widths) - 1`` pooling levels.

    ``forward(x) -> (out, latent)``: ``out`` has the input's spatial size, ``latent`` is the
    bottleneck map (``widths[-1]`` channels at ``H / 2^(len(widths) - 1)``). Odd sizes are
    allowed: an upsampled map one pixel short of its skip is zero-padded at the bottom/right.
    """

    def __init__(
        self, in_channels: int, out_channels: int, widths: Sequence[int] = PAPER_WIDTHS
    ) -> None:
        super().__init__()
        widths = check_widths(widths)
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise RangeError(f"{name}: expected a positive int, got {v!r}")
        self.widths = widths
        self.levels = len(widths) - 1
        cins = (in_channels, *widths[:-2])
        self.down = nn.ModuleList(DoubleConv(c, w) for c, w in zip(cins, widths[:-1]))
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.bottleneck = DoubleConv(widths[-2], widths[-1])
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 3, stride=2, padding=1, output_padding=1)
            for i in range(self.levels)
        )
        self.up_conv = nn.ModuleList(DoubleConv(2 * w, w) for w in widths[:-1])
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)

    def min_size(self) -> int:
        """The smallest input side the pooling levels allow."""
        return 2**self.levels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skips = []
        h = x
        for block in self.down:
            h = block(h)
            skips.append(h)
            h = self.pool(h)
        latent = self.bottleneck(h)
        h = latent
        for i in reversed(range(self.levels)):
            skip = skips[i]
            h = self.up[i](h)
            dh, dw = skip.shape[-2] - h.shape[-2], skip.shape[-1] - h.shape[-1]
            if dh or dw:  # odd input sizes: the pooled map lost a row/column
                h = F.pad(h, (0, dw, 0, dh))
            h = self.up_conv[i](torch.cat([skip, h], dim=1))
        return self.head(h), latent


# --------------------------------------------------------------------------------------------
# the generator model


class GeneratorOutput(NamedTuple):
    coeffs: torch.Tensor
    """``x = e(X)``, (B, C, H, W)"""
    regenerated: torch.Tensor
    """``x' = g(x)``, (B, C, H, W)"""
    latent: torch.Tensor
    """the U-Net bottleneck, (B, widths[-1], h, w)"""


@register_model(key="facelab.minusface.MinusFaceGenerator")
class MinusFaceGenerator(nn.Module, PretrainedMixin):
    """``e``, ``g`` and ``d`` of MinusFace (see the module docstring).

    Args:
        domain: ``"freq"`` (the paper: 192 DCT channels) or ``"rgb"`` (the toy mode).
        image_size: side of the square face crops (112 in the paper).
        widths: U-Net widths, the last one is the bottleneck (the paper's by default).
        input_scale: the U-Net sees ``x * input_scale`` and its output is divided by it, so
            ``g`` works on well-conditioned numbers (DCT coefficients of the x8 upsampled image
            reach +-1024). 1.0 is the reference (no scaling).
    """

    def __init__(
        self,
        domain: Domain = "freq",
        image_size: int = 112,
        widths: Sequence[int] = PAPER_WIDTHS,
        input_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.domain = check_domain(domain)
        if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 8:
            raise RangeError(f"image_size: expected an int >= 8, got {image_size!r}")
        if self.domain == "freq" and image_size % 8:
            raise RangeError(
                f"image_size: the frequency domain needs a multiple of 8, got {image_size}"
            )
        if (
            isinstance(input_scale, bool)
            or not isinstance(input_scale, int | float)
            or not float(input_scale) > 0
            or float(input_scale) == float("inf")
        ):
            raise RangeError(f"input_scale: expected a finite number > 0, got {input_scale!r}")
        self.image_size = image_size
        self.input_scale = float(input_scale)
        self.codec = ResidueCodec(self.domain)
        self.unet = UNet(self.codec.channels, self.codec.channels, widths)
        if image_size < self.unet.min_size():
            raise RangeError(
                f"image_size {image_size} is too small for {self.unet.levels} pooling levels "
                f"(widths {self.unet.widths}); expected at least {self.unet.min_size()}"
            )

    @property
    def channels(self) -> int:
        """Channels of the encoding and the residue (192 or 3)."""
        return self.codec.channels

    @property
    def config(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "image_size": self.image_size,
            "widths": list(self.unet.widths),
            "input_scale": self.input_scale,
        }

    def extra_repr(self) -> str:
        return f"config={self.config}"

    def check_images(self, images: object, name: str = "images") -> torch.Tensor:
        return check_images(images, name, self.image_size)

    def generate(self, coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``g``: ``(x', latent)`` of an encoding ``x``."""
        s = self.input_scale
        if s == 1.0:
            return self.unet(coeffs)
        out, latent = self.unet(coeffs * s)
        return out / s, latent

    def forward(self, images: torch.Tensor) -> GeneratorOutput:
        """Images ``(B, 3, H, W)`` in [-1, 1] -> ``(x, x', latent)``; shape-checked only."""
        expect_tensor(images, "images", floating=True)
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, self.image_size, self.image_size):
            raise ShapeError(
                f"images: expected (B, 3, {self.image_size}, {self.image_size}), got shape "
                f"{tuple(images.shape)}"
            )
        x = self.codec.encode(images)
        regen, latent = self.generate(x)
        return GeneratorOutput(x, regen, latent)

    def residue(self, images: torch.Tensor) -> torch.Tensor:
        """``r = e(X) - g(e(X))``, (B, C, H, W)."""
        x, regen, _ = self(images)
        return x - regen

    def regenerate(self, images: torch.Tensor) -> torch.Tensor:
        """``X' = d(g(e(X))) * 2 - 1``: the generator's reconstruction, in [-1, 1]."""
        return self.codec.decode(self(images).regenerated) * 2.0 - 1.0

    def decode(self, coeffs: torch.Tensor) -> torch.Tensor:
        """``d``: ``(B, C, H, W)`` -> images in [0, 1]."""
        return self.codec.decode(coeffs)


def kl_sparsity(latent: torch.Tensor, target: float = 0.01) -> torch.Tensor:
    """The reference's KL sparsity term on the generator latent.

    The batch-mean latent is normalized to sum 1 over all its entries, ``q``, and the term is
    ``sum p log(p / q) + (1 - p) log((1 - p) / (1 - q))`` with ``p = target`` everywhere
    (``q`` clamped to [1e-8, 1 - 1e-8]). Weight 0 in the paper's recipe.
    """
    if not 0.0 < target < 1.0:
        raise RangeError(f"sparsity target: expected a value in (0, 1), got {target}")
    q = latent.float().mean(0)
    q = (q / q.sum().clamp_min(1e-12)).clamp(1e-8, 1.0 - 1e-8)
    p = torch.full_like(q, target)
    return (p * torch.log(p / q)).sum() + ((1 - p) * torch.log((1 - p) / (1 - q))).sum()
