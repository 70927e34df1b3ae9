"""Facial regions of interest (ROI) that refine DuetFace's feature masks.

The reference code fills the convex hull of 98 PFLD landmarks per image with a scipy Delaunay
test in a Python loop. Here every ROI is a *dilated convex hull* of some landmarks, built for the
whole batch at once on the images' device:

* ``roi="template"`` (default): the five ArcFace template points (eyes, nose tip, mouth corners)
  of an aligned crop, dilated by ``margin`` (a fraction of the image width) so the region reaches
  the brows and the chin. Valid for aligned faces, no model needed; one mask for every image.
* ``roi="mtcnn"``: the five points MTCNN (facenet-pytorch, the ``mtcnn`` extra) finds in each
  image, dilated the same way. Images without a detected face fall back to the template ROI, with
  a warning that counts them.
* landmarks passed in: any ``(B, K, 2)`` pixel ``(x, y)`` points, K >= 3 (e.g. 98 PFLD points).
* ``roi="none"``: all ones (the ablation without ROI).

How the hull is filled without sorting points: a convex set is the intersection of its supporting
half-planes. For a unit direction ``u`` the support of the landmarks is ``h(u) = max_k <q_k, u>``,
and a pixel ``p`` is inside the hull dilated by a disk of radius ``r`` iff
``<p, u> <= h(u) + r`` for every direction (the support function of a Minkowski sum is the sum
of the support functions). We test a finite set of directions: the normals of every pair of
points (for K <= 16 points; the hull's edges are among the pairs, so its flat sides are exact)
and 64 evenly spaced directions (the rounded corners of the dilation, exact to within
``r (1 / cos(pi / 64) - 1)``, 0.02 px for r = 16 px). With more than 16 points only the 64
directions are used (the circumscribed 64-gon: within ``L tan(pi / 64) / 2`` of the boundary for
an edge of length L). Pixel centres sit at integer coordinates, as in
:mod:`facelab.core.data.align`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch

from facelab.core.data.align import arcface_template
from facelab.core.errors import (
    FacelabTypeError,
    RangeError,
    ShapeError,
    UnknownNameError,
    expect_finite,
    expect_range,
    expect_rank,
    expect_tensor,
)

RoiMode = Literal["template", "mtcnn", "none"]
ROI_MODES: tuple[str, ...] = ("template", "mtcnn", "none")
#: dilation of the 5-point hull as a fraction of the image width (16 px at 112: brows to chin)
DEFAULT_ROI_MARGIN = 16.0 / 112.0
#: number of evenly spaced supporting directions of the hull test
HULL_DIRECTIONS = 64
#: up to this many points, the normals of all point pairs are tested too (exact flat sides)
PAIR_NORMALS_MAX_POINTS = 16
_CHUNK_ELEMENTS = 2**23  # (batch x pixels x directions) floats per chunk: 32 MiB


def _as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        h = w = size
    elif isinstance(size, Sequence) and len(size) == 2:
        h, w = (int(v) for v in size)
    else:
        raise FacelabTypeError(f"size: expected an int or (H, W), got {size!r}")
    if h < 1 or w < 1:
        raise RangeError(f"size: expected positive sizes, got {size!r}")
    return h, w


def hull_masks(
    landmarks: torch.Tensor,
    size: int | Sequence[int],
    margin: float = 0.0,
    *,
    directions: int = HULL_DIRECTIONS,
) -> torch.Tensor:
    """Binary masks ``(B, 1, H, W)`` (float32 0/1) of each point set's convex hull dilated by
    ``margin`` pixels; ``landmarks`` ``(B, K, 2)`` (or one ``(K, 2)``) pixel ``(x, y)``, K >= 3.

    Vectorized over the batch on the landmarks' device (see the module docstring).
    """
    lm = expect_tensor(landmarks, "landmarks", floating=True)
    if lm.dim() == 2:
        lm = lm.unsqueeze(0)
    expect_rank(lm, 3, "landmarks", "B, K, 2")
    if lm.shape[2] != 2 or lm.shape[1] < 3:
        raise ShapeError(
            f"landmarks: expected (B, K, 2) pixel (x, y) with K >= 3 points, got {tuple(lm.shape)}"
        )
    expect_finite(lm, "landmarks")
    if not isinstance(margin, int | float) or isinstance(margin, bool) or not margin >= 0:
        raise RangeError(f"margin: expected a number >= 0 (pixels), got {margin!r}")
    if not isinstance(directions, int) or directions < 8:
        raise RangeError(f"directions: expected an int >= 8, got {directions!r}")
    h, w = _as_hw(size)
    device = lm.device
    pts = lm.float()
    b, k = pts.shape[:2]
    angles = torch.arange(directions, device=device, dtype=torch.float32) * (
        2 * math.pi / directions
    )
    u = torch.stack([angles.cos(), angles.sin()], dim=1).expand(b, directions, 2)
    if k <= PAIR_NORMALS_MAX_POINTS:
        i, j = torch.triu_indices(k, k, offset=1, device=device)
        edge = pts[:, j] - pts[:, i]  # (B, P, 2)
        normal = torch.stack([edge[..., 1], -edge[..., 0]], dim=-1)
        length = normal.norm(dim=-1, keepdim=True)
        # coincident points give a zero direction: <p, 0> <= 0 + r holds everywhere
        normal = torch.where(length > 0, normal / length.clamp_min(1e-12), torch.zeros_like(normal))
        u = torch.cat([u, normal, -normal], dim=1)  # (B, D', 2)
    support = (pts @ u.transpose(1, 2)).amax(dim=1) + float(margin)  # (B, D')
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    grid = torch.stack([xs.flatten(), ys.flatten()], dim=1)  # (HW, 2)
    chunk = max(1, _CHUNK_ELEMENTS // (h * w * u.shape[1]))
    inside = [
        # batches of faces, not single faces: (chunk, HW, D') projections at once
        ((grid @ uc.transpose(1, 2)) <= sc.unsqueeze(1)).all(dim=2)
        for uc, sc in zip(u.split(chunk), support.split(chunk))
    ]
    return torch.cat(inside).view(b, 1, h, w).float()


def template_landmarks(size: int, *, device: Any = None) -> torch.Tensor:
    """The five ArcFace template points of a ``size`` x ``size`` aligned crop, float32 (5, 2)."""
    return arcface_template(size).to(device=device, dtype=torch.float32)


def template_roi(
    size: int, margin: float = DEFAULT_ROI_MARGIN, *, device: Any = None
) -> torch.Tensor:
    """The template ROI ``(1, 1, size, size)``; ``margin`` is a fraction of ``size``."""
    return hull_masks(template_landmarks(size, device=device), size, margin * size)


class RoiBuilder:
    """Build ROI masks ``(B, 1, H, W)`` for a batch of aligned face images.

    Args:
        mode: ``"template"``, ``"mtcnn"`` or ``"none"`` (see the module docstring).
        margin: hull dilation as a fraction of the image width.
        detector: an object with ``detect(list of uint8 (H, W, 3)) -> (boxes, landmarks (B, 5,
            2), found (B,))`` (``facelab.core.data.align.FaceDetector``); built on first use in
            ``"mtcnn"`` mode when not given.
        device: where a detector built here runs.
    """

    def __init__(
        self,
        mode: RoiMode = "template",
        margin: float = DEFAULT_ROI_MARGIN,
        *,
        detector: Any = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if mode not in ROI_MODES:
            raise UnknownNameError(f"unknown roi mode {mode!r}; valid: {list(ROI_MODES)}")
        if not isinstance(margin, int | float) or isinstance(margin, bool) or not margin >= 0:
            raise RangeError(f"roi margin: expected a fraction >= 0, got {margin!r}")
        self.mode = mode
        self.margin = float(margin)
        self.detector = detector
        self.device = device
        self._template: dict[tuple[int, int, str], torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"RoiBuilder(mode={self.mode!r}, margin={self.margin:.4g})"

    def template(self, height: int, width: int, device: Any) -> torch.Tensor:
        """The (cached) template ROI ``(1, 1, H, W)``; non-square crops scale the template by
        width and centre it vertically."""
        key = (height, width, str(device))
        if key not in self._template:
            pts = template_landmarks(width, device=device)
            pts = pts + torch.tensor([0.0, (height - width) / 2.0], device=device)
            self._template[key] = hull_masks(pts, (height, width), self.margin * width)
        return self._template[key]

    def from_landmarks(self, landmarks: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """ROI masks of given landmarks ``(B, K, 2)`` (pixel (x, y) in the images)."""
        return hull_masks(landmarks, (height, width), self.margin * width)

    def _detect(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.detector is None:
            from facelab.core.data.align import FaceDetector

            self.detector = FaceDetector(device=self.device)
        u8 = ((images.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        arrays = list(u8.permute(0, 2, 3, 1).numpy())  # MTCNN takes a list of HWC arrays
        _, points, found = self.detector.detect(arrays)
        return torch.as_tensor(points, dtype=torch.float32), torch.as_tensor(
            found, dtype=torch.bool
        )

    def __call__(self, images: torch.Tensor, landmarks: torch.Tensor | None = None) -> torch.Tensor:
        """ROI masks ``(B, 1, H, W)`` float32 on the images' device.

        ``images``: ``(B, 3, H, W)`` in [-1, 1]; ``landmarks``: optional ``(B, K, 2)`` pixel
        ``(x, y)``, which take precedence over ``mode``.
        """
        expect_tensor(images, "images", floating=True)
        expect_rank(images, 4, "images", "B, 3, H, W")
        b, _, h, w = images.shape
        device = images.device
        if landmarks is not None:
            expect_tensor(landmarks, "landmarks", floating=True)
            if landmarks.dim() != 3 or landmarks.shape[0] != b:
                raise ShapeError(
                    f"landmarks: expected ({b}, K, 2) for {b} images, got {tuple(landmarks.shape)}"
                )
            return self.from_landmarks(landmarks.to(device), h, w)
        if self.mode == "none":
            return images.new_ones(b, 1, h, w, dtype=torch.float32)
        if self.mode == "template":
            return self.template(h, w, device).expand(b, 1, h, w)
        expect_finite(images, "images")
        expect_range(images, -1.0, 1.0, "images")
        points, found = self._detect(images)
        roi = self.template(h, w, device).expand(b, 1, h, w).clone()
        if bool(found.any()):
            hit = found.nonzero().flatten()
            roi[hit.to(device)] = self.from_landmarks(points[hit].to(device), h, w)
        missing = int((~found).sum())
        if missing:
            warnings.warn(
                f"roi='mtcnn': no face found in {missing} of {b} images; they use the template ROI",
                stacklevel=2,
            )
        return roi
