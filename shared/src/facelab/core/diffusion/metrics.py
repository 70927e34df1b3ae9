"""Synthetic-data metrics (``facelab synth eval``).

All embedding metrics work on unit embeddings of the generated images under an *independent*
recognizer (one that did not condition the generator) and use closed forms over per-identity
sums, O(N D) and no N x N matrix:

* :func:`identity_consistency`: mean cosine of same-identity pairs (genuine) and of
  different-identity pairs (impostor), their gap; the cosine of each image to its context when
  the recognizer shares the context's space; with real reference images of the same identities,
  the cosine to the own identity's reference centroid vs the others' and the closed-set
  identification accuracy;
* :func:`intra_class_diversity`: mean ``1 - cos`` of images to their identity centroid and the
  mean within-identity pairwise angle; :func:`attribute_spread`: within-identity standard
  deviation of labelled nuisance values (pose, expression ...) where labels exist;
* :func:`inter_class_separability`: cosine between identity centroids (mean, nearest other) and
  the Fisher ratio (between- over within-identity scatter);
* :func:`train_on_synthetic`: the number that matters, verification accuracy on held-out real
  data of an ArcFace model trained on the generated set with the core recipe.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn.functional as F

from facelab.core.errors import RangeError, ShapeError


def _prep(
    embeddings: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if embeddings.dim() != 2 or labels.shape != (embeddings.shape[0],):
        raise ShapeError(
            f"embeddings/labels: expected (N, D) and (N,), got {tuple(embeddings.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if embeddings.shape[0] < 2:
        raise RangeError(f"embeddings: expected at least 2 images, got {embeddings.shape[0]}")
    e = F.normalize(embeddings.double(), dim=1)
    uniq, inv = torch.unique(labels, return_inverse=True)
    sums = torch.zeros(uniq.numel(), e.shape[1], dtype=torch.float64).index_add_(0, inv, e)
    counts = torch.bincount(inv, minlength=uniq.numel()).double()
    return e, inv, sums, counts


def identity_consistency(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    contexts: torch.Tensor | None = None,
    references: torch.Tensor | None = None,
    reference_labels: torch.Tensor | None = None,
) -> dict[str, float]:
    """Genuine / impostor mean cosines and their gap; ``context_cos`` when ``contexts`` (N, D)
    (each image's own context) are given; ``reference_cos`` / ``reference_impostor_cos`` /
    ``identification_accuracy`` against real ``references`` with ``reference_labels``."""
    e, inv, sums, counts = _prep(embeddings, labels)
    n = e.shape[0]
    sq = (sums * sums).sum(1)
    gen_pairs = (counts * (counts - 1)).sum()
    gen_sum = (sq - counts).sum()
    tot = e.sum(0)
    all_sum = tot.dot(tot) - n
    imp_pairs = n * (n - 1) - gen_pairs
    out: dict[str, float] = {
        "genuine_cos": float(gen_sum / gen_pairs) if gen_pairs > 0 else math.nan,
        "impostor_cos": float((all_sum - gen_sum) / imp_pairs) if imp_pairs > 0 else math.nan,
    }
    out["consistency_gap"] = out["genuine_cos"] - out["impostor_cos"]
    if contexts is not None:
        if contexts.shape != embeddings.shape:
            raise ShapeError(
                f"contexts: expected {tuple(embeddings.shape)}, got {tuple(contexts.shape)}"
            )
        out["context_cos"] = float((e * F.normalize(contexts.double(), dim=1)).sum(1).mean())
    if references is not None:
        if reference_labels is None:
            raise ShapeError("references: give reference_labels too")
        ref_ids, ref_means = _centroids(references, reference_labels)
        gen_ids = torch.unique(labels)
        pos = torch.searchsorted(ref_ids, gen_ids)
        if (pos >= ref_ids.numel()).any() or (
            ref_ids[pos.clamp(max=ref_ids.numel() - 1)] != gen_ids
        ).any():
            raise ShapeError("references: every generated identity needs reference images")
        sim = e @ ref_means.T  # (N, R)
        own = pos[inv]
        own_cos = sim.gather(1, own[:, None]).squeeze(1)
        r = ref_means.shape[0]
        out["reference_cos"] = float(own_cos.mean())
        if r > 1:
            out["reference_impostor_cos"] = float((sim.sum(1) - own_cos).mean() / (r - 1))
        out["identification_accuracy"] = float((sim.argmax(1) == own).double().mean())
        out["identification_chance"] = 1.0 / r
    return out


def _centroids(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    e = F.normalize(embeddings.double(), dim=1)
    uniq, inv = torch.unique(labels, return_inverse=True)
    sums = torch.zeros(uniq.numel(), e.shape[1], dtype=torch.float64).index_add_(0, inv, e)
    return uniq, F.normalize(sums, dim=1)


def intra_class_diversity(embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``centroid_distance``: mean ``1 - cos(image, its identity's normalized centroid)``;
    ``pairwise_angle_deg``: the angle of the mean within-identity pair cosine."""
    e, inv, sums, counts = _prep(embeddings, labels)
    cent = F.normalize(sums, dim=1)
    dist = 1 - (e * cent[inv]).sum(1)
    sq = (sums * sums).sum(1)
    pairs = (counts * (counts - 1)).sum()
    mean_cos = float((sq - counts).sum() / pairs) if pairs > 0 else math.nan
    return {
        "centroid_distance": float(dist.mean()),
        "pairwise_angle_deg": math.degrees(math.acos(max(-1.0, min(1.0, mean_cos))))
        if pairs > 0
        else math.nan,
    }


def attribute_spread(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Within-identity standard deviation of nuisance values (N,) or (N, K), averaged over
    identities with at least two images: (K,) (a 0-d tensor for (N,) input)."""
    v = values.double()
    squeeze = v.dim() == 1
    if squeeze:
        v = v[:, None]
    if v.dim() != 2 or v.shape[0] != labels.shape[0]:
        raise ShapeError(
            f"values: expected (N,) or (N, K) with N = {labels.shape[0]}, got {tuple(values.shape)}"
        )
    uniq, inv = torch.unique(labels, return_inverse=True)
    counts = torch.bincount(inv, minlength=uniq.numel()).double()
    s1 = torch.zeros(uniq.numel(), v.shape[1], dtype=torch.float64).index_add_(0, inv, v)
    s2 = torch.zeros_like(s1).index_add_(0, inv, v * v)
    ok = counts >= 2
    var = (s2[ok] - s1[ok] ** 2 / counts[ok, None]) / (counts[ok, None] - 1)
    std = var.clamp_min(0).sqrt().mean(0)
    return std[0] if squeeze else std


def inter_class_separability(embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Centroid cosines (mean over identity pairs, mean of each identity's nearest other) and
    the Fisher ratio tr(S_between) / tr(S_within) of the unit embeddings."""
    e, inv, sums, counts = _prep(embeddings, labels)
    k = counts.numel()
    if k < 2:
        raise RangeError("inter_class_separability: expected at least 2 identities")
    cent = F.normalize(sums, dim=1)
    g = cent @ cent.T
    off = g[~torch.eye(k, dtype=torch.bool)].view(k, k - 1)
    means = sums / counts[:, None]
    mu = e.mean(0)
    between = (counts * ((means - mu) ** 2).sum(1)).sum()
    within = ((e - means[inv]) ** 2).sum()
    return {
        "centroid_cos": float(off.mean()),
        "nearest_centroid_cos": float(off.amax(1).mean()),
        "fisher_ratio": float(between / within) if within > 0 else math.inf,
    }


def synthetic_quality(
    recognizer: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    references: torch.Tensor | None = None,
    reference_labels: torch.Tensor | None = None,
    contexts: torch.Tensor | None = None,
    batch_size: int = 128,
) -> dict[str, float]:
    """Embed generated ``images`` (and real ``references``) with ``recognizer`` (flip test)
    and return every embedding metric above in one dict."""
    from facelab.core.eval import embed

    emb = embed(recognizer, images, flip=True, batch_size=batch_size)
    ref = (
        None
        if references is None
        else embed(recognizer, references, flip=True, batch_size=batch_size)
    )
    out = identity_consistency(
        emb, labels, contexts=contexts, references=ref, reference_labels=reference_labels
    )
    out.update(intra_class_diversity(emb, labels))
    out.update(inter_class_separability(emb, labels))
    return out


def train_on_synthetic(
    dataset_dir: str | os.PathLike,
    *,
    preset: str = "toy",
    output_dir: str | os.PathLike = "runs/synth-fr",
    toy_heldout: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Train the core ArcFace recipe (``facelab train``'s ``preset``) on a generated identity
    folder (or ``train.rec`` folder) and verify on held-out *real* data: the recipe's
    ``eval_bins`` and, with ``toy_heldout``, toyfaces identities never used anywhere else
    (``TOY_HELDOUT_OFFSET``). ``overrides``: ``ArcFaceConfig`` fields. Returns
    ``{set name: VerificationResult}`` plus ``"model"`` (the trained backbone)."""
    import dataclasses

    from facelab.core.recipe import (
        arcface_presets,
        build_eval_sets,
        evaluate_sets,
        toy_eval_set,
        train_arcface,
    )

    base = arcface_presets()[preset]
    data = dataclasses.replace(overrides.pop("data", base.data), source=str(dataset_dir))
    train = dataclasses.replace(overrides.pop("train", base.train), output_dir=str(output_dir))
    cfg = dataclasses.replace(base, data=data, train=train, **overrides)
    rr = train_arcface(cfg)
    sets = build_eval_sets(cfg.data)
    if toy_heldout:
        toy = dataclasses.replace(cfg.data, source="toyfaces")
        sets.append(toy_eval_set(toy, name="toy-heldout-real"))
    out: dict[str, Any] = dict(evaluate_sets(rr.model, sets, batch_size=cfg.eval_batch_size))
    out["model"] = rr.model
    return out
