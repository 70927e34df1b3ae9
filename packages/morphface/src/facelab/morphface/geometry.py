"""Rotations and the camera: 3DMM model space -> screen space.

Model space (FLAME / BFM / our procedural 3DMM): x to the subject's left as seen by the camera
(image right), y up, z towards the camera. A pose is three Euler angles in radians,
``(yaw, pitch, roll)``, applied as ``R = R_z(roll) R_x(pitch) R_y(yaw)``:

* yaw > 0 turns the face towards image right (the nose moves right),
* pitch > 0 tilts the face up (the nose moves up),
* roll > 0 turns the face counter-clockwise on the screen.

Camera ``(s, tx, ty)`` (DECA's weak perspective): normalized device coordinates
``ndc = s * ((R v)_xy + (tx, ty))`` with ndc in [-1, 1] across the image, y up. With a
``perspective_distance`` d the same camera becomes a pinhole at distance d on the z axis whose
focal length keeps the scale at the origin: ``ndc = s * d * ((R v)_xy + t) / (d - (R v)_z)``
(d -> infinity gives the weak-perspective camera back). Depth for the z-buffer is the distance
from the camera plane, ``d - (R v)_z`` (weak perspective: ``-(R v)_z``); smaller is nearer.

Screen space is pixels: x right, y down, pixel (i, j) covers [j, j+1) x [i, i+1) with its centre
at (j + 0.5, i + 0.5).
"""

from __future__ import annotations

import torch

from facelab.core.errors import NonFiniteError, RangeError, ShapeError


def euler_to_matrix(pose: torch.Tensor) -> torch.Tensor:
    """(..., 3) ``(yaw, pitch, roll)`` radians -> (..., 3, 3) rotation ``R_z R_x R_y``."""
    if pose.shape[-1] != 3:
        raise ShapeError(f"pose: expected (..., 3) (yaw, pitch, roll), got {tuple(pose.shape)}")
    yaw, pitch, roll = pose.unbind(-1)
    cy, sy = torch.cos(yaw), torch.sin(yaw)
    cp, sp = torch.cos(pitch), torch.sin(pitch)
    cr, sr = torch.cos(roll), torch.sin(roll)
    zero, one = torch.zeros_like(yaw), torch.ones_like(yaw)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1)
    rx = torch.stack([one, zero, zero, zero, cp, sp, zero, -sp, cp], -1)
    rz = torch.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1)
    shape = (*pose.shape[:-1], 3, 3)
    return rz.view(shape) @ rx.view(shape) @ ry.view(shape)


def matrix_to_euler(r: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation -> (..., 3) ``(yaw, pitch, roll)`` with pitch in [-pi/2, pi/2]
    (the inverse of :func:`euler_to_matrix` away from pitch = +-pi/2)."""
    if r.shape[-2:] != (3, 3):
        raise ShapeError(f"rotation: expected (..., 3, 3), got {tuple(r.shape)}")
    pitch = torch.asin((-r[..., 2, 1]).clamp(-1.0, 1.0))
    yaw = torch.atan2(-r[..., 2, 0], r[..., 2, 2])
    roll = torch.atan2(-r[..., 0, 1], r[..., 1, 1])
    return torch.stack([yaw, pitch, roll], -1)


def axis_angle_to_matrix(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis-angle (the rotation vector of FLAME / DECA poses) -> (..., 3, 3)."""
    if v.shape[-1] != 3:
        raise ShapeError(f"axis-angle: expected (..., 3), got {tuple(v.shape)}")
    theta = v.norm(dim=-1, keepdim=True)
    # sin(t)/t and (1 - cos t)/t^2 by their series near 0 (no division by zero)
    small = theta < 1e-4
    t2 = theta.square()
    safe = torch.where(small, torch.ones_like(theta), theta)
    a = torch.where(small, 1 - t2 / 6, torch.sin(safe) / safe)
    b = torch.where(small, 0.5 - t2 / 24, (1 - torch.cos(safe)) / safe.square())
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).view(*v.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand(k.shape)
    return eye + a[..., None] * k + b[..., None] * (k @ k)


def check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteError(f"{name}: expected finite values, got NaN/Inf")
    return x


def project(
    vertices: torch.Tensor,
    pose: torch.Tensor,
    camera: torch.Tensor,
    image_size: tuple[int, int],
    perspective_distance: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Model-space vertices (B, V, 3) -> (screen (B, V, 3) = pixel x, pixel y, depth;
    rotated model-space vertices (B, V, 3)). ``pose`` (B, 3) radians, ``camera`` (B, 3)
    ``(s, tx, ty)``; see the module docstring."""
    if vertices.dim() != 3 or vertices.shape[-1] != 3:
        raise ShapeError(f"vertices: expected (B, V, 3), got {tuple(vertices.shape)}")
    b = vertices.shape[0]
    for name, t in (("pose", pose), ("camera", camera)):
        if t.shape != (b, 3):
            raise ShapeError(f"{name}: expected ({b}, 3), got {tuple(t.shape)}")
    h, w = image_size
    rot = euler_to_matrix(pose.to(vertices.dtype))
    v = vertices @ rot.transpose(1, 2)
    s = camera[:, 0:1].to(v.dtype)
    t = camera[:, None, 1:3].to(v.dtype)
    xy = v[..., :2] + t
    if perspective_distance is None:
        ndc = s[:, None] * xy
        depth = -v[..., 2]
    else:
        d = float(perspective_distance)
        if not d > 0:
            raise RangeError(f"perspective_distance: expected a positive number, got {d}")
        depth = d - v[..., 2]
        ndc = s[:, None] * d * xy / depth[..., None]
    px = (ndc[..., 0] + 1.0) * (0.5 * w)
    py = (1.0 - ndc[..., 1]) * (0.5 * h)
    return torch.stack([px, py, depth], -1), v


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals (B, V, 3) of a mesh with counter-clockwise faces
    (seen from outside), vectorized with ``index_add``."""
    tri = vertices[:, faces]  # (B, F, 3, 3)
    fn = torch.linalg.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1)
    normals = torch.zeros_like(vertices)
    for k in range(3):
        normals.index_add_(1, faces[:, k], fn)
    return torch.nn.functional.normalize(normals, dim=-1, eps=1e-12)


__all__ = [
    "axis_angle_to_matrix",
    "check_finite",
    "euler_to_matrix",
    "matrix_to_euler",
    "project",
    "vertex_normals",
]
