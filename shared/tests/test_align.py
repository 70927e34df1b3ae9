import math
import sys

import numpy as np
import pytest
import torch
from scipy.ndimage import affine_transform
from skimage import data

from facelab.core.data.align import (
    ARCFACE_TEMPLATE,
    FaceDetector,
    align_faces,
    arcface_template,
    detect_and_align,
    estimate_alignment,
    warp_affine,
)
from facelab.core.errors import FacelabTypeError, NonFiniteError, ShapeError

TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)  # specs/core.md


def similarity(scale, angle_deg, tx, ty):
    a = math.radians(angle_deg)
    c, s = scale * math.cos(a), scale * math.sin(a)
    return np.array([[c, -s, tx], [s, c, ty], [0.0, 0.0, 1.0]])


def apply(m, pts):
    return pts @ m[:2, :2].T + m[:2, 2]


def scipy_warp(img, m, out_shape, cval):
    """Reference warp: scipy affine_transform works in (row, col) = (y, x) and takes the
    output -> input map, with pixel centres at integers (as cv2.warpAffine)."""
    inv = np.linalg.inv(m)
    mat = np.array([[inv[1, 1], inv[1, 0]], [inv[0, 1], inv[0, 0]]])
    off = np.array([inv[1, 2], inv[0, 2]])
    return affine_transform(
        img, mat, off, output_shape=out_shape, order=1, mode="grid-constant", cval=cval
    )


def test_template_constant_and_scaling():
    np.testing.assert_array_equal(np.array(ARCFACE_TEMPLATE), TEMPLATE)
    np.testing.assert_allclose(arcface_template(224).numpy(), TEMPLATE * 2, rtol=0, atol=1e-12)


def test_warp_matches_scipy_per_sample():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 2, 50, 70, generator=g, dtype=torch.float64)
    mats = np.stack(
        [similarity(0.8, 15, 6, -4), similarity(1.3, -40, -20, 10), similarity(1.0, 0, 0.5, 0.25)]
    )
    for border in (0.0, -1.0):
        out = warp_affine(images, torch.from_numpy(mats), (40, 60), border_value=border)
        assert out.shape == (3, 2, 40, 60)
        for b in range(3):
            for c in range(2):
                ref = scipy_warp(images[b, c].numpy(), mats[b], (40, 60), border)
                np.testing.assert_allclose(out[b, c].numpy(), ref, atol=1e-10)


def gaussian_dots(points, shape, sigma):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    img = np.zeros(shape)
    for x, y in points:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return img


def centroids(img, points, radius):
    """Intensity-weighted centroid of the blob near each expected point."""
    out = []
    for x, y in points:
        x0, y0 = round(x), round(y)
        win = img[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1]
        yy, xx = np.mgrid[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1]
        out.append([(win * xx).sum() / win.sum(), (win * yy).sum() / win.sum()])
    return np.array(out)


@pytest.mark.parametrize("size", [112, 224])
def test_dots_land_on_the_template(size):
    """Dots drawn at a known similarity image of the template come back onto the template."""
    template = TEMPLATE * size / 112
    sims = [
        similarity(1.4, 25, 30, 10),
        similarity(0.9, -10, 70, 40),
        similarity(2.0, 180, 260, 230),
    ]
    sigma_out = 2.0 * size / 112
    images, marks = [], []
    for m in sims:
        pts = apply(m, TEMPLATE)  # landmarks in the source image do not depend on `size`
        scale = math.sqrt(abs(np.linalg.det(m[:2, :2])))
        dots = gaussian_dots(pts, (260, 300), 2.0 * scale)
        images.append(np.stack([dots, 0.5 * dots, -dots]))
        marks.append(pts)
    x = torch.tensor(np.stack(images), dtype=torch.float32)
    lm = torch.tensor(np.stack(marks), dtype=torch.float32)
    out = align_faces(x, lm, size=size)
    assert out.shape == (3, 3, size, size) and out.dtype == torch.float32
    for b in range(3):
        found = centroids(out[b, 0].double().numpy(), template, radius=round(4 * sigma_out))
        err = np.linalg.norm(found - template, axis=1)
        assert err.max() < 0.5, (b, err)
        np.testing.assert_allclose(out[b, 1].numpy(), 0.5 * out[b, 0].numpy(), atol=1e-5)
    # the estimated transforms are the inverses of the known ones
    mats = estimate_alignment(lm.double(), size).numpy()
    zoom = np.diag([size / 112, size / 112, 1.0])
    for b, m in enumerate(sims):
        np.testing.assert_allclose(mats[b], zoom @ np.linalg.inv(m), atol=1e-4)
    # one image without batch dimension gives the same result
    single = align_faces(x[1], lm[1], size=size)
    torch.testing.assert_close(single, out[1])


def test_align_bad_input():
    img = torch.zeros(2, 3, 40, 40)
    good = torch.tensor(TEMPLATE, dtype=torch.float32).expand(2, 5, 2) / 3
    with pytest.raises(ShapeError, match=r"expected shape \(B, 5, 2\)"):
        align_faces(img, good[:, :4])
    with pytest.raises(ShapeError, match="expected 2 faces"):
        align_faces(img, good[:1])
    bad = good.clone()
    bad[1, 2, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        align_faces(img, bad)
    with pytest.raises(ShapeError, match=r"landmarks5\[0\]: cannot estimate"):
        align_faces(img, torch.ones(2, 5, 2))
    with pytest.raises(FacelabTypeError):
        align_faces(img.to(torch.uint8), good)
    with pytest.raises(ShapeError):
        align_faces(torch.zeros(40, 40), good[0])


@pytest.fixture(scope="module")
def detector():
    # MTCNN runs many small convolutions: on a busy 2-core machine one intra-op thread is
    # ~10x faster than two contending ones
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield FaceDetector()
    torch.set_num_threads(threads)


def test_mtcnn_astronaut_one_face_and_blank(detector):
    astronaut = data.astronaut()
    boxes, _, _ = detector.mtcnn.detect(astronaut, landmarks=True)
    assert boxes is not None and len(boxes) == 1  # exactly one face
    blank = np.full((200, 300, 3), 255, np.uint8)
    res = detect_and_align([astronaut, blank], detector=detector)
    assert res.found_mask.tolist() == [True, False]
    assert res.aligned.shape == (2, 3, 112, 112)
    assert torch.all(res.aligned[1] == -1.0)
    assert torch.isnan(res.landmarks[1]).all() and torch.isnan(res.boxes[1]).all()
    x1, y1, x2, y2 = res.boxes[0].tolist()
    lm = res.landmarks[0].numpy()
    assert np.all((lm[:, 0] > x1) & (lm[:, 0] < x2) & (lm[:, 1] > y1) & (lm[:, 1] < y2))
    # detect again on the aligned crop: the eyes sit near the template eyes
    crop = ((res.aligned[0] + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    _, _, pts = detector.mtcnn.detect(crop, landmarks=True)
    assert pts is not None and len(pts) == 1
    eye_err = np.linalg.norm(np.asarray(pts[0], dtype=np.float64)[:2] - TEMPLATE[:2], axis=1)
    assert eye_err.max() < 4.0, eye_err
    # a float [-1, 1] tensor input gives the same crop as the uint8 array
    t = torch.from_numpy(astronaut).permute(2, 0, 1).float() / 127.5 - 1
    res_t = detect_and_align(t[None], detector=detector)
    torch.testing.assert_close(res_t.aligned[0], res.aligned[0], atol=1e-5, rtol=0)


def test_select_largest_or_most_confident(detector):
    from PIL import Image

    astronaut = data.astronaut()
    small = np.asarray(Image.fromarray(astronaut).resize((256, 256), Image.BILINEAR))
    canvas = np.zeros((512, 768, 3), np.uint8)
    canvas[:, :512] = astronaut
    canvas[:256, 512:] = small
    boxes, probs, _ = detector.mtcnn.detect(canvas, landmarks=True)
    assert len(boxes) == 2
    boxes, probs = np.asarray(boxes, np.float64), np.asarray(probs, np.float64)
    res = detect_and_align([canvas], detector=detector, select="largest")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    np.testing.assert_allclose(res.boxes[0].numpy(), boxes[np.argmax(areas)], rtol=1e-5)
    assert res.boxes[0, 0] < 512  # the large face on the left
    res = detect_and_align([canvas], detector=detector, select="confident")
    np.testing.assert_allclose(res.boxes[0].numpy(), boxes[np.argmax(probs)], rtol=1e-5)


def test_missing_detect_extra_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)
    with pytest.raises(ImportError, match=r"facelab-core\[detect\]"):
        detect_and_align([np.zeros((20, 20, 3), np.uint8)])
