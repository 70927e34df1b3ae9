"""The SlerpFace benchmark's per-template loops are valid references: they give the library's
results (so the speed ratios compare equal work)."""

import numpy as np
import torch

from facelab.benchmarks.slerpface_speed import (
    _baseline_rows,
    reference_biohash,
    reference_ironmask,
    reference_match,
)
from facelab.slerpface import BioHashing, IronMask, generate_seeds, match, protect


def _templates(n, m=8, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, m, d, generator=g, dtype=torch.float64)
    w = torch.softmax(torch.randn(n, m, generator=g, dtype=torch.float64), -1)
    return t, w


def test_biohash_loop_gives_the_library_bits():
    t, w = _templates(6)
    prot = BioHashing(bits=64)
    seeds = generate_seeds(6, 1, seed=1)
    ours = prot.enroll(t, w, seeds)["bits"].bool().numpy()
    ref = reference_biohash(t.numpy(), w.numpy(), seeds[:, 0].numpy(), 64)
    assert ref.shape == (6, 64) and 0.2 < ref.mean() < 0.8
    np.testing.assert_array_equal(ours, ref)


def test_ironmask_loop_gives_the_library_rotation():
    t, w = _templates(3)
    prot = IronMask(alpha=16)
    seeds = generate_seeds(3, 2, seed=2)
    ours = prot.enroll(t, w, seeds)["rotation"].double().numpy()
    ref = reference_ironmask(t.numpy(), w.numpy(), seeds.numpy(), 16)
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    # and the loop's P is a rotation taking the unit template onto a +-1/4 codeword
    x = (t / t.norm(dim=-1, keepdim=True) * w.unsqueeze(-1)).reshape(3, -1).numpy()
    y = np.einsum("nij,nj->ni", ref.astype(np.float64), x / np.linalg.norm(x, axis=1)[:, None])
    assert np.allclose(np.sort(np.abs(y), axis=1)[:, -16:], 0.25, atol=1e-5)
    assert np.allclose(np.sort(np.abs(y), axis=1)[:, :-16], 0.0, atol=1e-5)


def test_match_loop_gives_the_library_scores():
    t, w = _templates(5, m=49)
    k = torch.randn(t.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    k = k / k.norm(dim=-1, keepdim=True)
    p = protect(t, w, k, generator=torch.Generator().manual_seed(4))
    q = t + 0.3 * torch.randn(t.shape, generator=torch.Generator().manual_seed(5), dtype=t.dtype)
    ours = match(p, q, w, k).scores.numpy()
    ref = reference_match(p.numpy(), q.numpy(), w.numpy(), k.numpy())
    np.testing.assert_allclose(ours, ref, atol=1e-9)


def test_baseline_rows_small():
    rows = _baseline_rows(True)
    assert [r["benchmark"].split()[0] for r in rows] == ["biohashing", "ironmask"]
    assert all(r["ours/s"] > 0 and r["reference/s"] > 0 for r in rows)
    assert "equal to the loop's: 1.0000" in rows[0]["note"]
    assert float(rows[1]["note"].split("loop ")[1].split(";")[0]) < 1e-6


def test_keyed_rows_compare_equal_work():
    """The keyed-vs-paper rows time protect / match on the same data and key material, and the
    two formats' scores agree (so the ratio compares equal work)."""
    from facelab.benchmarks.slerpface_speed import _data, _keyed_rows

    t, w, k = _data(64, seed=0)
    q = t + 0.5 * torch.randn(t.shape, generator=torch.Generator().manual_seed(1))
    rows = _keyed_rows(t, w, k, q, 1)
    names = [r["benchmark"].split(",")[0] for r in rows]
    assert names == [
        "slerpface keyed protect",
        "slerpface keyed match 1:1",
        "slerpface keyed record preparation",
    ]
    assert all(r["ours/s"] > 0 and r["reference/s"] > 0 for r in rows)
    assert float(rows[1]["note"].split("paper ")[1].split(";")[0]) < 1e-5
