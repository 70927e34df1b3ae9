"""How much an inversion attack recovers: image quality and identity leakage.

* Image quality: SSIM and PSNR from torchmetrics, per image. Images follow the face-model
  convention, RGB in [-1, 1]; they are mapped to [0, 1] first and measured with data_range 1.
* Identity leakage: cosine similarity between the embeddings of an original and of its
  reconstruction under an *independent* recognizer (an ``nn.Module`` mapping images in [-1, 1]
  to embeddings), reported as the mean and the per-image distribution.
* Attack success rate: the fraction of reconstructions a verification system would accept, at a
  threshold chosen on real images at a given false accept rate (``threshold_at_far``).

Scores are cosine similarities; a pair is *accepted* when its score is strictly greater than
the threshold, everywhere in this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from facelab.core.errors import (
    FacelabTypeError,
    ShapeError,
    expect_finite,
    expect_finite_in_range,
    expect_nonempty,
    expect_rank,
    expect_tensor,
)
from facelab.core.sphere import normalize

#: SSIM uses torchmetrics' default Gaussian window (11x11, sigma 1.5), as in Wang et al. 2004.
SSIM_KERNEL = 11
_IMAGE_CHANNELS = 3

Match = Literal["original", "identity"]


# ------------------------------------------------------------------------------------------
# input checks
# ------------------------------------------------------------------------------------------


def check_images(images: object, name: str = "images") -> torch.Tensor:
    """Check an RGB batch ``(B, 3, H, W)`` in [-1, 1] with finite values; return it."""
    x = expect_tensor(images, name, floating=True)
    expect_rank(x, 4, name, "(B, 3, H, W)")
    if x.shape[1] != _IMAGE_CHANNELS:
        raise ShapeError(f"{name}: expected 3 (RGB) channels at dim 1, got shape {tuple(x.shape)}")
    expect_nonempty(x, name)
    expect_finite_in_range(x, -1.0, 1.0, f"{name} (RGB in [-1, 1])")
    return x


def check_pair(preds: object, target: object, names: tuple[str, str]) -> None:
    """Both are RGB batches in [-1, 1] of the same shape."""
    a = check_images(preds, names[0])
    b = check_images(target, names[1])
    if a.shape != b.shape:
        raise ShapeError(
            f"{names[0]} and {names[1]} must have the same shape, got {tuple(a.shape)} "
            f"and {tuple(b.shape)}"
        )


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] (no clamping: inputs are range-checked by the callers)."""
    return (images + 1.0) * 0.5


# ------------------------------------------------------------------------------------------
# image quality
# ------------------------------------------------------------------------------------------


def ssim(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM ``(B,)`` of RGB batches in [-1, 1] (measured on [0, 1], data_range 1).

    Identical images give exactly 1. Differentiable (used as an optional training loss).
    Images must be at least 11x11, the size of the SSIM window. torchmetrics' convention:
    Gaussian 11x11 window (sigma 1.5), K1 = 0.01, K2 = 0.03, reflect-padded borders and the mean
    over the full map, channels averaged (scikit-image crops the borders instead and differs by
    a few thousandths).
    """
    check_pair(preds, target, ("ssim preds", "ssim target"))
    if min(preds.shape[-2:]) < SSIM_KERNEL:
        raise ShapeError(
            f"ssim: images must be at least {SSIM_KERNEL}x{SSIM_KERNEL} (the SSIM window), "
            f"got {tuple(preds.shape[-2:])}"
        )
    return _ssim_unchecked(to_unit(preds.to(target.dtype)), to_unit(target))


def _ssim_unchecked(preds01: torch.Tensor, target01: torch.Tensor) -> torch.Tensor:
    # imported on first use: importing torchmetrics pulls in torchvision and torch._dynamo
    # (seconds), which ``import facelab.core.privacy`` should not pay
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(
        preds01, target01, data_range=1.0, reduction="none", kernel_size=SSIM_KERNEL
    )


def psnr(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB ``(B,)`` of RGB batches in [-1, 1], measured on [0, 1].

    ``10 log10(1 / MSE)``; a perfect reconstruction gives ``inf``.
    """
    check_pair(preds, target, ("psnr preds", "psnr target"))
    return _psnr_unchecked(to_unit(preds.to(target.dtype)), to_unit(target))


def _psnr_unchecked(preds01: torch.Tensor, target01: torch.Tensor) -> torch.Tensor:
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return peak_signal_noise_ratio(
        preds01, target01, data_range=1.0, reduction="none", dim=(1, 2, 3)
    )


# ------------------------------------------------------------------------------------------
# identity: embeddings, scores, thresholds
# ------------------------------------------------------------------------------------------


def _module_device(module: nn.Module, fallback: torch.device) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return fallback


@torch.no_grad()
def embed(recognizer: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Unit-norm embeddings ``(B, D)`` of RGB images in [-1, 1] under ``recognizer``.

    The recognizer runs in eval mode (its previous mode is restored) on its own device;
    embeddings come back on the device of ``images``. A zero or non-finite embedding raises.
    """
    if not isinstance(recognizer, nn.Module):
        raise FacelabTypeError(
            f"recognizer: expected a torch.nn.Module mapping images to embeddings, got "
            f"{type(recognizer).__name__}"
        )
    check_images(images, "images to embed")
    _check_batch_size(batch_size)
    device = _module_device(recognizer, images.device)
    was_training = recognizer.training
    recognizer.eval()
    try:
        chunks = [
            recognizer(chunk.to(device)).to(images.device)
            for chunk in images.split(batch_size)  # batches, not samples
        ]
    finally:
        recognizer.train(was_training)
    out = torch.cat(chunks)
    if out.dim() != 2 or out.shape[0] != images.shape[0]:
        raise ShapeError(
            f"recognizer: expected embeddings of shape ({images.shape[0]}, D), got "
            f"{tuple(out.shape)}"
        )
    return normalize(out.float(), check=True)


def cosine_scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity ``(B,)`` of two embedding batches ``(B, D)``."""
    for t, n in ((a, "a"), (b, "b")):
        expect_tensor(t, n, floating=True)
        expect_rank(t, 2, n, "(B, D)")
    if a.shape != b.shape:
        raise ShapeError(
            f"cosine_scores: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)} (expected "
            "one row per pair)"
        )
    return (normalize(a) * normalize(b)).sum(-1)


def identity_leakage(
    recognizer: nn.Module,
    originals: torch.Tensor,
    reconstructions: torch.Tensor,
    batch_size: int = 256,
) -> torch.Tensor:
    """Per-image cosine similarity ``(B,)`` between original and reconstruction embeddings.

    Its mean is the identity leakage; the tensor is the distribution.
    """
    check_pair(reconstructions, originals, ("reconstructions", "originals"))
    return cosine_scores(
        embed(recognizer, originals, batch_size), embed(recognizer, reconstructions, batch_size)
    )


def _check_labels(labels: object, n: int, name: str = "labels") -> torch.Tensor:
    if isinstance(labels, Sequence) and not isinstance(labels, str):
        labels = torch.as_tensor(labels)
    lab = expect_tensor(labels, name)
    if lab.is_floating_point() or lab.is_complex() or lab.dtype == torch.bool:
        raise FacelabTypeError(f"{name}: expected integer identity labels, got dtype {lab.dtype}")
    expect_rank(lab, 1, name, "(B,)")
    if lab.shape[0] != n:
        raise ShapeError(f"{name}: expected {n} labels (one per image), got {lab.shape[0]}")
    return lab


def pair_scores(
    embeddings: torch.Tensor, labels: torch.Tensor | Sequence[int], chunk: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """Genuine and impostor cosine scores over all unordered pairs ``i < j`` of a labelled set.

    Returns ``(genuine, impostor)``, two 1-D tensors. The score matrix is built in row chunks
    so memory stays O(chunk * B).
    """
    expect_tensor(embeddings, "embeddings", floating=True)
    expect_rank(embeddings, 2, "embeddings", "(B, D)")
    n = embeddings.shape[0]
    lab = _check_labels(labels, n).to(embeddings.device)
    e = normalize(embeddings)
    genuine, impostor = [], []
    cols = torch.arange(n, device=e.device)
    for start in range(0, n, chunk):
        rows = cols[start : start + chunk]
        s = e[rows] @ e.T
        upper = cols.unsqueeze(0) > rows.unsqueeze(1)
        same = lab[rows].unsqueeze(1) == lab.unsqueeze(0)
        genuine.append(s[upper & same])
        impostor.append(s[upper & ~same])
    return torch.cat(genuine), torch.cat(impostor)


def threshold_at_far(impostor_scores: torch.Tensor, far: float = 1e-3) -> float:
    """The lowest threshold whose false accept rate on ``impostor_scores`` is at most ``far``.

    A pair is accepted when ``score > threshold``. With ``n`` impostor scores sorted in
    descending order, the threshold is the ``(floor(far * n) + 1)``-th largest score, so at
    most ``floor(far * n)`` impostors exceed it. Fewer than ``1 / far`` impostor scores cannot
    resolve the requested FAR and raise.
    """
    s = expect_tensor(impostor_scores, "impostor_scores", floating=True)
    expect_rank(s, 1, "impostor_scores", "(N,)")
    expect_nonempty(s, "impostor_scores")
    expect_finite(s, "impostor_scores")
    far = float(far)
    if not 0.0 < far < 1.0:
        raise ValueError(f"far: expected a false accept rate in (0, 1), got {far}")
    n = s.shape[0]
    allowed = math.floor(far * n + 1e-9)  # impostors allowed above the threshold
    if allowed < 1:
        raise ValueError(
            f"threshold_at_far: FAR={far:g} needs at least {math.ceil(1 / far)} impostor scores "
            f"to be resolved, got {n}; use more impostor pairs or a larger far"
        )
    return float(torch.sort(s.detach().double(), descending=True).values[allowed])


def success_rate(scores: torch.Tensor, threshold: float) -> float:
    """Fraction of ``scores`` strictly above ``threshold``."""
    s = expect_tensor(scores, "scores", floating=True)
    expect_rank(s, 1, "scores", "(N,)")
    expect_nonempty(s, "scores")
    expect_finite(s, "scores")
    if not math.isfinite(float(threshold)):
        raise ValueError(f"threshold: expected a finite number, got {threshold}")
    return float((s > threshold).double().mean())


def identity_match_rates(
    reconstruction_embeddings: torch.Tensor,
    reference_embeddings: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    threshold: float,
) -> torch.Tensor:
    """Per reconstruction, the fraction of *other* images of its identity that accept it.

    Reconstruction ``i`` is compared with every reference ``j != i`` with
    ``labels[j] == labels[i]`` (the adversary's output against fresh images of the same
    person: a type-II attack). Returns ``(B,)`` rates, NaN for reconstructions whose identity
    has no other image.
    """
    named = (
        (reconstruction_embeddings, "reconstruction_embeddings"),
        (reference_embeddings, "reference_embeddings"),
    )
    for t, n in named:
        expect_tensor(t, n, floating=True)
        expect_rank(t, 2, n, "(B, D)")
    if reconstruction_embeddings.shape != reference_embeddings.shape:
        raise ShapeError(
            "identity_match_rates: reconstruction and reference embeddings must have the same "
            f"shape, got {tuple(reconstruction_embeddings.shape)} and "
            f"{tuple(reference_embeddings.shape)}"
        )
    n = reconstruction_embeddings.shape[0]
    lab = _check_labels(labels, n).to(reconstruction_embeddings.device)
    s = normalize(reconstruction_embeddings) @ normalize(reference_embeddings).T
    eye = torch.eye(n, dtype=torch.bool, device=s.device)
    mates = (lab.unsqueeze(1) == lab.unsqueeze(0)) & ~eye
    accepted = ((s > threshold) & mates).sum(1).double()
    count = mates.sum(1).double()
    return torch.where(count > 0, accepted / count.clamp_min(1), torch.nan)


# ------------------------------------------------------------------------------------------
# one result for one attack
# ------------------------------------------------------------------------------------------


@dataclass
class AttackResult:
    """What an attack recovered on an evaluation set (means over images; per-image tensors).

    ``identity_leakage`` / ``leakage_scores`` need a recognizer; ``success_rate`` also needs a
    threshold (given, or chosen at ``far`` on the real images). ``match`` says what a
    reconstruction was compared with for the success rate: its own original, or the other
    images of its identity. ``real_genuine_accept_rate`` (with labels) is the fraction of real
    genuine pairs accepted at the same threshold: the ceiling a perfect attack would approach.
    """

    ssim: float
    psnr: float
    l1: float
    n: int
    ssim_per_image: torch.Tensor = field(repr=False)
    psnr_per_image: torch.Tensor = field(repr=False)
    identity_leakage: float | None = None
    leakage_std: float | None = None
    leakage_scores: torch.Tensor | None = field(default=None, repr=False)
    success_rate: float | None = None
    threshold: float | None = None
    far: float | None = None
    match: Match | None = None
    real_genuine_accept_rate: float | None = None

    def leakage_quantiles(self, q: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95)) -> list[float]:
        if self.leakage_scores is None:
            raise ValueError("leakage_quantiles: this result was computed without a recognizer")
        qs = torch.tensor(list(q), dtype=torch.float64)
        return torch.quantile(self.leakage_scores.double().cpu(), qs).tolist()

    def as_row(self, name: str | None = None) -> dict[str, Any]:
        """A flat row for a results table; missing metrics are NaN (shown as n/a)."""
        nan = float("nan")
        row: dict[str, Any] = {} if name is None else {"attack": name}
        row.update(
            ssim=self.ssim,
            psnr=self.psnr,
            l1=self.l1,
            identity_leakage=nan if self.identity_leakage is None else self.identity_leakage,
            leakage_std=nan if self.leakage_std is None else self.leakage_std,
            success_rate=nan if self.success_rate is None else self.success_rate,
            threshold=nan if self.threshold is None else self.threshold,
            real_genuine_accept_rate=(
                nan if self.real_genuine_accept_rate is None else self.real_genuine_accept_rate
            ),
            n=self.n,
        )
        return row


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")


def evaluate_reconstructions(
    reconstructions: torch.Tensor,
    originals: torch.Tensor,
    *,
    recognizer: nn.Module | None = None,
    threshold: float | None = None,
    labels: torch.Tensor | Sequence[int] | None = None,
    far: float | None = None,
    match: Match | None = None,
    batch_size: int = 256,
) -> AttackResult:
    """Score reconstructions against their originals (both RGB in [-1, 1], same shape).

    Success rate (needs ``recognizer``): the threshold is ``threshold`` if given, else chosen at
    ``far`` on the impostor pairs of the real ``originals`` (this needs ``labels``). ``match``
    is ``"original"`` (reconstruction vs its own original) or ``"identity"`` (vs the other images
    of the same identity, averaged per reconstruction so each counts once; needs ``labels``);
    by default ``"identity"`` when labels are given, else ``"original"``.
    """
    check_pair(reconstructions, originals, ("reconstructions", "originals"))
    _check_batch_size(batch_size)
    n = originals.shape[0]
    if min(originals.shape[-2:]) < SSIM_KERNEL:
        raise ShapeError(
            f"evaluate: images must be at least {SSIM_KERNEL}x{SSIM_KERNEL} for SSIM, got "
            f"{tuple(originals.shape[-2:])}"
        )
    if labels is not None:
        labels = _check_labels(labels, n)
    if match is not None and match not in ("original", "identity"):
        raise ValueError(f"match: expected 'original' or 'identity', got {match!r}")
    if match == "identity" and labels is None:
        raise ValueError(
            "match='identity' compares with other images of the same identity: pass labels"
        )
    if recognizer is None and (threshold is not None or far is not None or match is not None):
        raise ValueError(
            "threshold/far/match concern the attack success rate, which needs a recognizer"
        )
    if threshold is not None and far is not None:
        raise ValueError("pass either a threshold or a far to choose one at, not both")
    if far is not None and labels is None:
        raise ValueError(
            "far: choosing a threshold needs impostor pairs of real images, so pass labels"
        )
    if recognizer is not None and threshold is None and far is None and match is not None:
        raise ValueError("match concerns the success rate: pass a threshold or a far")
    reconstructions = reconstructions.detach().to(originals.device, originals.dtype)
    originals = originals.detach()
    with torch.no_grad():
        rec01, org01 = to_unit(reconstructions), to_unit(originals)
        pairs = zip(rec01.split(batch_size), org01.split(batch_size))
        s = torch.cat([_ssim_unchecked(a, b) for a, b in pairs])
        p = _psnr_unchecked(rec01, org01)
        l1 = (reconstructions - originals).abs().mean()
    result = AttackResult(
        ssim=float(s.mean()),
        psnr=float(p.mean()),
        l1=float(l1),
        n=n,
        ssim_per_image=s.cpu(),
        psnr_per_image=p.cpu(),
    )
    if recognizer is None:
        return result
    e_org = embed(recognizer, originals, batch_size)
    e_rec = embed(recognizer, reconstructions, batch_size)
    leak = (e_org * e_rec).sum(-1)
    result.identity_leakage = float(leak.mean())
    result.leakage_std = float(leak.std()) if n > 1 else 0.0
    result.leakage_scores = leak.cpu()
    if threshold is None and far is None:
        return result
    genuine = None
    if labels is not None:
        genuine, impostor = pair_scores(e_org, labels)
    if far is not None:
        threshold = threshold_at_far(impostor, far)
        result.far = float(far)
    if genuine is not None and genuine.numel() > 0:
        # context for the success rate: how often the system accepts real genuine pairs
        result.real_genuine_accept_rate = success_rate(genuine, threshold)
    match = match or ("identity" if labels is not None else "original")
    if match == "original":
        rate = success_rate(leak, threshold)
    else:
        per = identity_match_rates(e_rec, e_org, labels, threshold)
        valid = ~torch.isnan(per)
        if not bool(valid.any()):
            raise ValueError(
                "match='identity': no identity has two or more images, so no reconstruction "
                "can be compared with another image of its identity"
            )
        rate = float(per[valid].mean())
    result.success_rate = rate
    result.threshold = float(threshold)
    result.match = match
    return result
