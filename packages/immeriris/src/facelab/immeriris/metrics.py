"""Verification and identification metrics of a gallery x probe score matrix.

Scores are similarities (higher = more likely the same eye): cosine for the networks,
``1 - Hamming distance`` for iris codes. Every gallery entry is compared with every probe;
pairs of one identity are genuine, the rest impostors.

* **FRR at FAR** -- the false reject rate at the lowest threshold whose false accept rate does
  not exceed the target (core ``fnmr_at_fmr``: ISO/IEC 19795 FNMR@FMR, the conservative rule).
  ``support`` is how many impostor pairs the target allows (``floor(FAR x impostors)``): with
  support 0 the point only says "no impostor accepted at all", and the table marks it.
* **EER** and the **DET** curve from the exact ROC (core ``roc``).
* **Decidability** ``d' = |mu_g - mu_i| / sqrt((sigma_g^2 + sigma_i^2) / 2)``.
* **Rank-1 identification** (closed set): each probe's identity is the gallery identity with
  the highest score (its best entry); ties count as misses.
* **Dual-eye fusion**: the mean of the left and the right score of two captures
  (:func:`fuse`), the usual sum rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facelab.core.errors import RangeError, ShapeError
from facelab.core.eval import RocCurve, plot_det, roc

FARS: tuple[float, ...] = (1e-1, 1e-3, 1e-5)


@dataclass
class Verification:
    """Metrics of one protocol for one method (rates as fractions)."""

    frr: dict[float, float]
    support: dict[float, int]
    eer: float
    dprime: float
    rank1: float
    n_genuine: int
    n_impostor: int
    n_probes: int
    curve: RocCurve | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "frr": {repr(k): v for k, v in self.frr.items()},
            "support": {repr(k): v for k, v in self.support.items()},
            "eer": self.eer,
            "dprime": self.dprime,
            "rank1": self.rank1,
            "n_genuine": self.n_genuine,
            "n_impostor": self.n_impostor,
            "n_probes": self.n_probes,
        }


def dprime(genuine: torch.Tensor, impostor: torch.Tensor) -> float:
    """Daugman's decidability of two score samples."""
    g, i = genuine.double(), impostor.double()
    if g.numel() < 2 or i.numel() < 2:
        raise RangeError(
            f"dprime: expected at least 2 genuine and 2 impostor scores, got {g.numel()} and {i.numel()}"
        )
    denom = math.sqrt((float(g.var()) + float(i.var())) / 2)
    return abs(float(g.mean()) - float(i.mean())) / denom if denom > 0 else math.inf


def rank1(scores: torch.Tensor, gallery_labels: torch.Tensor, probe_labels: torch.Tensor) -> float:
    """Closed-set rank-1 rate over probes whose identity is in the gallery (ties are misses)."""
    classes, inverse = torch.unique(gallery_labels, return_inverse=True)
    s = scores.double()
    per_class = torch.full((classes.numel(), s.shape[1]), -math.inf, dtype=s.dtype)
    per_class = per_class.scatter_reduce(0, inverse.view(-1, 1).expand_as(s), s, reduce="amax")
    pos = torch.searchsorted(classes, probe_labels)
    pos_c = pos.clamp(max=classes.numel() - 1)
    mated = classes[pos_c] == probe_labels
    if not bool(mated.any()):
        raise RangeError("rank1: no probe identity is in the gallery")
    cols = torch.nonzero(mated).flatten()
    true = per_class[pos_c[cols], cols]
    others = per_class[:, cols].clone()
    others[pos_c[cols], torch.arange(cols.numel())] = -math.inf
    return float((true > others.max(0).values).double().mean())


def fuse(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Dual-eye score fusion: the mean of the two eyes' score matrices."""
    if left.shape != right.shape:
        raise ShapeError(
            f"fuse: expected score matrices of one shape, got {tuple(left.shape)} and {tuple(right.shape)}"
        )
    return (left + right) / 2


def verification(
    scores: torch.Tensor,
    gallery_labels: torch.Tensor,
    probe_labels: torch.Tensor,
    fars: Sequence[float] = FARS,
    keep_curve: bool = False,
) -> Verification:
    """All metrics of a (G, P) similarity matrix. NaN scores (no comparison possible) count as
    the lowest score: a rejection for genuine pairs, never an accept for impostors."""
    if scores.dim() != 2 or scores.shape != (gallery_labels.numel(), probe_labels.numel()):
        raise ShapeError(
            f"scores: expected ({gallery_labels.numel()}, {probe_labels.numel()}) for the gallery x probes, "
            f"got {tuple(scores.shape)}"
        )
    if scores.numel() == 0:
        raise RangeError(
            f"verification: expected a non-empty gallery and probe set, got {tuple(scores.shape)}"
        )
    s = scores.double()
    low = float(torch.nan_to_num(s, nan=0.0).min()) - 1.0
    s = torch.nan_to_num(s, nan=low)
    same = gallery_labels.view(-1, 1) == probe_labels.view(1, -1)
    g, i = s[same], s[~same]
    if g.numel() == 0 or i.numel() == 0:
        raise RangeError(
            f"verification: expected genuine and impostor pairs, got {g.numel()} and {i.numel()}"
        )
    values = torch.cat([g, i]).numpy()
    labels = np.r_[np.ones(g.numel()), np.zeros(i.numel())]
    curve = roc(values, labels)
    frr = {f: 1.0 - t for f, t in curve.tar_at_far(list(fars), "conservative").items()}
    support = {f: math.floor(f * i.numel()) for f in fars}
    eer, _ = curve.eer()
    return Verification(
        frr=frr,
        support=support,
        eer=eer,
        dprime=dprime(g, i) if g.numel() > 1 else math.nan,
        rank1=rank1(s, gallery_labels, probe_labels),
        n_genuine=int(g.numel()),
        n_impostor=int(i.numel()),
        n_probes=int(probe_labels.numel()),
        curve=curve if keep_curve else None,
    )


def det_plot(curves: Mapping[str, RocCurve], path: str | Path, title: str = "DET") -> Path:
    """DET curves (core ``plot_det``) of several methods on one protocol."""
    return plot_det(dict(curves), path, title=title, rate_range=(1e-5, 0.9))
