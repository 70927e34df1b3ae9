"""Identity leakage: synthetic identities too close to an evaluation person.

A generator conditioned on identity embeddings can reproduce people it has seen, and if those
people also appear in the evaluation sets, the synthetic training set leaks test identities
(the challenge has no such check; this is ours). Under a given recognizer:

1. each synthetic identity becomes one template: the normalized mean of the normalized
   embeddings of up to ``images_per_identity`` of its images (flip test on);
2. every evaluation image is embedded; each template's most similar evaluation image is found
   with core's chunked 1:N ``search``;
3. a template is *flagged* when that cosine reaches the threshold. A synthetic identity is
   compared with *every* evaluation image, so a threshold read off single impostor pairs (say
   at FMR = 1e-3) would flag most unrelated identities once there are a few thousand images
   (1 - 0.999^2000 = 86 %). The default threshold is therefore calibrated on the same 1:N
   question asked of people known to be unrelated: each *evaluation* identity gets a template
   built the same way, its best cosine against the images of the *other* evaluation people is
   its null score, and the threshold is the ``1 - false_flag_rate`` quantile (default 99 %) of
   those null scores, so an unrelated synthetic identity is flagged with probability about
   ``false_flag_rate``. Evaluation identities come from the sets (toy sets know them) or, for
   pair lists and ``.bin`` files, from the connected components of their genuine pairs. A given
   ``threshold`` replaces the calibration. The report states the threshold and how it was
   chosen.
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
    n_null: int | None = None  # evaluation identities behind the default threshold

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
            "n_null": self.n_null,
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
    chosen, ids, row = _template_rows(labels, images_per_identity)
    emb = embed(model, Subset(dataset, chosen.tolist()), flip=cfg.flip, batch_size=cfg.batch_size)
    templates = _mean_templates(emb, row, ids.size)
    return templates, ids, int(chosen.size)


def eval_identity_labels(pairs: PairSet, set_index: int = 0) -> np.ndarray:
    """Identity of every image of an evaluation set: ``pairs.identities`` when known, else the
    connected components of the genuine pairs (labels made negative and distinct per set, so
    they never collide with known identities or with another set's components)."""
    if pairs.identities is not None:
        return np.asarray(pairs.identities, dtype=np.int64)
    n = pairs.images.shape[0]
    lab = np.arange(n, dtype=np.int64)
    a, b = pairs.index1[pairs.issame], pairs.index2[pairs.issame]
    while True:  # min-label propagation along genuine pairs, with pointer jumping
        new = lab.copy()
        m = np.minimum(lab[a], lab[b])
        np.minimum.at(new, a, m)
        np.minimum.at(new, b, m)
        new = new[new]
        if np.array_equal(new, lab):
            break
        lab = new
    return -(int(set_index) + 1) * (1 << 40) - lab


def _template_rows(labels: np.ndarray, images_per_identity: int | None):
    """``(rows used, identity ids, identity index of each used row)``: the first
    ``images_per_identity`` rows of every identity."""
    labels = np.asarray(labels, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    ids, first, counts = np.unique(labels[order], return_index=True, return_counts=True)
    take = counts if images_per_identity is None else np.minimum(counts, images_per_identity)
    rank = np.arange(labels.size) - np.repeat(first, counts)  # position inside the identity
    chosen = order[rank < np.repeat(take, counts)]
    return chosen, ids, np.searchsorted(ids, labels[chosen])


def _mean_templates(emb: torch.Tensor, row: np.ndarray, n: int) -> torch.Tensor:
    sums = torch.zeros(n, emb.shape[1]).index_add_(0, torch.from_numpy(row), emb)
    return sums / torch.linalg.vector_norm(sums, dim=1, keepdim=True).clamp_min(1e-12)


def null_best_match(
    gallery: torch.Tensor,
    labels: np.ndarray,
    images_per_identity: int | None = 5,
    block: int = 256,
) -> np.ndarray:
    """For each identity of ``gallery`` (normalized embeddings, ``labels`` per row): its
    template's best cosine against the rows of every *other* identity (chunked matmul)."""
    chosen, ids, row = _template_rows(labels, images_per_identity)
    templates = _mean_templates(gallery[torch.from_numpy(chosen)], row, ids.size)
    lab = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    idt = torch.from_numpy(ids)
    out = np.empty(ids.size)
    with torch.inference_mode():
        for s in range(0, ids.size, block):
            sim = templates[s : s + block] @ gallery.T
            sim.masked_fill_(lab[None, :] == idt[s : s + block, None], float("-inf"))
            out[s : s + block] = sim.max(1).values.numpy()
    return out


def leakage_check(
    model: nn.Module,
    synthetic: str | os.PathLike[str] | Dataset,
    eval_sets: Sequence[PairSet],
    *,
    threshold: float | None = None,
    false_flag_rate: float = 0.01,
    images_per_identity: int | None = 5,
    cfg: EvalConfig | None = None,
    identity_names: Sequence[str] | None = None,
) -> LeakageReport:
    """Flag synthetic identities whose template is as close to an evaluation image as the
    recognizer's threshold (module doc). ``synthetic``: a training-source path or a Dataset of
    ``(image, label)`` items (``labels`` attribute used when present)."""
    from facelab.core.eval import search
    from facelab.frcsyn.metrics import embed_set
    from facelab.frcsyn.sources import open_training_source

    if not isinstance(model, nn.Module):
        raise FacelabTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not eval_sets:
        raise RangeError("eval_sets: expected at least one evaluation set")
    if threshold is not None and not -1.0 <= float(threshold) <= 1.0:
        raise RangeError(f"threshold: expected a cosine in [-1, 1], got {threshold}")
    if not 0.0 < false_flag_rate < 1.0:
        raise RangeError(f"false_flag_rate: expected a rate in (0, 1), got {false_flag_rate}")
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

    embs = [embed_set(model, s, cfg) for s in eval_sets]
    best = np.full(ids.size, -np.inf)
    best_set = np.zeros(ids.size, dtype=np.int64)
    best_img = np.zeros(ids.size, dtype=np.int64)
    for k, emb in enumerate(embs):
        top = search(templates, emb, k=1)
        better = top.scores[:, 0] > best
        best = np.where(better, top.scores[:, 0], best)
        best_set = np.where(better, k, best_set)
        best_img = np.where(better, top.indices[:, 0], best_img)
    n_null = None
    if threshold is None:
        gallery = torch.cat(embs)
        people = np.concatenate([eval_identity_labels(s, k) for k, s in enumerate(eval_sets)])
        null = null_best_match(gallery, people, images_per_identity)
        n_null = int(null.size)
        if n_null < 2:
            raise RangeError(
                f"the evaluation sets hold {n_null} identity; the default threshold needs several "
                "(give --threshold)"
            )
        threshold = float(np.quantile(null, 1.0 - false_flag_rate))
        rule = (
            f"the {100 * (1 - false_flag_rate):g}th percentile of the best-match cosine of "
            f"{n_null} evaluation identities against the other evaluation people's images (an "
            f"unrelated identity is flagged with probability about {false_flag_rate:g})"
        )
        if n_null * false_flag_rate < 1:
            rule += f"; with {n_null} identities this quantile is close to their maximum"
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
        n_null=n_null,
    )


def load_model(path: str | os.PathLike[str]) -> nn.Module:
    """A recognizer saved with ``save_pretrained`` (core hub; e.g. a run's ``entry/model``)."""
    from facelab.core.hub import from_pretrained

    return from_pretrained(Path(path)).eval()
