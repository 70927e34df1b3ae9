"""Score-level metrics: ROC, TAR@FAR, EER, FNMR@FMR, chunked 1:1 scoring and 1:N search.

Conventions: a *score* is a similarity (higher means "more likely the same identity"; pass
``-distance`` for distances), a *label* is 1 (genuine / mated pair) or 0 (impostor).

ROC points come from ``sklearn.metrics.roc_curve(labels, scores, drop_intermediate=False)``:
every distinct score is a threshold, so the curve is exact. Reading a TAR at a target FAR off
those points follows one of two rules:

* ``"insightface"`` (default, as ``recognition/arcface_torch/eval_ijbc.py`` does): the ROC point
  whose FPR is *nearest* to the target (``min(zip(|fpr - far|, index))`` over the flipped curve),
  ties going to the higher TPR. The chosen FPR may lie slightly above the target.
* ``"conservative"``: the point with the largest FPR ``<=`` target (and the highest TPR there),
  i.e. the best threshold whose false accept rate does not exceed the target. ``fnmr_at_fmr``
  (ISO/IEC 19795 naming, used for iris and template protection) always uses this rule.

Chunked scoring: ``pair_scores`` streams huge pair lists through bounded working memory (a few
hundred MB whatever the number of pairs) and keeps every score (4 bytes per pair), so TAR@FAR
computed from them is exact — 10M pairs cost 40 MB of scores. ``search`` does 1:N retrieval with a chunked
matmul and a running top-k.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from facelab.core.errors import (
    FacelabTypeError,
    NonFiniteError,
    RangeError,
    ShapeError,
    UnknownNameError,
    ZeroVectorError,
    describe,
)

TarRule = Literal["insightface", "conservative"]
TAR_RULES: tuple[str, ...] = ("insightface", "conservative")

#: the FAR grid reported for IJB-B/C (insightface's table: 1e-6 ... 1e-1).
IJB_FARS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


# --------------------------------------------------------------------------------------------
# input checks shared by the eval package


def to_numpy(x: Any, name: str) -> np.ndarray:
    """A numpy view/copy of a tensor, array or sequence (never modifies the input)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, (str, bytes)) or x is None:
        raise FacelabTypeError(f"{name}: expected an array or tensor, got {describe(x)}")
    try:
        return np.asarray(x)
    except Exception as exc:  # ragged lists etc.
        raise FacelabTypeError(
            f"{name}: could not convert {describe(x)} to an array: {exc}"
        ) from None


def check_scores(scores: Any, name: str = "scores") -> np.ndarray:
    """1-D, non-empty, finite, real-valued scores."""
    s = to_numpy(scores, name)
    if s.ndim != 1:
        raise ShapeError(f"{name}: expected a 1-D array of scores, got shape {s.shape}")
    if s.size == 0:
        raise ShapeError(f"{name}: expected a non-empty array, got 0 scores")
    if s.dtype == np.bool_ or not (
        np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)
    ):
        raise FacelabTypeError(f"{name}: expected real-valued scores, got dtype {s.dtype}")
    if np.issubdtype(s.dtype, np.floating) and not np.isfinite(s).all():
        bad = int((~np.isfinite(s)).sum())
        raise NonFiniteError(f"{name}: expected finite values, got {bad} NaN/Inf entries")
    return s


def check_labels(labels: Any, n: int | None = None, name: str = "labels") -> np.ndarray:
    """1-D 0/1 (or bool) labels -> bool array; ``n`` is the required length."""
    y = to_numpy(labels, name)
    if y.ndim != 1:
        raise ShapeError(f"{name}: expected a 1-D array of 0/1 labels, got shape {y.shape}")
    if n is not None and y.shape[0] != n:
        raise ShapeError(f"{name}: expected {n} labels (one per score/pair), got {y.shape[0]}")
    if y.size == 0:
        raise ShapeError(f"{name}: expected a non-empty array, got 0 labels")
    if y.dtype == np.bool_:
        return y
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise FacelabTypeError(f"{name}: expected 0/1 or bool labels, got dtype {y.dtype}")
    bad = ~((y == 0) | (y == 1))
    if bad.any():
        shown = np.unique(y[bad])[:5].tolist()
        raise RangeError(
            f"{name}: expected only 0/1 (or bool) values, got {int(bad.sum())} other values, "
            f"e.g. {shown}"
        )
    return y == 1


def check_both_classes(y: np.ndarray, name: str = "labels") -> tuple[int, int]:
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise RangeError(
            f"{name}: expected both genuine (1) and impostor (0) entries, got {n_pos} genuine "
            f"and {n_neg} impostor"
        )
    return n_pos, n_neg


def check_rates(rates: float | Iterable[float], name: str = "fars") -> tuple[float, ...]:
    """Target rates, each strictly inside (0, 1)."""
    if isinstance(rates, (int, float, np.floating, np.integer)) and not isinstance(rates, bool):
        values = (float(rates),)
    else:
        try:
            values = tuple(float(r) for r in rates)  # type: ignore[union-attr]
        except TypeError:
            raise FacelabTypeError(
                f"{name}: expected a float or a sequence of floats, got {describe(rates)}"
            ) from None
    if not values:
        raise ShapeError(f"{name}: expected at least one target rate, got none")
    bad = [v for v in values if not (0.0 < v < 1.0)]
    if bad:
        raise RangeError(f"{name}: expected rates strictly inside (0, 1), got {bad}")
    return values


def check_rule(rule: str) -> str:
    if rule not in TAR_RULES:
        raise UnknownNameError(f"rule: expected one of {list(TAR_RULES)}, got {rule!r}")
    return rule


def check_features(x: Any, name: str, *, dim: int | None = None) -> torch.Tensor:
    """(N, D) finite float features as a float32 CPU tensor (no copy when already one)."""
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.floating):
            raise FacelabTypeError(f"{name}: expected floating point features, got {x.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise FacelabTypeError(f"{name}: expected floating point features, got {x.dtype}")
        t = x.detach()
    else:
        raise FacelabTypeError(f"{name}: expected an (N, D) array or tensor, got {describe(x)}")
    if t.dim() != 2:
        raise ShapeError(f"{name}: expected (N, D) features, got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ShapeError(f"{name}: expected non-empty (N, D) features, got {tuple(t.shape)}")
    if dim is not None and t.shape[1] != dim:
        raise ShapeError(f"{name}: expected feature size {dim}, got shape {tuple(t.shape)}")
    t = t.to(dtype=torch.float32)
    # torch.isfinite on a whole (1M, 512) gallery allocates several GB of temporaries: check
    # in row blocks of ~16M values instead
    step = max(1, (1 << 24) // t.shape[1])
    bad = sum(int((~torch.isfinite(t[s : s + step])).sum()) for s in range(0, t.shape[0], step))
    if bad:
        raise NonFiniteError(f"{name}: expected finite values, got {bad} NaN/Inf entries")
    return t


def l2_normalize(t: torch.Tensor, name: str) -> torch.Tensor:
    """Row-normalize; a zero row is an error (it has no direction to compare)."""
    n = torch.linalg.vector_norm(t, dim=1, keepdim=True)
    zero = n.squeeze(1) <= 1e-12
    if bool(zero.any()):
        rows = torch.nonzero(zero).squeeze(1)[:5].tolist()
        raise ZeroVectorError(
            f"{name}: expected non-zero feature vectors, got {int(zero.sum())} with norm 0 "
            f"(rows {rows}...)"
        )
    return t / n


# --------------------------------------------------------------------------------------------
# ROC and operating points


@dataclass(frozen=True)
class RocCurve:
    """An exact ROC curve: ``fpr[i], tpr[i]`` for accepting ``score >= thresholds[i]``.

    ``thresholds[0]`` is ``inf`` (accept nothing), as in scikit-learn.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    n_genuine: int
    n_impostor: int

    @property
    def auc(self) -> float:
        from sklearn.metrics import auc

        return float(auc(self.fpr, self.tpr))

    @property
    def fnr(self) -> np.ndarray:
        return 1.0 - self.tpr

    def operating_index(self, far: float, rule: TarRule = "insightface") -> int:
        """Index of the ROC point used for a target FAR (see the module doc for the rules)."""
        check_rule(rule)
        fpr = self.fpr
        if rule == "conservative":
            # fpr is non-decreasing; the last point with fpr <= far has the highest TPR there
            return int(np.searchsorted(fpr, far, side="right") - 1)
        # insightface: min over (|fpr - far|, index-in-flipped-curve) -> the *last* index with
        # the smallest distance (the flip makes ties go to the larger original index).
        d = np.abs(fpr - far)
        return int(d.size - 1 - np.argmin(d[::-1]))

    def tar_at_far(
        self, fars: float | Sequence[float], rule: TarRule = "insightface"
    ) -> dict[float, float]:
        values = check_rates(fars, "fars")
        return {f: float(self.tpr[self.operating_index(f, rule)]) for f in values}

    def threshold_at_far(self, far: float, rule: TarRule = "insightface") -> float:
        (f,) = check_rates(far, "far")
        return float(self.thresholds[self.operating_index(f, rule)])

    def eer(self) -> tuple[float, float]:
        """(EER, threshold): where FNR = 1 - TPR crosses FPR, linear on the crossing segment.

        The threshold is that of the first ROC point with FNR <= FPR (accept ``score >= t``).
        """
        fpr, fnr = self.fpr, 1.0 - self.tpr
        d = fnr - fpr  # non-increasing along the curve, from 1 (accept nothing) to -1
        b = int(np.argmax(d <= 0))  # first point at or past the crossing; exists since d[-1] = -1
        a = b - 1  # b >= 1 because d[0] = 1 > 0
        if d[b] == 0:
            return float(fpr[b]), float(self.thresholds[b])
        alpha = d[a] / (d[a] - d[b])
        eer = fpr[a] + alpha * (fpr[b] - fpr[a])
        return float(eer), float(self.thresholds[b])

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_genuine": self.n_genuine,
            "n_impostor": self.n_impostor,
            "auc": self.auc,
            "points": int(self.fpr.size),
        }


def roc(scores: Any, labels: Any) -> RocCurve:
    """The exact ROC of similarity ``scores`` against 0/1 ``labels`` (sklearn, no point dropped)."""
    from sklearn.metrics import roc_curve

    s = check_scores(scores, "scores")
    y = check_labels(labels, s.shape[0], "labels")
    n_pos, n_neg = check_both_classes(y)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    return RocCurve(fpr=fpr, tpr=tpr, thresholds=thr, n_genuine=n_pos, n_impostor=n_neg)


def tar_at_far(
    scores: Any,
    labels: Any,
    fars: float | Sequence[float] = IJB_FARS,
    *,
    rule: TarRule = "insightface",
) -> dict[float, float]:
    """TAR (true accept rate) at each target FAR: ``{far: tar}``.

    ``rule="insightface"`` reads the ROC point nearest to each FAR (as insightface's IJB
    evaluation); ``rule="conservative"`` the best point whose FAR does not exceed the target.
    """
    check_rule(rule)
    check_rates(fars, "fars")
    return roc(scores, labels).tar_at_far(fars, rule)


def eer(scores: Any, labels: Any, *, return_threshold: bool = False) -> float | tuple[float, float]:
    """Equal error rate: where the false non-match rate equals the false match rate."""
    value, thr = roc(scores, labels).eer()
    return (value, thr) if return_threshold else value


def fnmr_at_fmr(
    scores: Any, labels: Any, fmrs: float | Sequence[float] = (1e-4, 1e-3, 1e-2)
) -> dict[float, float]:
    """FNMR at each target FMR (ISO/IEC 19795 names): ``{fmr: fnmr}``.

    The threshold is the lowest one whose FMR does not exceed the target (the conservative
    rule), so ``fnmr = 1 - tar_at_far(..., rule="conservative")``.
    """
    check_rates(fmrs, "fmrs")
    curve = roc(scores, labels)
    return {f: 1.0 - t for f, t in curve.tar_at_far(fmrs, "conservative").items()}


# --------------------------------------------------------------------------------------------
# chunked 1:1 scoring


def _check_index(idx: Any, n: int, name: str) -> torch.Tensor:
    a = to_numpy(idx, name)
    if a.ndim != 1:
        raise ShapeError(f"{name}: expected a 1-D array of row indices, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise FacelabTypeError(f"{name}: expected integer indices, got dtype {a.dtype}")
    a = a.astype(np.int64, copy=False)
    if a.size and (int(a.min()) < 0 or int(a.max()) >= n):
        raise RangeError(
            f"{name}: expected indices in [0, {n}), got min {int(a.min())} and max {int(a.max())}"
        )
    return torch.from_numpy(np.ascontiguousarray(a))


PairMethod = Literal["auto", "gather", "matmul"]


def pair_scores(
    features: Any,
    index1: Any,
    index2: Any,
    *,
    features2: Any | None = None,
    normalize: bool = True,
    method: PairMethod = "auto",
    memory_mb: int = 256,
) -> np.ndarray:
    """Cosine scores of pairs ``(features[index1[i]], features2[index2[i]])``, as float32.

    ``features2`` defaults to ``features``. Two strategies, both with bounded working memory
    (about ``memory_mb``) however many pairs there are; the output is 4 bytes per pair:

    * ``"gather"``: rows of both sides are gathered chunk by chunk and multiplied row-wise;
      costs one random read of 2 x D floats per pair.
    * ``"matmul"``: row blocks of ``features`` are multiplied with all of ``features2`` (one
      GEMM per block) and each pair's score is picked from the block; costs ``2 N1 N2 D`` FLOPs
      whatever the pair count, far cheaper when the pairs are dense among few rows (IJB-C:
      15.7M pairs over 23k templates).
    * ``"auto"`` takes ``matmul`` when the pairs cover at least 0.5% of all ``N1 x N2``
      combinations (where it measured faster on CPU), ``gather`` otherwise.
    """
    if method not in ("auto", "gather", "matmul"):
        raise UnknownNameError(f"method: expected 'auto', 'gather' or 'matmul', got {method!r}")
    if not isinstance(memory_mb, int) or memory_mb < 1:
        raise RangeError(f"memory_mb: expected a positive integer, got {memory_mb!r}")
    f1 = check_features(features, "features")
    f2 = f1 if features2 is None else check_features(features2, "features2", dim=f1.shape[1])
    if normalize:
        f1 = l2_normalize(f1, "features")
        f2 = f1 if features2 is None else l2_normalize(f2, "features2")
    i1 = _check_index(index1, f1.shape[0], "index1")
    i2 = _check_index(index2, f2.shape[0], "index2")
    if i1.shape[0] != i2.shape[0]:
        raise ShapeError(
            f"index1/index2: expected the same number of pairs, got {i1.shape[0]} and {i2.shape[0]}"
        )
    n_pairs = i1.shape[0]
    if n_pairs == 0:
        raise ShapeError("index1: expected at least one pair, got 0")
    n1, n2, d = f1.shape[0], f2.shape[0], f1.shape[1]
    if method == "auto":
        method = "matmul" if n_pairs * 200 >= n1 * n2 else "gather"
    budget = memory_mb << 20
    out = torch.empty(n_pairs, dtype=torch.float32)
    with torch.inference_mode():
        if method == "gather":
            # numpy's take + einsum measured ~2x faster than torch index_select + vecdot here
            chunk = max(1, budget // (2 * 4 * d))
            a1, a2, o = f1.numpy(), f2.numpy(), out.numpy()
            j1, j2 = i1.numpy(), i2.numpy()
            for s in range(0, n_pairs, chunk):
                e = min(s + chunk, n_pairs)
                a = np.take(a1, j1[s:e], axis=0)
                b = np.take(a2, j2[s:e], axis=0)
                np.einsum("ij,ij->i", a, b, out=o[s:e])
        else:
            block = max(1, min(n1, budget // (4 * n2)))
            n_blocks = -(-n1 // block)
            blk = (i1 // block).numpy()
            # group pairs by row block (radix sort on small integer keys)
            key = blk.astype(np.uint16) if n_blocks <= 1 << 16 else blk
            order = torch.from_numpy(np.argsort(key, kind="stable"))
            bounds = np.searchsorted(blk[order.numpy()], np.arange(n_blocks + 1))
            f2t = f2.T.contiguous()
            for b in range(n_blocks):
                lo, hi = int(bounds[b]), int(bounds[b + 1])
                if lo == hi:
                    continue
                sim = f1[b * block : (b + 1) * block] @ f2t
                sel = order[lo:hi]
                flat = (i1[sel] - b * block) * n2 + i2[sel]
                out[sel] = sim.view(-1).index_select(0, flat)
    return out.numpy()


# --------------------------------------------------------------------------------------------
# 1:N search


@dataclass(frozen=True)
class SearchResult:
    """Top-k gallery matches per probe, best first: ``scores (P, k)``, ``indices (P, k)``."""

    scores: np.ndarray
    indices: np.ndarray


def search(
    probes: Any,
    gallery: Any,
    k: int = 10,
    *,
    normalize: bool = True,
    probe_chunk: int = 1024,
    gallery_chunk: int = 1 << 16,
    device: str | torch.device | None = None,
    precision: Literal["float32", "bfloat16"] = "float32",
    rerank: int = 32,
) -> SearchResult:
    """1:N search: the ``k`` most similar gallery rows of every probe (cosine, descending).

    The similarity matrix is never materialised: probes go ``probe_chunk`` at a time against
    ``gallery_chunk`` gallery rows (one matmul each), and a running top-k is merged per chunk.
    Working memory is ``probe_chunk * gallery_chunk * 4`` bytes (256 MiB by default) plus the
    normalized gallery. ``device`` (e.g. ``"cuda"``) moves the matmuls to an accelerator.

    ``precision="bfloat16"`` finds ``k + rerank`` candidates with bfloat16 matmuls (several
    times faster on CPUs with AMX/AVX512-BF16 and on GPUs), then re-scores them in float32 and
    keeps the best ``k``: the returned scores are exact float32 cosines, and a true top-k
    match is lost only if more than ``rerank`` others overtake it by bfloat16 rounding
    (about 1e-3 in cosine). The default ``"float32"`` is exact.
    """
    if probe_chunk < 1 or gallery_chunk < 1:
        raise RangeError(
            f"probe_chunk/gallery_chunk: expected positive integers, got {probe_chunk} and "
            f"{gallery_chunk}"
        )
    if precision not in ("float32", "bfloat16"):
        raise UnknownNameError(f"precision: expected 'float32' or 'bfloat16', got {precision!r}")
    if isinstance(rerank, bool) or not isinstance(rerank, (int, np.integer)) or rerank < 0:
        raise RangeError(f"rerank: expected a non-negative integer, got {rerank!r}")
    p = check_features(probes, "probes")
    g = check_features(gallery, "gallery", dim=p.shape[1])
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= g.shape[0]:
        raise RangeError(f"k: expected an integer in [1, {g.shape[0]}] (gallery size), got {k!r}")
    k = int(k)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if normalize:
        p = l2_normalize(p, "probes")
        g = l2_normalize(g, "gallery")
    g = g.to(dev)
    low = precision == "bfloat16"
    gm = g.to(torch.bfloat16) if low else g  # the matrix the matmuls read
    kc = min(g.shape[0], k + int(rerank)) if low else k  # candidates kept per probe
    n_p, n_g = p.shape[0], g.shape[0]
    out_s = torch.empty(n_p, k, dtype=torch.float32)
    out_i = torch.empty(n_p, k, dtype=torch.int64)
    with torch.inference_mode():
        for ps in range(0, n_p, probe_chunk):
            pe = min(ps + probe_chunk, n_p)
            pb = p[ps:pe].to(dev)
            pm = pb.to(gm.dtype)
            best_s = best_i = None
            for gs in range(0, n_g, gallery_chunk):
                ge = min(gs + gallery_chunk, n_g)
                sim = pm @ gm[gs:ge].T
                s, i = torch.topk(sim, min(kc, ge - gs), dim=1)
                i += gs
                if best_s is None:
                    best_s, best_i = s, i
                else:
                    cat_s = torch.cat([best_s, s], dim=1)
                    cat_i = torch.cat([best_i, i], dim=1)
                    best_s, pos = torch.topk(cat_s, min(kc, cat_s.shape[1]), dim=1)
                    best_i = torch.gather(cat_i, 1, pos)
            if low:  # exact float32 scores of the candidates, best k of them
                exact = torch.einsum("pd,pcd->pc", pb, g[best_i])
                best_s, pos = torch.topk(exact, k, dim=1)
                best_i = torch.gather(best_i, 1, pos)
            out_s[ps:pe] = best_s.float().cpu()
            out_i[ps:pe] = best_i.cpu()
    return SearchResult(scores=out_s.numpy(), indices=out_i.numpy())


def format_rate(x: float) -> str:
    """Compact text of a target rate: 1e-06, 0.001, 0.1."""
    if x <= 0 or not math.isfinite(x):
        return str(x)
    e = math.log10(x)
    if abs(e - round(e)) < 1e-9:
        return f"1e{round(e)}" if round(e) < -3 else f"{x:g}"
    return f"{x:g}"


def rates_dict_to_str_keys(d: Mapping[float, float], prefix: str) -> dict[str, float]:
    return {f"{prefix}@{format_rate(k)}": float(v) for k, v in d.items()}
