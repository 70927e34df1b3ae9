import numpy as np
import pytest
import torch

from facelab.core.errors import FormatError, RangeError, ShapeError
from facelab.slerpface import get_protector, plot_unlinkability, unlinkability
from facelab.slerpface.baselines import link_group_norms
from facelab.slerpface.evaluate import alpha_sweep, d_sys_with_null, link_scores, sweep_markdown


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
    # calibration (`uv run python scripts/calibrate_claims.py slerpface-unlink`, seeds default + 1..4 x torch threads 1 and 2, 10 runs;
    # the same numbers at both thread counts): unprotected 0.981..0.999, slerpface 0.193..0.247,
    # slerpface null 0.079..0.109
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


def test_link_group_norms_equals_a_per_row_loop(make_ids):
    t, w, _ = make_ids(n_ids=6, per_id=2, m=9)
    prot = get_protector("slerpface")
    keys = prot.new_keys(12, 9, 16, seed=3)
    a = prot.enroll(t, w, keys, generator=torch.Generator().manual_seed(0))
    b = prot.enroll(t.flip(0), w.flip(0), keys, generator=torch.Generator().manual_seed(1))
    got = link_group_norms(a, b).double().numpy()
    ga, gb = a["templates"].double().numpy(), b["templates"].double().numpy()
    for i in range(12):
        na = [np.sqrt(sum(v * v for v in ga[i, j])) for j in range(9)]
        nb = [np.sqrt(sum(v * v for v in gb[i, j])) for j in range(9)]
        ref = np.dot(na, nb) / (np.linalg.norm(na) * np.linalg.norm(nb))
        assert got[i] == pytest.approx(ref, abs=1e-6)
        # the stored group norms are the attention weights, whatever the key
        np.testing.assert_allclose(na, w[i].double().numpy(), atol=1e-5)
    with pytest.raises(FormatError, match="group templates"):
        link_group_norms({"bits": torch.zeros(2, 8)}, a)


def test_group_norms_link_identities_whose_weights_agree(make_ids):
    """SlerpFace stores w_i as the norm of group i: identity-dependent attention weights link two
    protections without any key; weights drawn independently of identity do not."""
    t, w, labels = make_ids(n_ids=400, per_id=2)
    prot = get_protector("slerpface")
    mated, nonmated = link_scores(prot, t, w, labels, seed=0, link=link_group_norms)
    linked, _ = d_sys_with_null(mated, nonmated)
    w_free = torch.softmax(
        0.5 * torch.randn(w.shape, generator=torch.Generator().manual_seed(5)), -1
    )
    mated, nonmated = link_scores(prot, t, w_free, labels, seed=0, link=link_group_norms)
    free, null = d_sys_with_null(mated, nonmated)
    # calibration (slerpface-unlink, 10 runs): linked 0.903..0.965, free 0.035..0.103,
    # null 0.073..0.092
    assert linked.d_sys > 0.8
    assert free.d_sys < 0.3 and null < 0.2


def test_alpha_sweep_trades_linkability_for_accuracy(make_ids):
    t, w, labels = make_ids(n_ids=300, per_id=2, noise=1.2)
    rows = alpha_sweep(t, w, labels, (0.5, 0.9, 1.0), num_pairs=600, seed=0)
    assert [r["alpha"] for r in rows[:3]] == [0.5, 0.9, 1.0] and np.isnan(rows[3]["alpha"])
    d = [r["d_sys"] for r in rows[:3]]
    acc = [r["accuracy"] for r in rows[:3]]
    # calibration (slerpface-unlink, 10 runs): d(0.5) - d(0.9) 0.679..0.747, d(0.5) - d(1.0)
    # 0.682..0.760, acc(0.5) - acc(1.0) 0.350..0.383, group norms only 0.778..0.858
    assert d[0] > d[1] + 0.2 and d[0] > d[2] + 0.2  # rotating further hides more ...
    assert acc[0] > acc[2]  # ... and costs accuracy
    assert rows[3]["d_sys"] > 0.6  # the weights link whatever alpha is (null here ~0.1)
    table = sweep_markdown(rows)
    assert table.count("\n") == 6 and "group norms only" in table
    with pytest.raises(RangeError, match="at least one"):
        alpha_sweep(t, w, labels, ())
    with pytest.raises(RangeError, match="alpha"):
        alpha_sweep(t, w, labels, (1.5,))
