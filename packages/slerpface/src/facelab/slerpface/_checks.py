"""Input checks shared by the protection, matching and baseline modules.

Every public function in this package accepts group templates in one canonical layout,
``(B, m, d)``: B templates, m groups (the 7 x 7 = 49 spatial positions of the extractor), d dims
per group (16). A flat ``(B, m * d)`` tensor is accepted where the group size is known. Attention
weights are ``(B, m)``, non-negative, and sum to 1 per template (a softmax output).
"""

from __future__ import annotations

import math

import torch

from facelab.core.errors import (
    RangeError,
    ShapeError,
    ZeroVectorError,
    expect_finite,
    expect_nonempty,
    expect_tensor,
    extremes,
)

# softmax weights computed in float32 sum to 1 within ~1e-6; anything further off is not a
# probability vector (e.g. raw logits or a forgotten softmax) and would silently rescale scores
WEIGHT_SUM_TOL = 1e-3


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64; every other float type is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def as_groups(x: object, group_size: int, name: str, *, finite: bool = True) -> torch.Tensor:
    """``(B, m, d)`` or flat ``(B, m * d)`` -> ``(B, m, d)`` (a view), checked finite (callers
    that compute group norms anyway pass ``finite=False`` and use ``check_group_norms``)."""
    x = expect_tensor(x, name, floating=True)
    if x.dim() == 2:
        if x.shape[1] % group_size != 0:
            raise ShapeError(
                f"{name}: a flat template needs a length divisible by group_size={group_size}, "
                f"got shape {tuple(x.shape)}"
            )
        x = x.reshape(x.shape[0], -1, group_size)
    elif x.dim() != 3:
        raise ShapeError(
            f"{name}: expected (B, m, d) group templates or flat (B, m*d), got shape "
            f"{tuple(x.shape)}"
        )
    if x.shape[-1] != group_size:
        raise ShapeError(
            f"{name}: expected group size d={group_size} in the last dim, got shape "
            f"{tuple(x.shape)}"
        )
    expect_nonempty(x, name)
    if finite:
        finite_fast(x, name)
    return x


def check_group_norms(norms: torch.Tensor, x: torch.Tensor, name: str) -> None:
    """Validate ``x`` through its group norms: a NaN/Inf entry makes its group's norm non-finite
    and a zero group has norm 0, so one check on the small norm tensor covers both."""
    lo, hi = extremes(norms)  # one pass, one sync
    if lo > 1e-12 and math.isfinite(hi):  # a NaN propagates to both ends and fails lo > 1e-12
        return
    expect_finite(x, name)
    check_nonzero_groups(x, name)
    raise RangeError(f"{name}: group norms overflow {x.dtype}; scale the templates down")


def finite_fast(x: torch.Tensor, name: str) -> None:
    """``expect_finite`` with a one-reduction fast path: a finite sum means no NaN/Inf (a
    non-finite sum can also come from overflow of huge finite values; the full check decides)."""
    if not bool(torch.isfinite(x.sum())):
        expect_finite(x, name)


def check_nonzero_groups(x: torch.Tensor, name: str) -> None:
    """Every group must have a direction: a zero group cannot be normalized."""
    # the smallest |x_i|^2 over all groups in one reduction; locate only on failure
    if float(torch.einsum("...d,...d->...", x, x).min()) > 1e-24:
        return
    bad = x.norm(dim=-1) <= 1e-12
    if bool(bad.any()):
        idx = bad.nonzero()[0].tolist()
        raise ZeroVectorError(
            f"{name}: expected non-zero groups, got {int(bad.sum())} zero group(s) "
            f"(first at template {idx[0]}, group {idx[1]})"
        )


def check_weights(w: object, batch: int, groups: int, name: str = "weights") -> torch.Tensor:
    """Attention weights ``(B, m)``: finite, >= 0, rows summing to 1."""
    w = expect_tensor(w, name, floating=True)
    if w.dim() != 2 or tuple(w.shape) != (batch, groups):
        raise ShapeError(
            f"{name}: expected shape ({batch}, {groups}) (one weight per group), got "
            f"{tuple(w.shape)}"
        )
    finite_fast(w, name)
    if bool((w < 0).any()):
        raise RangeError(f"{name}: expected non-negative weights, got min {float(w.min()):.4g}")
    s = w.double().sum(-1)
    off = (s - 1).abs()
    if bool((off > WEIGHT_SUM_TOL).any()):
        i = int(off.argmax())
        raise RangeError(
            f"{name}: expected weights summing to 1 per template (a softmax over the groups), "
            f"template {i} sums to {float(s[i]):.6g}"
        )
    return w


def check_same_shape(a: torch.Tensor, b: torch.Tensor, what_a: str, what_b: str) -> None:
    if a.shape != b.shape:
        raise ShapeError(
            f"{what_a} and {what_b} must have the same shape (B, m, d): got {tuple(a.shape)} "
            f"and {tuple(b.shape)}"
        )


def check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not (0.0 < alpha <= 1.0):
        raise RangeError(f"alpha: expected a value in (0, 1], got {alpha}")
    return alpha
