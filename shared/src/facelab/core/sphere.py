"""Hypersphere math on batches of row vectors ``(..., D)``; differentiable, any device.

Angles are computed as ``atan2(|a - (a.b) b|, a.b)``-style quantities rather than
``arccos(a.b)``, which loses all precision near 0 and pi (``arccos`` has an infinite slope
there). ``slerp`` is written as a rotation ``cos(t th) a + sin(t th) u`` with ``u`` the unit
direction from ``a`` toward ``b``; this equals the textbook
``sin((1-t) th)/sin th a + sin(t th)/sin th b`` but never divides by ``sin th``.
"""

from __future__ import annotations

import torch

from facelab.core.errors import (
    ShapeError,
    ZeroVectorError,
    expect_finite,
    expect_tensor,
)

_EPS = 1e-12


def _check_vectors(x: torch.Tensor, name: str, check: bool) -> None:
    expect_tensor(x, name, floating=True)
    if x.dim() < 1 or x.shape[-1] < 2:
        raise ShapeError(f"{name}: expected (..., D) with D >= 2, got shape {tuple(x.shape)}")
    if check:
        expect_finite(x, name)


def _safe_norm(x: torch.Tensor) -> torch.Tensor:
    """||x|| along the last dim with a finite gradient at 0."""
    sq = (x * x).sum(-1, keepdim=True)
    return torch.where(sq > 0, sq.clamp_min(torch.finfo(x.dtype).tiny).sqrt(), torch.zeros_like(sq))


def normalize(x: torch.Tensor, eps: float = _EPS, check: bool = True) -> torch.Tensor:
    """Unit-normalize the last dimension.

    With ``check`` (default) a zero (norm <= eps) or non-finite vector raises instead of turning
    into NaN or a silently clamped vector; pass ``check=False`` in hot training loops.
    """
    _check_vectors(x, "normalize input", check)
    n = x.norm(dim=-1, keepdim=True)
    if check and bool((n <= eps).any()):
        bad = int((n <= eps).sum())
        raise ZeroVectorError(
            f"normalize input: expected non-zero vectors, got {bad} with norm <= {eps:g}"
        )
    return x / n.clamp_min(eps)


def angle(a: torch.Tensor, b: torch.Tensor, check: bool = True) -> torch.Tensor:
    """Geodesic angle in [0, pi] between the directions of ``a`` and ``b`` (broadcast rows)."""
    a = normalize(a, check=check)
    b = normalize(b, check=check)
    if a.shape[-1] != b.shape[-1]:
        raise ShapeError(f"angle: vector sizes differ: {a.shape[-1]} vs {b.shape[-1]}")
    # 2 * atan2(|a - b|, |a + b|) is accurate over the whole range [0, pi]
    return 2.0 * torch.atan2(_safe_norm(a - b), _safe_norm(a + b)).squeeze(-1)


def _fallback_orthogonal(a: torch.Tensor) -> torch.Tensor:
    """A deterministic unit vector orthogonal to unit ``a``: Gram-Schmidt of the axis where
    |a| is smallest (that axis is never parallel to a)."""
    j = a.abs().argmin(dim=-1, keepdim=True)
    e = torch.zeros_like(a).scatter(-1, j, 1.0)
    v = e - (a * e).sum(-1, keepdim=True) * a
    return v / _safe_norm(v).clamp_min(_EPS)


def _direction(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit tangent at unit ``a`` toward ``b`` and the angle between them.

    Where ``b`` is (anti)parallel to ``a`` the tangent is undefined; a deterministic orthogonal
    direction is used (at angle 0 it is multiplied by sin(0) = 0 and does not matter).
    """
    c = (a * b).sum(-1, keepdim=True)
    perp = b - c * a
    s = _safe_norm(perp)
    theta = torch.atan2(s, c)
    tiny = 32 * torch.finfo(a.dtype).eps
    u = torch.where(s > tiny, perp / s.clamp_min(tiny), _fallback_orthogonal(a))
    return u, theta


def slerp(
    a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor, check: bool = True
) -> torch.Tensor:
    """Spherical linear interpolation from ``a`` (t = 0) to ``b`` (t = 1) on the unit sphere.

    ``a`` and ``b`` are normalized first; ``t`` is a float or a tensor broadcastable to the
    batch shape ``a.shape[:-1]`` (one t per row). Values of t outside [0, 1] extrapolate along
    the same great circle. At angle pi (antipodal points) the great circle is not unique: a
    deterministic one is chosen.
    """
    a = normalize(a, check=check)
    b = normalize(b, check=check)
    if a.shape[-1] != b.shape[-1]:
        raise ShapeError(f"slerp: vector sizes differ: {a.shape[-1]} vs {b.shape[-1]}")
    a, b = torch.broadcast_tensors(a, b)
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device)
    if t.dim() > 0:
        try:
            t = t.expand(a.shape[:-1]).unsqueeze(-1)
        except RuntimeError:
            raise ShapeError(
                f"slerp: t of shape {tuple(t.shape)} does not broadcast to the batch shape "
                f"{tuple(a.shape[:-1])}"
            ) from None
    u, theta = _direction(a, b)
    phi = t * theta
    return torch.cos(phi) * a + torch.sin(phi) * u


def random_orthogonal(
    e: torch.Tensor, generator: torch.Generator | None = None, check: bool = True
) -> torch.Tensor:
    """A uniformly random unit direction orthogonal to each row of ``e``.

    Gaussian draw, projected onto the tangent space of normalize(e), normalized. Pass a seeded
    ``generator`` (on e's device) for reproducibility.
    """
    e = normalize(e, check=check)
    g = torch.randn(e.shape, generator=generator, dtype=e.dtype, device=e.device)
    v = g - (g * e).sum(-1, keepdim=True) * e
    n = _safe_norm(v)
    # a Gaussian lands (numerically) on e's line with probability ~0; fall back anyway
    return torch.where(n > 1e-6, v / n.clamp_min(1e-6), _fallback_orthogonal(e))


def rotate_toward(
    e: torch.Tensor, u: torch.Tensor, theta: float | torch.Tensor, check: bool = True
) -> torch.Tensor:
    """Rotate unit ``e`` by exactly ``theta`` radians in the plane spanned by ``e`` and ``u``.

    ``u`` need not be orthogonal or unit: its component orthogonal to ``e`` gives the direction
    (a ``u`` parallel to ``e`` raises). ``theta`` is a float or one angle per row.
    """
    e = normalize(e, check=check)
    expect_tensor(u, "u", floating=True)
    if u.shape[-1] != e.shape[-1]:
        raise ShapeError(f"rotate_toward: vector sizes differ: {e.shape[-1]} vs {u.shape[-1]}")
    perp = u - (u * e).sum(-1, keepdim=True) * e
    n = _safe_norm(perp)
    if check and bool((n <= 1e-6 * _safe_norm(u).clamp_min(_EPS)).any()):
        raise ZeroVectorError(
            "rotate_toward: u must have a component orthogonal to e; got u parallel to e (or zero)"
        )
    d = perp / n.clamp_min(_EPS)
    th = torch.as_tensor(theta, dtype=e.dtype, device=e.device)
    if th.dim() > 0:
        th = th.unsqueeze(-1)
    return torch.cos(th) * e + torch.sin(th) * d


def angle_stats(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Mean, std, min and max (degrees) of the row-wise angles between a and b."""
    th = torch.rad2deg(angle(a, b)).flatten().double()
    return {
        "mean_deg": float(th.mean()),
        "std_deg": float(th.std(unbiased=False)) if th.numel() > 1 else 0.0,
        "min_deg": float(th.min()),
        "max_deg": float(th.max()),
    }
