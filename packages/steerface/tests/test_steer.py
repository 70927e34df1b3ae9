"""``steer`` against the definition: exact angle and norm, the distribution of the direction u
against a brute-force reference (explicit orthonormal basis of the complement), the redraw path,
gradients, and bad input."""

import importlib
import math

import numpy as np
import pytest
import torch
from scipy import linalg, stats

from facelab.core import sphere
from facelab.core.errors import (
    FacelabError,
    FacelabTypeError,
    NonFiniteError,
    RangeError,
    ShapeError,
    ZeroVectorError,
)
from facelab.steerface.steer import default_unit_tol, steer, steer_reference

# the module (the package attribute `steer` is the function)
steer_mod = importlib.import_module("facelab.steerface.steer")


def unit_rows(n, d, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return torch.nn.functional.normalize(x, dim=1).to(dtype)


def _direction(e, out, theta):
    """u = (e' - cos(theta) e) / sin(theta) in float64."""
    e, out = e.double(), out.double()
    th = torch.as_tensor(theta, dtype=torch.float64)
    th = th.unsqueeze(1) if th.dim() else th
    return (out - torch.cos(th) * e) / torch.sin(th)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_exact_angle_unit_norm_and_dtype(dtype):
    e = unit_rows(300, 64, seed=1, dtype=dtype)
    theta = torch.rand(300, generator=torch.Generator().manual_seed(2)) * math.pi
    theta[:5] = 0.0
    theta[5] = math.pi
    out = steer(e, theta.to(torch.float32), torch.Generator().manual_seed(3))
    assert out.dtype == dtype and out.shape == e.shape
    # checked in the compute precision: float32 (float64 for float64 input)
    ref = steer(
        e.float() if dtype != torch.float64 else e,
        theta.to(torch.float32),
        torch.Generator().manual_seed(3),
        tol=default_unit_tol(dtype),
    )
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    # rows with theta > 0: unit and at exactly theta from normalize(e)
    r = ref.double()[5:]
    e64 = e.double()[5:]
    e64 = e64 / e64.norm(dim=1, keepdim=True)
    assert torch.allclose(r.norm(dim=1), torch.ones(295, dtype=torch.float64), atol=tol * 4)
    cos = (r * e64).sum(1)
    assert torch.allclose(cos, torch.cos(theta[5:].double()), atol=tol * 4)
    # theta = 0 rows come back bit for bit
    assert torch.equal(out[:5], e[:5])
    # the output is the compute-precision result rounded once to the input dtype
    assert torch.equal(out, ref.to(dtype))


def test_same_draw_as_core_sphere_composition():
    """With the same generator state, the fused formula equals random_orthogonal + rotate_toward
    (the readable definition in facelab.core.sphere) in D = 512."""
    e = unit_rows(1000, 512, seed=4)
    theta = torch.rand(1000, generator=torch.Generator().manual_seed(5)) * math.pi
    a = steer(e, theta, torch.Generator().manual_seed(6))
    b = steer_reference(e, theta, torch.Generator().manual_seed(6))
    c = sphere.rotate_toward(
        e, sphere.random_orthogonal(e, torch.Generator().manual_seed(6)), theta
    )
    assert torch.allclose(a, b, atol=2e-6) and torch.equal(b, c)


def _brute_force_u(e: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n directions uniform on the unit sphere of e's orthogonal complement: an explicit
    orthonormal basis of the complement (scipy null_space) and isotropic Gaussian coordinates."""
    basis = linalg.null_space(e[None, :])  # (D, D-1)
    z = rng.standard_normal((n, basis.shape[1]))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    return z @ basis.T


@pytest.mark.parametrize("d", [3, 8])
def test_u_distribution_matches_brute_force(d):
    n = 20000
    e1 = unit_rows(1, d, seed=7)
    e = e1.expand(n, d).contiguous()
    theta = 0.7
    u = _direction(e, steer(e, theta, torch.Generator().manual_seed(8)), theta).numpy()
    ref = _brute_force_u(e1[0].double().numpy(), n, np.random.default_rng(9))
    e_np = e1[0].double().numpy()
    # orthogonal to e and unit
    assert np.abs(u @ e_np).max() < 1e-5
    assert np.abs(np.linalg.norm(u, axis=1) - 1).max() < 1e-5
    # zero mean: each coordinate's mean within 5 standard errors (var of a coordinate <= 1/(d-1))
    se = math.sqrt(1.0 / (d - 1) / n)
    assert np.abs(u.mean(0)).max() < 5 * se
    # isotropic in the complement: covariance = (I - e e^T) / (d - 1), like the reference's
    want = (np.eye(d) - np.outer(e_np, e_np)) / (d - 1)
    cov_u, cov_ref = np.cov(u.T), np.cov(ref.T)
    assert np.abs(cov_ref - want).max() < 0.02  # the reference itself at this n
    assert np.abs(cov_u - want).max() < 0.02
    # the same law as the brute-force draws along random fixed directions (two-sample KS)
    dirs = np.random.default_rng(10).standard_normal((4, d))
    for v in dirs:
        p = stats.ks_2samp(u @ v, ref @ v).pvalue
        assert p > 1e-3, p
    # and fails for a biased law: the test can tell (u pushed toward one direction)
    biased = u + 0.1 * dirs[0] / np.linalg.norm(dirs[0])
    assert stats.ks_2samp(biased @ dirs[0], ref @ dirs[0]).pvalue < 1e-6


def test_d2_redraws_keep_both_directions_equally_likely():
    """In D = 2 the complement is {+p, -p}; 16 % of the draws fall in the redraw cone, and the
    redraw must not favour a side."""
    n = 40000
    e = unit_rows(1, 2, seed=11).expand(n, 2).contiguous()
    u = _direction(e, steer(e, 1.0, torch.Generator().manual_seed(12)), 1.0)
    p = torch.stack([-e[0, 1], e[0, 0]]).double()
    side = (u @ p).numpy()
    assert np.allclose(np.abs(side), 1.0, atol=1e-5)
    frac = float((side > 0).mean())
    assert abs(frac - 0.5) < 5 * math.sqrt(0.25 / n)


def test_nearly_parallel_draws_are_redrawn(monkeypatch):
    """A first draw almost on e's line would lose the angle to cancellation; it is redrawn."""
    e = unit_rows(64, 16, seed=13)
    calls = []
    real = steer_mod._draw

    def draw(shape, generator, dtype, device):
        calls.append(shape)
        if len(calls) == 1:  # the first draw: e itself plus 1e-7 noise
            return e.to(dtype) * 3.0 + 1e-7 * real(shape, generator, dtype, device)
        return real(shape, generator, dtype, device)

    monkeypatch.setattr(steer_mod, "_draw", draw)
    out = steer(e, 1.2, torch.Generator().manual_seed(14))
    assert len(calls) >= 2 and calls[1] == (64, 16)
    cos = (out.double() * e.double()).sum(1)
    assert torch.allclose(cos, torch.full_like(cos, math.cos(1.2)), atol=1e-6)
    assert torch.allclose(out.double().norm(dim=1), torch.ones(64, dtype=torch.float64), atol=1e-6)


def test_seeded_generator_reproduces_and_scalar_equals_vector():
    e = unit_rows(50, 32, seed=15)
    a = steer(e, 0.4, torch.Generator().manual_seed(16))
    b = steer(e, torch.full((50,), 0.4), torch.Generator().manual_seed(16))
    c = steer(e, torch.tensor(0.4), torch.Generator().manual_seed(16))
    assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.equal(a, steer(e, 0.4, torch.Generator().manual_seed(17)))


def test_gradients_flow_to_theta_and_embeddings():
    e = unit_rows(20, 16, seed=18).requires_grad_(True)
    theta = torch.linspace(0.1, 3.0, 20, requires_grad=True)
    out = steer(e, theta, torch.Generator().manual_seed(19))
    cos = (out * e.detach()).sum(1)
    cos.sum().backward()
    # d cos(theta) / d theta = -sin(theta)
    assert torch.allclose(theta.grad, -torch.sin(theta.detach()), atol=1e-5)
    assert e.grad is not None and torch.isfinite(e.grad).all()


def test_empty_batch():
    e = torch.zeros(0, 8)
    assert steer(e, 0.3).shape == (0, 8)


@pytest.mark.parametrize(
    "make, exc, words",
    [
        (lambda: (unit_rows(4, 8) * 1.1, 0.3), RangeError, "unit"),
        (lambda: (torch.zeros(4, 8), 0.3), ZeroVectorError, "zero"),
        (
            lambda: (unit_rows(4, 8).index_fill(0, torch.tensor([1]), float("nan")), 0.3),
            NonFiniteError,
            "NaN",
        ),
        (lambda: (unit_rows(4, 8), -0.1), RangeError, "[0, pi]"),
        (lambda: (unit_rows(4, 8), 3.2), RangeError, "[0, pi]"),
        (lambda: (unit_rows(4, 8), float("nan")), RangeError, "[0, pi]"),
        (lambda: (unit_rows(4, 8), torch.tensor([0.1, 0.2, 4.0, 0.3])), RangeError, "[0, pi]"),
        (
            lambda: (unit_rows(4, 8), torch.tensor([0.1, float("nan"), 0.2, 0.3])),
            NonFiniteError,
            "theta",
        ),
        (lambda: (unit_rows(4, 8), torch.full((3,), 0.1)), ShapeError, "(4,)"),
        (lambda: (unit_rows(4, 1), 0.1), ShapeError, "D >= 2"),
        (lambda: (unit_rows(4, 8)[0], 0.1), ShapeError, "(N, D)"),
    ],
)
def test_bad_input(make, exc, words):
    e, theta = make()
    with pytest.raises(exc) as info:
        steer(e, theta)
    assert words in str(info.value)
    assert isinstance(info.value, FacelabError)


@pytest.mark.parametrize(
    "e, theta",
    [
        (np.ones((2, 3)), 0.1),
        (torch.ones(2, 3, dtype=torch.int64), 0.1),
        (unit_rows(2, 3), "0.1"),
        (unit_rows(2, 3), torch.tensor([1, 2])),
        (unit_rows(2, 3), True),
    ],
)
def test_bad_types(e, theta):
    with pytest.raises((FacelabTypeError, FacelabError)):
        steer(e, theta)
