"""The conditioning hook: a trainable transform of the ID embeddings before the denoiser.

A :class:`ContextTransform` is an ``nn.Module`` with its own parameters. The training step of the
base (and of every recipe built on it) calls ``transform(context, timesteps)`` on the batch's unit
ID vectors before the denoiser and adds ``output.loss`` (if any) to the denoising loss; its
parameters train with the denoiser and are saved in checkpoints. SteerFace plugs in here; UIFace's
recipe accepts any transform without importing the package that defines it.

At sampling the transform is not applied unless ``apply_at_sampling`` is True.

:class:`ExtraConditioner` is the second hook: a per-image extra input (from the dataset) turned
into extra context tokens next to the ID tokens, trained jointly with the denoiser (MorphFace's
3DMM style tokens are one user). It may also return pixel-aligned maps (:class:`ExtraOutput`)
that a denoiser built with ``extra_input_channels`` adds at its input (:func:`resize_extra_input`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ContextOutput:
    """``context``: the transformed ID vectors (B, D); ``loss``: an extra scalar loss term (or
    None); ``logs``: scalars to log (name -> 0-d tensor)."""

    context: torch.Tensor
    loss: torch.Tensor | None = None
    logs: dict[str, torch.Tensor] = field(default_factory=dict)


class ContextTransform(nn.Module):
    """Base class of conditioning hooks (the identity). Override ``forward``."""

    apply_at_sampling: bool = False

    def forward(self, context: torch.Tensor, timesteps: torch.Tensor) -> ContextOutput:
        return ContextOutput(context)


def apply_transform(
    transform: nn.Module | None, context: torch.Tensor, timesteps: torch.Tensor
) -> ContextOutput:
    """Run a hook and check what it returns (shape kept, a scalar loss)."""
    from facelab.core.errors import FacelabTypeError, ShapeError

    if transform is None:
        return ContextOutput(context)
    out = transform(context, timesteps)
    if isinstance(out, torch.Tensor):
        out = ContextOutput(out)
    if not isinstance(out, ContextOutput):
        raise FacelabTypeError(
            f"context transform: expected a ContextOutput or a tensor, got {type(out).__name__}"
        )
    if out.context.shape != context.shape:
        raise ShapeError(
            f"context transform: expected output of shape {tuple(context.shape)}, got "
            f"{tuple(out.context.shape)}"
        )
    if out.loss is not None and out.loss.dim() != 0:
        raise ShapeError(f"context transform: expected a scalar loss, got {tuple(out.loss.shape)}")
    return out


# --------------------------------------------------------------------------------------------
# per-image extra conditioning


@dataclass
class ExtraOutput:
    """What an extra conditioner gives the denoiser: ``tokens`` (B, N, C) appended to the ID
    tokens in cross-attention, and optional pixel-aligned ``maps`` (B, C_in, H, W) added at the
    denoiser's input (a denoiser built with ``extra_input_channels=C_in``; resized to the
    latent size there). Where the condition is dropped in training the maps are zeros (what a
    missing ``extra_input`` means at sampling)."""

    tokens: torch.Tensor
    maps: torch.Tensor | None = None


class ExtraConditioner(nn.Module):
    """Base class of per-image extra-conditioning hooks: a per-image input -> extra context
    tokens appended to the ID tokens in every cross-attention layer (the denoisers'
    ``extra_context``).

    Used by :func:`~facelab.core.diffusion.train.train_diffusion` (``extra_conditioner=``) with a
    dataset that yields ``(image, payload, extra, flipped)`` per sample (:class:`~facelab.core.
    diffusion.train.SynthImages` with ``extra=``): ``extra`` is any tensor (or dict of tensors)
    of a fixed shape per image, collated into a batch; ``flipped`` (B,) bool says which images
    the data augmentation mirrored left-right (a conditioner whose input has a handedness, e.g.
    rendered maps or landmarks, mirrors it; others ignore it).

    ``forward(extra, flipped)`` returns tokens (B, N, C) with C the denoiser's token width
    (:func:`token_width`), or an :class:`ExtraOutput` with tokens and pixel-aligned maps. The
    conditioner trains jointly with the denoiser (through the
    denoising loss), is averaged by the same EMA, checkpointed with the trainer's state, and
    saved as ``generator/extra_conditioner.safetensors`` (:func:`~facelab.core.diffusion.train.
    load_extra_conditioner` loads it into a module of the same architecture). Dropping the
    condition in training (classifier-free guidance) is the conditioner's own business (e.g.
    learned null tokens with some probability in train mode).
    """

    def forward(self, extra, flipped: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError("ExtraConditioner subclasses implement forward(extra, flipped)")


def token_width(denoiser: nn.Module) -> int | None:
    """The width C of the denoiser's cross-attention tokens (None when it is not known)."""
    config = getattr(denoiser, "config", None)
    for key in ("context_channels", "cross_attention_dim"):
        value = getattr(config, key, None) if config is not None else None
        if isinstance(value, int):
            return value
    return None


def input_channels(denoiser: nn.Module) -> int:
    """The denoiser's ``extra_input_channels`` (0: it takes no pixel-aligned extra input)."""
    config = getattr(denoiser, "config", None)
    value = getattr(config, "extra_input_channels", 0) if config is not None else 0
    return int(value or 0)


def resize_extra_input(
    maps: torch.Tensor | None, x: torch.Tensor, channels: int
) -> torch.Tensor | None:
    """Check a denoiser's pixel-aligned ``extra_input`` against its input ``x`` (B, C, H, W)
    and its ``extra_input_channels``, and resize it to x's size (bilinear, antialiased)."""
    from facelab.core.errors import ShapeError

    if maps is None:
        return None
    b = x.shape[0]
    if channels <= 0:
        raise ShapeError(
            "extra_input: this denoiser was built without extra_input_channels, so it takes no "
            f"pixel-aligned extra input; got a tensor of shape {tuple(maps.shape)}"
        )
    if maps.dim() != 4 or maps.shape[0] != b or maps.shape[1] != channels:
        raise ShapeError(
            f"extra_input: expected maps of shape ({b}, {channels}, H, W), got {tuple(maps.shape)}"
        )
    if maps.shape[-2:] != x.shape[-2:]:
        maps = F.interpolate(
            maps.float(), size=tuple(x.shape[-2:]), mode="bilinear", antialias=True
        )
    return maps.to(x.dtype)


def apply_extra(
    conditioner: nn.Module | None,
    extra,
    flipped: torch.Tensor,
    batch: int,
    width: int | None,
    channels: int | None = None,
) -> ExtraOutput | None:
    """Run an extra conditioner and check what it returns: tokens (batch, N, width), and maps
    (batch, ``channels``, H, W) if any (``channels``: the denoiser's ``extra_input_channels``;
    None skips that check). A bare tensor of tokens comes back as ``ExtraOutput(tokens)``."""
    from facelab.core.errors import FacelabTypeError, ShapeError

    if conditioner is None:
        return None
    out = conditioner(extra, flipped)
    if isinstance(out, torch.Tensor):
        out = ExtraOutput(out)
    if not isinstance(out, ExtraOutput) or not isinstance(out.tokens, torch.Tensor):
        raise FacelabTypeError(
            "extra conditioner: expected a tensor of tokens (B, N, C) or an ExtraOutput, got "
            f"{type(out).__name__}"
        )
    tokens = out.tokens
    want = f"({batch}, N, {width if width is not None else 'C'})"
    if (
        tokens.dim() != 3
        or tokens.shape[0] != batch
        or tokens.shape[1] < 1
        or (width is not None and tokens.shape[2] != width)
    ):
        raise ShapeError(
            f"extra conditioner: expected tokens of shape {want} (batch, tokens, the denoiser's "
            f"token width), got {tuple(tokens.shape)}"
        )
    maps = out.maps
    if maps is not None:
        if channels is not None and channels <= 0:
            raise ShapeError(
                "extra conditioner: it returned pixel-aligned maps of shape "
                f"{tuple(maps.shape)}, but the denoiser was built without extra_input_channels"
            )
        if (
            not isinstance(maps, torch.Tensor)
            or maps.dim() != 4
            or maps.shape[0] != batch
            or (channels is not None and maps.shape[1] != channels)
        ):
            got = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
            raise ShapeError(
                f"extra conditioner: expected maps of shape ({batch}, "
                f"{channels if channels is not None else 'C'}, H, W), got {got}"
            )
    return out
