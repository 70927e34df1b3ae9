"""The histogram relation loss against brute-force numpy, its chunked backward against plain
autograd on the full tensor, its memory contract, and its bad inputs."""

import math

import numpy as np
import pytest
import torch

from facelab.core.errors import (
    FormatError,
    KeyMismatchError,
    NonFiniteError,
    RangeError,
    ShapeError,
    ZeroVectorError,
)
from facelab.glotok.histogram import (
    EMPTY_BIN_EPS,
    TeacherHistogram,
    bin_centers,
    codebook_histogram,
    codebook_histogram_naive,
    default_alpha,
    histogram_relation_loss,
    kmeans_centroids,
    teacher_histogram_from_features,
)


def numpy_histogram(codebook: np.ndarray, bins: int, alpha: float) -> np.ndarray:
    """Pair by pair, i <= j, in float64: the paper's definition written as loops."""
    t = codebook / np.linalg.norm(codebook, axis=1, keepdims=True)
    centers = np.array([-1 + 2 * k / (bins - 1) for k in range(bins)])
    h = np.zeros(bins)
    for i in range(len(t)):
        for j in range(i, len(t)):
            d = float(t[i] @ t[j])
            h += np.exp(-alpha * (d - centers) ** 2)
    return h / h.sum()


@pytest.mark.parametrize("bins,alpha", [(40, None), (7, 3.0), (2, 0.5)])
def test_histogram_equals_bruteforce_numpy(bins, alpha):
    rng = np.random.default_rng(bins)
    cb = rng.normal(size=(23, 5))
    got = codebook_histogram(torch.from_numpy(cb), bins, alpha, chunk_elements=200)
    want = numpy_histogram(cb, bins, default_alpha(bins) if alpha is None else alpha)
    assert got.shape == (bins,) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-14)


def test_bin_centers_and_default_alpha_overlap():
    c = bin_centers(40, dtype=torch.float64)
    assert (
        c[0] == -1
        and c[-1] == 1
        and torch.allclose(c[1] - c[0], torch.tensor(2 / 39, dtype=torch.float64))
    )
    alpha = default_alpha(40)
    delta = 2 / 39
    # a value on a centre gives its neighbour exp(-1/2); midway between two centres both get 0.88
    assert math.isclose(math.exp(-alpha * delta**2), math.exp(-0.5))
    assert math.exp(-alpha * (delta / 2) ** 2) > 0.85


@pytest.mark.parametrize("chunk_elements", [1, 40 * 31 * 3, 10**9])  # one row, 3 rows, all rows
def test_chunked_backward_equals_naive_autograd(chunk_elements):
    torch.manual_seed(0)
    cb = torch.randn(31, 6, dtype=torch.float64)
    weights = torch.randn(40, dtype=torch.float64)
    a = cb.clone().requires_grad_()
    b = cb.clone().requires_grad_()
    (codebook_histogram(a, chunk_elements=chunk_elements) * weights).sum().backward()
    (codebook_histogram_naive(b) * weights).sum().backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-9, atol=1e-13)
    assert a.grad.abs().max() > 1e-6  # the test compares something


def test_gradcheck_small():
    torch.manual_seed(1)
    cb = torch.randn(9, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda c: codebook_histogram(c, 6, 2.0, chunk_elements=25), (cb,)
    )


def test_forward_saves_no_pairwise_tensor():
    """Memory contract: autograd keeps nothing bigger than the codebook for the backward."""
    k, d, bins = 300, 8, 40
    cb = torch.randn(k, d, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = histogram_relation_loss(
            cb, torch.full((bins,), 1 / bins), chunk_elements=k * bins * 4
        )
    loss.backward()
    assert max(saved) <= k * d  # the naive version saves k*k*bins = 3.6M values
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        codebook_histogram_naive(cb).sum()
    assert max(saved) >= k * k * bins


def test_loss_is_kl_of_teacher_to_student():
    torch.manual_seed(2)
    cb = torch.randn(40, 8, dtype=torch.float64)
    teacher = torch.softmax(torch.randn(40, dtype=torch.float64), 0)
    got = histogram_relation_loss(cb, teacher)
    p_s = codebook_histogram_naive(cb).numpy() + EMPTY_BIN_EPS
    p_t = teacher.numpy()
    want = float(np.sum(p_t * (np.log(p_t) - np.log(p_s))))
    assert math.isclose(float(got), want, rel_tol=1e-9)
    assert float(histogram_relation_loss(cb, codebook_histogram(cb))) < 1e-8


def test_empty_bins_stay_finite():
    # all codes equal: every pair has cosine 1, the bins near -1 underflow to exactly 0
    cb = torch.ones(10, 4, requires_grad=True)
    p = codebook_histogram(cb)
    assert float(p[0].detach()) == 0.0
    loss = histogram_relation_loss(cb, torch.full((40,), 1 / 40))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(cb.grad).all()


def test_loss_moves_codebook_histogram_toward_teacher():
    # calibrated: final/first KL over seeds 0-5 x 1 and 2 threads = 0.0166 - 0.0199 (identical
    # across thread counts); the 0.3 threshold leaves a 15x margin
    torch.manual_seed(3)
    teacher_cb = torch.randn(64, 8)  # spread codes: cosines around 0
    teacher = TeacherHistogram(codebook_histogram(teacher_cb).detach(), 40, default_alpha(40))
    cb = torch.nn.Parameter(torch.randn(64, 8) * 0.1 + 1.0)  # clustered codes: cosines near 1
    opt = torch.optim.Adam([cb], lr=0.05)
    first = float(histogram_relation_loss(cb, teacher).detach())
    for _ in range(30):
        opt.zero_grad()
        histogram_relation_loss(cb, teacher).backward()
        opt.step()
    assert float(histogram_relation_loss(cb, teacher).detach()) < 0.3 * first


def test_bad_codebooks():
    with pytest.raises(ZeroVectorError, match=r"rows \[2\]"):
        codebook_histogram(torch.tensor([[1.0, 0], [0, 1], [0, 0]]))
    with pytest.raises(NonFiniteError):
        codebook_histogram(torch.tensor([[1.0, float("nan")], [0, 1]]))
    with pytest.raises(ShapeError):
        codebook_histogram(torch.ones(4))
    with pytest.raises(RangeError):
        codebook_histogram(torch.ones(4, 2), bins=1)
    with pytest.raises(RangeError):
        codebook_histogram(torch.ones(4, 2), alpha=-1.0)


def test_teacher_histogram_checks_and_file_round_trip(tmp_path):
    cb = torch.randn(20, 4)
    with pytest.raises(ShapeError, match=r"expected shape \(40,\)"):
        histogram_relation_loss(cb, torch.full((20,), 1 / 20))
    with pytest.raises(RangeError, match="summing to 1"):
        histogram_relation_loss(cb, torch.ones(40))
    t = TeacherHistogram(torch.full((20,), 1 / 20), bins=20, alpha=5.0, source="test", num_codes=7)
    with pytest.raises(KeyMismatchError, match="bins"):
        histogram_relation_loss(cb, t, bins=40)
    with pytest.raises(KeyMismatchError, match="alpha"):
        histogram_relation_loss(cb, t, alpha=6.0)
    assert torch.isfinite(histogram_relation_loss(cb, t))  # the teacher's bins and alpha
    path = t.save(tmp_path / "t.safetensors")
    back = TeacherHistogram.load(path)
    assert (back.bins, back.alpha, back.source, back.num_codes) == (20, 5.0, "test", 7)
    assert torch.equal(back.hist, t.hist)
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(FormatError):
        TeacherHistogram.load(tmp_path / "bad.safetensors")


def test_kmeans_teacher():
    g = torch.Generator().manual_seed(0)
    # two tight clusters along orthogonal directions: centroid cosines near 0 and 1
    a = torch.tensor([1.0, 0, 0]) + 0.01 * torch.randn(50, 3, generator=g)
    b = torch.tensor([0, 1.0, 0]) + 0.01 * torch.randn(50, 3, generator=g)
    cents = kmeans_centroids(torch.cat([a, b]), 2)
    cos = torch.nn.functional.cosine_similarity(cents[0], cents[1], dim=0)
    assert abs(float(cos)) < 0.05
    t = teacher_histogram_from_features(torch.cat([a, b]), 2, bins=5, alpha=50.0)
    # pairs: (0,0), (1,1) at cos 1 and (0,1) at cos 0: mass at the last and middle bins
    assert int(t.hist.argmax()) == 4 and float(t.hist[2]) > 0.3
    with pytest.raises(RangeError, match="at least 256 samples"):
        kmeans_centroids(torch.randn(10, 3), 256)
