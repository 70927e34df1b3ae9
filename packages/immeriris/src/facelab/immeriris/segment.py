"""Iris segmentation: pupil and iris ellipses plus a noise mask, from the image alone.

Two sources of segmentation feed the classical and NormKeep pipelines (and NormFree's crop):

* :func:`oracle_segmentation`: the generator's ground truth (its ellipses and visible-iris
  mask). Results that use it are labelled *oracle*: no real system has it.
* :class:`EllipseSegmenter`: ours, classical image processing, vectorized over a batch (no
  learning, nothing to download):

  1. **Pupil** -- the darkest 9x9 neighbourhood seeds it; pixels darker than
     ``seed + pupil_split * (local median - seed)`` (5x5-smoothed image), closed (fills glint
     holes) and opened (drops thin lashes), inside a window around the seed, give a first
     ellipse by second moments (a filled ellipse has covariance ``diag(a^2, b^2) / 4``; two
     passes, the second keeping only dark pixels near the first ellipse), refined like the
     limbus below but over all angles (scale 0.8-1.25, offsets +-2 px).
  2. **Iris** -- under perspective the limbus and the pupil margin are images of concentric
     circles, so the limbus is close to the pupil ellipse scaled by ``k`` and shifted a little.
     A Daugman-style integro-differential search picks the candidate with the largest mean
     outward brightness step (3x3-smoothed image, +-2 px along each ray) over the lateral
     sectors (within ``lateral_deg`` of horizontal, where the lids rarely reach): first
     ``(k, du, dv)`` with the pupil's shape, then the shape itself (axis ratio 0.7-1, six
     orientations) around that size, then a fine step. Candidates whose inner samples could
     reach the pupil margin are excluded.
  3. **Noise** -- inside the iris annulus: pixels brighter than halfway from the iris's median
     level to the sclera's (eyelid skin, glints), or darker than ``lash_fraction`` of the iris
     level (lashes, lid shadows), dilated by one pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from facelab.core.errors import FacelabTypeError, ShapeError, describe
from facelab.immeriris.geometry import ellipse_inside, ellipse_radius


@dataclass
class Segmentation:
    """Pupil and iris ellipses (N, 5) and the usable-iris mask (N, H, W) bool."""

    pupil: torch.Tensor
    iris: torch.Tensor
    valid: torch.Tensor

    def __len__(self) -> int:
        return int(self.pupil.shape[0])

    def __getitem__(self, idx) -> Segmentation:
        return Segmentation(self.pupil[idx], self.iris[idx], self.valid[idx])


def oracle_segmentation(batch) -> Segmentation:
    """The generator's truth (an :class:`~facelab.immeriris.generator.OcularBatch`)."""
    return Segmentation(batch.pupil, batch.iris, batch.visible)


#: smallest image side :class:`EllipseSegmenter` accepts (its windows are 9 px and more)
MIN_SEGMENT_SIZE = 32


def check_images(images: object, name: str = "images") -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise FacelabTypeError(
            f"{name}: expected a float tensor (N, 1, H, W) in [-1, 1], got {describe(images)}"
        )
    if images.dim() != 4 or images.shape[1] != 1:
        raise ShapeError(
            f"{name}: expected grayscale images (N, 1, H, W), got shape {tuple(images.shape)}"
        )
    return images


def _erode(x: torch.Tensor, k: int) -> torch.Tensor:
    return -F.max_pool2d(-x, k, stride=1, padding=k // 2)


def _dilate(x: torch.Tensor, k: int) -> torch.Tensor:
    return F.max_pool2d(x, k, stride=1, padding=k // 2)


def _moment_ellipse(mask: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Ellipses (N, 5) with the second moments of masks (N, H, W) (float weights)."""
    area = mask.sum(dim=(1, 2)).clamp_min(1.0)
    mu = (mask * u).sum(dim=(1, 2)) / area
    mv = (mask * v).sum(dim=(1, 2)) / area
    du, dv = u - mu.view(-1, 1, 1), v - mv.view(-1, 1, 1)
    cuu = (mask * du * du).sum(dim=(1, 2)) / area
    cvv = (mask * dv * dv).sum(dim=(1, 2)) / area
    cuv = (mask * du * dv).sum(dim=(1, 2)) / area
    cov = torch.stack([cuu, cuv, cuv, cvv], -1).view(-1, 2, 2)
    evals, evecs = torch.linalg.eigh(cov)
    a = 2.0 * evals[:, 1].clamp_min(0.25).sqrt()
    b = 2.0 * evals[:, 0].clamp_min(0.25).sqrt()
    phi = torch.atan2(evecs[:, 1, 1], evecs[:, 0, 1])
    return torch.stack([mu, mv, a, b, phi], -1)


class EllipseSegmenter:
    """Our classical segmenter (see the module doc). Parameters are fractions of the image
    size or of intensity ranges, so it works at any image size."""

    def __init__(
        self,
        pupil_split: float = 0.3,
        lash_fraction: float = 0.6,
        lateral_deg: float = 50.0,
        scale_range: tuple[float, float] = (1.25, 6.5),
    ) -> None:
        self.pupil_split = pupil_split
        self.lash_fraction = lash_fraction
        self.lateral_deg = lateral_deg
        self.scale_range = scale_range

    def __call__(self, images: torch.Tensor, chunk: int = 64) -> Segmentation:
        images = check_images(images)
        if min(images.shape[-2:]) < MIN_SEGMENT_SIZE:
            raise ShapeError(
                f"images: expected at least {MIN_SEGMENT_SIZE} x {MIN_SEGMENT_SIZE} pixels for "
                f"segmentation, got {tuple(images.shape[-2:])}"
            )
        parts = [self._segment(images[i : i + chunk]) for i in range(0, images.shape[0], chunk)]
        if not parts:
            _, _, h, w = images.shape
            return Segmentation(
                torch.zeros(0, 5), torch.zeros(0, 5), torch.zeros(0, h, w, dtype=torch.bool)
            )
        return Segmentation(
            *(torch.cat(t) for t in zip(*((p.pupil, p.iris, p.valid) for p in parts)))
        )

    # ------------------------------------------------------------------ steps
    def _segment(self, images: torch.Tensor) -> Segmentation:
        x = (images.float() + 1.0) / 2.0  # [0, 1]
        _, _, h, w = x.shape
        u = (torch.arange(w, dtype=torch.float32) + 0.5).view(1, 1, -1).expand(1, h, w)
        v = (torch.arange(h, dtype=torch.float32) + 0.5).view(1, -1, 1).expand(1, h, w)
        sm5 = F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
        pupil = self._pupil(x, sm5, u, v)
        sm3 = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        iris = self._iris(sm3, pupil)
        valid = self._noise(x, sm5, pupil, iris, u, v)
        return Segmentation(pupil, iris, valid)

    def _pupil(self, x, sm5, u, v) -> torch.Tensor:
        n, _, h, w = x.shape
        sm9 = F.avg_pool2d(x, 9, stride=1, padding=4, count_include_pad=False)[:, 0]
        flat = sm9.reshape(n, -1).argmin(-1)
        su = (flat % w).float() + 0.5
        sv = (flat // w).float() + 0.5
        seed_val = sm9.reshape(n, -1).gather(1, flat.view(-1, 1)).squeeze(1)
        radius = 0.3 * min(h, w)
        near = ((u - su.view(-1, 1, 1)) ** 2 + (v - sv.view(-1, 1, 1)) ** 2) < radius**2
        local = torch.where(near, sm5[:, 0], torch.full_like(sm5[:, 0], math.nan)).reshape(n, -1)
        level = torch.nanquantile(local, 0.5, dim=1)
        thr = seed_val + self.pupil_split * (level - seed_val)
        dark = (sm5[:, 0] < thr.view(-1, 1, 1)).float() * near
        dark = _erode(_dilate(dark.unsqueeze(1), 5), 5)  # close: glints
        dark = _dilate(_erode(dark, 3), 3)[:, 0]  # open: lashes
        e = _moment_ellipse(dark, u, v)
        for _ in range(2):  # keep dark pixels near the current estimate
            grown = e.clone()
            grown[:, 2:4] = grown[:, 2:4] * 1.25 + 1.5
            keep = ellipse_inside(grown, u[0, 0], v[0, :, 0]) < 1.0
            e = _moment_ellipse(dark * keep, u, v)
        return self._refine(x, e, (0.8, 1.25), 2.0, all_angles=True)

    def _refine(self, img, start, scale_range, max_off, all_angles=False) -> torch.Tensor:
        """Integro-differential refinement of ellipses: best (scale, offset) by the mean
        outward brightness step (3x3-smoothed image), over all angles or the lateral sectors."""
        sm3 = F.avg_pool2d(img, 3, stride=1, padding=1, count_include_pad=False)
        if all_angles:
            theta = torch.linspace(0, 2 * math.pi, 49)[:-1]
        else:
            lat = math.radians(self.lateral_deg)
            t = torch.linspace(-lat, lat, 16)
            theta = torch.cat([t, t + math.pi])
        best = start
        for scales, step in (
            (torch.linspace(scale_range[0], scale_range[1], 12), max_off / 2),
            (torch.linspace(0.96, 1.04, 5), max_off / 4),
        ):
            best = self._search(
                sm3, best, scales, torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0]) * step, theta
            )
        return best

    def _search(self, sm3, base, scales, offsets, theta, inner=None, shapes=None) -> torch.Tensor:
        """Best candidate around ``base`` by :meth:`_contrast`: its axes times ``scales``,
        its centre moved by ``offsets`` x ``offsets``; with ``shapes`` (K, 2) = (b/a, angle)
        the candidates take those shapes at the base's mean radius instead of the base's shape.
        With ``inner`` (N, 5), candidates whose inner samples could come within 3 px of that
        ellipse (the pupil margin) are excluded."""
        n = base.shape[0]
        du, dv = torch.meshgrid(offsets, offsets, indexing="ij")
        du, dv = du.reshape(-1), dv.reshape(-1)
        n_shape = 1 if shapes is None else shapes.shape[0]
        grid = torch.cartesian_prod(
            torch.arange(n_shape), torch.arange(scales.numel()), torch.arange(du.numel())
        )
        k = grid.shape[0]
        cand = base.unsqueeze(1).repeat(1, k, 1)
        if shapes is None:
            cand[:, :, 2:4] = base[:, None, 2:4] * scales[grid[:, 1]].view(1, -1, 1)
        else:
            radius = base[:, 2:4].mean(-1, keepdim=True) * scales[grid[:, 1]].view(1, -1)
            q = shapes[grid[:, 0], 0].view(1, -1)
            cand[:, :, 2] = radius * 2.0 / (1.0 + q)  # mean of the axes kept
            cand[:, :, 3] = radius * 2.0 * q / (1.0 + q)
            cand[:, :, 4] = shapes[grid[:, 0], 1].view(1, -1)
        cand[:, :, 0] += du[grid[:, 2]]
        cand[:, :, 1] += dv[grid[:, 2]]
        score = self._contrast(sm3, cand, theta)
        if inner is not None:
            r_in = inner[:, 2:3]  # long semi-axis
            r_c = cand[:, :, 3]  # short semi-axis
            shift = (cand[:, :, :2] - inner[:, None, :2]).norm(dim=-1)
            score = torch.where(
                r_c - 2.0 - shift < r_in + 3.0, torch.full_like(score, -math.inf), score
            )
        return cand[torch.arange(n), score.argmax(1)]

    def _contrast(self, img: torch.Tensor, cand: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Mean outward brightness step of candidate ellipses (N, K, 5) along rays ``theta``."""
        n, k, _ = cand.shape
        _, _, h, w = img.shape
        flat = cand.reshape(n * k, 5)
        r = ellipse_radius(flat, theta.unsqueeze(0))  # (N K, T)
        cu, cv = torch.cos(theta), torch.sin(theta)
        pts = []
        for dr in (2.0, -2.0):
            pu = flat[:, :1] + (r + dr) * cu
            pv = flat[:, 1:2] + (r + dr) * cv
            pts.append(torch.stack([pu * (2.0 / w) - 1.0, pv * (2.0 / h) - 1.0], -1))
        grid = torch.cat(pts, 1).view(n, k, -1, 2)  # (N, K, 2T, 2)
        vals = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
        vals = vals[:, 0].view(n, k, 2, -1)
        return (vals[:, :, 0] - vals[:, :, 1]).mean(-1)

    def _iris(self, sm3: torch.Tensor, pupil: torch.Tensor) -> torch.Tensor:
        lat = math.radians(self.lateral_deg)
        t = torch.linspace(-lat, lat, 16)
        theta = torch.cat([t, t + math.pi])
        lo, hi = self.scale_range
        scales = torch.exp(torch.linspace(math.log(lo), math.log(hi), 36))
        off4 = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0])
        best = self._search(sm3, pupil, scales, off4, theta, pupil)  # the pupil's shape
        shapes = torch.cartesian_prod(
            torch.tensor([0.7, 0.8, 0.9, 1.0]), torch.arange(6) * (math.pi / 6)
        )
        best = self._search(
            sm3,
            best,
            torch.linspace(0.94, 1.06, 5),
            torch.tensor([-1.5, 0.0, 1.5]),
            theta,
            pupil,
            shapes,
        )
        fine = torch.linspace(0.97, 1.03, 5)
        return self._search(sm3, best, fine, torch.tensor([-0.75, 0.0, 0.75]), theta, pupil)

    def _noise(self, x, sm5, pupil, iris, u, v) -> torch.Tensor:
        n = x.shape[0]
        uu, vv = u[0, 0], v[0, :, 0]
        in_iris = ellipse_inside(iris, uu, vv) < 1.0
        grown = pupil.clone()
        grown[:, 2:4] += 1.0
        out_pupil = ellipse_inside(grown, uu, vv) >= 1.0
        annulus = in_iris & out_pupil
        # lateral sectors (rarely occluded) for the reference levels
        ang = torch.atan2(v - iris[:, 1].view(-1, 1, 1), u - iris[:, 0].view(-1, 1, 1))
        lateral = ang.sin().abs() < math.sin(math.radians(self.lateral_deg))
        iris_ref = torch.where(annulus & lateral, sm5[:, 0], torch.full_like(sm5[:, 0], math.nan))
        iris_level = torch.nanquantile(iris_ref.reshape(n, -1), 0.5, dim=1)
        ring = iris.clone()
        ring[:, 2:4] *= 1.25
        outside = (ellipse_inside(ring, uu, vv) < 1.0) & ~in_iris & lateral
        scl = torch.where(outside, sm5[:, 0], torch.full_like(sm5[:, 0], math.nan))
        sclera_level = torch.nanquantile(scl.reshape(n, -1), 0.5, dim=1)
        sclera_level = torch.nan_to_num(sclera_level, nan=1.0)
        iris_level = torch.nan_to_num(iris_level, nan=0.5)
        bright = sm5[:, 0] > (iris_level + 0.5 * (sclera_level - iris_level)).clamp_min(
            iris_level * 1.2
        ).view(-1, 1, 1)
        dark = x[:, 0] < (self.lash_fraction * iris_level).view(-1, 1, 1)
        noise = _dilate((bright | dark).float().unsqueeze(1), 3)[:, 0] > 0.5
        return annulus & ~noise
