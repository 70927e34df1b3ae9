"""MobileFaceNet, TFace ``model_mobilefacenet`` layout (module names kept so checkpoints load).

For a 112x112 input with the default stem stride 2::

    conv1      3x3 s2, C -> 64, BN, PReLU                    64 @ 56   (stem)
    conv2_dw   3x3 depthwise 64, BN, PReLU                   64 @ 56   \\ stage 1
    conv_23    bottleneck 64 -> 64 (expand 128), s2          64 @ 28   /
    conv_3     4 residual bottlenecks (expand 128)           64 @ 28   \\ stage 2
    conv_34    bottleneck 64 -> 128 (expand 256), s2         128 @ 14  /
    conv_4     6 residual bottlenecks (expand 256)           128 @ 14  \\ stage 3
    conv_45    bottleneck 128 -> 128 (expand 512), s2        128 @ 7   /
    conv_5     2 residual bottlenecks (expand 256)           128 @ 7   \\ stage 4
    conv_6_sep 1x1, 128 -> 512, BN, PReLU                    512 @ 7   /
    output_layer  GDC: 7x7 depthwise conv + BN, flatten, Linear(512 -> E, no bias),
                  BatchNorm1d(E, affine=False)

A bottleneck (``Depth_Wise`` in TFace) is 1x1 expand (BN, PReLU) -> 3x3 depthwise (BN, PReLU)
-> 1x1 project (BN, no activation), with an identity shortcut inside ``conv_3/4/5``.

The stage outputs are the maps DuetFace's client hands to the server (64@28, 128@14, 128@7,
512@7; TFace taps the outputs of ``conv_23``, ``conv_34``, ``conv_45`` and ``conv_6_sep``).
Options: ``in_channels`` (30 for DuetFace's client), ``stem_stride``, ``input_size`` (the GDC
kernel covers the final map), ``embedding_size`` and ``width`` (scales every channel count, for
tiny test models).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from facelab.core.backbones.base import (
    Backbone,
    as_size,
    check_int,
    conv_out,
    size_config,
)
from facelab.core.errors import FacelabTypeError, RangeError
from facelab.core.hub import register_model

_STAGE_STRIDE = 2


class ConvBlock(nn.Module):
    """conv (no bias) -> BN -> PReLU."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.prelu = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.bn(self.conv(x)))


class LinearBlock(nn.Module):
    """conv (no bias) -> BN, no activation."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand -> 3x3 depthwise (stride) -> 1x1 linear project."""

    def __init__(
        self, cin: int, cout: int, expand: int, stride: int = 1, residual: bool = False
    ) -> None:
        super().__init__()
        self.conv = ConvBlock(cin, expand)
        self.conv_dw = ConvBlock(expand, expand, 3, stride, 1, groups=expand)
        self.project = LinearBlock(expand, cout)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.conv_dw(self.conv(x)))
        return x + out if self.residual else out


class Residual(nn.Module):
    def __init__(self, channels: int, num_blocks: int, expand: int) -> None:
        super().__init__()
        self.model = nn.Sequential(
            *(DepthWise(channels, channels, expand, residual=True) for _ in range(num_blocks))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class GDC(nn.Module):
    """Global depthwise conv over the whole final map -> linear embedding -> BN1d."""

    def __init__(self, channels: int, embedding_size: int, kernel: tuple[int, int]) -> None:
        super().__init__()
        self.conv_6_dw = LinearBlock(channels, channels, kernel, groups=channels)  # type: ignore[arg-type]
        self.conv_6_flatten = nn.Flatten()
        self.linear = nn.Linear(channels, embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(self.conv_6_flatten(self.conv_6_dw(x))))


@register_model(key="facelab.core.MobileFaceNet")
class MobileFaceNet(Backbone):
    """MobileFaceNet (TFace); see the module docstring for the layout and options."""

    def __init__(
        self,
        *,
        in_channels: int = 3,
        stem_stride: int = 2,
        input_size: int | tuple[int, int] = 112,
        embedding_size: int = 512,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        if not isinstance(width, int | float) or isinstance(width, bool):
            raise FacelabTypeError(f"width: expected a float, got {width!r}")
        if not width > 0:
            raise RangeError(f"width: expected a value > 0, got {width}")
        self.in_channels = check_int(in_channels, "in_channels")
        self.stem_stride = check_int(stem_stride, "stem_stride")
        self.input_size = as_size(input_size)
        self.embedding_size = check_int(embedding_size, "embedding_size")
        self.width = float(width)

        def ch(n: int) -> int:
            return max(1, round(n * self.width))

        c64, c128, c256, c512 = ch(64), ch(128), ch(256), ch(512)
        h, w = (conv_out(s, self.stem_stride) for s in self.input_size)
        shapes = []
        # stage 4 (conv_5, conv_6_sep) keeps the resolution of stage 3
        for c, stride in (
            (c64, _STAGE_STRIDE),
            (c128, _STAGE_STRIDE),
            (c128, _STAGE_STRIDE),
            (c512, 1),
        ):
            h, w = conv_out(h, stride), conv_out(w, stride)
            shapes.append((c, h, w))
        self.stage_shapes = tuple(shapes)

        self.conv1 = ConvBlock(in_channels, c64, 3, self.stem_stride, 1)
        self.conv2_dw = ConvBlock(c64, c64, 3, 1, 1, groups=c64)
        self.conv_23 = DepthWise(c64, c64, c128, stride=_STAGE_STRIDE)
        self.conv_3 = Residual(c64, 4, c128)
        self.conv_34 = DepthWise(c64, c128, c256, stride=_STAGE_STRIDE)
        self.conv_4 = Residual(c128, 6, c256)
        self.conv_45 = DepthWise(c128, c128, c512, stride=_STAGE_STRIDE)
        self.conv_5 = Residual(c128, 2, c256)
        self.conv_6_sep = ConvBlock(c128, c512)
        self.output_layer = GDC(c512, embedding_size, (h, w))
        # unregistered views: parameter names stay conv1, conv2_dw, ...
        self._stages = (
            nn.Sequential(self.conv2_dw, self.conv_23),
            nn.Sequential(self.conv_3, self.conv_34),
            nn.Sequential(self.conv_4, self.conv_45),
            nn.Sequential(self.conv_5, self.conv_6_sep),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # TFace's initialize_weights (see irse.py)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def name(self) -> str:
        return "mobilefacenet"

    @property
    def config(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "stem_stride": self.stem_stride,
            "input_size": size_config(self.input_size),
            "embedding_size": self.embedding_size,
            "width": self.width,
        }

    @property
    def stages(self) -> tuple[nn.Module, ...]:
        return self._stages

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(x)
