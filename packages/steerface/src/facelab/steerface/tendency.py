"""Measuring visual tendency on the toy set (ours; see ``toyset`` for the data).

* :class:`AttributeProbe` / :func:`train_attribute_probe`: a small CNN that reads the binary
  attributes from an image, trained on *real, unselected* toyfaces of other people (their labels
  come from the rendering parameters; ambiguous labels are masked out).
* :func:`attribute_rates`: per-identity prevalence of each attribute as the probe sees it.
* :func:`tendency_metrics`: generated vs training prevalence —

  - ``tv_identity[k]``: mean over identities of |generated rate - training rate| (the
    total-variation distance between the two Bernoulli distributions of attribute k, per
    identity), and its mean over attributes, ``tv_identity_mean``;
  - ``tv_marginal[k]``: the same for the whole dataset's rate, and ``tv_marginal_mean``;
  - ``predictability[k]``: how well the ID embedding predicts the attribute — the accuracy of
    the best rule "attribute = f(identity)" (``mean_i max(p_ik, 1 - p_ik)``); generated and
    training side by side (visual tendency: generated > training);

  both sides are measured by the same probe (its errors affect both alike).
* :func:`tendency_report`: the whole evaluation of one generator (prevalence, identity
  consistency and intra-class diversity under an independent recognizer trained on the real
  training images, and verification accuracy on held-out real people of a recognizer trained
  on the generated images).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from facelab.core.errors import ShapeError


class AttributeProbe(nn.Module):
    """Three strided convolutions and a linear read-out: (B, 3, S, S) -> (B, K) logits."""

    def __init__(self, num_attributes: int, image_size: int = 16, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.SiLU(),
        )
        side = math.ceil(image_size / 4)
        self.head = nn.Linear(2 * width * side * side, num_attributes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def train_attribute_probe(
    images: torch.Tensor,
    on: torch.Tensor,
    clear: torch.Tensor,
    *,
    steps: int = 400,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
) -> AttributeProbe:
    """Masked binary cross-entropy (only clear labels count), Adam, cosine decay."""
    if images.dim() != 4 or on.shape != clear.shape or on.shape[0] != images.shape[0]:
        raise ShapeError(
            f"probe data: expected images (N, 3, S, S) and (N, K) labels/masks, got "
            f"{tuple(images.shape)}, {tuple(on.shape)}, {tuple(clear.shape)}"
        )
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = AttributeProbe(on.shape[1], images.shape[-1])
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    y, w = on.float(), clear.float()
    for _ in range(steps):
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=g)
        loss = F.binary_cross_entropy_with_logits(probe(images[idx]), y[idx], weight=w[idx])
        opt.zero_grad()
        (loss * w.numel() / w.sum().clamp_min(1)).backward()
        opt.step()
        sched.step()
    return probe.eval()


@torch.no_grad()
def predict_attributes(probe: nn.Module, images: torch.Tensor, batch_size: int = 512):
    """(N, K) bool: the probe's "on" decisions."""
    out = [probe(images[s : s + batch_size]) > 0 for s in range(0, images.shape[0], batch_size)]
    return torch.cat(out)


def probe_accuracy(probe: nn.Module, images, on, clear) -> list[float]:
    """Accuracy per attribute on clear labels."""
    pred = predict_attributes(probe, images)
    ok = (pred == on) & clear
    return (ok.sum(0).double() / clear.sum(0).clamp_min(1).double()).tolist()


def attribute_rates(values: torch.Tensor, labels: torch.Tensor, num_identities: int):
    """(I, K) per-identity rates of bool attributes (N, K) with identity labels (N,)."""
    if values.dim() != 2 or labels.shape != (values.shape[0],):
        raise ShapeError(
            f"attribute_rates: expected (N, K) values and (N,) labels, got "
            f"{tuple(values.shape)} and {tuple(labels.shape)}"
        )
    sums = torch.zeros(num_identities, values.shape[1], dtype=torch.float64)
    sums.index_add_(0, labels, values.double())
    counts = torch.bincount(labels, minlength=num_identities).double().clamp_min(1)
    return sums / counts[:, None]


def tendency_metrics(
    generated_rates: torch.Tensor, training_rates: torch.Tensor, names
) -> dict[str, Any]:
    """Prevalence deviation and predictability from per-identity rates (I, K) (module doc)."""
    if generated_rates.shape != training_rates.shape:
        raise ShapeError(
            f"rates: expected equal shapes, got {tuple(generated_rates.shape)} and "
            f"{tuple(training_rates.shape)}"
        )
    g, t = generated_rates.double(), training_rates.double()
    tv_id = (g - t).abs().mean(0)
    tv_marg = (g.mean(0) - t.mean(0)).abs()
    pred_g = torch.maximum(g, 1 - g).mean(0)
    pred_t = torch.maximum(t, 1 - t).mean(0)
    names = list(names)
    return {
        "tv_identity": dict(zip(names, tv_id.tolist())),
        "tv_identity_mean": float(tv_id.mean()),
        "tv_marginal": dict(zip(names, tv_marg.tolist())),
        "tv_marginal_mean": float(tv_marg.mean()),
        "rate_generated": dict(zip(names, g.mean(0).tolist())),
        "rate_training": dict(zip(names, t.mean(0).tolist())),
        "predictability_generated": dict(zip(names, pred_g.tolist())),
        "predictability_training": dict(zip(names, pred_t.tolist())),
        "predictability_excess_mean": float((pred_g - pred_t).mean()),
    }


@torch.no_grad()
def generate_for_identities(
    sampler: Any,
    contexts: torch.Tensor,
    images_per_identity: int,
    *,
    seed: int = 0,
    batch_size: int = 96,
    guidance_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """K images per context row, noise seeds from ``image_seed(seed, identity, k)``:
    images (I*K, 3, S, S) in [-1, 1] and labels (I*K,)."""
    from facelab.core.diffusion.sampling import image_seed

    n = contexts.shape[0]
    labels = torch.arange(n).repeat_interleave(images_per_identity)
    ks = torch.arange(images_per_identity).repeat(n)
    out = []
    for s in range(0, labels.numel(), batch_size):
        lab, kk = labels[s : s + batch_size], ks[s : s + batch_size]
        seeds = [image_seed(seed, int(i), int(k)) for i, k in zip(lab, kk)]
        kw = {} if guidance_scale is None else {"guidance_scale": guidance_scale}
        out.append(sampler.sample(contexts[lab], seeds=seeds, **kw).images.float().cpu())
    return torch.cat(out), labels


def fr_accuracy(images, labels, heldout_images, heldout_issame, *, steps: int, seed: int = 0):
    """Verification accuracy (insightface 10-fold) on held-out real pairs of a toy recognizer
    (core ``train_toy_recognizer``) trained on ``images`` / ``labels``."""
    from facelab.core.diffusion.toy import train_toy_recognizer
    from facelab.core.eval import embed
    from facelab.core.eval.verification import verify_interleaved

    rec = train_toy_recognizer(images, labels, steps=steps, seed=seed)
    emb = embed(rec, heldout_images, flip=True)
    res = verify_interleaved(emb, heldout_issame)
    return float(res.accuracy), rec


def tendency_report(
    sampler: Any,
    toyset: Any,
    *,
    probe: nn.Module,
    id_recognizer: nn.Module,
    heldout: tuple[torch.Tensor, torch.Tensor] | None = None,
    images_per_identity: int = 16,
    fr_steps: int = 300,
    seed: int = 0,
    guidance_scale: float | None = None,
) -> dict[str, Any]:
    """Every number of the visual-tendency table for one generator trained on ``toyset``."""
    from facelab.core.diffusion.metrics import identity_consistency, intra_class_diversity
    from facelab.core.eval import embed

    n_id = toyset.config.identities
    ctx = toyset.identity_contexts()
    images, labels = generate_for_identities(
        sampler, ctx, images_per_identity, seed=seed, guidance_scale=guidance_scale
    )
    real = toyset.float_images()
    gen_rates = attribute_rates(predict_attributes(probe, images), labels, n_id)
    train_rates = attribute_rates(predict_attributes(probe, real), toyset.labels, n_id)
    out: dict[str, Any] = tendency_metrics(gen_rates, train_rates, toyset.names)
    out["tv_identity_labels_mean"] = float((train_rates - toyset.rates).abs().mean())
    e_gen = embed(id_recognizer, images, flip=True)
    e_real = embed(id_recognizer, real, flip=True)
    cons = identity_consistency(e_gen, labels, references=e_real, reference_labels=toyset.labels)
    out["identity_accuracy"] = cons["identification_accuracy"]
    out["reference_cos"] = cons["reference_cos"]
    out["genuine_cos"] = cons["genuine_cos"]
    out["consistency_gap"] = cons["consistency_gap"]
    out["diversity"] = intra_class_diversity(e_gen, labels)["centroid_distance"]
    out["diversity_real"] = intra_class_diversity(e_real, toyset.labels)["centroid_distance"]
    if heldout is not None:
        out["fr_accuracy"], _ = fr_accuracy(
            images, labels, heldout[0], heldout[1], steps=fr_steps, seed=seed
        )
    out["images_per_identity"] = images_per_identity
    out["_images"] = images
    return out


__all__ = [
    "AttributeProbe",
    "attribute_rates",
    "fr_accuracy",
    "generate_for_identities",
    "predict_attributes",
    "probe_accuracy",
    "tendency_metrics",
    "tendency_report",
    "train_attribute_probe",
]
