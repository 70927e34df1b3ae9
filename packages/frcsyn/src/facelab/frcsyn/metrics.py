"""The challenge's evaluation: verification per set, per-group accuracy, AVG / SD / TO, AVG over
sets, FNMR at FMR = 1 %, AUC and GAP to a real-data baseline.

Everything rests on core's evaluation code (:mod:`facelab.core.eval`):

* **accuracy** of a set: insightface's 10-fold protocol (``facelab.core.eval.verify``: squared
  L2 of normalized embeddings, thresholds 0:4:0.01, unshuffled folds, the threshold chosen on
  the other nine folds). FRCSyn participants submitted a score *and a decision* per pair; the
  10-fold protocol is how we make the decisions without a separate tuning set.
* **per-group accuracy** (task 1): ``group_threshold="global"`` (default) scores every group
  with the *same* decisions, those of the set's 10-fold protocol (one system, one threshold,
  as a submission's decisions are); ``"per-group"`` runs the 10-fold protocol inside each group
  (``facelab.core.eval.demographic_stats``), which lets each group have its own threshold and
  usually shrinks SD.
* **SD**: the standard deviation of the group accuracies, population form (``ddof=0``,
  numpy's default) unless ``sd_ddof=1`` is asked for; **TO = AVG - SD**.
* **FNMR@FMR=1%**: from the exact ROC of the cosine scores (scikit-learn ``roc_curve``), at the
  lowest threshold whose FMR does not exceed 1 % (``facelab.core.eval.fnmr_at_fmr``).
* **AUC**: area under that ROC.
* **Task 1** uses the sets that carry demographic groups: AVG and SD over their groups, FNMR and
  AUC over their pairs (averaged if there are several such sets). **Task 2** uses every set:
  AVG, FNMR and AUC are means over the sets. (The leaderboards print one FNMR and one AUC per
  entry; averaging them over the sets is our reading.)
* **GAP** = ``100 * (REAL - SYN) / SYN`` of the ranking metric (TO for task 1, AVG for task 2),
  where REAL comes from the same recognizer recipe trained on real data: positive when the
  synthetic-data model is behind the real-data one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from facelab.core.errors import FacelabTypeError, RangeError, ShapeError
from facelab.frcsyn.evalsets import PairSet

GroupThreshold = Literal["global", "per-group"]
GROUP_THRESHOLDS = ("global", "per-group")
FMR_TARGET = 0.01


@dataclass
class EvalConfig:
    """How a recognizer is scored (the challenge's defaults)."""

    fmr: float = FMR_TARGET
    """FNMR is read at this FMR (the leaderboards: 1 %)"""
    nfolds: int = 10
    """folds of insightface's verification protocol (fewer when a set has fewer pairs)"""
    group_threshold: GroupThreshold = "global"
    """'global': every demographic group judged with the set's decisions; 'per-group': a
    10-fold protocol inside each group"""
    sd_ddof: int = 0
    """delta degrees of freedom of SD across groups (0: population SD, 1: sample SD)"""
    flip: bool = True
    """add the embedding of the mirrored image (insightface's flip test)"""
    batch_size: int = 128

    def __post_init__(self) -> None:
        if not 0.0 < float(self.fmr) < 1.0:
            raise RangeError(f"fmr: expected a rate in (0, 1), got {self.fmr}")
        if int(self.nfolds) < 2:
            raise RangeError(f"nfolds: expected at least 2, got {self.nfolds}")
        if self.group_threshold not in GROUP_THRESHOLDS:
            raise RangeError(
                f"group_threshold: expected one of {list(GROUP_THRESHOLDS)}, got "
                f"{self.group_threshold!r}"
            )
        if self.sd_ddof not in (0, 1):
            raise RangeError(f"sd_ddof: expected 0 or 1, got {self.sd_ddof}")
        if int(self.batch_size) < 1:
            raise RangeError(f"batch_size: expected a positive int, got {self.batch_size}")


@dataclass(frozen=True)
class SetResult:
    """One evaluation set's numbers (fractions in [0, 1]; the rows print percent)."""

    name: str
    n_pairs: int
    accuracy: float
    accuracy_std: float
    fnmr: float
    auc: float
    fmr: float
    threshold: float  # cosine threshold: mean of the folds' chosen thresholds
    groups: dict[str, tuple[int, float]] | None  # group -> (pairs, accuracy)
    group_threshold: str
    stands_in_for: str | None = None
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    issame: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False)

    def roc(self):
        """The exact ROC of this set's cosine scores (``facelab.core.eval.RocCurve``)."""
        from facelab.core.eval import roc

        return roc(self.scores, self.issame)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stands_in_for": self.stands_in_for,
            "n_pairs": self.n_pairs,
            "accuracy": self.accuracy,
            "accuracy_std": self.accuracy_std,
            "fnmr_at_fmr": self.fnmr,
            "fmr": self.fmr,
            "auc": self.auc,
            "threshold_cosine": self.threshold,
            "group_threshold": self.group_threshold,
            "groups": None
            if self.groups is None
            else {g: {"pairs": n, "accuracy": a} for g, (n, a) in self.groups.items()},
        }


def _as_numpy(emb: Any) -> np.ndarray:
    if isinstance(emb, torch.Tensor):
        return emb.detach().cpu().float().numpy()
    if isinstance(emb, np.ndarray):
        return emb
    raise FacelabTypeError(f"embeddings: expected a tensor or array, got {type(emb).__name__}")


def global_group_accuracy(
    dist: np.ndarray,
    issame: np.ndarray,
    groups: np.ndarray,
    best_thresholds: np.ndarray,
    nfolds: int,
) -> dict[str, tuple[int, float]]:
    """Per-group accuracy of the 10-fold protocol's decisions (one threshold per fold, chosen
    on the other folds, applied to every pair of the fold whatever its group)."""
    from facelab.core.eval.verification import fold_bounds

    bounds = fold_bounds(dist.size, nfolds)
    fold = np.repeat(np.arange(nfolds), np.diff(bounds))
    accept = dist < best_thresholds[fold]
    correct = accept == issame
    names, inv = np.unique(groups, return_inverse=True)
    n = np.bincount(inv, minlength=names.size)
    ok = np.bincount(inv, weights=correct, minlength=names.size)
    return {str(g): (int(n[k]), float(ok[k] / n[k])) for k, g in enumerate(names)}


def evaluate_embeddings(
    embeddings: Any,
    pairs: PairSet,
    cfg: EvalConfig | None = None,
    *,
    expected_groups: Sequence[str] | None = None,
) -> SetResult:
    """Score one set from the embeddings of its images (row ``i`` = ``pairs.images[i]``).

    ``expected_groups``: the groups the set must cover (e.g. BUPT's eight); a group without
    pairs is an error, as is a group too small for the folds with ``group_threshold="per-group"``.
    """
    from facelab.core.eval import demographic_stats, roc, verify
    from facelab.core.eval.verification import squared_distances

    cfg = cfg or EvalConfig()
    emb = _as_numpy(embeddings)
    if emb.ndim != 2 or emb.shape[0] != pairs.images.shape[0]:
        raise ShapeError(
            f"{pairs.name}: expected one embedding per image ({pairs.images.shape[0]}, D), got "
            f"shape {emb.shape}"
        )
    e1, e2 = emb[pairs.index1], emb[pairs.index2]
    nfolds = min(int(cfg.nfolds), pairs.num_pairs)
    ver = verify(e1, e2, pairs.issame, nfolds, far_target=None)
    dist = squared_distances(e1, e2)
    scores = 1.0 - dist / 2.0  # cosine of unit vectors
    curve = roc(scores, pairs.issame)
    fnmr = 1.0 - curve.tar_at_far(cfg.fmr, "conservative")[float(cfg.fmr)]

    groups: dict[str, tuple[int, float]] | None = None
    if expected_groups is not None and pairs.groups is None:
        raise RangeError(
            f"{pairs.name}: expected demographic groups {list(expected_groups)}, the set has none"
        )
    if pairs.groups is not None:
        present = set(pairs.group_names)
        if expected_groups is not None:
            missing = [g for g in expected_groups if g not in present]
            if missing:
                raise RangeError(
                    f"{pairs.name}: group(s) {missing} have no pairs; every demographic group "
                    f"needs pairs (groups present: {sorted(present)})"
                )
        if len(present) < 2:
            raise RangeError(
                f"{pairs.name}: expected at least 2 demographic groups, got {sorted(present)}"
            )
        if cfg.group_threshold == "global":
            groups = global_group_accuracy(
                dist, pairs.issame, pairs.groups, ver.best_thresholds, nfolds
            )
        else:
            st = demographic_stats(
                e1, e2, pairs.issame, pairs.groups, nfolds=nfolds, fars=(), far_target=None
            )
            groups = {g: (r.n_pairs, r.accuracy) for g, r in st.groups.items()}
    return SetResult(
        name=pairs.name,
        n_pairs=pairs.num_pairs,
        accuracy=ver.accuracy,
        accuracy_std=ver.accuracy_std,
        fnmr=float(fnmr),
        auc=curve.auc,
        fmr=float(cfg.fmr),
        threshold=float(1.0 - ver.threshold / 2.0),
        groups=groups,
        group_threshold=cfg.group_threshold,
        stands_in_for=pairs.stands_in_for,
        scores=scores.astype(np.float64),
        issame=pairs.issame.copy(),
    )


def embed_set(
    model: torch.nn.Module, pairs: PairSet, cfg: EvalConfig | None = None
) -> torch.Tensor:
    """Embeddings of a set's images under ``model`` (core ``embed``, flip test)."""
    from facelab.core.eval import embed

    cfg = cfg or EvalConfig()
    return embed(model, pairs.images, flip=cfg.flip, batch_size=cfg.batch_size)


def evaluate_model(
    model: torch.nn.Module, sets: Sequence[PairSet], cfg: EvalConfig | None = None
) -> dict[str, SetResult]:
    """Every set scored under ``model``: ``{set name: SetResult}`` in the sets' order."""
    cfg = cfg or EvalConfig()
    if not sets:
        raise ShapeError("sets: expected at least one evaluation set, got none")
    return {s.name: evaluate_embeddings(embed_set(model, s, cfg), s, cfg) for s in sets}


# --------------------------------------------------------------------------------------------
# task scores


@dataclass(frozen=True)
class TaskScores:
    """One entry's leaderboard numbers for one task (fractions; ``sd``/``to`` task 1 only)."""

    task: int
    avg: float
    fnmr: float
    auc: float
    sd: float | None = None
    to: float | None = None
    sets: tuple[str, ...] = ()
    groups: dict[str, float] | None = None
    sd_ddof: int = 0

    @property
    def ranking(self) -> float:
        """TO for task 1, AVG for task 2."""
        return float(self.to if self.task == 1 else self.avg)  # type: ignore[arg-type]


def task1_scores(results: Mapping[str, SetResult], sd_ddof: int = 0) -> TaskScores:
    """AVG, SD and TO over the demographic groups (sets with groups), FNMR and AUC over them."""
    demo = [r for r in results.values() if r.groups is not None]
    if not demo:
        raise RangeError(
            "task 1 needs an evaluation set with demographic groups (e.g. BUPT-BalancedFace "
            f"pairs with a group field, or the toy edition's balanced set); got sets {list(results)}"
        )
    acc: dict[str, float] = {}
    for r in demo:
        for g, (_, a) in r.groups.items():  # type: ignore[union-attr]
            acc[g if len(demo) == 1 else f"{r.name}/{g}"] = a
    values = np.array(list(acc.values()), dtype=np.float64)
    if values.size <= sd_ddof:
        raise RangeError(
            f"SD with ddof={sd_ddof} needs more than {sd_ddof} groups, got {values.size}"
        )
    avg = float(values.mean())
    sd = float(values.std(ddof=sd_ddof))
    return TaskScores(
        task=1,
        avg=avg,
        sd=sd,
        to=avg - sd,
        fnmr=float(np.mean([r.fnmr for r in demo])),
        auc=float(np.mean([r.auc for r in demo])),
        sets=tuple(r.name for r in demo),
        groups=acc,
        sd_ddof=sd_ddof,
    )


def task2_scores(results: Mapping[str, SetResult]) -> TaskScores:
    """AVG (and FNMR, AUC) over every evaluation set."""
    if not results:
        raise RangeError("task 2 needs at least one evaluation set, got none")
    rs = list(results.values())
    return TaskScores(
        task=2,
        avg=float(np.mean([r.accuracy for r in rs])),
        fnmr=float(np.mean([r.fnmr for r in rs])),
        auc=float(np.mean([r.auc for r in rs])),
        sets=tuple(r.name for r in rs),
    )


def task_scores(task: int, results: Mapping[str, SetResult], sd_ddof: int = 0) -> TaskScores:
    if task == 1:
        return task1_scores(results, sd_ddof)
    if task == 2:
        return task2_scores(results)
    raise RangeError(f"task: expected 1 or 2, got {task}")


def gap(real: float, synthetic: float) -> float:
    """GAP [%] = 100 (REAL - SYN) / SYN of a ranking metric (positive: synthetic is behind)."""
    if not np.isfinite(real) or not np.isfinite(synthetic):
        raise RangeError(f"gap: expected finite values, got real={real}, synthetic={synthetic}")
    if synthetic <= 0:
        raise RangeError(f"gap: expected a positive synthetic-data score, got {synthetic}")
    return float(100.0 * (real - synthetic) / synthetic)
