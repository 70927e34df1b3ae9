"""The facelab error hierarchy and small input checks shared by every package.

Every error is a ``ValueError`` (or ``TypeError``) subclass so callers that already catch the
builtin types keep working, while tests and applications can catch the precise facelab type.
Messages always say what was expected and what came.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class FacelabError(ValueError):
    """Base class for bad input detected by facelab."""


class ShapeError(FacelabError):
    """A tensor has the wrong rank, size or channel count."""


class RangeError(FacelabError):
    """Values lie outside the declared range (e.g. images outside [-1, 1])."""


class NonFiniteError(FacelabError):
    """A tensor contains NaN or Inf."""


class ZeroVectorError(FacelabError):
    """A vector that must be normalized has (near) zero norm."""


class FormatError(FacelabError):
    """A file or serialized payload is corrupted, truncated or of the wrong format/version."""


class KeyMismatchError(FacelabError):
    """A key, template, plan or challenge does not belong to the data it is used with."""


class UnknownNameError(FacelabError, KeyError):
    """A name (backbone, channel set, preset ...) is not registered."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class FacelabTypeError(TypeError):
    """An argument has the wrong Python or tensor dtype."""


def describe(x: object) -> str:
    """A short description of a value for error messages."""
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    shape = getattr(x, "shape", None)
    if shape is not None:
        return f"{type(x).__name__} of shape {tuple(shape)}"
    return type(x).__name__


def expect_tensor(x: object, name: str, *, floating: bool = False) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise FacelabTypeError(f"{name}: expected a torch.Tensor, got {describe(x)}")
    if floating and not x.is_floating_point():
        raise FacelabTypeError(f"{name}: expected a floating point tensor, got dtype {x.dtype}")
    return x


def expect_rank(x: torch.Tensor, rank: int | Sequence[int], name: str, layout: str = "") -> None:
    ranks = (rank,) if isinstance(rank, int) else tuple(rank)
    if x.dim() not in ranks:
        want = " or ".join(str(r) for r in ranks)
        hint = f" ({layout})" if layout else ""
        raise ShapeError(
            f"{name}: expected a {want}-dimensional tensor{hint}, got shape {tuple(x.shape)}"
        )


def expect_size(x: torch.Tensor, dim: int, size: int, name: str, what: str = "size") -> None:
    if x.shape[dim] != size:
        raise ShapeError(f"{name}: expected {what} {size} at dim {dim}, got shape {tuple(x.shape)}")


def extremes(x: torch.Tensor) -> tuple[float, float]:
    """``(min, max)`` of a non-empty tensor as Python numbers, in one pass and one device sync;
    a NaN anywhere makes both NaN, +-Inf shows as an end."""
    lo, hi = torch.aminmax(x)
    return tuple(torch.stack((lo, hi)).tolist())  # type: ignore[return-value]


def _raise_nonfinite(x: torch.Tensor, name: str) -> None:
    bad = int((~torch.isfinite(x)).sum())  # counted only on the error path
    raise NonFiniteError(f"{name}: expected finite values, got {bad} NaN/Inf entries")


def _check_extremes(xmin: float, xmax: float, lo: float, hi: float, name: str, tol: float) -> None:
    if not (xmin >= lo - tol and xmax <= hi + tol):
        raise RangeError(
            f"{name}: expected values in [{lo}, {hi}], got min {xmin:.4g} and max {xmax:.4g}"
        )


def expect_finite(x: torch.Tensor, name: str) -> None:
    """Check that a float tensor has no NaN or Inf.

    Uses ``aminmax`` (one read, one sync) rather than ``isfinite(x).all()``: min and max are
    both finite exactly when every entry is, and ``isfinite`` materializes a bool tensor the
    size of ``x`` (on CPU ~25x slower for a batch of images)."""
    if not x.is_floating_point() or x.numel() == 0:
        return
    xmin, xmax = extremes(x)
    if not (math.isfinite(xmin) and math.isfinite(xmax)):
        _raise_nonfinite(x, name)


def expect_range(x: torch.Tensor, lo: float, hi: float, name: str, tol: float = 1e-4) -> None:
    """Check lo - tol <= x <= hi + tol (tol absorbs float round-off of resizing/normalizing).
    NaN fails the check (it compares false with both bounds)."""
    if x.numel() == 0:
        return
    xmin, xmax = extremes(x)
    _check_extremes(xmin, xmax, lo, hi, name, tol)


def expect_finite_in_range(
    x: torch.Tensor, lo: float, hi: float, name: str, tol: float = 1e-4
) -> None:
    """``expect_finite`` then ``expect_range`` with one pass over ``x`` and one sync."""
    if x.numel() == 0:
        return
    xmin, xmax = extremes(x)
    if x.is_floating_point() and not (math.isfinite(xmin) and math.isfinite(xmax)):
        _raise_nonfinite(x, name)
    _check_extremes(xmin, xmax, lo, hi, name, tol)


def expect_nonempty(x: torch.Tensor, name: str) -> None:
    if x.numel() == 0:
        raise ShapeError(f"{name}: expected a non-empty tensor, got shape {tuple(x.shape)}")
