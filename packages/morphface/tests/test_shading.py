"""SH shading against the irradiance integral and the addition-theorem formula."""

import math

import numpy as np
import pytest
import torch

from facelab.core.errors import ShapeError
from facelab.morphface.shading import directional_light, light_from_radiance, shade


def real_sh(d):
    """Orthonormal real SH Y_00 .. Y_2m in the module's order, from their textbook formulas."""
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    c0 = 0.5 * math.sqrt(1 / math.pi)
    c1 = math.sqrt(3 / (4 * math.pi))
    c2 = 0.5 * math.sqrt(15 / math.pi)
    return np.stack(
        [
            np.full_like(x, c0),
            c1 * x,
            c1 * y,
            c1 * z,
            c2 * x * y,
            c2 * x * z,
            c2 * y * z,
            0.5 * c2 * (x * x - y * y),
            0.25 * math.sqrt(5 / math.pi) * (3 * z * z - 1),
        ],
        -1,
    )


def sphere_quadrature(n_theta=400, n_phi=800):
    th = (np.arange(n_theta) + 0.5) * math.pi / n_theta
    ph = (np.arange(n_phi) + 0.5) * 2 * math.pi / n_phi
    t, p = np.meshgrid(th, ph, indexing="ij")
    d = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], -1).reshape(-1, 3)
    wgt = (np.sin(t) * (math.pi / n_theta) * (2 * math.pi / n_phi)).reshape(-1)
    return d, wgt


def test_shade_is_the_irradiance_of_a_band_limited_environment():
    rng = np.random.default_rng(0)
    radiance = rng.normal(size=(9, 3))
    d, wgt = sphere_quadrature()
    env = real_sh(d) @ radiance  # (Q, 3) radiance per direction
    normals = rng.normal(size=(20, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    cos = np.clip(normals @ d.T, 0, None)  # (20, Q)
    want = (cos * wgt) @ env  # E(n) = int L(w) max(0, n.w) dw
    light = light_from_radiance(torch.tensor(radiance)[None])
    got = shade(torch.tensor(normals)[None], light)[0].numpy()
    np.testing.assert_allclose(got, want, atol=2e-3 * np.abs(want).max())


def test_directional_light_is_the_second_order_clamped_cosine():
    rng = np.random.default_rng(1)
    ld = rng.normal(size=3)
    ld /= np.linalg.norm(ld)
    n = rng.normal(size=(50, 3))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    c = n @ ld
    # addition theorem: sum_l A_l (2l + 1) / (4 pi) P_l(n.l), A = (pi, 2 pi / 3, pi / 4)
    lobe = (math.pi + 2 * math.pi * c + (5 * math.pi / 4) * 0.5 * (3 * c * c - 1)) / (4 * math.pi)
    intensity, ambient = 1.3, 0.2
    light = directional_light(
        torch.tensor(ld)[None], torch.tensor([intensity]), torch.tensor([ambient])
    )
    got = shade(torch.tensor(n)[None], light)[0].numpy()
    want = ambient + intensity * lobe
    for ch in range(3):
        np.testing.assert_allclose(got[:, ch], want, atol=1e-9)
    # and it is close to the true clamped cosine (the classic ~10 % band-2 error bound)
    assert np.abs(lobe - np.clip(c, 0, None)).max() < 0.1


def test_shade_batches_and_checks_shapes():
    n = torch.nn.functional.normalize(torch.randn(2, 5, 4, 3), dim=-1)
    light = torch.randn(2, 27)
    out = shade(n, light)
    assert out.shape == (2, 5, 4, 3)
    torch.testing.assert_close(out[1], shade(n[1:], light[1:])[0])
    with pytest.raises(ShapeError, match="27"):
        shade(n, torch.randn(2, 26))
