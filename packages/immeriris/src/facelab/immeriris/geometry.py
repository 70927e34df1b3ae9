"""Projective geometry of an iris seen off-axis, and ellipses as boundaries.

The iris is a planar disk. A pinhole camera at the origin looks along +z; a pixel ``(u, v)``
(pixel centres at half-integers, ``v`` downwards) is the ray ``K^-1 (u, v, 1)``. The plane has
centre ``C``, unit normal ``n`` (pointing out of the eye) and in-plane axes ``e1, e2``. Where the
ray meets the plane, the in-plane coordinates ``(x, y)`` are a homography of the pixel::

    (X, Y, W) = H (u, v, 1),   x = X / W,   y = Y / W,
    H = [[(n.C) e1 - (e1.C) n], [(n.C) e2 - (e2.C) n], [n]] K^-1

A circle ``x^2 + y^2 = r^2`` of the plane is the image conic ``A = H^T diag(1, 1, -r^2) H``: an
ellipse (a circle only when the plane faces the camera). Its centre is not the projection of the
circle's centre, and equal angles on the plane are not equal angles on the ellipse: that is the
perspective distortion a rubber sheet built from image ellipses cannot undo.

Ellipses are ``(cx, cy, a, b, phi)``: centre in pixels, semi-axis ``a`` along direction ``phi``
(radians, from +u towards +v) and ``b`` across it.
"""

from __future__ import annotations

import math

import torch

from facelab.core.errors import ShapeError


def rotation(yaw: torch.Tensor, pitch: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) rotations ``R_y(yaw) R_x(pitch) R_z(roll)`` (radians).

    Yaw turns about the vertical image axis, pitch about the horizontal one, roll (torsion)
    about the optical axis. A positive pitch turns the eye's normal ``(0, 0, -1)`` towards -v
    (the eye looks up in the image)."""
    cy, sy = torch.cos(yaw), torch.sin(yaw)
    cp, sp = torch.cos(pitch), torch.sin(pitch)
    cr, sr = torch.cos(roll), torch.sin(roll)
    one, zero = torch.ones_like(yaw), torch.zeros_like(yaw)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).view(-1, 3, 3)
    rx = torch.stack([one, zero, zero, zero, cp, sp, zero, -sp, cp], -1).view(-1, 3, 3)
    rz = torch.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).view(-1, 3, 3)
    return ry @ rx @ rz


def intrinsics_inverse(focal: float, cx: float, cy: float, dtype=torch.float64) -> torch.Tensor:
    """``K^-1`` of a pinhole camera with square pixels and principal point ``(cx, cy)``."""
    return torch.tensor(
        [[1.0 / focal, 0.0, -cx / focal], [0.0, 1.0 / focal, -cy / focal], [0.0, 0.0, 1.0]],
        dtype=dtype,
    )


def plane_homography(centre: torch.Tensor, rot: torch.Tensor, k_inv: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) pixel -> plane-coordinate homography of planes with centres ``centre`` (N, 3)
    and orientations ``rot`` (N, 3, 3): columns ``e1, e2, n`` with ``n = -rot[:, :, 2]``."""
    e1, e2 = rot[:, :, 0], rot[:, :, 1]
    n = -rot[:, :, 2]
    nc = (n * centre).sum(-1, keepdim=True)
    row1 = nc * e1 - (e1 * centre).sum(-1, keepdim=True) * n
    row2 = nc * e2 - (e2 * centre).sum(-1, keepdim=True) * n
    h = torch.stack([row1, row2, n], dim=1)
    return h @ k_inv.to(h.dtype)


def circle_conic(h: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Image conics (N, 3, 3) of plane circles ``x^2 + y^2 = radius^2`` under ``h``."""
    d = torch.zeros(h.shape[0], 3, 3, dtype=h.dtype, device=h.device)
    d[:, 0, 0] = 1.0
    d[:, 1, 1] = 1.0
    d[:, 2, 2] = -(radius.to(h.dtype) ** 2)
    return h.transpose(1, 2) @ d @ h


def conic_to_ellipse(conic: torch.Tensor) -> torch.Tensor:
    """(N, 5) ellipses ``(cx, cy, a, b, phi)`` of real-ellipse conics (N, 3, 3)."""
    q = conic[:, :2, :2]
    lin = conic[:, :2, 2]
    centre = torch.linalg.solve(q, -lin.unsqueeze(-1)).squeeze(-1)
    f = conic[:, 2, 2] + (lin * centre).sum(-1)
    evals, evecs = torch.linalg.eigh(q)  # ascending: the first is the long axis for f < 0
    axes = torch.sqrt((-f.unsqueeze(-1) / evals).clamp_min(0.0))
    phi = torch.atan2(evecs[:, 1, 0], evecs[:, 0, 0])
    return torch.stack([centre[:, 0], centre[:, 1], axes[:, 0], axes[:, 1], phi], dim=-1)


def check_ellipses(e: torch.Tensor, name: str, n: int | None = None) -> None:
    if e.dim() != 2 or e.shape[-1] != 5 or (n is not None and e.shape[0] != n):
        want = f"({n}, 5)" if n is not None else "(N, 5)"
        raise ShapeError(
            f"{name}: expected ellipses {want} (cx, cy, a, b, phi), got shape {tuple(e.shape)}"
        )


def ellipse_radius(e: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Distance from each ellipse's centre to its boundary in direction ``theta``.

    ``e`` (N, 5), ``theta`` broadcastable to (N, ...): returns (N, ...)."""
    extra = theta.dim() - 1 if theta.dim() > 0 else 0
    shape = (-1,) + (1,) * max(extra, 0)
    a, b, phi = (e[:, i].reshape(shape) for i in (2, 3, 4))
    c, s = torch.cos(theta - phi), torch.sin(theta - phi)
    return torch.rsqrt((c / a) ** 2 + (s / b) ** 2)


def ellipse_points(e: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Boundary points ``(u, v)`` of each ellipse in directions ``theta`` (K,) from its centre:
    two (N, K) tensors."""
    r = ellipse_radius(e, theta.unsqueeze(0))
    return e[:, :1] + r * torch.cos(theta), e[:, 1:2] + r * torch.sin(theta)


def ellipse_bbox(e: torch.Tensor) -> torch.Tensor:
    """Axis-aligned boxes (N, 4) ``(u0, v0, u1, v1)`` around ellipses (N, 5)."""
    a, b, phi = e[:, 2], e[:, 3], e[:, 4]
    c, s = torch.cos(phi), torch.sin(phi)
    hw = torch.sqrt((a * c) ** 2 + (b * s) ** 2)
    hh = torch.sqrt((a * s) ** 2 + (b * c) ** 2)
    return torch.stack([e[:, 0] - hw, e[:, 1] - hh, e[:, 0] + hw, e[:, 1] + hh], dim=-1)


def ellipse_inside(e: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The ellipse's implicit value at pixels: < 1 inside. ``u`` (W,), ``v`` (H,) -> (N, H, W)."""
    cx, cy, a, b, phi = (e[:, i].view(-1, 1, 1) for i in range(5))
    du = u.view(1, 1, -1) - cx
    dv = v.view(1, -1, 1) - cy
    c, s = torch.cos(phi), torch.sin(phi)
    x = du * c + dv * s
    y = -du * s + dv * c
    return (x / a) ** 2 + (y / b) ** 2


def ellipse_area(e: torch.Tensor) -> torch.Tensor:
    return math.pi * e[:, 2] * e[:, 3]
