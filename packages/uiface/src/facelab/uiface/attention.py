"""The two attention operations of UIFace, on the pre-softmax logits the core exposes.

* :func:`aggregate_cross_attention` turns the cross-attention logits of every layer into one
  map per sample (where the image attends to the context), the quantity whose settling decides
  a sample's switch from the empty to its identity context;
* :func:`inject_cross_logits` is the stage-2 cross-attention injection: the conditional pass's
  logits are standardized per query row and rescaled to a blend of the unconditional pass's and
  their own mean and standard deviation (self-attention logits are simply copied from the
  unconditional pass, see :class:`UIFaceController`).

:class:`UIFaceController` does both inside the one batched forward of a sampling step
(``[uncond rows; cond rows]``), per sample and per layer, through the core's
``AttentionController`` API. The reference facts (TFace ``generation/uiface``):

* aggregated map of one layer: softmax of the logits over the *queries* (image positions), mean
  over keys (context tokens), mean over heads, divided by its maximum, bilinearly resized to
  32 x 32 (``align_corners=False``) and clipped to [0, 1]; the layers' maps are averaged and the
  average min-max normalized per sample;
* distance of two steps' maps: the mean absolute difference (the reference calls it an RMSE, but
  takes the square root of the element-wise squared error before the mean);
* injection: ``mean``/``std`` over keys of each query row (``torch.std``: unbiased), target
  ``w * mean_src + (1 - w) * mean`` and ``w * std_src + (1 - w) * std`` with ``w = 0.5``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from facelab.core.diffusion.attention import AttentionController, AttentionSite, query_hw
from facelab.core.errors import RangeError, ShapeError

#: side of the aggregated cross-attention map (the reference: 32, the latent side)
MAP_SIZE = 32
#: floor of a standard deviation or a map range we divide by (the reference divides unguarded:
#: a constant row or map gives NaN there)
EPS = 1e-12


def layer_attention_map(logits: torch.Tensor, size: int = MAP_SIZE) -> torch.Tensor:
    """One layer's cross-attention map ``(B, size, size)`` from its logits ``(B, heads, Lq, Lk)``:
    softmax over queries, mean over keys and heads, divided by the maximum, resized, clipped."""
    if logits.dim() != 4:
        raise ShapeError(f"logits: expected (B, heads, Lq, Lk), got {tuple(logits.shape)}")
    b, _, lq, _ = logits.shape
    h, w = query_hw(lq)
    m = torch.softmax(logits.float(), dim=-2).mean(dim=-1).mean(dim=1)  # (B, Lq)
    m = m / m.amax(dim=1, keepdim=True).clamp_min(EPS)
    m = F.interpolate(m.view(b, 1, h, w), size=(size, size), mode="bilinear", align_corners=False)
    return m.squeeze(1).clamp_(0.0, 1.0)


def normalize_map(summed: torch.Tensor, layers: int) -> torch.Tensor:
    """Mean over ``layers`` of summed layer maps ``(B, S, S)``, min-max normalized per sample."""
    m = summed / max(int(layers), 1)
    flat = m.flatten(1)
    lo = flat.amin(dim=1)[:, None, None]
    hi = flat.amax(dim=1)[:, None, None]
    return (m - lo) / (hi - lo).clamp_min(EPS)


def aggregate_cross_attention(
    layer_logits: Sequence[torch.Tensor], size: int = MAP_SIZE
) -> torch.Tensor:
    """The reference's aggregated cross-attention map ``(B, size, size)`` of a list of cross
    logits ``(B, heads, Lq, Lk)``, one per layer (any query resolution)."""
    if not layer_logits:
        raise ShapeError("aggregate_cross_attention: expected at least one layer's logits")
    total = sum(layer_attention_map(x, size) for x in layer_logits)
    return normalize_map(total, len(layer_logits))  # type: ignore[arg-type]


def map_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of two maps ``(B, S, S)`` per sample: ``(B,)``."""
    return (a - b).abs().mean(dim=(1, 2))


def inject_cross_logits(
    target: torch.Tensor, source: torch.Tensor, weight: float = 0.5
) -> torch.Tensor:
    """Standardize ``target`` per query row (over keys) and rescale it to mean ``weight *
    mean(source) + (1 - weight) * mean(target)`` and std ``weight * std(source) + (1 - weight) *
    std(target)``. Shapes ``(B, heads, Lq, Lk)``; returns a new tensor."""
    if target.shape != source.shape:
        raise ShapeError(
            f"inject_cross_logits: expected equal shapes, got {tuple(target.shape)} and "
            f"{tuple(source.shape)}"
        )
    std, mean = torch.std_mean(target, dim=-1, keepdim=True)
    std_src, mean_src = torch.std_mean(source, dim=-1, keepdim=True)
    t_mean = weight * mean_src + (1.0 - weight) * mean
    t_std = weight * std_src + (1.0 - weight) * std
    return (target - mean) / std.clamp_min(EPS) * t_std + t_mean


class UIFaceController(AttentionController):
    """Per-step attention control of the UIFace sampler (installed by :class:`UIFaceSampler`).

    Before each forward the sampler hands over the step state; ``state.scratch["uiface"]`` (set
    by the sampler's stage callback) says which operations this step needs:

    * ``share_self``: the conditional rows take the unconditional rows' self-attention logits
      (stage 1 and stage 2 with injection);
    * ``inject_cross``: the conditional rows' cross logits are rescaled toward the
      unconditional rows' statistics (stage 2 with injection);
    * ``record``: the aggregated cross-attention map of the conditional rows (their own logits,
      before any injection) is accumulated over layers (stage 1 with the adaptive switch).

    Rows are paired through ``state.branch_slices`` (``"uncond"``, ``"cond"``), so every sample
    is treated separately inside the one batched forward.
    """

    def __init__(self, map_size: int = MAP_SIZE, injection_weight: float = 0.5) -> None:
        if not 0.0 <= float(injection_weight) <= 1.0:
            raise RangeError(
                f"injection_weight: expected a number in [0, 1], got {injection_weight}"
            )
        if int(map_size) < 1:
            raise RangeError(f"map_size: expected a positive int, got {map_size}")
        self.map_size = int(map_size)
        self.weight = float(injection_weight)
        self._reset()

    def _reset(self) -> None:
        self.uncond: slice | None = None
        self.cond: slice | None = None
        self.share_self = False
        self.inject_cross = False
        self.record = False
        self._sum: torch.Tensor | None = None
        self._layers = 0

    def begin_forward(self, state: object | None = None) -> None:
        self._reset()
        if state is None:
            return
        plan = state.scratch.get("uiface", {})  # type: ignore[attr-defined]
        slices = state.branch_slices  # type: ignore[attr-defined]
        self.cond = slices.get("cond")
        self.uncond = slices.get("uncond")
        paired = self.cond is not None and self.uncond is not None
        self.share_self = paired and bool(plan.get("share_self", False))
        self.inject_cross = paired and bool(plan.get("inject_cross", False))
        self.record = self.cond is not None and bool(plan.get("record", False))

    def logits(self, site: AttentionSite, logits: torch.Tensor) -> torch.Tensor:
        if site.kind == "self":
            if self.share_self:
                logits[self.cond] = logits[self.uncond]
            return logits
        if self.record:
            m = layer_attention_map(logits[self.cond], self.map_size)
            self._sum = m if self._sum is None else self._sum.add_(m)
            self._layers += 1
        if self.inject_cross:
            logits[self.cond] = inject_cross_logits(
                logits[self.cond], logits[self.uncond], self.weight
            )
        return logits

    def take_map(self) -> torch.Tensor | None:
        """The aggregated map ``(B, S, S)`` of the last forward (None if nothing was recorded)."""
        if self._sum is None:
            return None
        out = normalize_map(self._sum, self._layers)
        self._sum, self._layers = None, 0
        return out


__all__ = [
    "MAP_SIZE",
    "UIFaceController",
    "aggregate_cross_attention",
    "inject_cross_logits",
    "layer_attention_map",
    "map_distance",
    "normalize_map",
]
