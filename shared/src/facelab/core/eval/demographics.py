"""Demographic group statistics for verification (RFW / BUPT-Balancedface style).

Each pair belongs to one group (e.g. the race subset of RFW). Per group: the 10-fold
verification accuracy of the group's own pairs (:func:`facelab.core.eval.verify`, so each
group keeps the insightface protocol) and TAR at the requested FARs from the cosine scores.
Across groups: the mean and standard deviation of the accuracies, the trade-off score
``TO = mean - std`` and the skewed error ratio ``SER = max error / min error`` (both used in
the fairness papers that report on RFW).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from facelab.core.errors import FacelabTypeError, RangeError, ShapeError
from facelab.core.eval.metrics import check_labels, check_rates, roc, to_numpy
from facelab.core.eval.verification import VerificationResult, squared_distances, verify


@dataclass(frozen=True)
class GroupResult:
    group: str
    n_pairs: int
    verification: VerificationResult
    tar: dict[float, float]

    @property
    def accuracy(self) -> float:
        return self.verification.accuracy


@dataclass(frozen=True)
class DemographicStats:
    """Per-group results plus mean, std, TO = mean - std and SER of the group accuracies."""

    groups: dict[str, GroupResult]
    mean: float
    std: float
    to: float
    ser: float
    ddof: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": {
                g: {
                    "n_pairs": r.n_pairs,
                    "accuracy": r.accuracy,
                    "accuracy_std": r.verification.accuracy_std,
                    **{f"tar@{f:g}": t for f, t in r.tar.items()},
                }
                for g, r in self.groups.items()
            },
            "mean": self.mean,
            "std": self.std,
            "to": self.to,
            "ser": self.ser,
            "ddof": self.ddof,
        }


def demographic_stats(
    emb1: Any,
    emb2: Any,
    issame: Any,
    groups: Any,
    *,
    nfolds: int = 10,
    fars: Sequence[float] = (1e-3,),
    ddof: int = 0,
    far_target: float | None = 1e-3,
) -> DemographicStats:
    """Verification accuracy and TAR@FAR per group, and their spread across groups.

    ``groups``: (N,) group label (str or int) of each pair. ``ddof`` is the delta degrees of
    freedom of the std across groups (0: population std, numpy's default).
    """
    dist = squared_distances(emb1, emb2)
    n = dist.shape[0]
    same = check_labels(issame, n, "issame")
    g = to_numpy(groups, "groups")
    if g.shape != (n,):
        raise ShapeError(f"groups: expected shape ({n},) (one group per pair), got {g.shape}")
    if g.dtype.kind not in "iuUSOb":
        raise FacelabTypeError(f"groups: expected str or int group labels, got {g.dtype}")
    fars = check_rates(fars, "fars") if len(fars) else ()
    names, inv = np.unique(g, return_inverse=True)
    inv = inv.reshape(-1)
    if names.size < 2:
        raise RangeError(f"groups: expected at least 2 groups, got {names.tolist()}")
    if ddof < 0 or ddof >= names.size:
        raise RangeError(f"ddof: expected 0 <= ddof < number of groups ({names.size}), got {ddof}")
    e1 = to_numpy(emb1, "emb1")
    e2 = to_numpy(emb2, "emb2")
    sizes = np.bincount(inv, minlength=names.size)
    if sizes.min() < nfolds:
        k = int(np.argmin(sizes))
        raise RangeError(
            f"groups: group {names[k]!r} has {int(sizes[k])} pairs, fewer than nfolds={nfolds}"
        )
    results: dict[str, GroupResult] = {}
    for k, name in enumerate(names):  # one verify() per group (a handful of groups)
        m = inv == k
        ver = verify(e1[m], e2[m], same[m], nfolds, far_target=far_target)
        # cosine of unit vectors from the squared distance: cos = 1 - d / 2
        tar = roc(1.0 - dist[m] / 2.0, same[m]).tar_at_far(fars) if fars else {}
        results[str(name)] = GroupResult(str(name), int(m.sum()), ver, tar)
    acc = np.array([r.accuracy for r in results.values()])
    mean = float(acc.mean())
    std = float(acc.std(ddof=ddof))
    err = 1.0 - acc
    if err.min() > 0:
        ser = float(err.max() / err.min())
    else:  # a perfect group: no skew if all are perfect, unbounded otherwise
        ser = 1.0 if err.max() == 0 else math.inf
    return DemographicStats(results, mean, std, mean - std, ser, ddof)
