import math

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
from facelab.slerpface import drop_counts, drop_mask, group_slerp, protect


def rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def textbook(t, k, a):
    """sin((1-a) th)/sin th t + sin(a th)/sin th k on unit vectors (numpy, one group)."""
    t, k = unit(t), unit(k)
    th = math.acos(float(np.clip(t @ k, -1, 1)))
    return (math.sin((1 - a) * th) * t + math.sin(a * th) * k) / math.sin(th)


def test_group_slerp_endpoints_are_template_and_key():
    t, k = rand(5, 49, 16), rand(5, 49, 16, seed=1)
    t_unit = t / t.norm(dim=-1, keepdim=True)
    k_unit = k / k.norm(dim=-1, keepdim=True)
    assert torch.allclose(group_slerp(t, k, 0.0), t_unit, atol=1e-12)
    assert torch.allclose(group_slerp(t, k, 1.0), k_unit, atol=1e-12)
    # per-group alphas: 0 on even groups, 1 on odd ones
    a = torch.zeros(5, 49, dtype=torch.float64)
    a[:, 1::2] = 1.0
    out = group_slerp(t, k, a)
    assert torch.allclose(out[:, 0::2], t_unit[:, 0::2], atol=1e-12)
    assert torch.allclose(out[:, 1::2], k_unit[:, 1::2], atol=1e-12)
    # an interior point equals the textbook formula
    mid = group_slerp(t, k, 0.37)
    np.testing.assert_allclose(
        mid[2, 7].numpy(), textbook(t[2, 7].numpy(), k[2, 7].numpy(), 0.37), atol=1e-12
    )


def test_protect_alpha_i_zero_gives_the_normalized_template():
    t, k = rand(4, 49, 16), rand(4, 49, 16, seed=1)
    w = torch.full((4, 49), 1 / 49, dtype=torch.float64)
    # alpha = w_i makes alpha_i = 0; drop_rate 0 drops nothing
    p = protect(t, w, k, alpha=1 / 49, drop_rate=0.0)
    assert torch.allclose(p, t / t.norm(dim=-1, keepdim=True) / 49, atol=1e-13)


def test_protect_alpha_i_near_one_gives_the_key():
    t, k = rand(4, 49, 16), rand(4, 49, 16, seed=1)
    w = torch.full((4, 49), 1 / 49, dtype=torch.float64)
    # alpha = 1: alpha_i = 1 - 1/49, the direction is 1/49 of the angle away from the key
    p = protect(t, w, k, alpha=1.0, drop_rate=0.0)
    direction = p / p.norm(dim=-1, keepdim=True)
    k_unit = k / k.norm(dim=-1, keepdim=True)
    theta = torch.arccos((t / t.norm(dim=-1, keepdim=True) * k_unit).sum(-1).clamp(-1, 1))
    off = torch.arccos((direction * k_unit).sum(-1).clamp(-1, 1))
    assert torch.allclose(off, theta / 49, atol=1e-7)


def test_each_group_is_unit_before_weighting():
    t, k = rand(8, 49, 16), rand(8, 49, 16, seed=1)
    w = torch.softmax(rand(8, 49, seed=2), -1)
    p = protect(t, w, k, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(p.norm(dim=-1), w, rtol=1e-12)
    assert torch.allclose((p / w.unsqueeze(-1)).norm(dim=-1), torch.ones_like(w), atol=1e-12)
    zeros = (p == 0).sum(-1)
    assert bool((zeros >= 1).all())  # every group lost at least one coordinate


@pytest.mark.parametrize("m", [49, 16])
def test_exact_drop_count_follows_the_weight_rank(m):
    w = torch.softmax(rand(50, m, seed=3), -1)
    dropped = drop_mask(w, 0.5, 16, sampling="exact", generator=torch.Generator().manual_seed(1))
    counts = dropped.sum(-1).numpy()
    wn = w.numpy()
    med = np.median(wn, axis=1, keepdims=True)  # numpy's median: the reference's rule
    expected = np.where(wn < med, 8 + 4, 8 - 4)
    np.testing.assert_array_equal(counts, expected)
    # by rank: the floor(m/2) lightest groups drop 12, the rest 4
    order = np.argsort(wn, axis=1)
    ranked = np.take_along_axis(counts, order, axis=1)
    assert (ranked[:, : m // 2] == 12).all() and (ranked[:, m - m // 2 :] == 4).all()
    assert (
        drop_counts(0.5) == (12, 4) and drop_counts(0.25) == (6, 2) and drop_counts(0.0) == (0, 0)
    )


def test_replacement_sampling_matches_the_reference_draws():
    """Distinct coordinates dropped per group vs a simulation of np.random.choice(replace=True)
    (the reference); and every coordinate is equally likely."""
    w = torch.softmax(rand(2000, 49, seed=4), -1)
    dropped = drop_mask(w, 0.5, 16, generator=torch.Generator().manual_seed(2))
    low = (w < w.quantile(0.5, dim=-1, keepdim=True)).numpy()
    distinct = dropped.sum(-1).numpy()
    rng = np.random.default_rng(0)
    for is_low, draws in ((True, 12), (False, 4)):
        ours = distinct[low == is_low]
        sim = np.array([np.unique(rng.choice(16, draws, replace=True)).size for _ in range(40000)])
        h_ours = np.bincount(ours, minlength=17) / ours.size
        h_sim = np.bincount(sim, minlength=17) / sim.size
        assert 0.5 * np.abs(h_ours - h_sim).sum() < 0.02  # total variation distance
        assert abs(ours.mean() - 16 * (1 - (15 / 16) ** draws)) < 0.03
    per_coord = dropped.double().mean(dim=(0, 1)).numpy()
    assert np.abs(per_coord / per_coord.mean() - 1).max() < 0.03


def test_vectorized_protect_equals_a_per_template_loop():
    t, k = rand(6, 49, 16), rand(6, 49, 16, seed=1)
    w = torch.softmax(rand(6, 49, seed=2), -1)
    dropped = drop_mask(w, generator=torch.Generator().manual_seed(5))
    ours = protect(t, w, k, dropped=dropped).numpy()
    tn, kn, wn, dn = t.numpy(), k.numpy(), w.numpy(), dropped.numpy()
    ref = np.zeros_like(tn)
    for b in range(tn.shape[0]):
        for i in range(tn.shape[1]):
            p = textbook(tn[b, i], kn[b, i], 0.9 - wn[b, i])
            p[dn[b, i]] = 0.0
            ref[b, i] = p / np.linalg.norm(p) * wn[b, i]
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_float32_matches_float64_and_flat_input():
    t, k = rand(3, 49, 16), rand(3, 49, 16, seed=1)
    w = torch.softmax(rand(3, 49, seed=2), -1)
    dropped = drop_mask(w, generator=torch.Generator().manual_seed(5))
    p64 = protect(t, w, k, dropped=dropped)
    p32 = protect(t.float(), w.float(), k.float(), dropped=dropped)
    assert p32.dtype == torch.float32
    assert torch.allclose(p32.double(), p64, atol=1e-6)
    flat = protect(t.reshape(3, -1), w, k.reshape(3, -1), dropped=dropped)
    assert torch.allclose(flat, p64)


def test_near_parallel_groups_take_the_exact_path():
    t = rand(2, 49, 16)
    k = t + 1e-4 * rand(2, 49, 16, seed=1)  # every group within a few degrees of its key
    k[1, 3] = -t[1, 3]  # antipodal: the great circle is not unique, still a unit result
    out = group_slerp(t, k, torch.full((2, 49), 0.5, dtype=torch.float64))
    assert torch.isfinite(out).all()
    assert torch.allclose(out.norm(dim=-1), torch.ones(2, 49, dtype=torch.float64), atol=1e-12)
    np.testing.assert_allclose(
        out[0, 0].numpy(), textbook(t[0, 0].numpy(), k[0, 0].numpy(), 0.5), atol=1e-9
    )


def test_bad_inputs_fail_loudly():
    t, k = rand(2, 49, 16), rand(2, 49, 16, seed=1)
    w = torch.softmax(rand(2, 49, seed=2), -1)
    z = t.clone()
    z[1, 5] = 0
    with pytest.raises(ZeroVectorError, match="template 1, group 5"):
        protect(z, w, k)
    with pytest.raises(ZeroVectorError, match="keys"):
        protect(t, w, torch.zeros_like(k))
    nan = t.clone()
    nan[0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        protect(nan, w, k)
    with pytest.raises(ShapeError, match="same shape"):
        protect(t, w, k[:, :48])
    with pytest.raises(ShapeError, match="group size"):
        protect(t[..., :8], w, k[..., :8])
    with pytest.raises(ShapeError, match="one weight per group"):
        protect(t, w[:, :10], k)
    with pytest.raises(RangeError, match="summing to 1"):
        protect(t, w * 2, k)
    with pytest.raises(RangeError, match="non-negative"):
        protect(t, w - w.mean(), k)
    with pytest.raises(RangeError, match="whole number"):
        protect(t, w, k, drop_rate=0.3)
    with pytest.raises(RangeError, match="alpha"):
        protect(t, w, k, alpha=1.5)
    with pytest.raises(RangeError, match="drop counts"):
        drop_counts(0.9375, 16, gap_base=8)  # 15 + 7 > 15
    with pytest.raises(UnknownNameError):
        protect(t, w, k, sampling="sometimes")
    with pytest.raises(ShapeError, match="bool mask"):
        protect(t, w, k, dropped=torch.zeros(2, 49, 16))
    with pytest.raises(FacelabTypeError):
        protect(t.numpy(), w, k)
