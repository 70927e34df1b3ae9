"""The PartialFace recognition model: an IResNet whose stem takes one subset's channels.

The paper: IR-18 with a 27-channel stem (3x3, stride 1, 27 -> 64), trained with ArcFace
(s = 64, m = 0.5) on random subsets. The input is the ``3 * subset_size`` channels of one
(subset, permutation) in the colour-major order of :meth:`SubsetPlan.channel_indices`; one
backbone serves every subset.

Input scaling (ours, ``input_norm="subset"``, the default): the unpruned DCT channels differ in
scale by three orders of magnitude (std ~3 at position 4, ~0.003 at 63 on 32 px toyfaces), so
the subsets differ in overall energy by one to two orders and a batch of random subsets mixes
them. Each sample is divided by the RMS scale of its subset's (colour, position) standard
deviations (``position_std``, a buffer estimated once before training by
:func:`estimate_position_std`); the relative scale of the channels inside a subset is kept
(equalizing every channel instead amplifies the noise-dominated highest frequencies and trains
worse). The server knows the positions of the challenge it issued. ``input_norm="none"`` feeds
raw coefficients as TFace does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from facelab.core.backbones import get_backbone
from facelab.core.errors import FacelabTypeError, KeyMismatchError, RangeError, ShapeError
from facelab.core.freq import COLORS
from facelab.core.hub import PretrainedMixin, register_model
from facelab.partialface.spectrum import SubsetEncoder, flip_channels

CODEC_MODES = ("reference", "compact")
INPUT_NORMS = ("subset", "none")
_STD_FLOOR = 1e-6


def estimate_position_std(
    images: torch.Tensor, encoder: SubsetEncoder, batch_size: int = 32
) -> torch.Tensor:
    """``(3, 64)`` standard deviation of every (colour, DCT position) over ``images`` and all
    map positions, accumulated in float64 (float32 result, floored at 1e-6)."""
    total = total_sq = None
    count = 0
    with torch.no_grad():
        for chunk in images.split(batch_size):
            c = encoder.full(chunk).double()
            part, part_sq = c.sum((0, 2, 3)), (c * c).sum((0, 2, 3))
            total = part if total is None else total + part
            total_sq = part_sq if total_sq is None else total_sq + part_sq
            count += c.numel() // c.shape[1]
    if total is None:
        raise RangeError("estimate_position_std: expected at least one image")
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0.0)
    return var.sqrt().clamp_min(_STD_FLOOR).float().view(len(COLORS), -1)


@register_model(key="facelab.partialface.PartialFaceModel")
class PartialFaceModel(nn.Module, PretrainedMixin):
    """``(B, 3 * subset_size, H', W')`` channels -> ``(B, embedding_size)`` embeddings.

    Args:
        backbone: a core backbone name (``iresnet18`` in the paper).
        subset_size: positions per subset (9): the stem takes ``3 * subset_size`` channels.
        image_size: side of the RGB face crops the channels come from (112).
        codec_mode: ``"reference"`` (maps of ``image_size``) or ``"compact"`` (``/8``).
        embedding_size, base_width, dropout: backbone options (512, 64, 0 in the paper).
        plan_id: id of the :class:`SubsetPlan` the model was trained with (the plan itself is
            stored apart); checked by the server.
    """

    def __init__(
        self,
        backbone: str = "iresnet18",
        subset_size: int = 9,
        image_size: int = 112,
        codec_mode: str = "reference",
        embedding_size: int = 512,
        base_width: int = 64,
        dropout: float = 0.0,
        plan_id: str | None = None,
        input_norm: str = "subset",
    ) -> None:
        super().__init__()
        if input_norm not in INPUT_NORMS:
            raise RangeError(f"input_norm: expected one of {list(INPUT_NORMS)}, got {input_norm!r}")
        if codec_mode not in CODEC_MODES:
            raise RangeError(f"codec_mode: expected one of {list(CODEC_MODES)}, got {codec_mode!r}")
        for name, v in (("subset_size", subset_size), ("image_size", image_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise RangeError(f"{name}: expected a positive int, got {v!r}")
        if image_size % 8:
            raise RangeError(f"image_size: expected a multiple of 8, got {image_size}")
        if plan_id is not None and not isinstance(plan_id, str):
            raise FacelabTypeError(f"plan_id: expected a str or None, got {type(plan_id).__name__}")
        self.subset_size = subset_size
        self.image_size = image_size
        self.codec_mode = codec_mode
        self.plan_id = plan_id
        self.input_norm = input_norm
        # per (colour, position) scale of the DCT channels; ones until estimated
        self.register_buffer("position_std", torch.ones(len(COLORS), 64))
        opts: dict[str, Any] = {
            "in_channels": len(COLORS) * subset_size,
            "input_size": self.map_size,
            "embedding_size": embedding_size,
        }
        if backbone != "mobilefacenet":
            opts |= {"base_width": base_width, "dropout": dropout}
        self.backbone = get_backbone(backbone, **opts)
        self._config = {
            "backbone": backbone,
            "subset_size": subset_size,
            "image_size": image_size,
            "codec_mode": codec_mode,
            "embedding_size": embedding_size,
            "base_width": base_width,
            "dropout": dropout,
            "plan_id": plan_id,
            "input_norm": input_norm,
        }

    @property
    def config(self) -> dict[str, Any]:
        return dict(self._config)

    @property
    def in_channels(self) -> int:
        return len(COLORS) * self.subset_size

    @property
    def map_size(self) -> int:
        """Side of the channel maps the backbone takes."""
        return self.image_size if self.codec_mode == "reference" else self.image_size // 8

    @property
    def embedding_size(self) -> int:
        return int(self._config["embedding_size"])

    def make_encoder(self, check: bool = True) -> SubsetEncoder:
        """The client-side transform matching this model (codec mode, [-1, 1] images)."""
        return SubsetEncoder(mode=self.codec_mode, check=check)  # type: ignore[arg-type]

    def check_plan(self, plan_id: str) -> None:
        if self.plan_id is not None and plan_id != self.plan_id:
            raise KeyMismatchError(
                f"plan: the model was trained with plan {self.plan_id}, got plan {plan_id}"
            )

    def set_position_std(self, std: torch.Tensor) -> None:
        """Set the per (colour, position) input scale, ``(3, 64)``, positive and finite."""
        if not isinstance(std, torch.Tensor) or tuple(std.shape) != (len(COLORS), 64):
            raise ShapeError(
                f"position_std: expected a (3, 64) tensor, got {getattr(std, 'shape', std)}"
            )
        if not bool(torch.isfinite(std).all()) or bool((std <= 0).any()):
            raise RangeError("position_std: expected positive finite values")
        with torch.no_grad():
            self.position_std.copy_(std.to(self.position_std))

    def normalize_input(self, channels: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Divide each sample by the RMS of its subset's (colour, position) stds; ``positions``
        ``(s,)`` or ``(B, s)``."""
        if self.input_norm == "none":
            return channels
        pos = torch.as_tensor(positions, device=channels.device).long()
        if pos.shape[-1] * len(COLORS) != channels.shape[1] or pos.dim() not in (1, 2):
            raise ShapeError(
                f"positions: expected (s,) or (B, s) with 3 * s = {channels.shape[1]} channels, "
                f"got shape {tuple(pos.shape)}"
            )
        std = self.position_std[:, pos]  # (3, s) or (3, B, s)
        rms = std.square().mean(dim=(0, -1)).sqrt()  # () or (B,): the subset's scale
        return channels / rms.to(channels.dtype).reshape(-1, 1, 1, 1)

    def forward(
        self, channels: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Embeddings of ``channels``; ``positions`` (the DCT positions of the channels, ``(s,)``
        or ``(B, s)``) are needed for the input scaling."""
        if self.input_norm != "none":
            if positions is None:
                raise FacelabTypeError(
                    "PartialFaceModel: input_norm='subset' needs the channels' positions: "
                    "model(channels, positions)"
                )
            channels = self.normalize_input(channels, positions)
        return self.backbone(channels)


class SubsetView(nn.Module):
    """RGB images -> embeddings through one fixed challenge (positions): the client's encode
    and the server's model in one module, for the core evaluation helpers (``embed``,
    ``evaluate_sets``; their flip test mirrors the RGB image, which is equivalent to
    :func:`flip_channels` on the payload)."""

    def __init__(
        self,
        model: PartialFaceModel,
        positions: Sequence[int],
        encoder: SubsetEncoder | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.positions = tuple(int(p) for p in positions)
        if len(self.positions) != model.subset_size:
            raise RangeError(
                f"positions: the model takes subsets of {model.subset_size}, got "
                f"{len(self.positions)} positions"
            )
        self.encoder = encoder or model.make_encoder(check=False)
        self.register_buffer("_positions", torch.tensor(self.positions), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pos = self._positions
        return self.model(self.encoder.encode(images, pos), pos)


def flip_sum_embedding(
    model: PartialFaceModel, channels: torch.Tensor, positions: Sequence[int]
) -> torch.Tensor:
    """``f(x) + f(flip(x))`` from the channels alone (unnormalized), the insightface flip test."""
    pos = torch.as_tensor(positions, device=channels.device)
    return model(channels, pos) + model(flip_channels(channels, pos), pos)
