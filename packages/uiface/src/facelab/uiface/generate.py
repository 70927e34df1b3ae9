"""Loading UIFace generators (ours or the authors' released files) and writing datasets.

* :func:`load_sampler`: a generator folder written by ``facelab uiface train`` (or ``facelab
  synth train``) -> ``IdentitySampler``;
* :func:`load_released`: the released UIFace checkpoint (the reference's key layout, loaded
  strictly into the core ``ConditionalUNet``) with the LDM VQ-f4 encoder / decoder state dicts,
  all from local paths; 128 px images, decoded and resized to 112 px by the dataset writer;
* :func:`load_contexts`: ID vectors from a ``.npy`` (the released 10k identity embeddings are a
  NumPy array) or a ``.safetensors`` file, L2-normalized as the reference does;
* :func:`generate`: ``facelab.core.diffusion.generate_dataset`` with the UIFace sampler as its
  ``sample_fn``: identity folders + ``manifest.json`` (the UIFace settings are part of the run,
  so a rerun with other thresholds is refused), resumable (finished identities are never
  rewritten), split over processes under ``accelerate launch``; every image's switch step lands
  in its identity's ``meta.json``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from facelab.core.diffusion.sampling import IdentitySampler, check_contexts
from facelab.core.errors import FormatError, RangeError, ShapeError, ZeroVectorError
from facelab.uiface.sampler import UIFaceSampler

#: the released model's image side (VQ-f4 latents of 3 x 32 x 32)
RELEASED_IMAGE_SIZE = 128


def load_sampler(generator: str | os.PathLike, **sampler_kwargs: Any) -> IdentitySampler:
    """The ``IdentitySampler`` of a generator folder (its output dir or its ``generator/``)."""
    from facelab.core.diffusion.train import load_generator

    return load_generator(generator, **sampler_kwargs)


def load_released(
    checkpoint: str | os.PathLike,
    encoder: str | os.PathLike,
    decoder: str | os.PathLike,
    **sampler_kwargs: Any,
) -> IdentitySampler:
    """The authors' released UIFace denoiser and the LDM VQ-f4 first stage, offline.

    A checkpoint of another architecture fails with a ``KeyMismatchError`` naming the missing,
    unexpected and mis-shaped keys (the load is strict)."""
    from facelab.core.diffusion.autoencoder import VQAutoencoder
    from facelab.core.diffusion.unet import ConditionalUNet

    for name, p in (("checkpoint", checkpoint), ("encoder", encoder), ("decoder", decoder)):
        if not Path(p).is_file():
            raise FileNotFoundError(f"{name}: {p} does not exist")
    unet = ConditionalUNet.from_reference_checkpoint(checkpoint)
    auto = VQAutoencoder.from_ldm_f4(encoder, decoder)
    kwargs = {"image_size": RELEASED_IMAGE_SIZE} | sampler_kwargs
    return IdentitySampler(unet, auto, **kwargs)


def load_contexts(
    path: str | os.PathLike, count: int | None = None, width: int = 512, normalize: bool = True
) -> torch.Tensor:
    """ID vectors ``(count, width)`` from ``.npy`` or ``.safetensors`` (``contexts`` or
    ``embeddings``). ``count``: the first ``count`` rows (the reference's ``n_contexts``); more
    than the file holds is an error. ``normalize``: L2-normalize (the reference always does);
    zero, NaN or Inf rows are errors either way."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"contexts: {p} does not exist")
    if p.suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except ValueError as exc:
            raise FormatError(f"{p}: not a plain .npy array ({exc})") from None
        ctx = torch.from_numpy(np.asarray(arr, dtype=np.float32))
    elif p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(p))
        except Exception as exc:
            raise FormatError(f"{p}: not a readable safetensors file ({exc})") from None
        key = next((k for k in ("contexts", "embeddings") if k in tensors), None)
        if key is None:
            raise FormatError(
                f"{p}: expected a tensor 'contexts' or 'embeddings', got {sorted(tensors)}"
            )
        ctx = tensors[key].float()
    else:
        raise FormatError(f"contexts: expected a .npy or .safetensors file, got {p.name}")
    if ctx.dim() != 2 or ctx.shape[1] != width:
        raise ShapeError(f"{p}: expected ID vectors of shape (N, {width}), got {tuple(ctx.shape)}")
    if count is not None:
        if count < 1:
            raise RangeError(f"identities: expected at least 1, got {count}")
        if count > ctx.shape[0]:
            raise ShapeError(
                f"{p}: expected at least {count} ID vectors (--identities), got {ctx.shape[0]}"
            )
        ctx = ctx[:count]
    if not bool(torch.isfinite(ctx).all()):
        raise FormatError(f"{p}: expected finite ID vectors, got NaN/Inf")
    if normalize:
        norms = ctx.norm(dim=1)
        if float(norms.min()) < 1e-6:
            raise ZeroVectorError(f"{p}: expected non-zero ID vectors, got a zero row")
        ctx = ctx / norms[:, None]
    return check_contexts(ctx, width, str(p))


def generate(
    sampler: UIFaceSampler,
    contexts: torch.Tensor,
    out_dir: str | os.PathLike,
    *,
    images_per_identity: int = 50,
    batch_size: int = 50,
    seed: int = 0,
    image_size: int = 112,
    format: Literal["folders", "recordio"] = "folders",
    names: list[str] | None = None,
    accelerator: Any = None,
    progress: bool = True,
    run_info: dict[str, Any] | None = None,
):
    """Write ``len(contexts)`` identities x ``images_per_identity`` UIFace images (see the
    module docstring); returns the core's ``GenerationResult``."""
    from facelab.core.diffusion.generate import generate_dataset

    if not isinstance(sampler, UIFaceSampler):
        raise RangeError(f"sampler: expected a UIFaceSampler, got {type(sampler).__name__}")
    info = sampler.settings() | dict(run_info or {})
    return generate_dataset(
        sampler.base,
        contexts,
        out_dir,
        images_per_identity=images_per_identity,
        batch_size=batch_size,
        seed=seed,
        image_size=image_size,
        format=format,
        names=names,
        sample_fn=sampler.sample_fn,
        run_info=info,
        accelerator=accelerator,
        progress=progress,
    )


__all__ = [
    "RELEASED_IMAGE_SIZE",
    "generate",
    "load_contexts",
    "load_released",
    "load_sampler",
]
