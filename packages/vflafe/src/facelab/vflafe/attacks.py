"""Attacks on what crosses the VFL boundary (our code, measured the way the literature does).

* ``label_leakage``: a passive party infers the labels of its samples from the gradients the
  active party returns (Li et al., "Label leakage and protection in two-party split learning"):
  the *norm* score ``||g_i||`` and the *direction* score ``cos(g_i, g_ref)`` against the gradient
  of one sample whose label the attacker knows; AUC with ``roc_auc_score``.
* ``invert_features``: the active party (which sees every released embedding) learns
  ``released embedding -> party features`` from an auxiliary set of samples whose features it
  knows, then reconstructs the others: relative MSE (1.0 = predicting the mean) and, for image
  features, SSIM (core's InversionAttack decoder and metric).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from facelab.core.errors import RangeError, ShapeError

__all__ = ["InversionResult", "LabelLeakage", "invert_features", "label_leakage"]


@dataclass
class LabelLeakage:
    """AUCs of the two scores for "label == positive". ``norm_auc`` is oriented the attacker's
    best way (max(AUC, 1 - AUC): the attacker knows which class is rarer, hence which has the
    larger gradients), ``direction_auc`` as measured (the reference fixes the orientation);
    0.5 means no leakage, 1.0 full recovery."""

    norm_auc: float
    direction_auc: float
    samples: int


def label_leakage(gradients: torch.Tensor, labels: torch.Tensor, positive: int = 1) -> LabelLeakage:
    """Norm- and direction-based label inference from per-sample returned gradients ``(N, D)``.

    The direction attack's reference is the first sample with ``label == positive``; it is left
    out of the scored set."""
    from sklearn.metrics import roc_auc_score

    if gradients.dim() != 2 or labels.shape != (gradients.shape[0],):
        raise ShapeError(
            f"gradients/labels: expected (N, D) and (N,), got {tuple(gradients.shape)} and "
            f"{tuple(labels.shape)}"
        )
    y = (labels == positive).cpu().numpy()
    if y.all() or not y.any():
        raise RangeError(f"labels: expected both classes ({positive} and others), got only one")
    g = gradients.detach().double().cpu()
    norm_score = torch.linalg.vector_norm(g, dim=1).numpy()
    auc = float(roc_auc_score(y, norm_score))
    ref = int(np.flatnonzero(y)[0])
    keep = np.ones(len(y), dtype=bool)
    keep[ref] = False
    cos = torch.nn.functional.cosine_similarity(g, g[ref : ref + 1], dim=1).numpy()
    y_rest = y[keep]
    direction = float(roc_auc_score(y_rest, cos[keep])) if 0 < y_rest.sum() < len(y_rest) else 0.5
    return LabelLeakage(max(auc, 1.0 - auc), direction, len(y))


@dataclass
class InversionResult:
    """Reconstruction of held-out samples' party features from their released embeddings:
    ``relative_mse`` = MSE / variance of the features (1.0 is what predicting the mean gets),
    ``ssim`` for image features (None for tabular), counts of the attacker's known and
    attacked samples."""

    relative_mse: float
    ssim: float | None
    known: int
    attacked: int


def _split(n: int, known_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not 0.0 < known_fraction < 1.0:
        raise RangeError(f"known_fraction: expected a number in (0, 1), got {known_fraction!r}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    k = max(1, min(n - 1, round(known_fraction * n)))
    return perm[:k], perm[k:]


def invert_features(
    released: torch.Tensor,
    features: torch.Tensor,
    *,
    known_fraction: float = 0.3,
    steps: int = 400,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
) -> InversionResult:
    """Train an inversion model on a ``known_fraction`` of ``(released, features)`` pairs and
    score it on the rest. Image features ``(N, 3, H, W)`` in [-1, 1] use core's
    ``InversionAttack`` (vector decoder, SSIM); feature vectors ``(N, F)`` an MLP."""
    if released.dim() != 2 or released.shape[0] != features.shape[0]:
        raise ShapeError(
            f"released/features: expected (N, D) and (N, ...), got {tuple(released.shape)} and "
            f"{tuple(features.shape)}"
        )
    known, attacked = _split(released.shape[0], known_fraction, seed)
    z, x = released.detach().float().cpu(), features.detach().float().cpu()
    var = x[attacked].var(0, unbiased=False).mean().clamp_min(1e-12)
    if x.dim() == 4:
        from facelab.core.privacy import InversionAttack, ssim

        attack = InversionAttack(width=8, depth=1, mlp_hidden=128, seed=seed, device="cpu")
        attack.fit(z[known], x[known], steps=steps, batch_size=batch_size, lr=lr)
        rec = attack.reconstruct(z[attacked])
        mse = ((rec - x[attacked]) ** 2).mean()
        score = float(ssim(rec, x[attacked]).mean())
        return InversionResult(float(mse / var), score, len(known), len(attacked))
    if x.dim() != 2:
        raise ShapeError(f"features: expected (N, F) or (N, 3, H, W), got {tuple(x.shape)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = z[known].mean(0), z[known].std(0).clamp_min(1e-6)
        net = nn.Sequential(
            nn.Linear(z.shape[1], 128),
            nn.GELU(),
            nn.Linear(128, 128),
            nn.GELU(),
            nn.Linear(128, x.shape[1]),
        )
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
        g = torch.Generator().manual_seed(seed)
        zk, xk = (z[known] - mean) / std, x[known]
        for _ in range(steps):
            idx = torch.randint(0, len(known), (min(batch_size, len(known)),), generator=g)
            loss = ((net(zk[idx]) - xk[idx]) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            rec = net((z[attacked] - mean) / std)
    mse = ((rec - x[attacked]) ** 2).mean()
    return InversionResult(float(mse / var), None, len(known), len(attacked))
