"""Identity sources: the ID vectors a generator is asked to draw.

* :func:`random_identities`: uniform random unit vectors (normalized Gaussians, as the
  reference does when no file is given);
* :func:`embed_identities`: per-identity mean embeddings of a frozen recognizer over an
  identity-folder tree (or over images with labels);
* :func:`filter_identities` / :func:`virtual_identities`: keep a candidate only if its cosine to
  every identity kept before it is below a threshold (the filtering IDiff-Face / DCFace use).
  Similarities are computed block-wise with one matmul per block; the greedy decision runs over
  a numpy bool matrix of the block.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from facelab.core.errors import RangeError, ShapeError


def random_identities(n: int, dim: int = 512, seed: int = 0) -> torch.Tensor:
    """``n`` uniform random unit vectors (float32), a function of ``seed``."""
    if n < 1 or dim < 2:
        raise RangeError(f"random_identities: expected n >= 1 and dim >= 2, got n={n}, dim={dim}")
    g = torch.Generator().manual_seed(int(seed))
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)


def filter_identities(
    candidates: torch.Tensor, threshold: float, max_count: int | None = None, block: int = 1024
) -> torch.Tensor:
    """Indices (in order) of the candidates kept greedily: candidate ``i`` is kept when its
    cosine to every kept candidate before it is below ``threshold``. Stops at ``max_count``."""
    from facelab.core.diffusion.sampling import check_contexts

    if candidates.dim() != 2:
        raise ShapeError(f"candidates: expected (N, D) unit vectors, got {tuple(candidates.shape)}")
    x = check_contexts(candidates, candidates.shape[1], "candidates")
    if not -1.0 <= float(threshold) <= 1.0:
        raise RangeError(f"threshold: expected a cosine in [-1, 1], got {threshold}")
    limit = x.shape[0] if max_count is None else int(max_count)
    kept: list[int] = []
    kept_vecs = x.new_zeros(0, x.shape[1])
    for start in range(0, x.shape[0], block):
        cand = x[start : start + block]
        ok = np.ones(cand.shape[0], dtype=bool)
        if kept_vecs.shape[0]:
            ok &= (cand @ kept_vecs.T).amax(dim=1).numpy() < threshold
        inner = (cand @ cand.T).numpy() >= threshold  # conflicts inside the block
        take: list[int] = []
        for i in np.flatnonzero(ok):
            if take and inner[i, take].any():
                continue
            take.append(int(i))
            if len(kept) + len(take) >= limit:
                break
        kept.extend(start + i for i in take)
        kept_vecs = torch.cat([kept_vecs, cand[take]])
        if len(kept) >= limit:
            break
    return torch.tensor(kept, dtype=torch.long)


def virtual_identities(
    n: int, threshold: float = 0.3, dim: int = 512, seed: int = 0, max_candidates: int | None = None
) -> torch.Tensor:
    """``n`` random unit vectors whose pairwise cosines are all below ``threshold``."""
    limit = max_candidates or max(4 * n, n + 1024)
    cand = random_identities(limit, dim, seed)
    keep = filter_identities(cand, threshold, max_count=n)
    if keep.numel() < n:
        raise RangeError(
            f"virtual_identities: only {keep.numel()} of {limit} candidates have pairwise cosine "
            f"< {threshold}; raise the threshold or max_candidates"
        )
    return cand[keep]


def identity_means(
    embeddings: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized mean embedding per label: ``(unique labels, (L, D) unit vectors)``."""
    if embeddings.dim() != 2 or labels.shape != (embeddings.shape[0],):
        raise ShapeError(
            f"embeddings/labels: expected (N, D) and (N,), got {tuple(embeddings.shape)} and "
            f"{tuple(labels.shape)}"
        )
    uniq, inv = torch.unique(labels, return_inverse=True)
    sums = torch.zeros(uniq.numel(), embeddings.shape[1], dtype=torch.float32)
    sums.index_add_(0, inv, torch.nn.functional.normalize(embeddings.float(), dim=1))
    return uniq, torch.nn.functional.normalize(sums, dim=1)


def embed_identities(
    recognizer: torch.nn.Module | str | os.PathLike,
    folder: str | os.PathLike,
    *,
    image_size: int | None = None,
    batch_size: int = 128,
) -> tuple[list[str], torch.Tensor]:
    """Identity names and their mean embeddings (unit vectors) under a frozen recognizer
    (a module or a ``save_pretrained`` directory) over an identity-folder tree."""
    from facelab.core.data.folders import IdentityFolderDataset
    from facelab.core.eval import embed
    from facelab.core.hub import from_pretrained

    model = from_pretrained(recognizer) if isinstance(recognizer, str | os.PathLike) else recognizer
    ds = IdentityFolderDataset(Path(folder))
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    if image_size is not None and images.shape[-1] != image_size:
        images = torch.nn.functional.interpolate(
            images,
            size=(image_size, image_size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
    emb = embed(model, images, flip=True, batch_size=batch_size)
    labels = ds.labels if isinstance(ds.labels, torch.Tensor) else torch.as_tensor(ds.labels)
    _, means = identity_means(emb, labels)
    return list(ds.classes), means
