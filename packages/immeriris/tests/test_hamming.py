"""Fractional Hamming distance: against a per-pair numpy loop, the open-iris formula, and the
bad inputs the issue names."""

import math

import numpy as np
import pytest
import torch

from facelab.core.errors import FacelabError, FacelabTypeError, RangeError, ShapeError
from facelab.immeriris.hamming import (
    NoValidBitsError,
    _exact,
    hamming_distance,
    hamming_matrix,
    normalized_distance,
    reference_hamming_distance,
)


def _codes(n, shape=(4, 32, 4), p_mask=0.7, seed=0, blocky=False):
    g = torch.Generator().manual_seed(seed)
    codes = torch.rand(n, *shape, generator=g) < 0.5
    masks = torch.rand(n, *shape, generator=g) < p_mask
    if blocky:  # eyelid-like: whole angular sectors invalid, a long run of zeros
        for i in range(n):
            a = int(torch.randint(0, shape[1], (1,), generator=g))
            masks[i, :, a : a + shape[1] // 3] = False
    return codes, masks


def _ref(a, ma, b, mb, **kw):
    return np.array(
        [
            reference_hamming_distance(
                a[i].numpy(), ma[i].numpy(), b[i].numpy(), mb[i].numpy(), **kw
            )
            for i in range(len(a))
        ]
    )


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("norm", ["linear", "sqrt"])
@pytest.mark.parametrize("method", ["dft", "packed"])
def test_pairs_match_reference(normalize, norm, method):
    a, ma = _codes(12, seed=1, blocky=True)
    b, mb = _codes(12, seed=2)
    b[:4] = torch.roll(a[:4], 5, dims=2) ^ (torch.rand(4, 4, 32, 4) < 0.05)  # near-genuine pairs
    d = hamming_distance(a, ma, b, mb, max_shift=7, normalize=normalize, norm=norm, method=method)
    ref = _ref(a, ma, b, mb, max_shift=7, normalize=normalize, norm=norm)
    assert d.dtype == torch.float64 and d.shape == (12,)
    np.testing.assert_allclose(d.numpy(), ref, rtol=0, atol=1e-12)


def test_matrix_matches_reference_and_pairs():
    a, ma = _codes(7, seed=3, blocky=True)
    b, mb = _codes(5, seed=4, blocky=True)
    for normalize in (False, True):
        m = hamming_matrix(a, ma, b, mb, max_shift=9, normalize=normalize)
        ref = np.array(
            [
                [
                    reference_hamming_distance(
                        a[i].numpy(), ma[i].numpy(), b[j].numpy(), mb[j].numpy(), 9, normalize
                    )
                    for j in range(5)
                ]
                for i in range(7)
            ]
        )
        np.testing.assert_allclose(m.distances.numpy(), ref, rtol=0, atol=1e-12)
        assert m.empty == 0
        # the reported shift and bit count reproduce the distance
        for i, j in [(0, 0), (3, 4), (6, 2)]:
            s = int(m.shifts[i, j])
            valid = torch.roll(ma[i], s, dims=1) & mb[j]
            assert int(valid.sum()) == int(m.bits[i, j])
            mism = int(((torch.roll(a[i], s, dims=1) ^ b[j]) & valid).sum())
            want = mism / int(valid.sum())
            if normalize:
                want = max(0.0, 0.45 - (0.45 - want) * (5e-5 * int(valid.sum()) + 0.5))
            assert m.distances[i, j].item() == pytest.approx(want, abs=1e-12)


def test_float32_and_float64_agree_on_iris_sized_codes():
    a, ma = _codes(6, shape=(16, 256, 4), seed=5, blocky=True)
    b, mb = _codes(9, shape=(16, 256, 4), seed=6, blocky=True)
    m32 = hamming_matrix(a, ma, b, mb)
    m64 = hamming_matrix(a, ma, b, mb, dtype=torch.float64)
    assert torch.equal(m32.distances, m64.distances) and torch.equal(m32.bits, m64.bits)
    i, j = 2, 7
    assert m32.distances[i, j].item() == pytest.approx(
        reference_hamming_distance(a[i].numpy(), ma[i].numpy(), b[j].numpy(), mb[j].numpy()),
        abs=1e-12,
    )


def test_exact_rejects_counts_far_from_integers():
    dc = torch.zeros(1, 1)
    assert _exact(torch.tensor([[3.1, 4.9]]), dc, 8).tolist() == [[3, 5]]
    assert _exact(torch.tensor([[3.4]]), dc, 8) is None  # -> the caller recomputes in float64


def test_rotation_is_found():
    a, ma = _codes(3, shape=(8, 64, 2), seed=7)
    b, mb = torch.roll(a, -6, dims=2), torch.roll(ma, -6, dims=2)
    d, s = hamming_distance(a, ma, b, mb, max_shift=10, return_shift=True)
    assert d.tolist() == [0.0, 0.0, 0.0] and s.tolist() == [-6, -6, -6]
    m = hamming_matrix(a, ma, b, mb, max_shift=10)
    assert torch.equal(m.shifts.diag(), torch.full((3,), -6))
    # beyond max_shift the rotation is not compensated
    far = hamming_distance(
        a, ma, torch.roll(a, 20, dims=2), torch.roll(ma, 20, dims=2), max_shift=10
    )
    assert bool((far > 0.3).all())


def test_normalization_follows_open_iris_and_daugman():
    mism = torch.tensor([300.0, 900.0, 100.0], dtype=torch.float64)
    bits = torch.tensor([1000.0, 4000.0, 12000.0], dtype=torch.float64)
    hd = mism / bits
    lin = normalized_distance(mism, bits, "linear")
    want_lin = [
        max(0.0, 0.45 - (0.45 - h) * (0.00005 * n + 0.5))
        for h, n in zip(hd.tolist(), bits.tolist())
    ]
    assert lin.tolist() == pytest.approx(want_lin, abs=1e-12)
    sq = normalized_distance(mism, bits, "sqrt")
    want_sq = [
        max(0.0, 0.45 - (0.45 - h) * math.sqrt(n / 10000.0))
        for h, n in zip(hd.tolist(), bits.tolist())
    ]
    assert sq.tolist() == pytest.approx(want_sq, abs=1e-12)
    # the linear form is the sqrt form's tangent at n0 = 10,000 bits
    m0, n0 = (
        torch.tensor([2500.0], dtype=torch.float64),
        torch.tensor([10000.0], dtype=torch.float64),
    )
    assert normalized_distance(m0, n0, "linear").item() == pytest.approx(
        normalized_distance(m0, n0, "sqrt").item()
    )


def test_normalization_is_applied_per_shift_before_the_minimum():
    # two shifts: few bits with a low raw distance vs many bits with a slightly higher one; the
    # raw minimum and the normalized minimum pick different shifts
    a = torch.zeros(1, 1, 4, 1, dtype=torch.bool)
    b = torch.zeros_like(a)
    ma = torch.tensor([True, False, False, False]).view(1, 1, 4, 1)
    mb = torch.tensor([True, True, True, True]).view(1, 1, 4, 1)
    raw = hamming_distance(a, ma, b, mb, max_shift=1, normalize=False)
    normed = hamming_distance(a, ma, b, mb, max_shift=1, normalize=True)
    assert raw.item() == 0.0
    assert normed.item() == pytest.approx(0.45 - 0.45 * (5e-5 + 0.5))


def test_pairs_without_valid_bits():
    a, ma = _codes(4, shape=(4, 16, 2), seed=8)
    b, mb = _codes(4, shape=(4, 16, 2), seed=9)
    ma[2] = False
    with pytest.raises(NoValidBitsError, match=r"pair 2 \(code_a\[2\] vs code_b\[2\]\)"):
        hamming_distance(a, ma, b, mb, max_shift=3)
    for method in ("dft", "packed"):
        with pytest.raises(NoValidBitsError):
            hamming_distance(a, ma, b, mb, max_shift=3, method=method)
    m = hamming_matrix(a, ma, b, mb, max_shift=3)
    assert m.empty == 4 and bool(torch.isnan(m.distances[2]).all())
    assert not bool(torch.isnan(m.distances[[0, 1, 3]]).any())
    # masks that overlap at some shifts only: the others are skipped, as open-iris does
    c = torch.zeros(1, 1, 16, 1, dtype=torch.bool)
    mc = torch.zeros_like(c)
    mc[0, 0, 0] = True
    md = torch.zeros_like(c)
    md[0, 0, 3] = True
    assert hamming_distance(c, mc, c, md, max_shift=3).item() == 0.0
    with pytest.raises(NoValidBitsError):
        hamming_distance(c, mc, c, md, max_shift=2)


def test_bad_inputs():
    a, ma = _codes(2, shape=(4, 16, 2))
    with pytest.raises(ShapeError, match="mask_a"):
        hamming_distance(a, ma[:, :, :8], a, ma)
    with pytest.raises(ShapeError, match="code_b"):
        hamming_distance(a, ma, a[:, :, :8], ma[:, :, :8])
    with pytest.raises(ShapeError, match="one per code"):
        hamming_distance(a, ma, a[:1], ma[:1])
    with pytest.raises(RangeError, match=r"max_shift: expected an int in \[0, W\) = \[0, 16\)"):
        hamming_distance(a, ma, a, ma, max_shift=16)
    with pytest.raises(RangeError):
        hamming_matrix(a, ma, a, ma, max_shift=-1)
    with pytest.raises(FacelabTypeError, match=r"torch\.bool"):
        hamming_distance(a.float(), ma, a, ma)
    with pytest.raises(ShapeError, match="4-D"):
        hamming_matrix(a[0], ma[0], a[0], ma[0])
    with pytest.raises(RangeError, match="norm"):
        hamming_distance(a, ma, a, ma, max_shift=2, normalize=True, norm="cubic")
    with pytest.raises(FacelabTypeError):
        hamming_distance(a, ma, a, ma, max_shift=2.0)
    assert issubclass(NoValidBitsError, FacelabError)
