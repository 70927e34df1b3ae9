"""Embedding a set of face images with a recognition model, with the flip test.

``emb = normalize(f(x) + f(flip(x)))`` where ``flip`` mirrors the width axis, exactly as
insightface's ``verification.test`` (sum of the two embeddings, then L2 normalization). The model
runs in eval mode under ``torch.inference_mode`` on its own device; the result is float32 on CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from facelab.core.errors import (
    FacelabTypeError,
    NonFiniteError,
    ShapeError,
    ZeroVectorError,
    describe,
    expect_finite_in_range,
)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a parameter-free model."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _batch_images(batch: Any, where: str) -> torch.Tensor:
    """The image tensor of a batch: a tensor, or the first element of a (images, ...) tuple."""
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    elif isinstance(batch, dict):
        for key in ("image", "images", "pixel_values"):
            if key in batch:
                batch = batch[key]
                break
    if not isinstance(batch, torch.Tensor):
        raise FacelabTypeError(
            f"{where}: expected image tensors (or (images, ...) tuples), got {describe(batch)}"
        )
    return batch


def _check_images(x: torch.Tensor, where: str) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ShapeError(f"{where}: expected images (N, 3, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise FacelabTypeError(
            f"{where}: expected float images in [-1, 1], got dtype {x.dtype} (convert uint8 "
            f"with x / 127.5 - 1)"
        )
    expect_finite_in_range(x, -1.0, 1.0, where)


def _batches(images: Any, batch_size: int, num_workers: int) -> Iterator[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        _check_images(images, "images")
        for s in range(0, images.shape[0], batch_size):
            yield images[s : s + batch_size]
        return
    if isinstance(images, DataLoader):
        if isinstance(images.sampler, RandomSampler):
            raise FacelabTypeError(
                "images: expected a DataLoader that keeps the dataset order (shuffle=False); "
                "embeddings must line up with the dataset"
            )
        loader = images
    elif isinstance(images, Dataset):
        loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    else:
        raise FacelabTypeError(
            f"images: expected a (N, 3, H, W) tensor, a Dataset or a DataLoader, got "
            f"{describe(images)}"
        )
    for i, batch in enumerate(loader):
        x = _batch_images(batch, f"images (batch {i})")
        _check_images(x, f"images (batch {i})")
        yield x


def _forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        raise ShapeError(
            f"model output: expected a (B, D) embedding tensor for a batch of {x.shape[0]}, got "
            f"{describe(out)}"
        )
    return out


def embed(
    model: torch.nn.Module,
    images: Any,
    flip: bool = True,
    batch_size: int = 128,
    *,
    normalize: bool = True,
    num_workers: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    """Embeddings (N, D) float32 on CPU of ``images`` under ``model``.

    ``images``: a float tensor (N, 3, H, W) in [-1, 1], or a ``Dataset`` (items are image
    tensors or ``(image, ...)`` tuples) or an order-keeping ``DataLoader`` of such batches.
    ``flip``: add the embedding of the horizontally mirrored image before normalizing.
    ``normalize=False`` returns the raw (flip-summed) features, e.g. for IJB feature-norm
    weighting. The model's train/eval mode is restored afterwards.
    """
    if not isinstance(model, torch.nn.Module):
        raise FacelabTypeError(f"model: expected a torch.nn.Module, got {describe(model)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ShapeError(f"batch_size: expected a positive integer, got {batch_size!r}")
    device = model_device(model)
    dtype = _model_dtype(model)
    was_training = model.training
    model.eval()
    outs: list[torch.Tensor] = []
    try:
        batches = _batches(images, batch_size, num_workers)
        if progress:
            from facelab.core.progress import progress_bar

            batches = progress_bar(batches, desc="embed", unit="batch")
        with torch.inference_mode():
            for x in batches:
                x = x.to(device=device, dtype=dtype, non_blocking=True)
                f = _forward(model, x)
                if flip:
                    f = f + _forward(model, torch.flip(x, dims=(3,)))
                outs.append(f.float().cpu())
    finally:
        model.train(was_training)
    if not outs:
        raise ShapeError("images: expected at least one image, got an empty set")
    emb = torch.cat(outs)
    if not bool(torch.isfinite(emb).all()):
        bad = int((~torch.isfinite(emb).all(1)).sum())
        raise NonFiniteError(f"model output: {bad} embeddings contain NaN/Inf")
    if normalize:
        n = torch.linalg.vector_norm(emb, dim=1, keepdim=True)
        if bool((n <= 1e-12).any()):
            raise ZeroVectorError(
                f"model output: {int((n <= 1e-12).sum())} embeddings have norm 0 and cannot be "
                f"normalized"
            )
        emb = emb / n
    return emb
