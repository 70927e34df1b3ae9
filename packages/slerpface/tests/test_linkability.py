"""Linkability attacks on stored templates of both storage formats: each attack against an
independent reference, and the claims: the paper format leaks the attention weights through the
group norms and the zero pattern; the keyed format does not, and its direct cosine links less."""

import itertools
import math

import numpy as np
import pytest
import torch

from facelab.core.errors import FormatError, RangeError, UnknownNameError
from facelab.slerpface import (
    ATTACKS,
    generate_keys,
    get_protector,
    link_aligned,
    link_sorted_norms,
    link_zero_counts,
    link_zero_histogram,
    linkability,
    permutation_null,
    protect,
    unlinkability,
)
from facelab.slerpface.evaluate import linkability_markdown, linkability_sweep
from facelab.slerpface.linkability import linkage, linkage_scores


def assert_close(actual, expected, atol=1e-6, rtol=0):
    """Max abs difference within ``atol`` (torch.testing.assert_close imports
    torch.distributed on first use: tens of seconds on a busy machine)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    diff = float((actual.double() - expected.double()).abs().max()) if actual.numel() else 0.0
    assert diff <= atol, f"max |difference| {diff:.3g} > {atol:.3g}"


def _stored(n=6, m=5, d=16, seed=0, storage="paper"):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, m, d, generator=g, dtype=torch.float64)
    w = torch.softmax(torch.randn(n, m, generator=g, dtype=torch.float64), -1)
    k = generate_keys(n, m, d, seed=seed + 1, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed + 2)
    return {"templates": protect(t, w, k, generator=gen, storage=storage)}


def test_aligned_attack_equals_brute_force_over_all_group_orders():
    a, b = _stored(seed=0), _stored(seed=10)
    ours = link_aligned(a, b).numpy()
    ga, gb = a["templates"].numpy(), b["templates"].numpy()
    for i in range(ga.shape[0]):
        ua = ga[i] / np.linalg.norm(ga[i], axis=1, keepdims=True)
        ub = gb[i] / np.linalg.norm(gb[i], axis=1, keepdims=True)
        best = max(
            np.mean([ua[j] @ ub[p[j]] for j in range(5)]) for p in itertools.permutations(range(5))
        )
        assert ours[i] == pytest.approx(best, abs=1e-12)


def test_count_and_norm_attacks_equal_numpy_references():
    a, b = _stored(seed=1), _stored(seed=2)
    ga, gb = a["templates"].numpy(), b["templates"].numpy()
    za, zb = (ga == 0).sum(-1), (gb == 0).sum(-1)
    ref_corr = [np.corrcoef(za[i], zb[i])[0, 1] for i in range(6)]
    np.testing.assert_allclose(link_zero_counts(a, b).numpy(), ref_corr, atol=1e-12)
    for i in range(6):
        ha = np.bincount(za[i], minlength=17)
        hb = np.bincount(zb[i], minlength=17)
        assert float(link_zero_histogram(a, b)[i]) == pytest.approx(-np.abs(ha - hb).sum() / 10)
        na = np.sort(np.linalg.norm(ga[i], axis=1))
        nb = np.sort(np.linalg.norm(gb[i], axis=1))
        ref = na @ nb / np.linalg.norm(na) / np.linalg.norm(nb)
        assert float(link_sorted_norms(a, b)[i]) == pytest.approx(ref, abs=1e-12)
    # constant zero counts (nothing dropped): correlation 0, not NaN
    flat = {"templates": torch.ones(3, 4, 16)}
    assert torch.equal(link_zero_counts(flat, flat), torch.zeros(3, dtype=torch.float64))
    with pytest.raises(FormatError, match="group templates"):
        link_aligned({"bits": torch.zeros(2, 8)}, a)


def test_every_attack_is_order_invariant_where_it_claims_to_be():
    """aligned, sorted norms and zero histograms do not change when the stored groups of one
    side are permuted arbitrarily; cosine, norms and zeros do."""
    a, b = _stored(n=20, m=8, seed=3), _stored(n=20, m=8, seed=4)
    perm = torch.stack(
        [torch.randperm(8, generator=torch.Generator().manual_seed(i)) for i in range(20)]
    )
    bp = {"templates": b["templates"].gather(1, perm.unsqueeze(-1).expand(-1, -1, 16))}
    for name in ("aligned", "sorted_norms", "zero_histogram"):
        assert_close(ATTACKS[name](a, bp), ATTACKS[name](a, b), atol=1e-12, rtol=0)
    for name in ("cosine", "norms", "zeros"):
        assert not torch.allclose(ATTACKS[name](a, bp), ATTACKS[name](a, b))


def test_permutation_null_and_linkage():
    rng = np.random.default_rng(0)
    same = rng.normal(0, 1, 400), rng.normal(0, 1, 1200)
    null = permutation_null(*same, rounds=40, seed=1)
    assert null.shape == (40,) and np.array_equal(null, permutation_null(*same, rounds=40, seed=1))
    res = linkage("x", *same, rounds=40)
    # identical distributions: D_sys is one more draw of its null
    assert res.d_sys < res.null_q95 + 0.05 and 0 < res.null_mean < 0.2
    apart = rng.normal(3, 1, 400), rng.normal(0, 1, 1200)
    far = linkage("y", *apart, rounds=20)
    assert far.d_sys == unlinkability(*apart).d_sys
    assert far.d_sys > 0.8 > far.null_q95
    assert far.to_dict()["mated"] == 400 and far.to_dict()["nonmated"] == 1200
    with pytest.raises(RangeError, match="rounds"):
        permutation_null(*same, rounds=0)


def test_bad_attack_names_and_methods(make_ids):
    t, w, labels = make_ids(n_ids=6, per_id=2, m=4)
    with pytest.raises(UnknownNameError, match="attacks"):
        linkability(get_protector("slerpface"), t, w, labels, ["telepathy"])
    with pytest.raises(FormatError, match="group templates"):
        linkability(get_protector("biohashing", bits=16), t, w, labels)


# Calibration of the claims below (synthetic identities: make_identities(400, 2, seed=s), keys
# and dropout seeded by s; s = 0..4, torch threads 1 and 2 gave bit-identical values):
#   keyed  D_sys - null mean: norms -0.0024..+0.0008, sorted_norms -0.0008..+0.0071,
#          zeros -0.0110..+0.0254, zero_histogram -0.0074..+0.0036, cosine -0.0125..-0.0060
#   paper  D_sys: norms 0.903..0.965, zeros 0.949..0.968, cosine 0.193..0.247
#   keyed cosine below paper cosine by 0.131 or more; aligned D_sys equal in both formats
# "At the null" is asserted as D_sys < null mean + 0.06 (2.4x the worst excursion above); the
# leaks as > 0.8; keyed cosine below paper cosine by more than 0.08.
@pytest.mark.parametrize("seed", [0, 3])
def test_keyed_format_closes_the_weight_leaks_of_the_paper_format(make_ids, seed):
    t, w, labels = make_ids(n_ids=400, per_id=2, seed=seed)
    res = {
        s: linkability(get_protector("slerpface", storage=s), t, w, labels, seed=seed)
        for s in ("paper", "keyed")
    }
    paper, keyed = res["paper"], res["keyed"]
    # the paper format: the weights link two protections under different keys, twice
    assert paper["norms"].d_sys > 0.8 and paper["zeros"].d_sys > 0.8
    # the keyed format: the same attacks are one more draw of their permutation null
    for name in ("norms", "sorted_norms", "zeros", "zero_histogram"):
        assert keyed[name].d_sys < keyed[name].null_mean + 0.06, name
    # the direct cosine links less once the groups sit in key-secret orders
    assert keyed["cosine"].d_sys < paper["cosine"].d_sys - 0.08
    assert keyed["cosine"].d_sys < keyed["cosine"].null_mean + 0.06
    # the alignment attack cannot tell the formats apart (it undoes any order): same D_sys
    assert keyed["aligned"].d_sys == pytest.approx(paper["aligned"].d_sys, abs=0.02)


def test_aligned_scores_agree_across_formats(make_ids):
    t, w, labels = make_ids(n_ids=30, per_id=2)
    scores = {
        s: linkage_scores(
            get_protector("slerpface", storage=s), t, w, labels, {"aligned": link_aligned}, 0
        )["aligned"]
        for s in ("paper", "keyed")
    }
    for part in (0, 1):
        assert_close(scores["keyed"][part], scores["paper"][part], atol=1e-6, rtol=0)


def test_linkability_sweep_rows_and_table(make_ids):
    t, w, labels = make_ids(n_ids=60, per_id=2, m=9)
    rows = linkability_sweep(
        t, w, labels, (0.6, 1.0), attacks=["norms", "zeros"], num_pairs=100, rounds=5
    )
    assert [(r["alpha"], r["storage"]) for r in rows] == [
        (0.6, "paper"),
        (0.6, "keyed"),
        (1.0, "paper"),
        (1.0, "keyed"),
    ]
    for a, b in (rows[0:2], rows[2:4]):  # same key material: identical accuracy
        assert a["accuracy"] == b["accuracy"] and a["eer"] == b["eer"]
    assert set(rows[0]["linkability"]) == {"norms", "zeros"}
    assert all(0 <= r["linkability"]["zeros"]["d_sys"] <= 1 for r in rows)
    table = linkability_markdown(rows)
    assert table.count("\n") == 6 and "| 0.6 | keyed |" in table
    assert not math.isnan(rows[1]["linkability"]["norms"]["null_q95"])
    with pytest.raises(RangeError, match="at least one"):
        linkability_sweep(t, w, labels, ())
