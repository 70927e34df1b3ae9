"""The conditioning hook: a trainable transform of the ID embeddings before the denoiser.

A :class:`ContextTransform` is an ``nn.Module`` with its own parameters. The training step of the
base (and of every recipe built on it) calls ``transform(context, timesteps)`` on the batch's unit
ID vectors before the denoiser and adds ``output.loss`` (if any) to the denoising loss; its
parameters train with the denoiser and are saved in checkpoints. SteerFace plugs in here; UIFace's
recipe accepts any transform without importing the package that defines it.

At sampling the transform is not applied unless ``apply_at_sampling`` is True.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
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
