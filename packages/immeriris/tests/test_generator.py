"""The procedural generator: determinism, geometry that matches the pixels, and the nuisance
factors doing what they say."""

import math

import pytest
import torch

from facelab.core.errors import FacelabTypeError, RangeError, ShapeError
from facelab.immeriris.generator import (
    BRIGHTNESS_LEVELS,
    CENTRE_GAZE,
    GAZE_POINTS,
    OcularConfig,
    OcularDataset,
)
from facelab.immeriris.geometry import ellipse_inside

SMALL = OcularConfig(size=64, repeats=1)


def _index(ds, subject, gaze, level, eye, rep=0):
    cap = (gaze * BRIGHTNESS_LEVELS + level) * ds.config.repeats + rep
    return (subject * ds.captures_per_subject + cap) * 2 + eye


def test_layout_and_labels():
    ds = OcularDataset(3, SMALL, seed=0)
    assert len(ds) == 3 * GAZE_POINTS * BRIGHTNESS_LEVELS * 2
    md = ds.metadata()
    assert torch.equal(md["eye"][0::2], torch.zeros(len(ds) // 2, dtype=torch.long))
    assert torch.equal(md["capture"][0::2], md["capture"][1::2])  # the two eyes of a capture
    assert torch.equal(md["label"], md["subject"] * 2 + md["eye"])
    i = _index(ds, 1, 7, 9, 1)
    assert (
        int(md["subject"][i]),
        int(md["gaze_point"][i]),
        int(md["level"][i]),
        int(md["eye"][i]),
    ) == (1, 7, 9, 1)
    x, y = ds[i]
    assert x.shape == (1, 64, 64) and x.dtype == torch.float32 and int(y) == 3
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    # on the 8-bit grid
    assert torch.allclose(((x + 1) * 127.5).round(), (x + 1) * 127.5, atol=1e-4)


def test_deterministic_and_independent_of_batch_and_dataset():
    a = OcularDataset(4, SMALL, seed=5)
    b = OcularDataset(6, SMALL, seed=5)  # more subjects: subject k must look the same
    idx = torch.tensor([0, 1, 77, 300, 301, 700])
    one = a.render(idx)
    assert torch.equal(one, b.render(idx))
    assert torch.equal(one[2:3], a.render(idx[2:3]))  # alone vs in a batch
    shifted = OcularDataset(2, SMALL, seed=5, subject_offset=2)  # global subjects 2, 3
    k = _index(a, 2, 4, 5, 0)
    assert torch.equal(a.render([k]), shifted.render([_index(shifted, 0, 4, 5, 0)]))
    other = OcularDataset(4, SMALL, seed=6).render(idx)
    assert (other - one).abs().mean() > 0.05
    # subsets of captures pick the same images as the full grid
    sub = OcularDataset(4, SMALL, seed=5, captures_per_subject=10)
    j = 13
    cap, subj, eye = int(sub.capture[j]), int(sub.subject[j]), int(sub.eye[j])
    full = (subj * a.captures_per_subject + cap) * 2 + eye
    assert torch.equal(sub.render([j]), a.render([full]))


def test_truth_matches_pixels():
    ds = OcularDataset(
        4, OcularConfig(size=96, repeats=1, p_blink=0.0, p_glare=0.0, p_motion=0.0), seed=2
    )
    idx = torch.tensor([_index(ds, s, CENTRE_GAZE, 5, e) for s in range(4) for e in range(2)])
    b = ds.render_truth(idx)
    coords = torch.arange(96) + 0.5
    in_pupil = ellipse_inside(b.pupil * torch.tensor([1, 1, 0.8, 0.8, 1]), coords, coords) < 1
    gray = (b.images[:, 0] + 1) / 2
    pupil_mean = (gray * in_pupil).sum((1, 2)) / in_pupil.sum((1, 2))
    iris_mean = (gray * b.visible).sum((1, 2)) / b.visible.sum((1, 2))
    assert bool((pupil_mean < 0.45 * iris_mean).all())  # the pupil ellipse sits on dark pixels
    annulus = (ellipse_inside(b.iris, coords, coords) < 1.05) & (
        ellipse_inside(b.pupil, coords, coords) > 0.9
    )
    assert bool((b.visible & ~annulus).sum() == 0)  # visible iris lies between the ellipses
    assert set(b.quality) == {"eyelid", "eyelash", "dilation", "gaze", "specular", "blur"}


def test_gaze_makes_ellipses_and_perspective():
    cfg = OcularConfig(size=96, repeats=1, gaze_angle_deg=25.0)
    ds = OcularDataset(6, cfg, seed=3)
    centre = ds.render_truth([_index(ds, s, CENTRE_GAZE, 5, 0) for s in range(6)])
    side = ds.render_truth([_index(ds, s, 3, 5, 0) for s in range(6)])  # middle row, left
    ratio_c = centre.iris[:, 3] / centre.iris[:, 2]
    ratio_s = side.iris[:, 3] / side.iris[:, 2]
    assert bool((ratio_c > 0.95).all())
    # foreshortening about cos(25 + the view angle of the shifted iris)
    assert bool((ratio_s < 0.93).all()) and bool((ratio_s > 0.7).all())
    assert bool((centre.quality["gaze"] < 6).all()) and bool((side.quality["gaze"] > 20).all())
    # the short axis of the side-gaze ellipse is horizontal (the eye turned about the vertical)
    assert bool((torch.cos(side.iris[:, 4]).abs() < 0.35).all())
    # perspective: the pupil and iris ellipses are not concentric off-axis
    off = (side.iris[:, :2] - side.pupil[:, :2]).norm(dim=1)
    assert float(off.mean()) > 0.2


def test_nuisances_cause_their_quality_factors():
    base = dict(size=64, repeats=1)
    n = 4
    pick = lambda ds: torch.arange(0, len(ds), 7)  # noqa: E731
    q = {}
    for name, cfg in {
        "calm": OcularConfig(
            **base, p_blink=0.0, p_heavy_lashes=0.0, p_glare=0.0, p_motion=0.0, p_dilation=0.0
        ),
        "blink": OcularConfig(**base, p_blink=1.0),
        "glare": OcularConfig(**base, p_glare=1.0),
        "motion": OcularConfig(**base, p_motion=1.0),
        "lashes": OcularConfig(**base, p_heavy_lashes=1.0),
    }.items():
        ds = OcularDataset(n, cfg, seed=4)
        q[name] = ds.render_truth(pick(ds)).quality
    assert q["blink"]["eyelid"].mean() > q["calm"]["eyelid"].mean() + 0.15
    assert q["glare"]["specular"].mean() > 2 * q["calm"]["specular"].mean()
    assert float(q["motion"]["blur"].min()) >= 3.0 * 64 / 128 - 1e-4
    assert float(q["calm"]["blur"].max()) <= 1.2 * 64 / 128 + 1e-4
    assert q["lashes"]["eyelash"].mean() > 1.5 * q["calm"]["eyelash"].mean()


def test_brightness_level_drives_the_pupil():
    ds = OcularDataset(8, OcularConfig(size=48, repeats=1, p_dilation=0.0), seed=1)
    md = ds.metadata()
    ratio = ds.params(torch.arange(len(ds)))["ratio"]
    dark = ratio[md["level"] <= 1].mean()
    bright = ratio[md["level"] >= 9].mean()
    assert dark > bright + 0.15  # dark screen, dilated pupil


def test_bad_inputs():
    with pytest.raises(RangeError, match="size"):
        OcularConfig(size=16)
    with pytest.raises(RangeError, match="gaze_angle_deg"):
        OcularConfig(gaze_angle_deg=60)
    with pytest.raises(RangeError, match="p_blink"):
        OcularConfig(p_blink=1.5)
    with pytest.raises(RangeError, match="captures_per_subject"):
        OcularDataset(2, SMALL, captures_per_subject=1000)
    with pytest.raises(RangeError, match="num_subjects"):
        OcularDataset(0, SMALL)
    with pytest.raises(FacelabTypeError):
        OcularDataset(2.5, SMALL)
    ds = OcularDataset(1, SMALL)
    with pytest.raises(IndexError):
        ds.render([len(ds)])
    with pytest.raises(FacelabTypeError):
        ds.render(torch.tensor([0.5]))
    with pytest.raises(ShapeError):
        ds.render(torch.zeros(2, 2, dtype=torch.long))
    assert math.isfinite(float(ds.render([0]).sum()))
