"""IResNet, state-dict compatible with insightface ``recognition/arcface_torch``.

Module names, parameter shapes, initialisation and the forward order follow arcface_torch's
``iresnet.py`` so that its public checkpoints (``backbone.pth`` of ms1mv3/glint360k r18-r200)
load with ``strict=True`` and embed identically:

* stem: ``conv1`` (3x3, stride 1, no bias) -> ``bn1`` -> ``prelu``; no max-pool;
* ``layer1..layer4`` of :class:`IBasicBlock` with widths 64/128/256/512, each stage starting
  with stride 2 (112 -> 56 -> 28 -> 14 -> 7);
* head: ``bn2`` -> flatten -> ``dropout`` -> ``fc`` -> ``features`` (BatchNorm1d whose weight
  is fixed to 1).

Options beyond arcface_torch (defaults reproduce it exactly): ``in_channels`` and
``stem_stride`` for frequency-domain inputs, ``input_size`` (the ``fc`` input follows the final
map: 112 -> 7x7, 14 with ``stem_stride=1`` -> 1x1), and ``base_width`` for tiny test models.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from facelab.core.backbones.base import (
    NUM_STAGES,
    Backbone,
    as_size,
    check_int,
    check_probability,
    conv_out,
    size_config,
)
from facelab.core.errors import RangeError
from facelab.core.hub import register_model

#: blocks per stage (arcface_torch)
IRESNET_LAYERS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    200: (6, 26, 60, 6),
}
BN_EPS = 1e-5
_STAGE_STRIDE = 2


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """bn1 -> conv1 (3x3) -> bn2 -> prelu -> conv2 (3x3, stride) -> bn3, plus the shortcut.

    No activation after the addition. The shortcut is the identity, or ``downsample``
    (1x1 conv with the stride, then BN) when the stride or width changes.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=BN_EPS)
        self.conv1 = _conv3x3(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.prelu = nn.PReLU(cout)
        self.conv2 = _conv3x3(cout, cout, stride)
        self.bn3 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(cout, eps=BN_EPS),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


@register_model(key="facelab.core.IResNet")
class IResNet(Backbone):
    """insightface IResNet-{18,34,50,100,200}; see the module docstring for the options."""

    def __init__(
        self,
        depth: int = 50,
        *,
        in_channels: int = 3,
        stem_stride: int = 1,
        input_size: int | tuple[int, int] = 112,
        embedding_size: int = 512,
        dropout: float = 0.0,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        if depth not in IRESNET_LAYERS:
            raise RangeError(
                f"IResNet depth: expected one of {sorted(IRESNET_LAYERS)}, got {depth!r}"
            )
        self.depth = depth
        self.in_channels = check_int(in_channels, "in_channels")
        self.stem_stride = check_int(stem_stride, "stem_stride")
        self.input_size = as_size(input_size)
        self.embedding_size = check_int(embedding_size, "embedding_size")
        self.dropout_p = check_probability(dropout, "dropout")
        self.base_width = check_int(base_width, "base_width")

        widths = [base_width * 2**i for i in range(NUM_STAGES)]
        h, w = (conv_out(s, self.stem_stride) for s in self.input_size)
        shapes = []
        for c in widths:
            h, w = conv_out(h, _STAGE_STRIDE), conv_out(w, _STAGE_STRIDE)
            shapes.append((c, h, w))
        self.stage_shapes = tuple(shapes)

        self.conv1 = nn.Conv2d(
            in_channels, base_width, 3, stride=self.stem_stride, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(base_width, eps=BN_EPS)
        self.prelu = nn.PReLU(base_width)
        cin = base_width
        for i, (cout, blocks) in enumerate(zip(widths, IRESNET_LAYERS[depth]), start=1):
            units = [IBasicBlock(cin, cout, _STAGE_STRIDE)]
            units += [IBasicBlock(cout, cout) for _ in range(blocks - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*units))
            cin = cout
        c, h, w = self.stage_shapes[-1]
        self.bn2 = nn.BatchNorm2d(c, eps=BN_EPS)
        self.dropout = nn.Dropout(p=self.dropout_p)
        self.fc = nn.Linear(c * h * w, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=BN_EPS)
        self._init_weights()

    def _init_weights(self) -> None:
        # arcface_torch's initialisation: conv ~ N(0, 0.1), BN (1, 0), Linear/PReLU torch defaults
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad_(False)

    @property
    def name(self) -> str:
        return f"iresnet{self.depth}"

    @property
    def config(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "in_channels": self.in_channels,
            "stem_stride": self.stem_stride,
            "input_size": size_config(self.input_size),
            "embedding_size": self.embedding_size,
            "dropout": self.dropout_p,
            "base_width": self.base_width,
        }

    @property
    def stages(self) -> tuple[nn.Module, ...]:
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.bn1(self.conv1(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.bn2(x), 1)
        return self.features(self.fc(self.dropout(x)))
