"""IJB meta reading, template aggregation and 1:1 TAR@FAR on a synthetic IJB-C folder."""

import dataclasses

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from facelab.core.errors import FacelabTypeError, FormatError, KeyMismatchError, ShapeError
from facelab.core.eval import IJBImages, aggregate_templates, ijb_verification, load_ijb_meta
from facelab.core.eval.ijb import template_pair_scores


def make_ijb(root, seed=0, n_subjects=12, dim=8):
    """A tiny IJB-C folder: per subject 2 templates, each with 1-3 media of 1-3 images."""
    rng = np.random.default_rng(seed)
    meta = root / "meta"
    meta.mkdir(parents=True)
    centers = rng.normal(size=(n_subjects, dim))
    names, tids, mids, feats, subj = [], [], [], [], []
    tid, mid, k = 1, 100, 0
    for s in range(n_subjects):
        for _ in range(2):
            for _ in range(rng.integers(1, 4)):
                for _ in range(rng.integers(1, 4)):
                    k += 1
                    names.append(f"img/{k}.jpg")
                    tids.append(tid)
                    mids.append(mid)
                    feats.append((centers[s] + 0.8 * rng.normal(size=dim)) * rng.uniform(0.5, 3))
                mid += 1
            subj.append(s)
            tid += 1
    # one media shared by two templates (happens in IJB-C): must be averaged per template
    mids[-1] = mids[0]
    lines_tm = [f"{n} {t} {m}" for n, t, m in zip(names, tids, mids)]
    (meta / "ijbc_face_tid_mid.txt").write_text("\n".join(lines_tm) + "\n")
    lm = rng.uniform(20, 90, size=(len(names), 10))
    face = rng.uniform(0.5, 1.0, size=len(names))
    lines_lm = [
        " ".join([n, *(f"{v:.3f}" for v in row), f"{f:.4f}"]) for n, row, f in zip(names, lm, face)
    ]
    (meta / "ijbc_name_5pts_score.txt").write_text("\n".join(lines_lm) + "\n")
    t_ids = np.arange(1, tid)
    subj = np.array(subj)
    p1, p2 = np.triu_indices(t_ids.size, 1)
    label = (subj[p1] == subj[p2]).astype(int)
    pairs = np.stack([t_ids[p1], t_ids[p2], label], 1)
    np.savetxt(meta / "ijbc_template_pair_label.txt", pairs, fmt="%d")
    return np.array(feats), np.array(tids), np.array(mids), lm, face, pairs


def brute_templates(feats, tids, mids):
    """insightface's image2template_feature as loops (mean per media inside each template,
    sum per template, normalize)."""
    out = {}
    for t in np.unique(tids):
        f, m = feats[tids == t], mids[tids == t]
        media = [f[m == u].mean(0) for u in np.unique(m)]
        s = np.sum(media, 0)
        out[t] = s / np.linalg.norm(s)
    return out


def _insightface_tars(scores, labels, fars):
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    out = {}
    for f in fars:
        _, i = min(zip(abs(fpr - f), range(len(fpr))))
        out[f] = tpr[i]
    return out


def test_load_meta(tmp_path):
    feats, tids, mids, lm, face, pairs = make_ijb(tmp_path / "IJBC")
    meta = load_ijb_meta(tmp_path / "IJBC", "IJBC")
    assert meta.num_images == len(feats) and meta.num_pairs == len(pairs)
    np.testing.assert_array_equal(meta.template_ids, tids)
    np.testing.assert_array_equal(meta.media_ids, mids)
    np.testing.assert_allclose(meta.landmarks.reshape(-1, 10), lm, atol=1e-3)
    np.testing.assert_allclose(meta.faceness, face, atol=1e-4)
    np.testing.assert_array_equal(meta.pair_t1, pairs[:, 0])
    np.testing.assert_array_equal(meta.pair_labels, pairs[:, 2] == 1)
    assert meta.image_names[0] == "img/1.jpg" and meta.image_dir == tmp_path / "IJBC" / "loose_crop"
    # the release root (containing IJBC/) works too
    assert load_ijb_meta(tmp_path, "ijbc").num_images == len(feats)


@pytest.mark.parametrize("norm_weighting", [False, True])
def test_aggregation_and_tar_match_insightface_loops(tmp_path, norm_weighting):
    feats, tids, mids, _lm, _face, pairs = make_ijb(tmp_path, seed=1)
    meta = load_ijb_meta(tmp_path)
    tmpl, ids = aggregate_templates(feats, tids, mids, norm_weighting=norm_weighting)
    src = feats if norm_weighting else feats / np.linalg.norm(feats, axis=1, keepdims=True)
    ref = brute_templates(src, tids, mids)
    np.testing.assert_array_equal(ids, sorted(ref))
    np.testing.assert_allclose(tmpl.numpy(), np.stack([ref[t] for t in ids]), atol=1e-6)

    fars = (0.01, 0.05, 0.1, 0.3)
    tars, scores = ijb_verification(
        feats, meta, fars, norm_weighting=norm_weighting, return_scores=True
    )
    ref_scores = np.array([ref[a] @ ref[b] for a, b in pairs[:, :2]])
    np.testing.assert_allclose(scores, ref_scores, atol=1e-6)
    # TAR from our scores with the literal insightface rule (float32 rounding could reorder
    # scores against the float64 reference, so both rules see the same scores)
    assert tars == _insightface_tars(scores, pairs[:, 2], fars)
    assert 0 < tars[0.1] <= 1


def test_faceness_weighting(tmp_path):
    feats, tids, mids, _lm, _face, _pairs = make_ijb(tmp_path, seed=2)
    meta = load_ijb_meta(tmp_path)
    w = meta.faceness.astype(np.float64)
    tmpl, ids = aggregate_templates(feats, tids, mids, weights=w)
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    ref = brute_templates(unit * w[:, None], tids, mids)
    np.testing.assert_allclose(tmpl.numpy(), np.stack([ref[t] for t in ids]), atol=1e-6)
    _, s1 = ijb_verification(feats, meta, 0.1, faceness_weighting=True, return_scores=True)
    _, s0 = ijb_verification(feats, meta, 0.1, return_scores=True)
    assert not np.allclose(s0, s1)


def test_ijb_bad_inputs(tmp_path):
    feats, tids, mids, *_ = make_ijb(tmp_path / "a", seed=3)
    meta = load_ijb_meta(tmp_path / "a")
    with pytest.raises(ShapeError, match="features"):
        ijb_verification(feats[:-1], meta)
    with pytest.raises(ShapeError, match="media_ids"):
        aggregate_templates(feats, tids, mids[:-1])
    with pytest.raises(FacelabTypeError, match="template_ids"):
        aggregate_templates(feats, tids.astype(float), mids)
    tmpl, ids = aggregate_templates(feats, tids, mids)
    with pytest.raises(KeyMismatchError, match="pair_t2"):
        template_pair_scores(tmpl, ids, [ids[0]], [9999])
    # landmark file out of order with the template/media file
    lm_file = tmp_path / "a" / "meta" / "ijbc_name_5pts_score.txt"
    lines = lm_file.read_text().splitlines()
    lm_file.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    with pytest.raises(FormatError, match="line 1"):
        load_ijb_meta(tmp_path / "a")
    lm_file.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(FormatError, match="lines"):
        load_ijb_meta(tmp_path / "a")
    lm_file.write_text("\n".join(lines) + "\n")
    # a pair naming an unknown template
    pair_file = tmp_path / "a" / "meta" / "ijbc_template_pair_label.txt"
    pair_file.write_text(pair_file.read_text() + "1 99999 0\n")
    with pytest.raises(KeyMismatchError, match="second template"):
        load_ijb_meta(tmp_path / "a")
    pair_file.write_text("1 2\n")
    with pytest.raises(FormatError, match="3 integers"):
        load_ijb_meta(tmp_path / "a")
    with pytest.raises(FormatError, match="meta"):
        load_ijb_meta(tmp_path / "nothing")


def test_ijb_images_are_aligned_loose_crops(tmp_path):
    from PIL import Image

    _feats, _tids, _mids, *_ = make_ijb(tmp_path, seed=4)
    # landmarks at the ArcFace 112x112 template: the alignment is the identity on a 112 crop
    template = [
        (38.2946, 51.6963),
        (73.5318, 51.5014),
        (56.0252, 71.7366),
        (41.5493, 92.3655),
        (70.7299, 92.2041),
    ]
    lm_file = tmp_path / "meta" / "ijbc_name_5pts_score.txt"
    lines = lm_file.read_text().splitlines()
    pts = " ".join(f"{x} {y}" for x, y in template)
    lines[0] = f"{lines[0].split()[0]} {pts} 0.9"
    lm_file.write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:112, 0:112]
    img = np.stack([xx * 2, yy * 2, (xx + yy)], -1).astype(np.uint8) + rng.integers(
        0, 8, (112, 112, 3)
    ).astype(np.uint8)
    (tmp_path / "loose_crop" / "img").mkdir(parents=True)
    Image.fromarray(img).save(tmp_path / "loose_crop" / "img" / "1.png")
    meta = load_ijb_meta(tmp_path)
    meta = dataclasses.replace(meta, image_names=np.array(["img/1.png", *meta.image_names[1:]]))

    ds = IJBImages(meta)
    assert len(ds) == meta.num_images
    x = ds[0]
    assert x.shape == (3, 112, 112)
    expected = img.transpose(2, 0, 1) / 127.5 - 1
    assert np.abs(x.numpy() - expected).max() < 0.02
