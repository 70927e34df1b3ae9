"""verify() against a brute-force transcription of insightface's 10-fold protocol.

The reference below loops over folds (sklearn KFold) and over every threshold, exactly like
``arcface_torch/eval/verification.py``; its VAL@FAR step evaluates ``interp1d(far, thr,
kind='slinear')`` the way scipy <= 1.8 did (a degree-1 ``scipy.interpolate.BSpline`` with knots
``[x0, x..., x_last]``; newer scipy refuses the repeated FAR values).
"""

import numpy as np
import pytest
import torch
from scipy.interpolate import BSpline
from sklearn.model_selection import KFold

from facelab.core.errors import (
    FacelabTypeError,
    NonFiniteError,
    RangeError,
    ShapeError,
    ZeroVectorError,
)
from facelab.core.eval import verify, verify_interleaved


def _interp1d_slinear_scipy18(x, y, v):
    order = np.argsort(x, kind="mergesort")
    x, y = x[order], y[order]
    assert x[0] <= v <= x[-1]  # interp1d's bounds_error
    return BSpline(np.r_[x[0], x, x[-1]], y, k=1)(v)


def _accuracy(th, dist, same):
    pred = dist < th
    tp = np.sum(pred & same)
    fp = np.sum(pred & ~same)
    tn = np.sum(~pred & ~same)
    fn = np.sum(~pred & same)
    tpr = 0 if tp + fn == 0 else tp / (tp + fn)
    fpr = 0 if fp + tn == 0 else fp / (fp + tn)
    return tpr, fpr, (tp + tn) / dist.size


def _val_far(th, dist, same):
    pred = dist < th
    return np.sum(pred & same) / np.sum(same), np.sum(pred & ~same) / np.sum(~same)


def brute_force(e1, e2, same, nfolds=10, far_target=1e-3):
    dist = np.sum(np.square(e1 - e2), 1)
    idx = np.arange(len(same))
    folds = list(KFold(nfolds, shuffle=False).split(idx)) if nfolds > 1 else [(idx, idx)]
    thr = np.arange(0, 4, 0.01)
    acc, best, tprs = [], [], []
    for train, test in folds:
        acc_train = np.array([_accuracy(t, dist[train], same[train])[2] for t in thr])
        b = int(np.argmax(acc_train))
        best.append(thr[b])
        acc.append(_accuracy(thr[b], dist[test], same[test])[2])
        tprs.append([_accuracy(t, dist[test], same[test])[0] for t in thr])
    vthr = np.arange(0, 4, 0.001)
    val, far = [], []
    for train, test in folds:
        far_train = np.array([_val_far(t, dist[train], same[train])[1] for t in vthr])
        if np.max(far_train) >= far_target:
            th = _interp1d_slinear_scipy18(far_train, vthr, far_target)
        else:
            th = 0.0
        v, f = _val_far(th, dist[test], same[test])
        val.append(v)
        far.append(f)
    return {
        "accuracy": np.mean(acc),
        "accuracy_std": np.std(acc),
        "best": np.array(best),
        "val": np.mean(val),
        "val_std": np.std(val),
        "far": np.mean(far),
        "tpr": np.mean(tprs, 0),
    }


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def structured_pairs(n=600, d=16, noise=0.9, seed=0, block=30):
    """Genuine pairs = a vector and a noisy copy; impostors = independent vectors; the labels
    come in blocks so every fold holds both kinds (like LFW's 300+300 per fold)."""
    rng = np.random.default_rng(seed)
    same = np.tile(np.r_[np.ones(block, bool), np.zeros(block, bool)], n // (2 * block))
    a = rng.normal(size=(n, d))
    b = np.where(same[:, None], a + noise * rng.normal(size=(n, d)), rng.normal(size=(n, d)))
    return _unit(a), _unit(b), same


def _assert_same(ours, ref):
    assert ours.accuracy == ref["accuracy"]
    assert ours.accuracy_std == ref["accuracy_std"]
    np.testing.assert_array_equal(ours.best_thresholds, ref["best"])
    assert ours.val == ref["val"]
    assert ours.val_std == ref["val_std"]
    assert ours.far == ref["far"]
    np.testing.assert_allclose(ours.tpr, ref["tpr"], rtol=0, atol=1e-15)


@pytest.mark.parametrize(("nfolds", "n"), [(10, 600), (7, 300)])  # 300 % 7: uneven folds
def test_verify_equals_brute_force(nfolds, n):
    e1, e2, same = structured_pairs(n=n, seed=nfolds, block=10)
    ours = verify(e1, e2, same, nfolds, normalize=False)
    ref = brute_force(e1, e2, same, nfolds)
    _assert_same(ours, ref)
    assert 0.6 < ours.accuracy < 0.99  # a non-trivial operating point
    assert 0 < ours.val < 1 and ours.far > 0  # the interpolation branch ran


def test_verify_single_fold_trains_on_everything():
    e1, e2, same = structured_pairs(n=120, seed=3, block=10)
    _assert_same(verify(e1, e2, same, 1, normalize=False), brute_force(e1, e2, same, 1))


def test_val_threshold_zero_when_far_target_is_unreachable():
    # impostors antipodal (squared distance 4 > every threshold): training FAR is 0 everywhere,
    # insightface falls back to threshold 0 -> VAL = FAR = 0
    e1, e2, same = structured_pairs(n=200, seed=4, block=10, noise=0.3)
    e2 = np.where(same[:, None], e2, -e1)
    ours = verify(e1, e2, same, normalize=False)
    ref = brute_force(e1, e2, same)
    _assert_same(ours, ref)
    assert ours.val == 0.0 and ours.far == 0.0 and ours.accuracy > 0.9


def test_val_degenerate_spline_end():
    # two impostors are close (distances 0.5, 0.6), the others antipodal. A training part that
    # holds one of them has max FAR = 1/n_neg == far_target on a run of repeated values: the
    # scipy<=1.8 spline evaluates its degenerate last interval to 0 -> threshold 0.
    e1, e2, same = structured_pairs(n=200, seed=5, block=10, noise=0.3)
    e2 = np.where(same[:, None], e2, -e1)
    neg = np.flatnonzero(~same)
    for j, d2 in ((neg[3], 0.5), (neg[-4], 0.6)):
        c = 1 - d2 / 2  # cosine with squared distance d2
        ortho = _unit(np.r_[-e1[j, 1], e1[j, 0], np.zeros(e1.shape[1] - 2)][None])[0]
        ortho -= (ortho @ e1[j]) * e1[j]
        ortho /= np.linalg.norm(ortho)
        e2[j] = c * e1[j] + np.sqrt(1 - c * c) * ortho
    n_neg_train = int((~same).sum() * 9 / 10)
    far_target = 1 / n_neg_train
    ours = verify(e1, e2, same, far_target=far_target, normalize=False)
    ref = brute_force(e1, e2, same, far_target=far_target)
    _assert_same(ours, ref)


def test_normalization_and_input_types():
    e1, e2, same = structured_pairs(n=200, seed=6, block=10)
    base = verify(e1, e2, same, normalize=False)
    scaled = verify(torch.from_numpy(3 * e1).float(), torch.from_numpy(0.5 * e2), same.tolist())
    assert abs(scaled.accuracy - base.accuracy) < 1e-12
    np.testing.assert_array_equal(scaled.best_thresholds, base.best_thresholds)
    inter = np.empty((400, e1.shape[1]))
    inter[0::2], inter[1::2] = e1, e2
    assert verify_interleaved(inter, same, normalize=False).accuracy == base.accuracy
    d = base.to_dict()
    assert d["nfolds"] == 10 and d["n_pairs"] == 200 and len(d["fold_accuracies"]) == 10


def test_far_target_none_skips_val():
    e1, e2, same = structured_pairs(n=100, seed=7, block=10)
    r = verify(e1, e2, np.sort(same), far_target=None)  # genuine pairs last: folds one-sided
    assert np.isnan(r.val) and r.far_target is None
    with pytest.raises(RangeError, match="issame: VAL@FAR needs"):
        verify(e1, e2, np.sort(same))


def test_bad_inputs_name_the_argument():
    e1, e2, same = structured_pairs(n=100, seed=8, block=10)
    bad = e1.copy()
    bad[3, 2] = np.nan
    with pytest.raises(NonFiniteError, match="emb1"):
        verify(bad, e2, same)
    with pytest.raises(ShapeError, match="emb1/emb2"):
        verify(e1[:99], e2, same)
    with pytest.raises(ShapeError, match="issame"):
        verify(e1, e2, same[:99])
    with pytest.raises(RangeError, match="issame"):
        verify(e1, e2, np.where(same, 2, 0))
    with pytest.raises(ShapeError, match="emb1"):
        verify(np.zeros((0, 4)), np.zeros((0, 4)), np.zeros(0, bool))
    with pytest.raises(ShapeError, match="emb2"):
        verify(e1, e2[:, 0], same)
    with pytest.raises(FacelabTypeError, match="emb1"):
        verify(e1.astype(np.int64), e2, same)
    with pytest.raises(ZeroVectorError, match="emb2"):
        verify(e1, np.zeros_like(e2), same)
    with pytest.raises(RangeError, match="nfolds"):
        verify(e1, e2, same, 0)
    with pytest.raises(RangeError, match="far_target"):
        verify(e1, e2, same, far_target=1.5)
    with pytest.raises(ShapeError, match="embeddings"):
        verify_interleaved(e1[:99], same)


def test_counts_use_strict_less_than_on_exact_grid_values():
    # distances that sit exactly on the threshold grid: insightface predicts "same" only for
    # dist < threshold, so a pair at distance thr[k] is accepted from thr[k+1] on
    from facelab.core.eval.verification import ACCURACY_THRESHOLDS as thr
    from facelab.core.eval.verification import _fold_counts, fold_bounds

    dist = np.r_[thr[[0, 5, 5, 10, 399]], 0.123, 4.0]
    same = np.array([1, 1, 0, 0, 1, 0, 1], bool)
    bounds = fold_bounds(dist.size, 2)
    tp, fp = _fold_counts(dist, same, thr, bounds)
    for f in range(2):
        d, s = dist[bounds[f] : bounds[f + 1]], same[bounds[f] : bounds[f + 1]]
        np.testing.assert_array_equal(tp[f], [np.sum((d < t) & s) for t in thr])
        np.testing.assert_array_equal(fp[f], [np.sum((d < t) & ~s) for t in thr])
