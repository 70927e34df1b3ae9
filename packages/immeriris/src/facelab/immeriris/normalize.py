"""Daugman's rubber sheet from two boundary ellipses, vectorized (open-iris
``LinearNormalization``).

For ``A`` angles ``theta_k = 2 pi k / A`` and ``R`` radii ``rho_j = j / (R - 1)``, the strip pixel
``(j, k)`` samples the image at ``(1 - rho_j) P(theta_k) + rho_j I(theta_k)``, where ``P`` and
``I`` are the points of the pupil and iris ellipses in direction ``theta_k`` from each ellipse's
own centre. open-iris defaults: ``R = 128`` radial samples; ``A = 512`` angles (its contours
are sampled every 0.703125 degrees). Rows run from the pupil (row 0) to the limbus, columns with
the angle; a rotation of the eye is a circular shift of the columns.

The mask is the segmentation's valid-iris mask sampled at the same points (nearest pixel, as
open-iris), minus over-saturated pixels (>= 254 of 255, open-iris ``oversat_threshold``). The
image is sampled bilinearly (open-iris rounds to the nearest pixel; our images are small, and
nearest sampling would repeat each pixel several times along a strip row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from facelab.core.errors import FacelabTypeError, ShapeError, describe
from facelab.immeriris.geometry import check_ellipses, ellipse_radius

RADIAL = 128
ANGULAR = 512
OVERSATURATED = 254


@dataclass
class Strip:
    """Normalized irises: ``image`` (N, R, A) float gray levels in [0, 255], ``mask`` (N, R, A)
    bool (True where the iris is visible and valid)."""

    image: torch.Tensor
    mask: torch.Tensor


def sampling_grid(
    pupil: torch.Tensor, iris: torch.Tensor, radial: int = RADIAL, angular: int = ANGULAR
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates ``(u, v)`` (N, R, A) of every strip sample."""
    theta = torch.arange(angular, dtype=torch.float32, device=pupil.device) * (
        2 * math.pi / angular
    )
    rp = ellipse_radius(pupil, theta.unsqueeze(0))
    ri = ellipse_radius(iris, theta.unsqueeze(0))
    cos, sin = torch.cos(theta), torch.sin(theta)
    pu, pv = pupil[:, :1] + rp * cos, pupil[:, 1:2] + rp * sin  # (N, A)
    iu, iv = iris[:, :1] + ri * cos, iris[:, 1:2] + ri * sin
    rho = torch.linspace(0.0, 1.0, radial, device=pupil.device).view(1, -1, 1)
    u = pu.unsqueeze(1) + rho * (iu - pu).unsqueeze(1)
    v = pv.unsqueeze(1) + rho * (iv - pv).unsqueeze(1)
    return u, v


def rubber_sheet(
    images: torch.Tensor,
    pupil: torch.Tensor,
    iris: torch.Tensor,
    valid: torch.Tensor | None = None,
    radial: int = RADIAL,
    angular: int = ANGULAR,
) -> Strip:
    """Unwrap images (N, 1, H, W) in [-1, 1] between the pupil and iris ellipses (N, 5).

    ``valid`` (N, H, W) bool marks usable iris pixels (the segmentation's noise mask inverted);
    without it every sample inside the image counts as valid."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise FacelabTypeError(
            f"images: expected a float tensor (N, 1, H, W), got {describe(images)}"
        )
    if images.dim() != 4 or images.shape[1] != 1:
        raise ShapeError(
            f"images: expected (N, 1, H, W) grayscale images, got shape {tuple(images.shape)}"
        )
    n, _, h, w = images.shape
    check_ellipses(pupil, "pupil", n)
    check_ellipses(iris, "iris", n)
    if valid is not None and (valid.shape != (n, h, w) or valid.dtype != torch.bool):
        raise ShapeError(f"valid: expected a bool mask of shape {(n, h, w)}, got {describe(valid)}")
    u, v = sampling_grid(pupil.float(), iris.float(), radial, angular)
    grid = torch.stack([u * (2.0 / w) - 1.0, v * (2.0 / h) - 1.0], dim=-1)  # align_corners=False
    gray = (images.float() + 1.0) * 127.5
    strip = F.grid_sample(gray, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[
        :, 0
    ]
    inside = (u >= 0) & (u <= w) & (v >= 0) & (v <= h)
    nearest = F.grid_sample(gray, grid, mode="nearest", padding_mode="zeros", align_corners=False)[
        :, 0
    ]
    mask = inside & (nearest < OVERSATURATED)
    if valid is not None:
        vm = F.grid_sample(valid.unsqueeze(1).float(), grid, mode="nearest", align_corners=False)
        mask &= vm[:, 0] > 0.5
    return Strip(strip, mask)
