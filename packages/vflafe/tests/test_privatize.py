import math

import numpy as np
import pytest
import torch

from facelab.core.errors import FacelabTypeError, NonFiniteError, RangeError, ShapeError
from facelab.vflafe import clip_rows, privatize


def _clip_reference(x: np.ndarray, c: float) -> np.ndarray:
    """Row by row, as the definition reads."""
    out = x.copy().reshape(-1, x.shape[-1])
    for i, row in enumerate(out):
        n = math.sqrt(float((row.astype(np.float64) ** 2).sum()))
        out[i] = row * min(1.0, c / n) if n > 0 else row
    return out.reshape(x.shape)


@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 6), (5,)])
def test_clip_matches_row_by_row_reference(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    x.view(-1, shape[-1])[0] = 0.0  # a zero row stays zero
    got = clip_rows(x, 2.0)
    np.testing.assert_allclose(got.numpy(), _clip_reference(x.numpy(), 2.0), rtol=1e-12, atol=0)
    norms = torch.linalg.vector_norm(got, dim=-1)
    assert norms.max() <= 2.0 + 1e-12
    small = torch.linalg.vector_norm(x, dim=-1) <= 2.0
    assert torch.equal(got[small], x[small])  # rows inside the ball are untouched


def test_zero_rows_have_finite_gradients():
    x = torch.zeros(3, 4, requires_grad=True)
    privatize(x, clip_norm=1.0, noise_multiplier=1.0).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_noise_has_the_stated_scale_and_the_gradient_is_the_clips():
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(4000, 16, generator=g) * 2).requires_grad_()
    c, s = 1.5, 3.0
    out = privatize(x, clip_norm=c, noise_multiplier=s, generator=torch.Generator().manual_seed(2))
    noise = (out - clip_rows(x, c)).detach()
    # 64,000 draws: the std estimate's relative error is ~0.3 %; 2 % is > 6 standard errors
    assert abs(noise.std().item() / (s * c) - 1) < 0.02
    assert abs(noise.mean().item()) < 0.05 * s * c
    w = torch.randn(16, generator=g)
    (out * w).sum().backward()
    g_priv = x.grad.clone()
    x.grad = None
    (clip_rows(x, c) * w).sum().backward()
    torch.testing.assert_close(g_priv, x.grad)


def test_generator_makes_the_noise_repeatable_and_zero_noise_only_clips():
    x = torch.randn(5, 3)
    a = privatize(
        x, clip_norm=1.0, noise_multiplier=1.0, generator=torch.Generator().manual_seed(7)
    )
    b = privatize(
        x, clip_norm=1.0, noise_multiplier=1.0, generator=torch.Generator().manual_seed(7)
    )
    c = privatize(
        x, clip_norm=1.0, noise_multiplier=1.0, generator=torch.Generator().manual_seed(8)
    )
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(privatize(x, clip_norm=1.0, noise_multiplier=0.0), clip_rows(x, 1.0))


@pytest.mark.parametrize(
    ("kwargs", "err", "msg"),
    [
        ({"clip_norm": 0.0, "noise_multiplier": 1.0}, RangeError, "clip_norm"),
        ({"clip_norm": -1.0, "noise_multiplier": 1.0}, RangeError, "clip_norm"),
        ({"clip_norm": float("nan"), "noise_multiplier": 1.0}, RangeError, "clip_norm"),
        ({"clip_norm": 1.0, "noise_multiplier": -0.1}, RangeError, "noise_multiplier"),
        ({"clip_norm": 1.0, "noise_multiplier": float("inf")}, RangeError, "noise_multiplier"),
        ({"clip_norm": True, "noise_multiplier": 1.0}, RangeError, "clip_norm"),
    ],
)
def test_bad_parameters(kwargs, err, msg):
    with pytest.raises(err, match=msg):
        privatize(torch.ones(2, 3), **kwargs)


def test_bad_embeddings():
    x = torch.ones(4, 3)
    x[1, 2] = float("nan")
    with pytest.raises(NonFiniteError, match="1 NaN/Inf"):
        privatize(x, clip_norm=1.0, noise_multiplier=1.0)
    with pytest.raises(NonFiniteError):
        privatize(torch.full((2, 2), float("inf")), clip_norm=1.0, noise_multiplier=0.0)
    with pytest.raises(ShapeError):
        privatize(torch.ones(0, 3), clip_norm=1.0, noise_multiplier=1.0)
    with pytest.raises(FacelabTypeError):
        privatize(torch.ones(2, 3, dtype=torch.int64), clip_norm=1.0, noise_multiplier=1.0)
    with pytest.raises(FacelabTypeError):
        privatize([[1.0, 2.0]], clip_norm=1.0, noise_multiplier=1.0)
