"""Tokenizer and generator metrics.

* rFID / gFID: torchmetrics' ``FrechetInceptionDistance`` with a pluggable feature extractor:
  Inception-v3 from a local weights file (torch-fidelity's FID Inception, extra
  ``facelab-glotok[inception]``), or — for toy runs, and labelled so in every table — the
  embedding of a facelab recognizer we train ourselves (``RecognizerFeatures``). Numbers under
  the toy extractor are not comparable to Inception FIDs.
* PSNR / SSIM (torchmetrics, images mapped to [0, 1]);
* codebook usage (share of codes used) and perplexity (``exp`` of the entropy of code use);
* uniformity of the semantic latents, ``log E exp(-2 ||u - v||^2)`` over pairs of unit vectors
  (Wang & Isola 2020; lower = more uniform; the minimum for many points on the sphere is
  about ``-4`` for high dimensions), on the semantic encoder outputs and on the semantic codebook.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from facelab.core.errors import RangeError, ShapeError


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return ((x.float() + 1) / 2).clamp(0, 1)


def _pair_check(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.dim() != 4:
        raise ShapeError(
            f"expected two image batches of one shape (B, C, H, W), got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def psnr(reconstructions: torch.Tensor, images: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (computed on [0, 1], averaged over the batch)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _pair_check(reconstructions, images)
    return float(
        peak_signal_noise_ratio(
            _to_unit(reconstructions),
            _to_unit(images),
            data_range=1.0,
            reduction="elementwise_mean",
            dim=(1, 2, 3),
        )
    )


def ssim(reconstructions: torch.Tensor, images: torch.Tensor) -> float:
    from torchmetrics.functional.image import structural_similarity_index_measure

    _pair_check(reconstructions, images)
    return float(
        structural_similarity_index_measure(
            _to_unit(reconstructions), _to_unit(images), data_range=1.0
        )
    )


def code_counts(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    flat = indices.reshape(-1).long()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= num_codes):
        raise RangeError(f"indices: expected values in [0, {num_codes - 1}]")
    return torch.bincount(flat, minlength=num_codes)


def codebook_usage(indices: torch.Tensor, num_codes: int) -> float:
    """Share of the ``num_codes`` codes that occur in ``indices``."""
    return float((code_counts(indices, num_codes) > 0).sum()) / num_codes


def perplexity(indices: torch.Tensor, num_codes: int) -> float:
    """``exp(H)`` of the empirical code distribution (1 = one code, ``num_codes`` = uniform)."""
    counts = code_counts(indices, num_codes).double()
    p = counts[counts > 0] / counts.sum()
    return float(torch.exp(-(p * p.log()).sum()))


def uniformity(
    vectors: torch.Tensor, t: float = 2.0, max_points: int = 4096, seed: int = 0
) -> float:
    """``log mean_{i<j} exp(-t ||u_i - u_j||^2)`` of the normalized rows (a random subset of
    ``max_points`` rows when there are more)."""
    if vectors.dim() != 2 or vectors.shape[0] < 2:
        raise ShapeError(f"vectors: expected (N >= 2, D), got {tuple(vectors.shape)}")
    x = vectors.detach().float()
    if x.shape[0] > max_points:
        g = torch.Generator().manual_seed(seed)
        x = x[torch.randperm(x.shape[0], generator=g)[:max_points].to(x.device)]
    u = F.normalize(x, dim=1)
    sq = (2 - 2 * (u @ u.T)).clamp_min(0)
    n = u.shape[0]
    iu = torch.triu_indices(n, n, offset=1, device=u.device)
    vals = -t * sq[iu[0], iu[1]]
    return float(torch.logsumexp(vals, 0) - math.log(vals.numel()))


class RecognizerFeatures(nn.Module):
    """A facelab recognizer as an FID feature extractor: images in [-1, 1] -> its
    L2-normalized embedding (``num_features`` = embedding size; normalized so the distance does
    not depend on the arbitrary scale of the embedding layer). Ours, for toy runs: say
    "toy-FID" next to its numbers."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        size = getattr(backbone, "input_size", None)
        self.input_size = tuple(size) if size is not None else None
        self.num_features = int(backbone.embedding_size)

    def train(self, mode: bool = True) -> RecognizerFeatures:
        super().train(mode)
        self.backbone.eval()
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.input_size is not None and tuple(images.shape[-2:]) != self.input_size:
            images = F.interpolate(
                images.float(),
                size=self.input_size,
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        return F.normalize(self.backbone(images.float()), dim=1)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> RecognizerFeatures:
        from facelab.core.hub import from_pretrained

        return cls(from_pretrained(directory))


def frechet_distance(
    real: torch.Tensor,
    fake: torch.Tensor,
    extractor: nn.Module | None = None,
    *,
    inception_weights: str | Path | None = None,
    batch_size: int = 256,
) -> float:
    """FID between two image sets in [-1, 1] through torchmetrics; ``extractor`` (e.g.
    :class:`RecognizerFeatures`) or Inception-v3 from ``inception_weights`` (local file)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise ShapeError(
            f"FID needs at least 2 real and 2 fake images, got {real.shape[0]} and {fake.shape[0]}"
        )
    if (extractor is None) == (inception_weights is None):
        raise RangeError(
            "FID: give exactly one of extractor= (a module) or inception_weights= (a local file)"
        )
    if inception_weights is not None:
        path = Path(inception_weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"Inception weights file {path} not found (nothing is downloaded)"
            )
        metric = FrechetInceptionDistance(
            feature=2048, normalize=True, feature_extractor_weights_path=str(path)
        )

        def prep(x: torch.Tensor) -> torch.Tensor:
            return _to_unit(x)
    else:
        metric = FrechetInceptionDistance(feature=extractor)

        def prep(x: torch.Tensor) -> torch.Tensor:
            return x.float()

    device = (
        next(iter(metric.parameters()), real).device if extractor is None else _device_of(extractor)
    )
    metric = metric.to(device)
    for data, is_real in ((real, True), (fake, False)):
        for s in range(0, data.shape[0], batch_size):
            metric.update(prep(data[s : s + batch_size].to(device)), real=is_real)
    return float(metric.compute())


def _device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
