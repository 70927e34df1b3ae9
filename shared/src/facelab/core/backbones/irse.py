"""IR-SE (improved residual units with squeeze-and-excitation), TFace ``model_irse`` layout.

Module names follow TFace's torchkit ``Backbone(mode='ir_se')`` (itself from
face.evoLVe.PyTorch), so TFace checkpoints load:

* ``input_layer``: 3x3 conv (no bias) -> BN -> PReLU;
* ``body``: a flat sequence of units; each unit's ``res_layer`` is BN -> 3x3 conv -> BN ->
  PReLU -> 3x3 conv (the stride) -> BN -> ``se_block`` (SE with reduction 16: global average
  pool, 1x1 conv ``fc1``, ReLU, 1x1 conv ``fc2``, sigmoid, rescale), its ``shortcut_layer`` a
  stride-``s`` subsampling (``MaxPool2d(1, s)``) when the width is unchanged, else 1x1 conv
  (the stride) -> BN; stages of 64/128/256/512 channels each start with stride 2;
* ``output_layer``: BN2d -> dropout -> flatten -> Linear -> BatchNorm1d(affine=False).

``stages`` groups the flat ``body`` into the 4 stages without changing any parameter name.
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

#: units per stage (TFace get_blocks for the basic-block depths)
IRSE_LAYERS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
}
SE_REDUCTION = 16
_STAGE_STRIDE = 2


class SEModule(nn.Module):
    """Squeeze-and-excitation: x * sigmoid(fc2(relu(fc1(mean_hw(x)))))."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=False)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class IRSEUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        if cin == cout:
            # a 1x1 max-pool with a stride is plain subsampling x[..., ::s, ::s]
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.res_layer.add_module("se_block", SEModule(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


@register_model(key="facelab.core.IRSE")
class IRSE(Backbone):
    """IR-SE-{18,34,50,100} (TFace); the registry offers ``ir_se50``."""

    def __init__(
        self,
        depth: int = 50,
        *,
        in_channels: int = 3,
        stem_stride: int = 1,
        input_size: int | tuple[int, int] = 112,
        embedding_size: int = 512,
        dropout: float = 0.4,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        if depth not in IRSE_LAYERS:
            raise RangeError(f"IRSE depth: expected one of {sorted(IRSE_LAYERS)}, got {depth!r}")
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

        self.input_layer = nn.Sequential(
            nn.Conv2d(in_channels, base_width, 3, self.stem_stride, 1, bias=False),
            nn.BatchNorm2d(base_width),
            nn.PReLU(base_width),
        )
        # registered before ``body`` as in TFace, so state_dict key order matches too
        c, h, w = self.stage_shapes[-1]
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(c),
            nn.Dropout(self.dropout_p),
            nn.Flatten(),
            nn.Linear(c * h * w, embedding_size),
            nn.BatchNorm1d(embedding_size, affine=False),
        )
        units: list[nn.Module] = []
        bounds = []
        cin = base_width
        for cout, n in zip(widths, IRSE_LAYERS[depth]):
            start = len(units)
            units.append(IRSEUnit(cin, cout, _STAGE_STRIDE))
            units += [IRSEUnit(cout, cout, 1) for _ in range(n - 1)]
            bounds.append((start, len(units)))
            cin = cout
        self.body = nn.Sequential(*units)
        # views of ``body`` (not registered: parameter names stay body.N.*)
        self._stages = tuple(self.body[a:b] for a, b in bounds)
        self._init_weights()

    def _init_weights(self) -> None:
        # TFace's initialize_weights: kaiming-normal (fan_out, relu) conv/linear, zero bias,
        # BN2d (1, 0)
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
        return f"ir_se{self.depth}"

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
        return self._stages

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.input_layer(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(x)
