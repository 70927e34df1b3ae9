"""Margin softmax heads: CombinedMargin (ArcFace / CosFace / SphereFace) and CurricularFace.

API (the same for every head)::

    out = head(embeddings, labels)           # HeadOutput(logits, targets, classes)
    loss = F.cross_entropy(out.logits, out.targets)
    loss = head.loss(embeddings, labels)     # the same, in one call

``logits`` are ``s * f(cos)`` over the classes kept this step, ``targets`` the labels remapped
into those columns and ``classes`` the kept class ids (``None`` when all classes are used).
The cosines are ``normalize(emb) @ normalize(W).T`` clamped to [-1, 1] (round-off only) and the
margin math runs in float32 even when the matmul ran under autocast.

Margins (insightface CombinedMargin), on the target column only, ``theta = angle(emb, W_y)``:

* ``m1 == 1``: ``cos(theta + m2) - m3``; where ``theta + m2 > pi`` (``cos(theta) <=
  cos(pi - m2)``) ``cos(theta + m2)`` would grow again, so insightface's / TFace's fallback
  ``cos(theta) - m2 * sin(m2) - m3`` is used (easy_margin off). ArcFace: s=64, m2=0.5;
  CosFace: s=64, m3=0.4.
* ``m1 != 1`` (SphereFace-style): SphereFace's monotone extension
  ``psi = (-1)^k cos(m1 theta + m2) - 2k - m3`` with ``k = floor((m1 theta + m2) / pi)``.
  The ``sphereface`` preset is m1=1.35, s=64: the value the ArcFace paper uses for SphereFace
  inside the combined-margin framework (normalised features).

CurricularFace (TFace): the target logit as ArcFace; a negative with ``cos > cos(theta_y + m)``
(a hard one) becomes ``cos * (t + cos)``; ``t`` is an EMA of the mean target cosine,
``t <- alpha * mean + (1 - alpha) * t`` with alpha 0.01, updated in training mode (averaged over
all processes when a process group is running).

Partial FC (``sample_rate < 1``, training mode only): every class that occurs in the batch is
kept, the rest are ranked by a uniform random priority drawn from a generator seeded by
``(seed, step)`` and the top ones fill the sample; ``step`` is a buffer, so a resumed run draws
the same classes. Under torch.distributed (Accelerate included) the per-class presence masks are
all-reduced (MAX) first, so every process keeps the union of all processes' positives and, with
the same generator, the same negatives: the replicated head sees the same classes everywhere.
The number kept is ``k = min(C, max(int(sample_rate * C), world_size * batch))``: it is known
without a host sync and always leaves room for every positive. Only the kept rows of ``W`` get a
gradient. No ``.item()``/host syncs in the forward (input value checks run on CPU tensors only).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from facelab.core.errors import (
    FacelabTypeError,
    RangeError,
    ShapeError,
    UnknownNameError,
    expect_finite,
    expect_tensor,
)
from facelab.core.hub import PretrainedMixin, register_model

#: CombinedMargin presets: (s, m1, m2, m3)
MARGIN_PRESETS: dict[str, dict[str, float]] = {
    "arcface": {"s": 64.0, "m1": 1.0, "m2": 0.5, "m3": 0.0},
    "cosface": {"s": 64.0, "m1": 1.0, "m2": 0.0, "m3": 0.4},
    "sphereface": {"s": 64.0, "m1": 1.35, "m2": 0.0, "m3": 0.0},
    "combined": {"s": 64.0, "m1": 1.0, "m2": 0.3, "m3": 0.2},
}
_WEIGHT_STD = 0.01  # insightface Partial FC / TFace init of the class centres
_SEED_MIX = 0x9E3779B97F4A7C15


class HeadOutput(NamedTuple):
    logits: torch.Tensor
    """(B, K) scaled logits over the kept classes"""
    targets: torch.Tensor
    """(B,) labels remapped into the K kept columns"""
    classes: torch.Tensor | None
    """(K,) kept class ids (sorted), None when all classes are used"""


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt with value 0 and a zero (not NaN/Inf) gradient at x <= 0."""
    return torch.where(x > 0, x.clamp_min(torch.finfo(x.dtype).tiny).sqrt(), torch.zeros_like(x))


def _check_number(value: Any, name: str, lo: float, hi: float, lo_open: bool = False) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise FacelabTypeError(f"{name}: expected a number, got {value!r}")
    v = float(value)
    ok = (v > lo if lo_open else v >= lo) and v <= hi and math.isfinite(v)
    if not ok:
        bracket = "(" if lo_open else "["
        raise RangeError(f"{name}: expected a value in {bracket}{lo}, {hi}], got {value}")
    return v


def _process_group_size(group: Any) -> int:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group)
    return 1


class _CosineHead(nn.Module, PretrainedMixin):
    """Class centres ``W (C, D)``, input checks, Partial FC sampling and the loss."""

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        *,
        sample_rate: float = 1.0,
        seed: int = 0,
        process_group: Any = None,
    ) -> None:
        super().__init__()
        for value, name in ((embedding_size, "embedding_size"), (num_classes, "num_classes")):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise RangeError(f"{name}: expected an int >= 1, got {value!r}")
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.sample_rate = _check_number(sample_rate, "sample_rate", 0.0, 1.0, lo_open=True)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise FacelabTypeError(f"seed: expected an int, got {seed!r}")
        self.seed = seed
        self.num_sample = max(1, int(self.sample_rate * num_classes))
        self.process_group = process_group
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, 0.0, _WEIGHT_STD)
        # sampling step counter; persisted so a resumed run draws the same classes
        self.register_buffer("sample_step", torch.zeros((), dtype=torch.int64))
        self._step: int | None = 0  # host mirror of sample_step (None: re-read once)

    # --- config -------------------------------------------------------------------------
    def _base_config(self) -> dict[str, Any]:
        return {
            "embedding_size": self.embedding_size,
            "num_classes": self.num_classes,
            "sample_rate": self.sample_rate,
            "seed": self.seed,
        }

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._step = None

    # --- checks -------------------------------------------------------------------------
    def _check(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        name = type(self).__name__
        expect_tensor(embeddings, f"{name} embeddings", floating=True)
        expect_tensor(labels, f"{name} labels")
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ShapeError(
                f"{name} embeddings: expected (B, {self.embedding_size}), "
                f"got shape {tuple(embeddings.shape)}"
            )
        if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
            raise ShapeError(
                f"{name} labels: expected ({embeddings.shape[0]},) to match the embeddings, "
                f"got shape {tuple(labels.shape)}"
            )
        if labels.dtype not in (torch.int64, torch.int32):
            raise FacelabTypeError(f"{name} labels: expected int64/int32, got {labels.dtype}")
        if embeddings.shape[0] == 0:
            raise ShapeError(f"{name}: expected a non-empty batch, got 0 embeddings")
        # value checks need host syncs: only where they are free (CPU tensors, not compiling)
        if torch.compiler.is_compiling():
            return
        if labels.device.type == "cpu":
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= self.num_classes:
                raise RangeError(
                    f"{name} labels: expected class ids in [0, {self.num_classes}), "
                    f"got min {lo} and max {hi}"
                )
        if embeddings.device.type == "cpu":
            expect_finite(embeddings, f"{name} embeddings")

    # --- sampling -----------------------------------------------------------------------
    def _next_seed(self) -> int:
        if self._step is None:
            self._step = int(self.sample_step)  # once after a state-dict load
        step = self._step
        self._step += 1
        self.sample_step.add_(1)
        return (self.seed * _SEED_MIX + step) % (2**63)

    def sample_classes(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance the sampler one step: ``(classes (K,), targets (B,))`` (see module doc)."""
        device = labels.device
        group = self.process_group
        world = _process_group_size(group)
        with torch.no_grad():
            present = torch.zeros(self.num_classes, dtype=torch.uint8, device=device)
            present.index_fill_(0, labels.long(), 1)
            if world > 1:
                torch.distributed.all_reduce(
                    present, op=torch.distributed.ReduceOp.MAX, group=group
                )
            k = min(self.num_classes, max(self.num_sample, world * labels.shape[0]))
            gen = torch.Generator(device=device).manual_seed(self._next_seed())
            priority = torch.rand(self.num_classes, generator=gen, device=device)
            priority = torch.where(present.bool(), torch.full_like(priority, 2.0), priority)
            classes = priority.topk(k, sorted=False).indices.sort().values
            targets = torch.searchsorted(classes, labels.long())
        return classes, targets

    # --- forward ------------------------------------------------------------------------
    def cosine(self, embeddings: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``normalize(emb) @ normalize(W).T``, clamped to [-1, 1], at least float32.

        The embeddings are cast to the weight's dtype; under autocast the matmul may run in
        half precision, the margin math after it never does.
        """
        e = F.normalize(embeddings.to(weight.dtype), dim=1)
        w = F.normalize(weight, dim=1)
        cos = F.linear(e, w)
        return cos.to(torch.promote_types(cos.dtype, torch.float32)).clamp(-1.0, 1.0)

    def margin(self, cos: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        self._check(embeddings, labels)
        if self.training and self.sample_rate < 1.0:
            classes, targets = self.sample_classes(labels)
            weight = self.weight[classes]
        else:
            classes, targets, weight = None, labels.long(), self.weight
        cos = self.cosine(embeddings, weight)
        return HeadOutput(self.margin(cos, targets), targets, classes)

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the margin logits."""
        out = self(embeddings, labels)
        return F.cross_entropy(out.logits, out.targets)


@register_model(key="facelab.core.MarginHead")
class MarginHead(_CosineHead):
    """CombinedMargin head ``s * (cos(m1 theta + m2) - m3)``; presets via :meth:`from_preset`."""

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        *,
        s: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
        sample_rate: float = 1.0,
        seed: int = 0,
        process_group: Any = None,
    ) -> None:
        super().__init__(
            embedding_size,
            num_classes,
            sample_rate=sample_rate,
            seed=seed,
            process_group=process_group,
        )
        self.s = _check_number(s, "s", 0.0, math.inf, lo_open=True)
        self.m1 = _check_number(m1, "m1", 0.0, math.inf, lo_open=True)
        self.m2 = _check_number(m2, "m2", 0.0, math.pi)
        self.m3 = _check_number(m3, "m3", 0.0, 2.0)
        # insightface's constants for the theta + m2 > pi fallback
        self._cos_m = math.cos(self.m2)
        self._sin_m = math.sin(self.m2)
        self._th = math.cos(math.pi - self.m2)
        self._mm = math.sin(math.pi - self.m2) * self.m2

    @classmethod
    def from_preset(
        cls, name: str, embedding_size: int, num_classes: int, **options: Any
    ) -> MarginHead:
        """``arcface`` (s=64, m2=0.5), ``cosface`` (s=64, m3=0.4), ``sphereface`` (s=64,
        m1=1.35) or ``combined`` (s=64, 1.0/0.3/0.2); ``options`` override any field."""
        if name not in MARGIN_PRESETS:
            raise UnknownNameError(
                f"unknown margin preset {name!r}; valid presets: {list(MARGIN_PRESETS)}"
            )
        return cls(embedding_size, num_classes, **{**MARGIN_PRESETS[name], **options})

    @property
    def config(self) -> dict[str, Any]:
        return {**self._base_config(), "s": self.s, "m1": self.m1, "m2": self.m2, "m3": self.m3}

    def target_logit(self, cos_t: torch.Tensor) -> torch.Tensor:
        """The margin applied to target cosines (any shape), before the scale ``s``."""
        if self.m1 == 1.0:
            if self.m2 == 0.0:
                return cos_t - self.m3
            sin_t = _safe_sqrt(1.0 - cos_t * cos_t)
            shifted = cos_t * self._cos_m - sin_t * self._sin_m  # cos(theta + m2)
            return torch.where(cos_t > self._th, shifted, cos_t - self._mm) - self.m3
        theta = torch.atan2(_safe_sqrt(1.0 - cos_t * cos_t), cos_t)
        x = self.m1 * theta + self.m2
        k = torch.floor(x / math.pi)
        sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
        return sign * torch.cos(x) - 2.0 * k - self.m3

    def margin(self, cos: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        idx = targets.unsqueeze(1)
        final = self.target_logit(cos.gather(1, idx))
        return cos.scatter(1, idx, final) * self.s

    def extra_repr(self) -> str:
        return (
            f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, s={self.s}, "
            f"m1={self.m1}, m2={self.m2}, m3={self.m3}, sample_rate={self.sample_rate}"
        )


@register_model(key="facelab.core.CurricularFace")
class CurricularFace(_CosineHead):
    """CurricularFace (Huang et al. 2020), TFace's formula; ``t`` is a buffer."""

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        *,
        s: float = 64.0,
        m: float = 0.5,
        alpha: float = 0.01,
        sample_rate: float = 1.0,
        seed: int = 0,
        process_group: Any = None,
    ) -> None:
        super().__init__(
            embedding_size,
            num_classes,
            sample_rate=sample_rate,
            seed=seed,
            process_group=process_group,
        )
        self.s = _check_number(s, "s", 0.0, math.inf, lo_open=True)
        self.m = _check_number(m, "m", 0.0, math.pi)
        self.alpha = _check_number(alpha, "alpha", 0.0, 1.0)
        self._cos_m = math.cos(self.m)
        self._sin_m = math.sin(self.m)
        self._th = math.cos(math.pi - self.m)
        self._mm = math.sin(math.pi - self.m) * self.m
        self.register_buffer("t", torch.zeros(()))

    @property
    def config(self) -> dict[str, Any]:
        return {**self._base_config(), "s": self.s, "m": self.m, "alpha": self.alpha}

    def _update_t(self, cos_t: torch.Tensor) -> None:
        with torch.no_grad():
            stats = torch.stack([cos_t.sum(), cos_t.new_tensor(float(cos_t.numel()))])
            if _process_group_size(self.process_group) > 1:
                torch.distributed.all_reduce(stats, group=self.process_group)
            mean = stats[0] / stats[1]
            self.t.copy_(self.alpha * mean + (1.0 - self.alpha) * self.t)

    def margin(self, cos: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        idx = targets.unsqueeze(1)
        cos_t = cos.gather(1, idx)
        sin_t = _safe_sqrt(1.0 - cos_t * cos_t)
        cos_tm = cos_t * self._cos_m - sin_t * self._sin_m  # cos(theta_y + m)
        final = torch.where(cos_t > self._th, cos_tm, cos_t - self._mm)
        if self.training:
            self._update_t(cos_t)
        t = self.t.to(cos.dtype)
        hard = cos > cos_tm
        modulated = torch.where(hard, cos * (t + cos), cos)
        return modulated.scatter(1, idx, final) * self.s

    def extra_repr(self) -> str:
        return (
            f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, s={self.s}, "
            f"m={self.m}, alpha={self.alpha}, sample_rate={self.sample_rate}"
        )


HEADS = (*MARGIN_PRESETS, "curricularface")


def get_head(name: str, embedding_size: int, num_classes: int, **options: Any) -> _CosineHead:
    """A head by name: the margin presets (:data:`MARGIN_PRESETS`) or ``curricularface``."""
    if name == "curricularface":
        return CurricularFace(embedding_size, num_classes, **options)
    if name in MARGIN_PRESETS:
        return MarginHead.from_preset(name, embedding_size, num_classes, **options)
    raise UnknownNameError(f"unknown head {name!r}; valid names: {list(HEADS)}")
