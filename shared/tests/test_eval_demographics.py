import math

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from facelab.core.errors import RangeError, ShapeError
from facelab.core.eval import demographic_stats, verify


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_groups(seed=0, per_group=200, noise=(0.5, 0.9, 1.3), d=16):
    """Three groups whose genuine pairs get noisier: accuracy should drop group by group."""
    rng = np.random.default_rng(seed)
    e1, e2, same, groups = [], [], [], []
    for name, nz in zip(("african", "asian", "caucasian"), noise):
        s = np.tile(np.r_[np.ones(10, bool), np.zeros(10, bool)], per_group // 20)
        a = rng.normal(size=(per_group, d))
        b = np.where(
            s[:, None], a + nz * rng.normal(size=(per_group, d)), rng.normal(size=(per_group, d))
        )
        e1.append(_unit(a))
        e2.append(_unit(b))
        same.append(s)
        groups += [name] * per_group
    return np.concatenate(e1), np.concatenate(e2), np.concatenate(same), np.array(groups)


def test_group_stats_against_direct_computation():
    e1, e2, same, groups = make_groups()
    stats = demographic_stats(e1, e2, same, groups, fars=(0.05, 0.1))
    accs = []
    for g in ("african", "asian", "caucasian"):
        m = groups == g
        ref = verify(e1[m], e2[m], same[m])
        assert stats.groups[g].accuracy == ref.accuracy
        assert stats.groups[g].n_pairs == 200
        cos = np.sum(e1[m] * e2[m], 1)
        fpr, tpr, _ = roc_curve(same[m], cos, drop_intermediate=False)
        for f in (0.05, 0.1):  # insightface's nearest-FPR rule, written out
            d = np.abs(fpr - f)
            i = np.flatnonzero(d == d.min()).max()
            assert stats.groups[g].tar[f] == tpr[i]
        accs.append(ref.accuracy)
    accs = np.array(accs)
    assert accs[0] > accs[1] > accs[2]  # the construction is visible
    assert stats.mean == pytest.approx(accs.mean())
    assert stats.std == pytest.approx(accs.std())
    assert stats.to == pytest.approx(accs.mean() - accs.std())
    assert stats.ser == pytest.approx((1 - accs.min()) / (1 - accs.max()))
    s1 = demographic_stats(e1, e2, same, groups, ddof=1, fars=())
    assert s1.std == pytest.approx(accs.std(ddof=1))
    d = stats.to_dict()
    assert (
        set(d["groups"]) == {"african", "asian", "caucasian"} and "tar@0.05" in d["groups"]["asian"]
    )


def test_ser_with_a_perfect_group():
    e1, e2, same, groups = make_groups(seed=1, noise=(0.0, 1.0, 1.0))
    stats = demographic_stats(e1, e2, same, groups, fars=())
    assert stats.groups["african"].accuracy == 1.0
    assert math.isinf(stats.ser)


def test_demographics_bad_inputs():
    e1, e2, same, groups = make_groups(per_group=100)
    with pytest.raises(ShapeError, match="groups"):
        demographic_stats(e1, e2, same, groups[:-1])
    with pytest.raises(RangeError, match="at least 2 groups"):
        demographic_stats(e1, e2, same, np.full(len(same), "x"))
    with pytest.raises(RangeError, match="fewer than nfolds"):
        demographic_stats(e1, e2, same, np.r_[groups[:-5], ["tiny"] * 5])
    with pytest.raises(RangeError, match="issame"):
        demographic_stats(e1, e2, same * 3, groups)
    with pytest.raises(RangeError, match="fars"):
        demographic_stats(e1, e2, same, groups, fars=(2.0,))
