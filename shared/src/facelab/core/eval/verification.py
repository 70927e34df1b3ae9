"""1:1 verification with insightface's 10-fold protocol (``arcface_torch/eval/verification.py``).

The protocol, fact by fact:

* distance: squared L2 between L2-normalized embeddings (so in [0, 4]); a pair is predicted
  "same" when ``dist < threshold`` (strict);
* accuracy: thresholds ``np.arange(0, 4, 0.01)``; ``KFold(n_splits=nfolds, shuffle=False)`` over
  the pair order (the first ``n % nfolds`` folds get one extra pair; ``nfolds=1`` trains and
  tests on everything, like insightface's ``LFold``); on each fold the threshold with the best
  accuracy on the other folds (the first one on ties) is applied to the held-out fold; the result
  is the mean and the (population) std of the fold accuracies;
* VAL@FAR: thresholds ``np.arange(0, 4, 0.001)``; on the training folds FAR(threshold) is
  computed for every threshold; if ``max(FAR) >= far_target`` the threshold is
  ``interp1d(far_train, thresholds, kind='slinear')(far_target)``, otherwise 0; VAL and FAR are
  then measured on the held-out fold; reported are mean VAL, std VAL and mean FAR.

Our implementation counts, for every threshold at once, how many genuine/impostor pairs of each
fold fall below it (one ``searchsorted`` plus a cumulative histogram), so there is no loop over
thresholds or pairs. The ``slinear`` interpolation is reproduced exactly as scipy <= 1.8
evaluated it (a degree-1 B-spline with knots ``[x0, x..., x_last]``, which allows the repeated
FAR values that every real curve has; scipy >= 1.9 refuses them, so insightface's own code now
crashes there). Its edge cases are kept: on a run of equal FARs the *last* threshold of the run
is used, and when the target equals the maximum FAR and that value is repeated, the degenerate
last B-spline interval evaluates to 0, i.e. threshold 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facelab.core.errors import (
    FacelabTypeError,
    NonFiniteError,
    RangeError,
    ShapeError,
    ZeroVectorError,
)
from facelab.core.eval.metrics import check_labels, to_numpy

#: insightface's threshold grids (kept as produced by np.arange so comparisons are bit-exact).
ACCURACY_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)


@dataclass(frozen=True)
class VerificationResult:
    """Result of :func:`verify`.

    ``accuracy``/``accuracy_std``: mean/std of the held-out fold accuracies; ``best_thresholds``:
    the squared-L2 threshold chosen on each fold's training part; ``val``/``val_std``/``far``:
    VAL at FAR = ``far_target`` (NaN when not computed); ``tpr``/``fpr``: the ROC over the
    accuracy thresholds, averaged over the held-out folds (insightface's ``tpr, fpr``).
    """

    accuracy: float
    accuracy_std: float
    fold_accuracies: np.ndarray
    best_thresholds: np.ndarray
    val: float
    val_std: float
    far: float
    far_target: float | None
    tpr: np.ndarray = field(repr=False)
    fpr: np.ndarray = field(repr=False)
    thresholds: np.ndarray = field(repr=False)
    nfolds: int = 10
    n_pairs: int = 0
    n_genuine: int = 0

    @property
    def threshold(self) -> float:
        """Mean of the per-fold best thresholds (squared L2)."""
        return float(np.mean(self.best_thresholds))

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "accuracy_std": self.accuracy_std,
            "fold_accuracies": self.fold_accuracies.tolist(),
            "best_thresholds": self.best_thresholds.tolist(),
            "val": self.val,
            "val_std": self.val_std,
            "far": self.far,
            "far_target": self.far_target,
            "nfolds": self.nfolds,
            "n_pairs": self.n_pairs,
            "n_genuine": self.n_genuine,
        }


def fold_bounds(n: int, nfolds: int) -> np.ndarray:
    """Start offsets of ``KFold(nfolds, shuffle=False)`` test folds, plus ``n`` at the end."""
    sizes = np.full(nfolds, n // nfolds, dtype=np.int64)
    sizes[: n % nfolds] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


def squared_distances(emb1: Any, emb2: Any, *, normalize: bool = True) -> np.ndarray:
    """Squared L2 distance per pair in float64 (after row normalization by default)."""
    e1 = _check_embeddings(emb1, "emb1")
    e2 = _check_embeddings(emb2, "emb2")
    if e1.shape != e2.shape:
        raise ShapeError(
            f"emb1/emb2: expected the same shape (one row per pair), got {e1.shape} and {e2.shape}"
        )
    if normalize:
        e1 = _normalize_rows(e1, "emb1")
        e2 = _normalize_rows(e2, "emb2")
    return np.sum(np.square(e1 - e2), axis=1)


def _check_embeddings(x: Any, name: str) -> np.ndarray:
    a = to_numpy(x, name)
    if a.ndim != 2:
        raise ShapeError(f"{name}: expected (N, D) embeddings, got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ShapeError(f"{name}: expected non-empty (N, D) embeddings, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise FacelabTypeError(f"{name}: expected floating point embeddings, got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).sum())
        raise NonFiniteError(f"{name}: expected finite values, got {bad} NaN/Inf entries")
    return a


def _normalize_rows(a: np.ndarray, name: str) -> np.ndarray:
    n = np.sqrt(np.einsum("ij,ij->i", a, a))
    if (n <= 1e-12).any():
        raise ZeroVectorError(
            f"{name}: expected non-zero embeddings, got {int((n <= 1e-12).sum())} zero rows"
        )
    return a / n[:, None]


def _fold_counts(
    dist: np.ndarray, same: np.ndarray, thresholds: np.ndarray, bounds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per fold and threshold: #genuine and #impostor pairs with ``dist < threshold``.

    Returns two (nfolds, T) integer arrays. A pair is accepted at threshold j iff
    ``j >= searchsorted(thresholds, dist, 'right')``, so a cumulative histogram of that index
    gives all thresholds at once.
    """
    nfolds, t = bounds.size - 1, thresholds.size
    first = np.searchsorted(thresholds, dist, side="right")  # in [0, T]
    fold = np.repeat(np.arange(nfolds), np.diff(bounds))
    key = fold * (t + 1) + first
    pos = np.bincount(key[same], minlength=nfolds * (t + 1)).reshape(nfolds, t + 1)
    neg = np.bincount(key[~same], minlength=nfolds * (t + 1)).reshape(nfolds, t + 1)
    return np.cumsum(pos, axis=1)[:, :t], np.cumsum(neg, axis=1)[:, :t]


def slinear_interp_scipy18(x: np.ndarray, y: np.ndarray, v: float) -> float:
    """``scipy.interpolate.interp1d(x, y, kind='slinear')(v)`` as scipy <= 1.8 computed it.

    x must be sorted (stable) and ``x[0] <= v <= x[-1]``; repeated x values are allowed. The
    spline is degree-1 with knots ``t = [x0, x0, x1, ..., x_last, x_last]`` and coefficients y:
    the interval ``l`` with ``t[l] <= v < t[l+1]`` (clamped to the last one) is found, then
    de Boor's recursion gives ``y[l-1] * (t[l+1] - v) / h + y[l] * (v - t[l]) / h`` with
    ``h = t[l+1] - t[l]``, or 0 when ``h == 0``.
    """
    n = x.size
    t = np.concatenate([x[:1], x, x[-1:]])
    ell = int(min(max(np.searchsorted(t, v, side="right"), 2), n)) - 1
    xa, xb = t[ell], t[ell + 1]
    if xb == xa:
        return 0.0
    w = 1.0 / (xb - xa)
    return float(y[ell - 1] * (w * (xb - v)) + y[ell] * (w * (v - xa)))


def verify(
    emb1: Any,
    emb2: Any,
    issame: Any,
    nfolds: int = 10,
    *,
    far_target: float | None = 1e-3,
    normalize: bool = True,
) -> VerificationResult:
    """insightface's 10-fold verification of pairs ``(emb1[i], emb2[i])``.

    ``emb1``/``emb2``: (N, D) arrays or tensors (normalized here unless ``normalize=False``);
    ``issame``: N 0/1 or bool labels. ``far_target=None`` skips VAL@FAR (which needs genuine
    and impostor pairs in every fold).
    """
    dist = squared_distances(emb1, emb2, normalize=normalize)
    n = dist.shape[0]
    same = check_labels(issame, n, "issame")
    if not isinstance(nfolds, (int, np.integer)) or isinstance(nfolds, bool) or nfolds < 1:
        raise RangeError(f"nfolds: expected a positive integer, got {nfolds!r}")
    nfolds = int(nfolds)
    if nfolds > n:
        raise RangeError(f"nfolds: expected at most the number of pairs ({n}), got {nfolds}")
    if far_target is not None and not (0.0 < float(far_target) < 1.0):
        raise RangeError(f"far_target: expected a rate in (0, 1) or None, got {far_target}")

    bounds = fold_bounds(n, nfolds)
    sizes = np.diff(bounds)
    n_pos_fold = np.add.reduceat(same.astype(np.int64), bounds[:-1])
    n_neg_fold = sizes - n_pos_fold

    # ---- accuracy with the best training threshold
    thr = ACCURACY_THRESHOLDS
    tp, fp = _fold_counts(dist, same, thr, bounds)
    tn = n_neg_fold[:, None] - fp
    correct_test = tp + tn  # (nfolds, T)
    if nfolds > 1:
        correct_train = correct_test.sum(0, keepdims=True) - correct_test
    else:  # LFold(1): train == test == all pairs
        correct_train = correct_test
    best = np.argmax(correct_train, axis=1)  # first maximum, as np.argmax in insightface
    rows = np.arange(nfolds)
    fold_acc = correct_test[rows, best] / sizes
    pos = n_pos_fold[:, None]
    neg = n_neg_fold[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        tprs = np.where(pos > 0, tp / np.maximum(pos, 1), 0.0)
        fprs = np.where(neg > 0, fp / np.maximum(neg, 1), 0.0)

    # ---- VAL @ FAR
    val_mean = val_std = far_mean = float("nan")
    if far_target is not None:
        vthr = VAL_THRESHOLDS
        train_neg = n_neg_fold.sum() - n_neg_fold if nfolds > 1 else n_neg_fold
        for what, counts in (
            ("impostor", n_neg_fold),
            ("genuine", n_pos_fold),
            ("training impostor", train_neg),
        ):
            if (counts == 0).any():
                f = int(np.argmax(counts == 0))
                raise RangeError(
                    f"issame: VAL@FAR needs {what} pairs in every fold, fold {f} of {nfolds} has "
                    f"none (KFold without shuffling splits the pairs in order; interleave "
                    f"genuine and impostor pairs or pass far_target=None)"
                )
        _vtp, vfp = _fold_counts(dist, same, vthr, bounds)
        fp_train = vfp.sum(0, keepdims=True) - vfp if nfolds > 1 else vfp
        far_train = fp_train / train_neg[:, None]
        vals = np.empty(nfolds)
        fars = np.empty(nfolds)
        for f in range(nfolds):  # 10 folds; everything inside is vectorized
            x = far_train[f]
            if x.max() >= far_target:
                order = np.argsort(x, kind="mergesort")
                threshold = slinear_interp_scipy18(x[order], vthr[order], float(far_target))
            else:
                threshold = 0.0
            d = dist[bounds[f] : bounds[f + 1]]
            s = same[bounds[f] : bounds[f + 1]]
            accept = d < threshold
            vals[f] = np.sum(accept & s) / n_pos_fold[f]
            fars[f] = np.sum(accept & ~s) / n_neg_fold[f]
        val_mean, val_std, far_mean = float(vals.mean()), float(vals.std()), float(fars.mean())

    return VerificationResult(
        accuracy=float(fold_acc.mean()),
        accuracy_std=float(fold_acc.std()),
        fold_accuracies=fold_acc,
        best_thresholds=thr[best],
        val=val_mean,
        val_std=val_std,
        far=far_mean,
        far_target=None if far_target is None else float(far_target),
        tpr=tprs.mean(0),
        fpr=fprs.mean(0),
        thresholds=thr,
        nfolds=nfolds,
        n_pairs=n,
        n_genuine=int(same.sum()),
    )


def verify_interleaved(embeddings: Any, issame: Any, nfolds: int = 10, **kwargs: Any):
    """:func:`verify` for a ``.bin`` layout: pair k is ``(embeddings[2k], embeddings[2k+1])``."""
    e = to_numpy(embeddings, "embeddings")
    if e.ndim != 2 or e.shape[0] % 2:
        raise ShapeError(
            f"embeddings: expected (2N, D) embeddings (pairs interleaved), got shape {e.shape}"
        )
    return verify(e[0::2], e[1::2], issame, nfolds, **kwargs)
