import math

import numpy as np
import pytest
import torch

from facelab.core import sphere
from facelab.core.errors import NonFiniteError, ShapeError, ZeroVectorError


def rand(n, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64)


def textbook_slerp(a, b, t):
    """sin((1-t)th)/sin th a + sin(t th)/sin th b, with arccos (fine for moderate angles)."""
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    th = np.arccos(np.clip((a * b).sum(-1, keepdims=True), -1, 1))
    return (np.sin((1 - t) * th) * a + np.sin(t * th) * b) / np.sin(th)


def test_slerp_matches_textbook_and_endpoints():
    a, b = rand(32), rand(32, seed=1)
    for t in (0.0, 0.25, 0.5, 0.9, 1.0):
        ours = sphere.slerp(a, b, t).numpy()
        np.testing.assert_allclose(ours, textbook_slerp(a.numpy(), b.numpy(), t), atol=1e-12)
    np.testing.assert_allclose(
        sphere.slerp(a, b, 0.0).numpy(), sphere.normalize(a).numpy(), atol=1e-14
    )
    np.testing.assert_allclose(
        sphere.slerp(a, b, 1.0).numpy(), sphere.normalize(b).numpy(), atol=1e-14
    )


def test_slerp_unit_norm_and_constant_speed():
    a, b = rand(16), rand(16, seed=2)
    theta = sphere.angle(a, b)
    for t in torch.linspace(0, 1, 11):
        p = sphere.slerp(a, b, float(t))
        assert torch.allclose(p.norm(dim=-1), torch.ones(16, dtype=torch.float64), atol=1e-13)
        assert torch.allclose(sphere.angle(a, p), t * theta, atol=1e-12)
        assert torch.allclose(sphere.angle(p, b), (1 - t) * theta, atol=1e-12)


def test_slerp_per_row_t():
    a, b = rand(4), rand(4, seed=3)
    t = torch.tensor([0.0, 0.3, 0.6, 1.0], dtype=torch.float64)
    p = sphere.slerp(a, b, t)
    assert torch.allclose(sphere.angle(a, p), t * sphere.angle(a, b), atol=1e-12)
    with pytest.raises(ShapeError, match="broadcast"):
        sphere.slerp(a, b, torch.zeros(3, dtype=torch.float64))


def test_slerp_near_zero_angle():
    a = rand(8)
    b = a + 1e-9 * rand(8, seed=4)
    p = sphere.slerp(a, b, 0.5)
    assert torch.isfinite(p).all()
    assert torch.allclose(p, sphere.normalize(a), atol=1e-8)
    p0 = sphere.slerp(a, a.clone(), 0.7)  # exactly equal: no 0/0
    assert torch.allclose(p0, sphere.normalize(a), atol=1e-14)


def test_slerp_near_pi():
    a = rand(8)
    for b in (-a, -a + 1e-10 * rand(8, seed=5)):
        for t in (0.25, 0.5):
            p = sphere.slerp(a, b, t)
            assert torch.isfinite(p).all()
            assert torch.allclose(p.norm(dim=-1), torch.ones(8, dtype=torch.float64), atol=1e-12)
            assert torch.allclose(
                sphere.angle(a, p), torch.full((8,), t * math.pi, dtype=torch.float64), atol=1e-6
            )


def test_angle_precise_at_extremes():
    a = rand(4)
    assert torch.allclose(sphere.angle(a, a), torch.zeros(4, dtype=torch.float64), atol=1e-15)
    assert torch.allclose(
        sphere.angle(a, -a), torch.full((4,), math.pi, dtype=torch.float64), atol=1e-15
    )
    # a small angle that arccos(dot) could not resolve in float32
    e0 = torch.tensor([[1.0, 0.0]])
    e1 = torch.tensor([[math.cos(1e-4), math.sin(1e-4)]])
    assert abs(float(sphere.angle(e0, e1)) - 1e-4) < 1e-9


def test_random_orthogonal():
    e = rand(64, 32)
    g = torch.Generator().manual_seed(7)
    u = sphere.random_orthogonal(e, generator=g)
    assert torch.allclose(
        (u * sphere.normalize(e)).sum(-1), torch.zeros(64, dtype=torch.float64), atol=1e-13
    )
    assert torch.allclose(u.norm(dim=-1), torch.ones(64, dtype=torch.float64), atol=1e-13)
    u2 = sphere.random_orthogonal(e, generator=torch.Generator().manual_seed(7))
    u3 = sphere.random_orthogonal(e, generator=torch.Generator().manual_seed(8))
    assert torch.equal(u, u2) and not torch.allclose(u, u3)


def test_rotate_toward_exact_angle_in_plane():
    e, u = rand(10), rand(10, seed=9)
    theta = torch.linspace(0.0, 3.0, 10, dtype=torch.float64)
    r = sphere.rotate_toward(e, u, theta)
    assert torch.allclose(sphere.angle(e, r), theta, atol=1e-12)
    # r lies in span(e, u): its residual after projecting on that plane is 0
    q, _ = torch.linalg.qr(torch.stack([e, u], dim=-1))
    resid = r - (q @ (q.transpose(-1, -2) @ r.unsqueeze(-1))).squeeze(-1)
    assert resid.abs().max() < 1e-12
    with pytest.raises(ZeroVectorError, match="orthogonal"):
        sphere.rotate_toward(e, 2 * e, 0.3)


def test_gradients_flow():
    a = rand(3, 5).requires_grad_()
    b = rand(3, 5, seed=1).requires_grad_()
    t = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, t: sphere.slerp(a, b, t), (a, b, t))
    assert torch.autograd.gradcheck(lambda a, b: sphere.angle(a, b), (a, b))
    th = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, th: sphere.rotate_toward(a, b, th), (a, b, th))


def test_angle_stats():
    e0 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    e1 = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    s = sphere.angle_stats(e0, e1)
    assert (
        abs(s["mean_deg"] - 67.5) < 1e-4
        and abs(s["min_deg"] - 45) < 1e-4
        and abs(s["max_deg"] - 90) < 1e-4
    )


def test_bad_inputs():
    with pytest.raises(ZeroVectorError, match="non-zero"):
        sphere.normalize(torch.zeros(2, 4))
    with pytest.raises(ZeroVectorError):
        sphere.slerp(torch.zeros(1, 4), torch.ones(1, 4), 0.5)
    with pytest.raises(NonFiniteError):
        sphere.angle(torch.tensor([[float("nan"), 1.0]]), torch.ones(1, 2))
    with pytest.raises(ShapeError, match="differ"):
        sphere.slerp(torch.ones(1, 4), torch.ones(1, 3), 0.5)
    with pytest.raises(ShapeError, match="D >= 2"):
        sphere.normalize(torch.ones(3, 1))
    with pytest.raises(TypeError):
        sphere.normalize(torch.ones(3, 4, dtype=torch.int64))
