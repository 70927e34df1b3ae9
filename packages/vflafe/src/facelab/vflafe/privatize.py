"""The Gaussian mechanism on shared embeddings: clip each row's L2 norm, add Gaussian noise.

``privatize`` is the only thing that stands between a passive party's bottom model and the
wire: the tensor it returns is all that leaves the party. Rows are all dimensions but the last
(an ``(B, D)`` batch has B rows; a ``(B, T, D)`` batch has B*T rows of size D).

``protect_gradients`` is the same mechanism on the other direction (the gradient the active
party returns to a passive party), the optional label protection.
"""

from __future__ import annotations

import math

import torch

from facelab.core.errors import (
    NonFiniteError,
    RangeError,
    ShapeError,
    expect_tensor,
    extremes,
)

__all__ = ["check_privacy_parameters", "clip_rows", "privatize", "row_norms"]


def check_privacy_parameters(clip_norm: object, noise_multiplier: object) -> tuple[float, float]:
    """``clip_norm`` a finite number > 0 and ``noise_multiplier`` a finite number >= 0."""
    for name, value in (("clip_norm", clip_norm), ("noise_multiplier", noise_multiplier)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RangeError(f"{name}: expected a number, got {type(value).__name__} {value!r}")
    c, s = float(clip_norm), float(noise_multiplier)  # type: ignore[arg-type]
    if not (math.isfinite(c) and c > 0):
        raise RangeError(f"clip_norm: expected a finite number > 0, got {clip_norm!r}")
    if not (math.isfinite(s) and s >= 0):
        raise RangeError(
            f"noise_multiplier: expected a finite number >= 0, got {noise_multiplier!r}"
        )
    return c, s


def _check_rows(x: object, name: str) -> torch.Tensor:
    x = expect_tensor(x, name, floating=True)
    if x.dim() < 1 or x.shape[-1] == 0 or x.numel() == 0:
        raise ShapeError(
            f"{name}: expected a non-empty tensor (..., D) with D > 0, got {tuple(x.shape)}"
        )
    lo, hi = extremes(x.detach())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = int((~torch.isfinite(x.detach())).sum())
        raise NonFiniteError(f"{name}: expected finite values, got {bad} NaN/Inf entries")
    return x


def row_norms(x: torch.Tensor) -> torch.Tensor:
    """L2 norm of every row (all dims but the last), shape ``x.shape[:-1]``."""
    return torch.linalg.vector_norm(x, dim=-1)


def clip_rows(x: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """Each row scaled by ``min(1, clip_norm / ||row||)`` (a zero row stays zero).

    Written as ``clip_norm / max(||row||, clip_norm)`` so the gradient is finite everywhere,
    including at zero rows (a ``where`` over ``clip_norm / ||row||`` would give 0 * inf = NaN).
    """
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x * (clip_norm / torch.clamp(norm, min=clip_norm))


def privatize(
    embeddings: torch.Tensor,
    *,
    clip_norm: float,
    noise_multiplier: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Clip every row to L2 norm ``clip_norm``, then add N(0, (noise_multiplier * clip_norm)^2).

    Differentiable (the clip is; the noise is an additive constant), so a passive party can
    back-propagate the gradient it receives for the released tensor into its bottom model.
    ``generator`` (on the embeddings' device) draws the noise; ``None`` uses torch's global
    generator. For a real deployment the generator must be secret: whoever can replay it can
    subtract the noise. ``noise_multiplier=0`` only clips (no privacy).

    Raises ``RangeError`` for ``clip_norm <= 0`` or a negative / non-finite noise multiplier,
    ``NonFiniteError`` for NaN/Inf embeddings, ``ShapeError`` for an empty tensor.
    """
    c, s = check_privacy_parameters(clip_norm, noise_multiplier)
    x = _check_rows(embeddings, "embeddings")
    clipped = clip_rows(x, c)
    if s == 0.0:
        return clipped
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return clipped + noise * (s * c)
