import numpy as np
import pytest
import torch

from facelab.core.errors import RangeError, ShapeError
from facelab.slerpface import get_protector, plot_unlinkability, unlinkability
from facelab.slerpface.evaluate import link_scores


def d_sys_reference(mated, nonmated, omega=1.0, bins=50):
    """Gomez-Barrero et al. 2018 written out bin by bin (independent of the vectorized code)."""
    lo = min(mated.min(), nonmated.min())
    hi = max(mated.max(), nonmated.max())
    width = (hi - lo) / bins
    centers, d_local, dens_m = [], [], []
    for b in range(bins):
        a, z = lo + b * width, lo + (b + 1) * width
        last = b == bins - 1
        in_m = ((mated >= a) & ((mated <= z) if last else (mated < z))).sum()
        in_n = ((nonmated >= a) & ((nonmated <= z) if last else (nonmated < z))).sum()
        pm = in_m / (mated.size * width)
        pn = in_n / (nonmated.size * width)
        if pm == 0:
            d = 0.0
        elif pn == 0:
            d = 1.0
        else:
            lr = omega * pm / pn
            d = 2 * lr / (1 + lr) - 1 if lr > 1 else 0.0
        centers.append((a + z) / 2)
        d_local.append(d)
        dens_m.append(pm)
    f = np.array(d_local) * np.array(dens_m)
    c = np.array(centers)
    return float(np.sum((f[1:] + f[:-1]) / 2 * np.diff(c))), np.array(d_local)


def test_matches_a_bin_by_bin_reference():
    rng = np.random.default_rng(0)
    mated = rng.normal(0.6, 0.15, 700)
    nonmated = rng.normal(0.3, 0.2, 2000)
    ours = unlinkability(mated, nonmated, bins=50)
    ref, d_ref = d_sys_reference(mated, nonmated, bins=50)
    assert ours.d_sys == pytest.approx(ref, abs=1e-12)
    np.testing.assert_allclose(ours.d_local, d_ref, atol=1e-12)
    two = unlinkability(mated, nonmated, omega=2.0, bins=50)
    assert two.d_sys == pytest.approx(
        d_sys_reference(mated, nonmated, omega=2.0, bins=50)[0], abs=1e-12
    )


def test_limits():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, 1000)
    assert unlinkability(a, a.copy()).d_sys == 0.0  # identical samples: LR = 1 everywhere
    far = unlinkability(a + 100, a)  # disjoint supports: fully linkable
    assert far.d_sys == pytest.approx(1.0, abs=0.02)
    assert np.all((far.d_local >= 0) & (far.d_local <= 1))


def test_protected_templates_unlinkable_unprotected_linkable(make_ids):
    t, w, labels = make_ids(n_ids=400, per_id=2)
    res = {}
    for name in ("slerpface", "unprotected"):
        mated, nonmated = link_scores(get_protector(name), t, w, labels, seed=0)
        res[name] = unlinkability(mated, nonmated).d_sys
        half = nonmated.shape[0] // 2
        res[name + "_null"] = unlinkability(nonmated[:half], nonmated[half:]).d_sys
    assert res["unprotected"] > 0.95
    assert res["slerpface"] < 0.3  # near the estimator's floor at this sample size ...
    assert res["slerpface_null"] < 0.2  # ... which is this (two non-mated halves)


def test_plot_writes_an_image(tmp_path):
    rng = np.random.default_rng(2)
    res = unlinkability(rng.normal(1, 1, 300), rng.normal(0, 1, 900))
    path = plot_unlinkability(res, tmp_path / "u.png", title="test")
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_bad_inputs():
    with pytest.raises(ShapeError):
        unlinkability([0.1], [0.2, 0.3])
    with pytest.raises(RangeError, match="finite"):
        unlinkability([0.1, float("nan")], [0.2, 0.3])
    with pytest.raises(RangeError, match="omega"):
        unlinkability([0.1, 0.2], [0.2, 0.3], omega=0)
    with pytest.raises(RangeError, match="bins"):
        unlinkability([0.1, 0.2], [0.2, 0.3], bins=1)
    with pytest.raises(RangeError, match="3 identities"):
        link_scores(
            get_protector("unprotected"),
            torch.randn(4, 3, 16),
            torch.full((4, 3), 1 / 3),
            torch.arange(4),
        )
