"""5-point face alignment onto the ArcFace template, and MTCNN detect-and-align.

``align_faces`` estimates, per face, the similarity transform (skimage
``SimilarityTransform``, Umeyama least squares) taking the five landmarks onto the ArcFace
112x112 template (scaled by ``size / 112``), then warps the whole batch at once with
``affine_grid``/``grid_sample`` (bilinear, constant border). Coordinates follow OpenCV's
``warpAffine`` as insightface uses it: pixel centres at integer coordinates, ``(x, y)`` order.

``detect_and_align`` finds faces with facenet-pytorch's MTCNN (the ``facelab-core[detect]``
extra; its weights ship inside the wheel, nothing downloads), keeps one face per image (the
largest, or the most confident) and aligns it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from facelab.core.errors import (
    FacelabTypeError,
    ShapeError,
    expect_finite,
    expect_finite_in_range,
    expect_rank,
    expect_tensor,
)

#: the size the ArcFace template is defined for.
TEMPLATE_SIZE = 112
#: ArcFace template (x, y): left eye, right eye, nose tip, left and right mouth corner.
ARCFACE_TEMPLATE: tuple[tuple[float, float], ...] = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)

DETECT_EXTRA_HINT = (
    "detect_and_align needs facenet-pytorch (MTCNN); install it with "
    "`pip install 'facelab-core[detect]'`"
)


def arcface_template(size: int = TEMPLATE_SIZE) -> torch.Tensor:
    """The five template points for a ``size`` x ``size`` crop, float64 ``(5, 2)`` (x, y)."""
    if size <= 0:
        raise ShapeError(f"arcface_template: size must be positive, got {size}")
    return torch.tensor(ARCFACE_TEMPLATE, dtype=torch.float64) * (size / TEMPLATE_SIZE)


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    from skimage.transform import SimilarityTransform

    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        tform = SimilarityTransform.from_estimate(src, dst)
        return np.asarray(tform.params) if tform else None
    tform = SimilarityTransform()
    return np.asarray(tform.params) if tform.estimate(src, dst) else None


def estimate_alignment(landmarks5: torch.Tensor, size: int = TEMPLATE_SIZE) -> torch.Tensor:
    """Similarity transforms (float64 ``(B, 3, 3)``) mapping each face's five landmarks
    (``(B, 5, 2)``, pixel ``(x, y)``) onto the template of a ``size`` crop."""
    lm = expect_tensor(landmarks5, "landmarks5", floating=True)
    expect_rank(lm, 3, "landmarks5", "B x 5 x 2")
    if tuple(lm.shape[1:]) != (5, 2):
        raise ShapeError(f"landmarks5: expected shape (B, 5, 2), got {tuple(lm.shape)}")
    expect_finite(lm, "landmarks5")
    dst = arcface_template(size).numpy()
    src = lm.detach().to("cpu", torch.float64).numpy()
    mats = np.empty((src.shape[0], 3, 3), dtype=np.float64)
    for i in range(src.shape[0]):  # 5-point least squares per face; the warp is batched
        m = _similarity(src[i], dst)
        if m is None or not np.all(np.isfinite(m)) or abs(np.linalg.det(m[:2, :2])) < 1e-12:
            raise ShapeError(
                f"landmarks5[{i}]: cannot estimate a similarity transform from points "
                f"{src[i].round(2).tolist()} (degenerate: coincident points?)"
            )
        mats[i] = m
    return torch.from_numpy(mats)


def _pixel_to_normalized(h: int, w: int) -> torch.Tensor:
    """Pixel (x, y) with centres at integers -> grid_sample coordinates (align_corners=False)."""
    return torch.tensor(
        [[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0], [0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )


def warp_affine(
    images: torch.Tensor,
    matrices: torch.Tensor,
    out_size: tuple[int, int],
    border_value: float = 0.0,
) -> torch.Tensor:
    """Batched ``cv2.warpAffine``: ``matrices`` (``(B, 2 or 3, 3)``) map source pixel (x, y) to
    output pixel; bilinear sampling, constant ``border_value`` outside the image.

    One ``affine_grid``/``grid_sample`` call for the whole batch.
    """
    expect_rank(images, 4, "images", "B x C x H x W")
    if (
        matrices.dim() != 3
        or matrices.shape[0] != images.shape[0]
        or tuple(matrices.shape[1:]) not in ((2, 3), (3, 3))
    ):
        raise ShapeError(
            f"matrices: expected shape ({images.shape[0]}, 2 or 3, 3), got {tuple(matrices.shape)}"
        )
    b, c, h, w = images.shape
    oh, ow = out_size
    m = matrices.detach().to("cpu", torch.float64)
    if m.shape[1] == 2:
        last = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(b, 1, 3)
        m = torch.cat([m, last], dim=1)
    inv = torch.linalg.inv(m)
    # output normalized -> output pixel -> source pixel -> source normalized
    out_denorm = torch.linalg.inv(_pixel_to_normalized(oh, ow))
    theta = _pixel_to_normalized(h, w) @ inv @ out_denorm
    theta = theta[:, :2, :].to(images.device, images.dtype)
    grid = F.affine_grid(theta, [b, c, oh, ow], align_corners=False)
    shifted = images - border_value if border_value != 0.0 else images
    out = F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + border_value if border_value != 0.0 else out


def align_faces(
    images: torch.Tensor,
    landmarks5: torch.Tensor,
    size: int = TEMPLATE_SIZE,
    *,
    border_value: float = 0.0,
) -> torch.Tensor:
    """Align faces onto the ArcFace template.

    ``images``: float ``(B, C, H, W)`` (or one ``(C, H, W)``), any value range; ``landmarks5``:
    ``(B, 5, 2)`` (or ``(5, 2)``) pixel ``(x, y)`` of left eye, right eye, nose, left and right
    mouth corner. Returns ``(B, C, size, size)`` in the images' dtype; pixels that fall outside
    the source get ``border_value`` (0 as in insightface's ``cv2.warpAffine``; pass -1 for black
    on [-1, 1] images).
    """
    expect_tensor(images, "images", floating=True)
    expect_tensor(landmarks5, "landmarks5", floating=True)
    single = images.dim() == 3
    if single:
        images, landmarks5 = images[None], landmarks5[None] if landmarks5.dim() == 2 else landmarks5
    expect_rank(images, 4, "images", "B x C x H x W")
    expect_rank(landmarks5, 3, "landmarks5", "B x 5 x 2")
    if landmarks5.shape[0] != images.shape[0]:
        raise ShapeError(
            f"landmarks5: expected {images.shape[0]} faces (one per image), got "
            f"{landmarks5.shape[0]}"
        )
    mats = estimate_alignment(landmarks5, size)
    out = warp_affine(images, mats, (size, size), border_value)
    return out[0] if single else out


class AlignResult(NamedTuple):
    """``aligned``: float32 ``(B, 3, size, size)`` in [-1, 1] (-1, i.e. black, where no face was
    found and outside the source image); ``landmarks``: float32 ``(B, 5, 2)`` source pixel
    (x, y); ``boxes``: float32 ``(B, 4)`` (x1, y1, x2, y2); both NaN where no face was found;
    ``found_mask``: bool ``(B,)``."""

    aligned: torch.Tensor
    landmarks: torch.Tensor
    boxes: torch.Tensor
    found_mask: torch.Tensor


ImageLike = Any  # PIL.Image.Image | np.ndarray (H, W, 3) uint8 | torch.Tensor (3, H, W)


def _to_uint8_hwc(image: ImageLike, i: int) -> np.ndarray:
    """One image -> uint8 (H, W, 3) RGB. Tensors: (3, H, W), float in [-1, 1] or uint8."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ShapeError(
                f"images[{i}]: expected a uint8 (H, W, 3) RGB array, got dtype {image.dtype} "
                f"and shape {image.shape}"
            )
        return image
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ShapeError(f"images[{i}]: expected a (3, H, W) tensor, got {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            return image.permute(1, 2, 0).cpu().numpy()
        if not image.is_floating_point():
            raise FacelabTypeError(f"images[{i}]: expected uint8 or float, got {image.dtype}")
        expect_finite_in_range(image, -1.0, 1.0, f"images[{i}]")
        u8 = ((image.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return u8.permute(1, 2, 0).numpy()
    raise FacelabTypeError(
        f"images[{i}]: expected a PIL image, a uint8 (H, W, 3) array or a (3, H, W) tensor, got "
        f"{type(image).__name__}"
    )


class FaceDetector:
    """facenet-pytorch MTCNN, loaded once and reused (``detect_and_align(..., detector=)``)."""

    def __init__(
        self,
        device: str | torch.device = "cpu",
        min_face_size: int = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
    ) -> None:
        try:
            from facenet_pytorch import MTCNN
        except ImportError as exc:
            raise ImportError(DETECT_EXTRA_HINT) from exc
        self.device = torch.device(device)
        self.mtcnn = MTCNN(
            min_face_size=min_face_size,
            thresholds=list(thresholds),
            keep_all=True,
            device=self.device,
        )

    def detect(
        self, images: Sequence[np.ndarray], select: Literal["largest", "confident"] = "largest"
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """uint8 (H, W, 3) images -> per image one face: boxes ``(B, 4)``, landmarks
        ``(B, 5, 2)`` (NaN rows where none) and found ``(B,)``."""
        if select not in ("largest", "confident"):
            raise ValueError(f"select: expected 'largest' or 'confident', got {select!r}")
        n = len(images)
        boxes = np.full((n, 4), np.nan, dtype=np.float32)
        points = np.full((n, 5, 2), np.nan, dtype=np.float32)
        found = np.zeros(n, dtype=bool)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, img in enumerate(images):  # MTCNN batches only equal-size images
            groups.setdefault(img.shape, []).append(i)
        for idxs in groups.values():
            batch = np.stack([images[i] for i in idxs])
            b_boxes, b_probs, b_points = self.mtcnn.detect(batch, landmarks=True)
            for j, i in enumerate(idxs):
                bx = b_boxes[j]
                if bx is None or len(bx) == 0:
                    continue
                bx = np.asarray(bx, dtype=np.float64).reshape(-1, 4)
                pr = np.asarray(b_probs[j], dtype=np.float64).reshape(-1)
                pt = np.asarray(b_points[j], dtype=np.float64).reshape(-1, 5, 2)
                if select == "largest":
                    k = int(np.argmax((bx[:, 2] - bx[:, 0]) * (bx[:, 3] - bx[:, 1])))
                else:
                    k = int(np.argmax(pr))
                boxes[i], points[i], found[i] = bx[k], pt[k], True
        return boxes, points, found


def detect_and_align(
    images: Sequence[ImageLike] | torch.Tensor,
    size: int = TEMPLATE_SIZE,
    *,
    select: Literal["largest", "confident"] = "largest",
    detector: FaceDetector | None = None,
    device: str | torch.device = "cpu",
) -> AlignResult:
    """Detect one face per image with MTCNN and align it onto the ArcFace template.

    ``images``: a sequence of PIL images, uint8 ``(H, W, 3)`` RGB arrays or ``(3, H, W)``
    tensors (float in [-1, 1] or uint8), sizes may differ; or a ``(B, 3, H, W)`` tensor. When
    several faces are found, the largest box (``select="largest"``) or the most confident one
    (``"confident"``) is kept. Needs the ``facelab-core[detect]`` extra.
    """
    if detector is None:
        detector = FaceDetector(device=device)
    if isinstance(images, torch.Tensor):
        expect_rank(images, 4, "images", "B x 3 x H x W")
        items = list(images)
    else:
        items = list(images)
    if not items:
        raise ShapeError("detect_and_align: expected at least one image, got none")
    arrays = [_to_uint8_hwc(img, i) for i, img in enumerate(items)]
    boxes, points, found = detector.detect(arrays, select=select)

    n = len(arrays)
    aligned = torch.full((n, 3, size, size), -1.0, dtype=torch.float32)
    hit = np.flatnonzero(found)
    if hit.size:
        # one batched warp: pad the faces' images to a common size with the border value
        hmax = max(arrays[i].shape[0] for i in hit)
        wmax = max(arrays[i].shape[1] for i in hit)
        canvas = torch.full((hit.size, 3, hmax, wmax), -1.0, dtype=torch.float32)
        for j, i in enumerate(hit):
            h, w = arrays[i].shape[:2]
            src = items[i]
            if isinstance(src, torch.Tensor) and src.is_floating_point():
                canvas[j, :, :h, :w] = src.detach().float().cpu()  # keep full precision
            else:
                chw = torch.from_numpy(np.ascontiguousarray(arrays[i].transpose(2, 0, 1)))
                canvas[j, :, :h, :w] = (chw.float() / 255.0 - 0.5) / 0.5
        lm = torch.from_numpy(points[hit].astype(np.float64))
        aligned[torch.from_numpy(hit)] = align_faces(canvas, lm, size, border_value=-1.0)
    return AlignResult(
        aligned=aligned,
        landmarks=torch.from_numpy(points),
        boxes=torch.from_numpy(boxes),
        found_mask=torch.from_numpy(found),
    )
