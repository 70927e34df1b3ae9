"""``steer``: rotate unit ID embeddings by an angle toward uniformly random orthogonal directions.

For a unit row ``e`` and an angle ``theta`` in [0, pi]::

    u  = (r - (r.e) e) / |r - (r.e) e|,   r ~ N(0, I_D)         (uniform on the unit sphere of
    e' = cos(theta) e + sin(theta) u                              the complement of e)

so ``|e'| = 1`` and ``cos(e, e') = cos(theta)`` exactly. This is ``facelab.core.sphere``'s
``random_orthogonal`` followed by ``rotate_toward``, fused so that the whole step costs one
Gaussian draw, two row reductions and one fused multiply-add pass over (N, D)::

    e' = a e + b r,   a = (cos(theta) - sin(theta) (r.e) / n) / |e|,   b = sin(theta) / n,
    n  = |r - (r.e) e| = sqrt(|r|^2 - (r.e)^2)

(``e`` is divided by its own norm inside ``a``, so vectors that are unit only to the tolerance
still give unit outputs; rows with theta = 0 come back unchanged, bit for bit). ``u`` is never formed.

Numerics: ``n^2 = |r|^2 - (r.e)^2`` cancels when ``r`` is nearly parallel to ``e``. Rows whose
draw makes an angle with e's line below ``asin(1/4)`` (``n^2 < |r|^2 / 16``) are redrawn; the
rejection region is a double cone around e, invariant under every rotation that fixes e, so the
redrawn ``u`` is still exactly uniform on the complement's sphere. In D = 512 a redraw practically
never happens; in D = 2 it happens for 16 % of the rows (those rows cost one more small draw).
"""

from __future__ import annotations

import math

import torch

from facelab.core import sphere
from facelab.core.errors import (
    FacelabTypeError,
    NonFiniteError,
    RangeError,
    ShapeError,
    ZeroVectorError,
    expect_tensor,
)

#: rows whose Gaussian draw has sin^2(angle to e's line) below this are redrawn
REDRAW_SIN2 = 1.0 / 16.0
_MAX_REDRAWS = 64
#: angles up to pi + PI_TOL pass the check (pi rounded to float32 or bfloat16 is above math.pi)
PI_TOL = 2e-3


def default_unit_tol(dtype: torch.dtype) -> float:
    """How far from 1 an embedding's norm may be: 1e-3 (as ``check_contexts``), or 4 machine
    epsilons of a coarser dtype (float16: 3.9e-3, bfloat16: 3.1e-2)."""
    return max(1e-3, 4.0 * torch.finfo(dtype).eps)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _theta_tensor(theta: float | torch.Tensor, n: int, dtype, device) -> torch.Tensor:
    """theta as a (N, 1) tensor of the compute dtype (a scalar broadcasts); checks the shape."""
    if isinstance(theta, bool) or not isinstance(theta, (int, float, torch.Tensor)):
        raise FacelabTypeError(
            f"theta: expected a float or a tensor of angles, got {type(theta).__name__}"
        )
    if not isinstance(theta, torch.Tensor):
        th = float(theta)
        if not math.isfinite(th) or not 0.0 <= th <= math.pi + PI_TOL:
            raise RangeError(f"theta: expected an angle in [0, pi] radians, got {th!r}")
        return torch.full((n, 1), th, dtype=dtype, device=device)
    if not theta.is_floating_point():
        raise FacelabTypeError(f"theta: expected a floating point tensor, got dtype {theta.dtype}")
    if theta.dim() == 0:
        return theta.to(device=device, dtype=dtype).expand(n).unsqueeze(1)
    if theta.shape != (n,):
        raise ShapeError(f"theta: expected a scalar or shape ({n},), got {tuple(theta.shape)}")
    if theta.device != device:
        raise FacelabTypeError(
            f"theta: expected a tensor on the embeddings' device {device}, got {theta.device}"
        )
    return theta.to(dtype).unsqueeze(1)


def _draw(shape, generator, dtype, device) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=dtype, device=device)


def steer(
    embeddings: torch.Tensor,
    theta: float | torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    check: bool = True,
    tol: float | None = None,
) -> torch.Tensor:
    """Rotate each unit row of ``embeddings`` (N, D), D >= 2, by ``theta`` radians toward a
    uniformly random direction orthogonal to it.

    Args:
        embeddings: unit vectors (norm 1 within ``tol``), float16 / bfloat16 / float32 /
            float64; computed in float32 (float64 for float64 input), returned in the input's
            dtype.
        theta: one angle per row (N,) or a scalar, in [0, pi]; differentiable (gradients flow
            to a tensor theta, and to the embeddings).
        generator: a ``torch.Generator`` on the embeddings' device for reproducible draws.
        check: validate shapes, norms and angles (one device sync). ``False`` skips the value
            checks (not the shapes), for callers that checked already.
        tol: allowed deviation of the norms from 1 (default :func:`default_unit_tol`).

    Returns the steered unit vectors e' with ``cos(e, e') = cos(theta)``; exactly ``e`` where
    theta = 0.
    """
    e = expect_tensor(embeddings, "embeddings", floating=True)
    if e.dim() != 2 or e.shape[1] < 2:
        raise ShapeError(f"embeddings: expected (N, D) with D >= 2, got {tuple(e.shape)}")
    if generator is not None and generator.device != e.device:
        raise FacelabTypeError(
            f"generator: expected a torch.Generator on {e.device}, got one on {generator.device}"
        )
    n_rows = e.shape[0]
    cdt = _compute_dtype(e.dtype)
    x = e if e.dtype == cdt else e.to(cdt)
    th = _theta_tensor(theta, n_rows, cdt, e.device)
    if n_rows == 0:
        return e.clone()
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    if check:
        _check_values(norm, th, e.dtype if tol is None else None, tol, theta)
    r = _draw(x.shape, generator, cdt, e.device)
    re = torch.einsum("nd,nd->n", r, x).unsqueeze(1) / norm  # r . e_hat
    rr = torch.einsum("nd,nd->n", r, r).unsqueeze(1)
    perp2 = rr - re * re  # |r - (r.e_hat) e_hat|^2
    bad = perp2 < REDRAW_SIN2 * rr
    if bool(bad.any()):
        r, re, perp2 = _redraw(x, norm, r, re, rr, perp2, bad, generator)
    inv_n = perp2.rsqrt()
    c, s = torch.cos(th), torch.sin(th)
    b = s * inv_n
    # rows with theta = 0 are returned as they are (a = 1, b = 0 exactly), not re-normalized
    scale = torch.where(th == 0, torch.ones_like(norm), norm.reciprocal())
    a = (c - b * re) * scale
    out = torch.addcmul(x * a, r, b)
    return out if out.dtype == e.dtype else out.to(e.dtype)


def _check_values(norm, th, dtype, tol, theta_in) -> None:
    """Norms within tol of 1 (NaN/Inf and zeros named), theta finite in [0, pi]: one sync."""
    tol = default_unit_tol(dtype) if tol is None else float(tol)
    nlo, nhi = torch.aminmax(norm)
    if isinstance(theta_in, torch.Tensor):
        tlo, thi = torch.aminmax(th)
        nlo, nhi, tlo, thi = torch.stack([nlo, nhi, tlo, thi]).tolist()
    else:
        nlo, nhi = torch.stack([nlo, nhi]).tolist()
        tlo = thi = 0.0
    if not (math.isfinite(nlo) and math.isfinite(nhi)):
        raise NonFiniteError("embeddings: expected finite unit vectors, got NaN/Inf entries")
    if nlo <= 1e-6:
        raise ZeroVectorError("embeddings: expected unit vectors, got a zero vector")
    if abs(nlo - 1.0) > tol or abs(nhi - 1.0) > tol:
        raise RangeError(
            f"embeddings: expected unit (L2-normalized) vectors (norm 1 +- {tol:.2g}), got norms "
            f"in [{nlo:.6g}, {nhi:.6g}]"
        )
    if not (math.isfinite(tlo) and math.isfinite(thi)):
        raise NonFiniteError("theta: expected finite angles, got NaN/Inf")
    # float32(pi) lies 8.7e-8 above math.pi: allow the rounding of pi itself
    if tlo < 0.0 or thi > math.pi + PI_TOL:
        raise RangeError(
            f"theta: expected angles in [0, pi] radians, got values in [{tlo:.6g}, {thi:.6g}]"
        )


def _redraw(x, norm, r, re, rr, perp2, bad, generator):
    """Redraw the rows of r too close to e's line (exactly uniform u: see the module doc)."""
    r, re, rr, perp2 = r.clone(), re.clone(), rr.clone(), perp2.clone()
    idx = bad.squeeze(1).nonzero().squeeze(1)
    for _ in range(_MAX_REDRAWS):
        xi = x[idx]
        ri = _draw(xi.shape, generator, r.dtype, r.device)
        rei = torch.einsum("nd,nd->n", ri, xi).unsqueeze(1) / norm[idx]
        rri = torch.einsum("nd,nd->n", ri, ri).unsqueeze(1)
        p2 = rri - rei * rei
        r[idx], re[idx], rr[idx], perp2[idx] = ri, rei, rri, p2
        still = (p2 < REDRAW_SIN2 * rri).squeeze(1)
        if not bool(still.any()):
            return r, re, perp2
        idx = idx[still]
    # unreachable in practice (probability < 0.16^64 per row); keep the result well defined
    u = sphere.random_orthogonal(x[idx], generator=generator, check=False)
    r[idx] = u
    re[idx] = 0.0
    perp2[idx] = 1.0
    return r, re, perp2


def steer_reference(
    embeddings: torch.Tensor, theta: float | torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The same draw composed from ``facelab.core.sphere`` (``random_orthogonal`` then
    ``rotate_toward``): the readable definition, used by the tests and the speed row."""
    u = sphere.random_orthogonal(embeddings, generator=generator)
    return sphere.rotate_toward(embeddings, u, theta)


__all__ = ["REDRAW_SIN2", "default_unit_tol", "steer", "steer_reference"]
