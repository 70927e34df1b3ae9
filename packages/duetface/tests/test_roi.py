import math

import numpy as np
import pytest
import torch

from facelab.core.data.align import arcface_template
from facelab.core.errors import FacelabTypeError, RangeError, ShapeError, UnknownNameError
from facelab.duetface.roi import DEFAULT_ROI_MARGIN, RoiBuilder, hull_masks, template_roi


# ---- an independent reference: monotone-chain hull, exact distance to the polygon, per pixel
def _hull(points):
    pts = sorted(map(tuple, points))

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1])  # counter-clockwise in (x, y)


def _signed_distance(p, poly):
    """Distance from p to the convex polygon, negative inside."""
    n = len(poly)
    inside = True
    dmin = math.inf
    for i in range(n):
        a, b = poly[i], poly[(i + 1) % n]
        ab, ap = b - a, p - a
        if ab[0] * ap[1] - ab[1] * ap[0] < 0:
            inside = False
        t = min(1.0, max(0.0, float(ap @ ab) / float(ab @ ab)))
        dmin = min(dmin, float(np.linalg.norm(a + t * ab - p)))
    return -dmin if inside else dmin


def _reference(points, h, w, margin):
    poly = _hull(points)
    d = np.array(
        [[_signed_distance(np.array([x, y], float), poly) for x in range(w)] for y in range(h)]
    )
    return d


@pytest.mark.parametrize("margin", [0.0, 3.5])
def test_hull_masks_match_brute_force(margin):
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(3, 7, 2, generator=g) * torch.tensor([20.0, 16.0]) + 4
    masks = hull_masks(pts, (24, 28), margin)
    assert masks.shape == (3, 1, 24, 28) and masks.dtype == torch.float32
    for b in range(3):
        d = _reference(pts[b].double().numpy(), 24, 28, margin)
        sure = np.abs(d - margin) > 0.05  # the 64-gon is within 0.05 px of the exact boundary
        ours = masks[b, 0].numpy().astype(bool)
        np.testing.assert_array_equal(ours[sure], (d <= margin)[sure])
        assert sure.mean() > 0.9


def test_template_roi_covers_the_face_and_scales():
    roi = template_roi(112)[0, 0]
    pts = arcface_template(112)
    for x, y in pts.tolist():
        assert roi[round(y), round(x)] == 1  # every landmark is inside
    assert roi[2, 2] == 0 and roi[2, 109] == 0 and roi[60, 2] == 0  # corners/sides outside
    d = _reference(pts.numpy(), 112, 112, 0)
    m = DEFAULT_ROI_MARGIN * 112
    sure = np.abs(d - m) > 0.05
    np.testing.assert_array_equal(roi.numpy().astype(bool)[sure], (d <= m)[sure])
    small = template_roi(32)[0, 0]
    big_down = torch.nn.functional.adaptive_avg_pool2d(roi[None, None], 32)[0, 0]
    # the same region at another size: agree except along the boundary
    assert ((small - big_down).abs() > 0.5).float().mean() < 0.03


def test_roi_builder_modes():
    images = torch.rand(5, 3, 32, 32) * 2 - 1
    t = RoiBuilder("template")(images)
    assert t.shape == (5, 1, 32, 32)
    assert torch.equal(t[0], t[4]) and torch.equal(t[0], template_roi(32)[0])
    assert torch.equal(RoiBuilder("none")(images), torch.ones(5, 1, 32, 32))
    lm = torch.tensor([[[8.0, 8], [24, 8], [16, 24]]]).repeat(5, 1, 1)
    lm[1] += 4
    from_lm = RoiBuilder("template", margin=0.0)(images, lm)
    assert torch.equal(from_lm, hull_masks(lm, 32, 0.0))
    assert not torch.equal(from_lm[0], from_lm[1])


class FakeDetector:
    """Stands in for MTCNN: fixed points, no face in image 1."""

    def __init__(self):
        self.calls = 0

    def detect(self, arrays):
        self.calls += 1
        n = len(arrays)
        assert all(a.dtype == np.uint8 and a.shape == (32, 32, 3) for a in arrays)
        pts = np.tile(
            np.array([[10, 12], [22, 12], [16, 18], [11, 24], [21, 24]], np.float32), (n, 1, 1)
        )
        found = np.ones(n, bool)
        found[1] = False
        pts[1] = np.nan
        return np.zeros((n, 4), np.float32), pts, found


def test_mtcnn_mode_uses_detected_points_and_warns_on_misses():
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    det = FakeDetector()
    builder = RoiBuilder("mtcnn", margin=0.1, detector=det)
    with pytest.warns(UserWarning, match="1 of 3 images"):
        roi = builder(images)
    expected = hull_masks(
        torch.tensor(det.detect([np.zeros((32, 32, 3), np.uint8)] * 3)[1][0]), 32, 3.2
    )
    assert torch.equal(roi[0], expected[0]) and torch.equal(roi[2], expected[0])
    assert torch.equal(roi[1], builder.template(32, 32, "cpu")[0])  # the fallback


def test_bad_inputs():
    with pytest.raises(UnknownNameError):
        RoiBuilder("pfld")
    with pytest.raises(RangeError):
        RoiBuilder("template", margin=-0.1)
    with pytest.raises(ShapeError):
        hull_masks(torch.rand(2, 2, 2), 32)  # fewer than 3 points
    with pytest.raises(ShapeError):
        hull_masks(torch.rand(2, 5, 3), 32)
    with pytest.raises(FacelabTypeError):
        hull_masks(torch.ones(2, 5, 2, dtype=torch.long), 32)
    with pytest.raises(ValueError, match="NaN"):
        hull_masks(torch.full((1, 5, 2), float("nan")), 32)
    with pytest.raises(ShapeError):
        RoiBuilder()(torch.rand(2, 3, 32, 32), torch.rand(3, 5, 2))  # one set per image
    with pytest.raises(RangeError):
        RoiBuilder("mtcnn", detector=FakeDetector())(torch.full((1, 3, 32, 32), 2.0))
