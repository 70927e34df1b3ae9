"""Identity leakage: synthetic identities too close to an evaluation person.

A generator conditioned on identity embeddings can reproduce people it has seen, and if those
people also appear in the evaluation sets, the synthetic training set leaks test identities
(the challenge has no such check; this is ours). Under a given recognizer:

1. each synthetic identity becomes one template: the normalized mean of the normalized
   embeddings of up to ``images_per_identity`` of its images (flip test on);
2. every evaluation image is embedded; each template's most similar evaluation image is found
   with core's chunked 1:N ``search``;
3. a template is *flagged* when that cosine reaches the threshold. By default the threshold is
   the recognizer's operating point at ``FMR = fmr`` (1e-3) on the evaluation sets' own impostor
   pairs (the lowest score whose false-match rate does not exceed it), i.e. a synthetic identity
   is flagged when the recognizer would accept it as that evaluation person at that operating
   point. The report states the threshold and how it was chosen.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from facelab.core.errors import FacelabTypeError, RangeError
from facelab.frcsyn.evalsets import PairSet
from facelab.frcsyn.metrics import EvalConfig


@dataclass(frozen=True)
class LeakageMatch:
    """A flagged synthetic identity and the evaluation image it is closest to."""

    identity: str
    set_name: str
    image: int  # row in the set's images
    cosine: float
    eval_identity: int | None = None
    image_name: str | None = None


@dataclass(frozen=True)
class LeakageReport:
    threshold: float
    threshold_rule: str
    num_identities: int
    images_used: int
    flagged: tuple[LeakageMatch, ...]
    max_cosine: np.ndarray = field(repr=False)
    identity_names: tuple[str, ...] = field(repr=False, default=())
    n_impostor: int | None = None

    @property
    def num_flagged(self) -> int:
        return len(self.flagged)

    @property
    def fraction(self) -> float:
        return self.num_flagged / max(1, self.num_identities)

    def summary(self, limit: int = 10) -> str:
        lines = [
            f"leakage check: {self.num_flagged} of {self.num_identities} synthetic identities "
            f"({100 * self.fraction:.2f} %) reach cosine >= {self.threshold:.4f} with an "
            f"evaluation image",
            f"  threshold: {self.threshold_rule}",
            f"  templates from {self.images_used} images; highest cosine "
            f"{float(self.max_cosine.max()):.4f}, median {float(np.median(self.max_cosine)):.4f}",
        ]
        for m in self.flagged[:limit]:
            who = f", evaluation identity {m.eval_identity}" if m.eval_identity is not None else ""
            img = m.image_name or f"image {m.image}"
            lines.append(f"  {m.identity} ~ {m.set_name}: {img}{who} (cosine {m.cosine:.4f})")
        if self.num_flagged > limit:
            lines.append(f"  ... and {self.num_flagged - limit} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "threshold_rule": self.threshold_rule,
            "num_identities": self.num_identities,
            "num_flagged": self.num_flagged,
            "fraction": self.fraction,
            "images_used": self.images_used,
            "n_impostor": self.n_impostor,
            "flagged": [m.__dict__ for m in self.flagged],
        }


def _labels_of(ds: Dataset) -> np.ndarray:
    labels = getattr(ds, "labels", None)
    if isinstance(labels, torch.Tensor):
        return labels.numpy()
    if labels is not None:
        return np.asarray(labels)
    return np.array([int(ds[i][1]) for i in range(len(ds))])  # type: ignore[arg-type]


def identity_templates(
    model: nn.Module,
    dataset: Dataset,
    labels: np.ndarray,
    images_per_identity: int | None = 5,
    cfg: EvalConfig | None = None,
) -> tuple[torch.Tensor, np.ndarray, int]:
    """``(templates (C, D), identity label of each row, images used)``: per identity, the
    normalized mean of normalized embeddings of its first ``images_per_identity`` images."""
    from facelab.core.eval import embed

    cfg = cfg or EvalConfig()
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size != len(dataset):  # type: ignore[arg-type]
        raise RangeError(f"labels: expected one per image ({len(dataset)}), got {labels.size}")  # type: ignore[arg-type]
    order = np.argsort(labels, kind="stable")
    ids, first, counts = np.unique(labels[order], return_index=True, return_counts=True)
    take = counts if images_per_identity is None else np.minimum(counts, images_per_identity)
    rank = np.arange(labels.size) - np.repeat(first, counts)  # position inside the identity
    chosen = order[rank < np.repeat(take, counts)]
    emb = embed(model, Subset(dataset, chosen.tolist()), flip=cfg.flip, batch_size=cfg.batch_size)
    row = np.searchsorted(ids, labels[chosen])
    sums = torch.zeros(ids.size, emb.shape[1]).index_add_(0, torch.from_numpy(row), emb)
    templates = sums / torch.linalg.vector_norm(sums, dim=1, keepdim=True).clamp_min(1e-12)
    return templates, ids, int(chosen.size)


def leakage_check(
    model: nn.Module,
    synthetic: str | os.PathLike[str] | Dataset,
    eval_sets: Sequence[PairSet],
    *,
    threshold: float | None = None,
    fmr: float = 1e-3,
    images_per_identity: int | None = 5,
    cfg: EvalConfig | None = None,
    identity_names: Sequence[str] | None = None,
) -> LeakageReport:
    """Flag synthetic identities whose template is as close to an evaluation image as the
    recognizer's threshold (module doc). ``synthetic``: a training-source path or a Dataset of
    ``(image, label)`` items (``labels`` attribute used when present)."""
    from facelab.core.eval import roc, search
    from facelab.frcsyn.metrics import embed_set
    from facelab.frcsyn.sources import open_training_source

    if not isinstance(model, nn.Module):
        raise FacelabTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not eval_sets:
        raise RangeError("eval_sets: expected at least one evaluation set")
    if threshold is not None and not -1.0 <= float(threshold) <= 1.0:
        raise RangeError(f"threshold: expected a cosine in [-1, 1], got {threshold}")
    if not 0.0 < fmr < 1.0:
        raise RangeError(f"fmr: expected a rate in (0, 1), got {fmr}")
    if images_per_identity is not None and images_per_identity < 1:
        raise RangeError(f"images_per_identity: expected >= 1 or None, got {images_per_identity}")
    cfg = cfg or EvalConfig()
    size = eval_sets[0].image_size
    if isinstance(synthetic, Dataset):
        ds = synthetic
        names = list(identity_names) if identity_names is not None else None
    else:
        ds, _ = open_training_source(synthetic, size)
        names = getattr(ds, "classes", None)
    labels = _labels_of(ds)
    templates, ids, used = identity_templates(model, ds, labels, images_per_identity, cfg)
    id_names = tuple(str(names[i]) if names is not None else str(i) for i in ids)

    best = np.full(ids.size, -np.inf)
    best_set = np.zeros(ids.size, dtype=np.int64)
    best_img = np.zeros(ids.size, dtype=np.int64)
    scores, same = [], []
    for k, s in enumerate(eval_sets):
        emb = embed_set(model, s, cfg)
        top = search(templates, emb, k=1)
        better = top.scores[:, 0] > best
        best = np.where(better, top.scores[:, 0], best)
        best_set = np.where(better, k, best_set)
        best_img = np.where(better, top.indices[:, 0], best_img)
        e = emb.numpy()
        scores.append(np.einsum("ij,ij->i", e[s.index1], e[s.index2]))
        same.append(s.issame)
    n_imp = None
    if threshold is None:
        all_scores, all_same = np.concatenate(scores), np.concatenate(same)
        n_imp = int((~all_same).sum())
        threshold = roc(all_scores, all_same).threshold_at_far(fmr, "conservative")
        rule = (
            f"the recognizer's threshold at FMR = {fmr:g} on the evaluation sets' {n_imp} "
            "impostor pairs"
        )
        if n_imp * fmr < 1:
            rule += f" (fewer than 1/FMR impostor pairs: the FMR can only be resolved to 1/{n_imp})"
        if not np.isfinite(threshold):
            threshold = float(np.max(all_scores[~all_same]))
            rule += " (no score reaches it: the highest impostor score is used)"
    else:
        rule = "given"
    threshold = float(threshold)
    flagged = []
    for i in np.flatnonzero(best >= threshold):
        s, j = eval_sets[int(best_set[i])], int(best_img[i])
        flagged.append(
            LeakageMatch(
                identity=id_names[i],
                set_name=s.name,
                image=j,
                cosine=float(best[i]),
                eval_identity=None if s.identities is None else int(s.identities[j]),
                image_name=None if s.image_names is None else s.image_names[j],
            )
        )
    flagged.sort(key=lambda m: -m.cosine)
    return LeakageReport(
        threshold=threshold,
        threshold_rule=rule,
        num_identities=int(ids.size),
        images_used=used,
        flagged=tuple(flagged),
        max_cosine=best,
        identity_names=id_names,
        n_impostor=n_imp,
    )


def load_model(path: str | os.PathLike[str]) -> nn.Module:
    """A recognizer saved with ``save_pretrained`` (core hub; e.g. a run's ``entry/model``)."""
    from facelab.core.hub import from_pretrained

    return from_pretrained(Path(path)).eval()
