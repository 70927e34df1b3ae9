"""The API every facelab backbone shares: stem -> 4 stages -> head.

``forward(x)`` maps images ``(B, C, H, W)`` in [-1, 1] (``(x/255 - 0.5)/0.5``) to embeddings
``(B, embedding_size)``. Methods that need the inside of the network use the same pieces
explicitly instead of hooks::

    h = model.forward_stem(x)
    for stage in model.stages:        # exactly 4 modules
        h = stage(h)                  # model.stage_shapes[i] gives (C, H, W) of each output
    emb = model.forward_head(h)       # final map -> embedding

``forward_features(x)`` returns the 4 stage maps and ``forward(x, return_stages=True)`` returns
``(embedding, maps)``. Every backbone records its init kwargs in ``config`` (JSON values) so
:mod:`facelab.core.hub` can save and rebuild it, and has a registry ``name``.

Mixed precision is not decided here (no autocast inside models): that is the trainer's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from facelab.core.errors import FacelabTypeError, RangeError, ShapeError, expect_tensor
from facelab.core.hub import PretrainedMixin

NUM_STAGES = 4


def conv_out(size: int, stride: int) -> int:
    """Output length of a 3x3/pad-1 (or 1x1/pad-0) convolution with ``stride``."""
    return (size - 1) // stride + 1


def as_size(value: int | Sequence[int], name: str = "input_size") -> tuple[int, int]:
    """``112`` or ``(112, 112)`` -> ``(112, 112)``, checked."""
    if isinstance(value, bool):
        raise FacelabTypeError(f"{name}: expected an int or (H, W), got {value!r}")
    if isinstance(value, int):
        pair = (value, value)
    elif isinstance(value, Sequence) and len(value) == 2:
        pair = (value[0], value[1])
    else:
        raise FacelabTypeError(f"{name}: expected an int or (H, W), got {value!r}")
    for v in pair:
        if not isinstance(v, int) or isinstance(v, bool):
            raise FacelabTypeError(f"{name}: expected integer sizes, got {value!r}")
        if v < 1:
            raise RangeError(f"{name}: expected sizes >= 1, got {value!r}")
    return pair


def check_int(value: Any, name: str, lo: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise FacelabTypeError(f"{name}: expected an int, got {value!r}")
    if value < lo:
        raise RangeError(f"{name}: expected an int >= {lo}, got {value}")
    return value


def check_probability(value: Any, name: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise FacelabTypeError(f"{name}: expected a float, got {value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise RangeError(f"{name}: expected a value in [0, 1), got {value}")
    return float(value)


def size_config(size: tuple[int, int]) -> int | list[int]:
    """How ``input_size`` is written to a config: an int when square."""
    return size[0] if size[0] == size[1] else [size[0], size[1]]


class Backbone(nn.Module, PretrainedMixin):
    """Base class: input checks, the stage loop and the shared forward variants.

    Subclasses set ``in_channels``, ``input_size``, ``embedding_size`` and ``stage_shapes`` and
    implement ``forward_stem``, ``stages``, ``forward_head``, ``name`` and ``config``.
    """

    in_channels: int
    input_size: tuple[int, int]
    embedding_size: int
    #: (C, H, W) of each of the 4 stage outputs for ``input_size``
    stage_shapes: tuple[tuple[int, int, int], ...]

    @property
    def name(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def config(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def stages(self) -> tuple[nn.Module, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_input(self, x: torch.Tensor) -> None:
        """Shape/dtype check of a batch; free of host syncs (safe under torch.compile)."""
        expect_tensor(x, f"{self.name} input", floating=True)
        h, w = self.input_size
        if x.dim() != 4 or x.shape[1] != self.in_channels or tuple(x.shape[2:]) != (h, w):
            raise ShapeError(
                f"{self.name} input: expected (B, {self.in_channels}, {h}, {w}), "
                f"got shape {tuple(x.shape)}"
            )

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The 4 stage output maps (shapes in ``stage_shapes``)."""
        self.check_input(x)
        h = self.forward_stem(x)
        maps = []
        for stage in self.stages:
            h = stage(h)
            maps.append(h)
        return maps

    def forward(
        self, x: torch.Tensor, return_stages: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Embeddings ``(B, embedding_size)``; with ``return_stages`` also the 4 stage maps."""
        self.check_input(x)
        h = self.forward_stem(x)
        maps = []
        for stage in self.stages:
            h = stage(h)
            if return_stages:
                maps.append(h)
        emb = self.forward_head(h)
        return (emb, maps) if return_stages else emb

    def extra_repr(self) -> str:
        return f"name={self.name!r}, config={self.config}"
