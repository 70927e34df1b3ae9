"""1:N identification: closed-set CMC (rank-k) and open-set TPIR@FPIR.

Definitions (ISO/IEC 19795-1 / NIST FRVT 1:N vocabulary):

* A probe is *mated* when its identity has an entry in the gallery, *non-mated* otherwise.
  Candidates are gallery identities, scored by their best entry (max over an identity's
  templates), so a gallery with several entries per person ranks people, not entries.
* Rank of a mated probe: ``1 + #{other identities scoring >= the mate}`` (ties count against
  the probe, so a constant model cannot reach rank 1). CMC(k) = fraction of mated probes with
  rank <= k.
* Open set at rank R (default 1) and threshold t (accept ``score > t``):
  FPIR(t) = fraction of non-mated probes whose best candidate scores > t;
  TPIR(t) = fraction of mated probes with rank <= R and mated score > t.
  For a target FPIR f the threshold is the ``(k+1)``-th highest non-mated top score with
  ``k = floor(f * n_nonmated)``, the lowest threshold whose FPIR does not exceed f (all probes
  are accepted when ``k >= n_nonmated``).

insightface's ``ijb_1n.py`` differs in the open-set part: it has no non-mated probes and takes
the threshold from the ``ceil(f * n_probes)``-th highest non-mated *pair* score; we follow the
standard definition above.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from facelab.core.errors import FacelabTypeError, RangeError, ShapeError
from facelab.core.eval.metrics import check_features, check_rates, l2_normalize, to_numpy


@dataclass(frozen=True)
class IdentificationResult:
    """CMC and TPIR@FPIR of a probe set against a gallery (see the module doc)."""

    cmc: dict[int, float]
    tpir: dict[float, float]
    thresholds: dict[float, float]
    rank: int
    n_mated: int
    n_nonmated: int
    mated_ranks: np.ndarray = field(repr=False)  # (n_mated,) 1-based rank of each mated probe
    mated_scores: np.ndarray = field(repr=False)  # (n_mated,) score of the mate
    nonmated_scores: np.ndarray = field(repr=False)  # (n_nonmated,) best candidate score

    def curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fpir, tpir, thresholds) at every distinct non-mated top score, FPIR increasing."""
        nm = np.sort(self.nonmated_scores)[::-1]
        if nm.size == 0:
            raise RangeError("curve: needs non-mated probes, this result has none")
        thr = np.concatenate([np.unique(nm)[::-1], [-np.inf]])
        fpir = (nm.size - np.searchsorted(np.sort(nm), thr, side="right")) / nm.size
        hits = np.sort(self.mated_scores[self.mated_ranks <= self.rank])
        tpir = (hits.size - np.searchsorted(hits, thr, side="right")) / max(self.n_mated, 1)
        return fpir, tpir, thr

    def to_dict(self) -> dict[str, Any]:
        return {
            "cmc": {str(k): v for k, v in self.cmc.items()},
            "tpir": {repr(k): v for k, v in self.tpir.items()},
            "thresholds": {repr(k): v for k, v in self.thresholds.items()},
            "rank": self.rank,
            "n_mated": self.n_mated,
            "n_nonmated": self.n_nonmated,
        }


def _labels(x: Any, n: int, name: str) -> np.ndarray:
    a = to_numpy(x, name)
    if a.shape != (n,):
        raise ShapeError(f"{name}: expected shape ({n},) (one identity per row), got {a.shape}")
    if a.dtype.kind not in "iuUSO":
        raise FacelabTypeError(f"{name}: expected integer or string identities, got {a.dtype}")
    return a


def _positive_ints(values: Sequence[int], name: str) -> tuple[int, ...]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise RangeError(f"{name}: expected positive integers, got {list(values)}")
        out.append(int(v))
    return tuple(out)


def identification(
    probe_features: Any,
    probe_labels: Any,
    gallery_features: Any,
    gallery_labels: Any,
    *,
    ranks: Sequence[int] = (1, 5, 10),
    fpirs: Sequence[float] = (0.01, 0.1),
    rank: int = 1,
    normalize: bool = True,
    memory_mb: int = 256,
) -> IdentificationResult:
    """Rank-k identification rates and TPIR at each FPIR (cosine similarity).

    ``fpirs=()`` evaluates a closed set only (then non-mated probes are not needed).
    ``memory_mb`` bounds the score block held at once (probes are processed in chunks).
    """
    p = check_features(probe_features, "probe_features")
    g = check_features(gallery_features, "gallery_features", dim=p.shape[1])
    pl = _labels(probe_labels, p.shape[0], "probe_labels")
    gl = _labels(gallery_labels, g.shape[0], "gallery_labels")
    ranks = _positive_ints(ranks, "ranks")
    (rank,) = _positive_ints((rank,), "rank")
    fpirs = check_rates(fpirs, "fpirs") if len(fpirs) else ()
    if normalize:
        p = l2_normalize(p, "probe_features")
        g = l2_normalize(g, "gallery_features")

    ids, g_id = np.unique(gl, return_inverse=True)
    n_ids = ids.size
    pos = np.searchsorted(ids, pl)
    pos_c = np.clip(pos, 0, n_ids - 1)
    mated = ids[pos_c] == pl
    p_id = np.where(mated, pos_c, -1)
    n_mated = int(mated.sum())
    n_nonmated = int(p.shape[0] - n_mated)
    if n_mated == 0:
        raise RangeError(
            "probe_labels: expected at least one mated probe (identity present in "
            "gallery_labels), got none"
        )
    if fpirs and n_nonmated == 0:
        raise RangeError(
            "probe_labels: TPIR@FPIR needs non-mated probes (identities absent from the "
            "gallery), got none; pass fpirs=() for a closed-set evaluation"
        )

    g_id_t = torch.from_numpy(g_id.reshape(-1).astype(np.int64))
    p_id_t = torch.from_numpy(p_id.astype(np.int64))
    chunk = max(1, min(p.shape[0], (memory_mb << 20) // (4 * max(g.shape[0], n_ids) * 2)))
    top = torch.empty(p.shape[0])
    mate = torch.full((p.shape[0],), float("nan"))
    rank_of = torch.zeros(p.shape[0], dtype=torch.int64)
    with torch.inference_mode():
        for s in range(0, p.shape[0], chunk):
            e = min(s + chunk, p.shape[0])
            sim = p[s:e] @ g.T
            best = torch.full((e - s, n_ids), -torch.inf).scatter_reduce_(
                1, g_id_t.expand(e - s, -1), sim, reduce="amax"
            )
            top[s:e] = best.max(1).values
            pid = p_id_t[s:e]
            m = pid >= 0
            rows = torch.nonzero(m).squeeze(1)
            ms = best[rows, pid[rows]]
            mate[s + rows] = ms
            # other identities at or above the mate; the mate itself counts once in >=
            rank_of[s + rows] = (best[rows] >= ms[:, None]).sum(1)
    mated_t = torch.from_numpy(mated)
    mated_ranks = rank_of[mated_t].numpy()
    mated_scores = mate[mated_t].numpy()
    nonmated_scores = top[~mated_t].numpy()

    cmc = {r: float(np.mean(mated_ranks <= r)) for r in ranks}
    tpir: dict[float, float] = {}
    thresholds: dict[float, float] = {}
    if fpirs:
        nm = np.sort(nonmated_scores)[::-1]
        hit = mated_ranks <= rank
        for f in fpirs:
            k = math.floor(f * n_nonmated + 1e-9)
            t = float(nm[k]) if k < n_nonmated else -math.inf
            thresholds[f] = t
            tpir[f] = float(np.sum(hit & (mated_scores > t)) / n_mated)
    return IdentificationResult(
        cmc=cmc,
        tpir=tpir,
        thresholds=thresholds,
        rank=rank,
        n_mated=n_mated,
        n_nonmated=n_nonmated,
        mated_ranks=mated_ranks,
        mated_scores=mated_scores,
        nonmated_scores=nonmated_scores,
    )
