import numpy as np
import pytest
import torch

from facelab.core.errors import (
    FacelabTypeError,
    NonFiniteError,
    RangeError,
    ShapeError,
    UnknownNameError,
    ZeroVectorError,
)
from facelab.core.eval import eer, fnmr_at_fmr, pair_scores, roc, search, tar_at_far

# Hand-computed case: 4 genuine (G) and 5 impostor (I) scores.
#   score: 0.9 G, 0.8 G, 0.7 I, 0.6 G, 0.5 I, 0.4 I, 0.3 G, 0.2 I, 0.1 I
# ROC points (accept score >= t): t=inf (0, 0), 0.9 (0, .25), 0.8 (0, .5), 0.7 (.2, .5),
#   0.6 (.2, .75), 0.5 (.4, .75), 0.4 (.6, .75), 0.3 (.6, 1), 0.2 (.8, 1), 0.1 (1, 1)
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
LABELS = np.array([1, 1, 0, 1, 0, 0, 1, 0, 0])


def test_tar_at_far_hand_computed():
    # conservative: best point with FPR <= target
    assert tar_at_far(SCORES, LABELS, [0.1, 0.3, 0.5, 0.7], rule="conservative") == {
        0.1: 0.5,
        0.3: 0.75,
        0.5: 0.75,
        0.7: 1.0,
    }
    # insightface: nearest FPR; at 0.1 the points FPR 0 and 0.2 are equally near (|.| == 0.1
    # exactly in float64) and the tie goes to the later point (FPR 0.2, TPR 0.75)
    got = tar_at_far(SCORES, LABELS, [0.1, 0.25, 0.35, 0.05])
    assert got == {0.1: 0.75, 0.25: 0.75, 0.35: 0.75, 0.05: 0.5}
    # a run of equal FPR takes its highest TPR: FPR 0.6 has TPR .75 and 1.0
    assert tar_at_far(SCORES, LABELS, 0.6) == {0.6: 1.0}


def test_eer_and_fnmr_hand_computed():
    # FNR = 1 - TPR crosses FPR on the segment (.2, .25) -> (.4, .25): EER = 0.25, reached at
    # the threshold 0.5 (first point where FNR <= FPR)
    value, thr = eer(SCORES, LABELS, return_threshold=True)
    assert value == pytest.approx(0.25, abs=1e-15)
    assert thr == 0.5
    assert fnmr_at_fmr(SCORES, LABELS, [0.1, 0.3]) == {0.1: 0.5, 0.3: 0.25}
    # a perfectly separated set has EER 0
    assert eer([3.0, 2.0, 1.0, 0.0], [1, 1, 0, 0]) == 0.0


def _insightface_rule(fpr, tpr, far):
    """Transcription of eval_ijbc.py: flip, then min over (|fpr - far|, index)."""
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    _, i = min(zip(abs(fpr - far), range(len(fpr))))
    return tpr[i]


def _brute_roc(scores, labels):
    """Every distinct score as a threshold (descending), counted by brute force."""
    thr = np.r_[np.inf, np.unique(scores)[::-1]]
    pos, neg = labels == 1, labels == 0
    tpr = np.array([np.sum(pos & (scores >= t)) / pos.sum() for t in thr])
    fpr = np.array([np.sum(neg & (scores >= t)) / neg.sum() for t in thr])
    return fpr, tpr


def test_tar_at_far_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    labels = (rng.random(3000) < 0.2).astype(int)
    scores = np.round(rng.normal(labels * 1.5, 1.0), 2)  # rounding creates many ties
    fpr, tpr = _brute_roc(scores, labels)
    fars = [1e-3, 3e-3, 1e-2, 0.05, 0.1, 0.3]
    ours = tar_at_far(scores, labels, fars)
    for f in fars:
        assert ours[f] == _insightface_rule(fpr, tpr, f)
    cons = tar_at_far(scores, labels, fars, rule="conservative")
    for f in fars:
        assert cons[f] == tpr[fpr <= f].max()
    # EER from the brute curve: linear crossing of FNR and FPR
    fnr = 1 - tpr
    b = int(np.argmax(fnr - fpr <= 0))
    a = b - 1
    alpha = (fnr[a] - fpr[a]) / ((fnr[a] - fpr[a]) - (fnr[b] - fpr[b]))
    assert eer(scores, labels) == pytest.approx(fpr[a] + alpha * (fpr[b] - fpr[a]), abs=1e-12)


def test_roc_auc_against_sklearn_and_accepts_tensors():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    labels = rng.random(500) < 0.5
    scores = rng.normal(labels.astype(float), 1.0)
    curve = roc(torch.from_numpy(scores), torch.from_numpy(labels))
    assert curve.auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert curve.n_genuine == labels.sum() and curve.n_impostor == (~labels).sum()
    assert np.isinf(curve.thresholds[0]) and curve.fpr[0] == 0 and curve.tpr[-1] == 1


def test_metric_bad_inputs():
    with pytest.raises(NonFiniteError, match="scores"):
        tar_at_far(np.r_[SCORES[:-1], np.nan], LABELS)
    with pytest.raises(ShapeError, match="labels"):
        tar_at_far(SCORES, LABELS[:-1])
    with pytest.raises(RangeError, match="labels"):
        tar_at_far(SCORES, np.r_[LABELS[:-1], 2])
    with pytest.raises(RangeError, match="labels"):
        eer(SCORES, np.ones(9))  # only one class
    with pytest.raises(ShapeError, match="scores"):
        roc(np.array([]), np.array([]))
    with pytest.raises(ShapeError, match="scores"):
        roc(SCORES[None], LABELS)
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(RangeError, match="fars"):
            tar_at_far(SCORES, LABELS, [1e-3, bad])
    with pytest.raises(RangeError, match="fmrs"):
        fnmr_at_fmr(SCORES, LABELS, 2.0)
    with pytest.raises(ShapeError, match="fars"):
        tar_at_far(SCORES, LABELS, [])
    with pytest.raises(UnknownNameError, match="rule"):
        tar_at_far(SCORES, LABELS, 0.1, rule="nearest")
    with pytest.raises(FacelabTypeError, match="labels"):
        roc(SCORES, np.array(list("abcdefghi")))


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("method", ["gather", "matmul", "auto"])
def test_pair_scores_equal_direct_cosine(method):
    rng = np.random.default_rng(2)
    f = rng.normal(size=(300, 24)).astype(np.float32)
    g = rng.normal(size=(200, 24)).astype(np.float32)
    i1 = rng.integers(0, 300, 5000)
    i2 = rng.integers(0, 200, 5000)
    ref = np.einsum("ij,ij->i", _unit(f.astype(np.float64))[i1], _unit(g.astype(np.float64))[i2])
    # memory_mb=1 forces many chunks/blocks (chunk < pairs, block < rows)
    got = pair_scores(f, i1, i2, features2=g, method=method, memory_mb=1)
    assert got.dtype == np.float32 and got.shape == (5000,)
    np.testing.assert_allclose(got, ref, atol=2e-6)
    same = pair_scores(torch.from_numpy(f), i1, i1 % 300, method=method)
    ref_same = np.einsum(
        "ij,ij->i", _unit(f.astype(np.float64))[i1], _unit(f.astype(np.float64))[i1 % 300]
    )
    np.testing.assert_allclose(same, ref_same, atol=2e-6)


def test_pair_scores_bad_inputs():
    f = np.ones((10, 4), np.float32)
    with pytest.raises(RangeError, match="index2"):
        pair_scores(f, [0, 1], [2, 10])
    with pytest.raises(RangeError, match="index1"):
        pair_scores(f, [-1, 1], [2, 3])
    with pytest.raises(ShapeError, match="index1/index2"):
        pair_scores(f, [0, 1, 2], [2, 3])
    with pytest.raises(ShapeError, match="index1"):
        pair_scores(f, [], [])
    with pytest.raises(ZeroVectorError, match="features"):
        pair_scores(np.zeros((10, 4), np.float32), [0], [1])
    with pytest.raises(NonFiniteError, match="features2"):
        pair_scores(f, [0], [1], features2=np.full((3, 4), np.inf, np.float32))
    with pytest.raises(ShapeError, match="features2"):
        pair_scores(f, [0], [1], features2=np.ones((3, 5), np.float32))
    with pytest.raises(UnknownNameError, match="method"):
        pair_scores(f, [0], [1], method="fast")


def test_search_equals_full_sort():
    rng = np.random.default_rng(3)
    gallery = rng.normal(size=(1000, 16)).astype(np.float32)
    probes = rng.normal(size=(70, 16)).astype(np.float32)
    res = search(probes, gallery, k=7, probe_chunk=16, gallery_chunk=128)
    sim = _unit(probes.astype(np.float64)) @ _unit(gallery.astype(np.float64)).T
    ref_idx = np.argsort(-sim, axis=1)[:, :7]
    np.testing.assert_array_equal(res.indices, ref_idx)
    np.testing.assert_allclose(res.scores, np.take_along_axis(sim, ref_idx, 1), atol=2e-6)
    # k larger than one gallery chunk, and k == gallery size
    res2 = search(probes[:5], gallery[:40], k=40, gallery_chunk=16)
    np.testing.assert_array_equal(res2.indices, np.argsort(-sim[:5, :40], axis=1))


def test_search_bad_inputs():
    g = np.ones((5, 3), np.float32)
    with pytest.raises(RangeError, match="k"):
        search(g, g, k=6)
    with pytest.raises(RangeError, match="k"):
        search(g, g, k=0)
    with pytest.raises(ShapeError, match="gallery"):
        search(g, np.ones((5, 4), np.float32))
    with pytest.raises(ShapeError, match="probes"):
        search(np.ones((0, 3), np.float32), g)
    with pytest.raises(FacelabTypeError, match="probes"):
        search(np.ones((2, 3), np.int64), g)


def test_search_bfloat16_rerank_returns_exact_scores():
    rng = np.random.default_rng(4)
    gallery = rng.normal(size=(3000, 32)).astype(np.float32)
    probes = gallery[:50] + 0.3 * rng.normal(size=(50, 32)).astype(np.float32)
    exact = search(probes, gallery, k=5, gallery_chunk=500)
    fast = search(probes, gallery, k=5, gallery_chunk=500, precision="bfloat16")
    np.testing.assert_array_equal(fast.indices, exact.indices)
    np.testing.assert_allclose(fast.scores, exact.scores, atol=1e-6)  # re-scored in float32
    with pytest.raises(UnknownNameError, match="precision"):
        search(probes, gallery, precision="float16")
