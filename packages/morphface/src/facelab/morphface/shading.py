"""Lambertian shading under spherical-harmonics lighting: 9 coefficients per colour (27).

Layout and constants follow DECA (and the Deep3DFaceRecon family), so the 27 light parameters
those fitters write can be used as they are. For a unit normal n = (x, y, z) (model-view space:
x image right, y up, z towards the camera)::

    basis(n)  = [1, x, y, z, xy, xz, yz, x^2 - y^2, 3 z^2 - 1]
    shading_c = sum_k light[k, c] * CONST[k] * basis_k(n)        (c = R, G, B)

``CONST[k]`` is the Lambertian kernel's band factor (A_0 = pi, A_1 = 2 pi / 3, A_2 = pi / 4,
Ramamoorthi & Hanrahan 2001) times the real SH normalization of that basis function, except
band 0, where DECA leaves A_0 = pi out. So for a distant environment with radiance
``L(w) = sum_k L_k Y_k(w)`` (Y_k the orthonormal real SH in the basis order above), the
irradiance ``E(n) = int L(w) max(0, n.w) dw`` is exactly ``shading`` with ``light = [pi L_0,
L_1, ..., L_8]`` (:func:`light_from_radiance`); the tests check this against a quadrature of the
integral.
"""

from __future__ import annotations

import math

import torch

from facelab.core.errors import ShapeError

_PI = math.pi
#: DECA's per-basis constants (see the module docstring)
SH_CONST = (
    1.0 / math.sqrt(4 * _PI),
    (2 * _PI / 3) * math.sqrt(3 / (4 * _PI)),
    (2 * _PI / 3) * math.sqrt(3 / (4 * _PI)),
    (2 * _PI / 3) * math.sqrt(3 / (4 * _PI)),
    (_PI / 4) * 3 * math.sqrt(5 / (12 * _PI)),
    (_PI / 4) * 3 * math.sqrt(5 / (12 * _PI)),
    (_PI / 4) * 3 * math.sqrt(5 / (12 * _PI)),
    (_PI / 4) * (3 / 2) * math.sqrt(5 / (12 * _PI)),
    (_PI / 4) * (1 / 2) * math.sqrt(5 / (4 * _PI)),
)
#: orthonormal real SH normalizations of the same basis functions (Y_k = NORM[k] * basis_k)
SH_NORM = (
    1.0 / math.sqrt(4 * _PI),
    math.sqrt(3 / (4 * _PI)),
    math.sqrt(3 / (4 * _PI)),
    math.sqrt(3 / (4 * _PI)),
    math.sqrt(15 / (4 * _PI)),
    math.sqrt(15 / (4 * _PI)),
    math.sqrt(15 / (4 * _PI)),
    0.5 * math.sqrt(15 / (4 * _PI)),
    0.25 * math.sqrt(5 / _PI),
)
NUM_LIGHT = 27


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """(..., 3) unit normals -> (..., 9) ``[1, x, y, z, xy, xz, yz, x^2 - y^2, 3z^2 - 1]``."""
    x, y, z = normals.unbind(-1)
    return torch.stack(
        [torch.ones_like(x), x, y, z, x * y, x * z, y * z, x * x - y * y, 3 * z * z - 1], -1
    )


def _light(light: torch.Tensor) -> torch.Tensor:
    if light.dim() == 2 and light.shape[-1] == NUM_LIGHT:
        light = light.view(-1, 9, 3)
    if light.dim() != 3 or light.shape[1:] != (9, 3):
        raise ShapeError(f"light: expected (B, 27) or (B, 9, 3), got {tuple(light.shape)}")
    return light


def shade(normals: torch.Tensor, light: torch.Tensor) -> torch.Tensor:
    """Lambertian SH shading: normals (B, ..., 3) and light (B, 27) or (B, 9, 3) (coefficient
    k of colour c at ``[k, c]``; a flat (B, 27) vector is read as (B, 9, 3)) -> (B, ..., 3)."""
    light = _light(light)
    const = torch.tensor(SH_CONST, dtype=normals.dtype, device=normals.device)
    basis = sh_basis(normals) * const  # (B, ..., 9)
    b = normals.shape[0]
    flat = basis.reshape(b, -1, 9)
    return (flat @ light.to(normals.dtype)).reshape(*normals.shape[:-1], 3)


def light_from_radiance(radiance: torch.Tensor) -> torch.Tensor:
    """SH coefficients of a distant radiance (B, 9, 3) (orthonormal basis, the order of
    :func:`sh_basis`) -> the light parameters whose :func:`shade` is its irradiance."""
    radiance = _light(radiance)
    scale = torch.ones(9, dtype=radiance.dtype, device=radiance.device)
    scale[0] = _PI
    return radiance * scale.view(1, 9, 1)


def directional_light(
    direction: torch.Tensor, intensity: torch.Tensor, ambient: torch.Tensor
) -> torch.Tensor:
    """Light parameters (B, 9, 3) approximating ``ambient + intensity * max(0, n . l)`` to
    second order (the clamped cosine's band-0..2 projection; ``l`` unit (B, 3) in model-view
    space, ``intensity`` and ``ambient`` (B,) or (B, 3) per colour)."""
    ld = torch.nn.functional.normalize(direction, dim=-1)
    b = ld.shape[0]
    inten = intensity.view(b, -1).expand(b, 3)
    amb = ambient.view(b, -1).expand(b, 3)
    norm = torch.tensor(SH_NORM, dtype=ld.dtype, device=ld.device)
    y_l = sh_basis(ld) * norm  # (B, 9): Y_k(l)
    # max(0, n.l) = sum_k A_k Y_k(l) Y_k(n); shade() multiplies by CONST = A_k NORM_k (band 0: NORM)
    coef = y_l.clone()
    coef[:, 0] = y_l[:, 0] * _PI  # band 0: A_0 = pi is not in CONST[0]
    coef = coef.unsqueeze(-1) * inten.unsqueeze(1)  # (B, 9, 3)
    coef[:, 0] += amb / SH_CONST[0]
    return coef


__all__ = [
    "NUM_LIGHT",
    "SH_CONST",
    "SH_NORM",
    "directional_light",
    "light_from_radiance",
    "sh_basis",
    "shade",
]
