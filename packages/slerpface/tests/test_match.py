import math

import numpy as np
import pytest
import torch

from facelab.core.errors import (
    FormatError,
    NonFiniteError,
    RangeError,
    ShapeError,
    ZeroVectorError,
)
from facelab.slerpface import generate_keys, match, protect, score_matrix, search


def reference_match(g, q, w, k, alpha=0.9):
    """The reference matcher, per pair and per group (numpy, textbook slerp)."""
    out = np.zeros(g.shape[0])
    for b in range(g.shape[0]):
        s = 0.0
        for i in range(g.shape[1]):
            qi = q[b, i] / np.linalg.norm(q[b, i])
            ki = k[b, i] / np.linalg.norm(k[b, i])
            th = math.acos(float(np.clip(qi @ ki, -1, 1)))
            a = alpha - w[b, i]
            r = (math.sin((1 - a) * th) * qi + math.sin(a * th) * ki) / math.sin(th)
            r[g[b, i] == 0] = 0
            s += float(r @ g[b, i]) / np.linalg.norm(r)
        out[b] = s
    return out


@pytest.fixture
def gallery(make_ids):
    t, w, labels = make_ids(n_ids=30, per_id=2, dtype=torch.float64)
    keys = generate_keys(60, seed=7, dtype=torch.float64)
    p = protect(t, w, keys, generator=torch.Generator().manual_seed(0))
    return t, w, labels, keys, p


def test_match_equals_the_reference_loop(gallery):
    t, w, _, keys, p = gallery
    probe, pw = t.roll(1, 0), w.roll(1, 0)
    ours = match(p, probe, pw, keys)
    ref = reference_match(p.numpy(), probe.numpy(), pw.numpy(), keys.numpy())
    np.testing.assert_allclose(ours.scores.numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(
        ours.distances.numpy(), np.arccos(np.clip(ref, -1, 1)) / np.pi, atol=1e-9
    )


def test_genuine_pairs_score_above_impostors(gallery):
    t, w, _, keys, p = gallery
    g_idx = torch.arange(0, 60, 2)  # first image of each identity is enrolled
    gen = match(p[g_idx], t[g_idx + 1], w[g_idx + 1], keys[g_idx]).scores
    other = (g_idx + 3) % 60  # an image of the next identity
    imp = match(p[g_idx], t[other], w[other], keys[g_idx]).scores
    assert float(gen.min()) > float(imp.max())
    # the raw probe of the enrolled image itself scores highest of all
    self_s = match(p[g_idx], t[g_idx], w[g_idx], keys[g_idx]).scores
    assert bool((self_s > gen).all())


def test_wrong_key_does_not_match(gallery):
    t, w, _, keys, p = gallery
    right = match(p, t, w, keys).scores
    wrong = match(p, t, w, generate_keys(60, seed=8, dtype=torch.float64)).scores
    assert float(right.min()) > float(wrong.max())


def test_score_matrix_and_search_agree_with_pairwise_match(gallery):
    t, w, _, keys, p = gallery
    probes, pw = t[1::2][:7], w[1::2][:7]
    s = score_matrix(p, keys, probes, pw, chunk_size=11)
    assert s.shape == (7, 60)
    # independent: pairwise match of every (probe, gallery) combination
    pi, gi = torch.meshgrid(torch.arange(7), torch.arange(60), indexing="ij")
    pi, gi = pi.flatten(), gi.flatten()
    pairwise = match(p[gi], probes[pi], pw[pi], keys[gi]).scores.view(7, 60)
    assert torch.allclose(s, pairwise, atol=1e-10)
    res = search(p, keys, probes, pw, top_k=3, chunk_size=13)
    top = pairwise.topk(3, dim=1)
    assert torch.allclose(res.scores, top.values, atol=1e-10)
    assert torch.equal(res.indices, top.indices)
    assert torch.equal(res.indices[:, 0], torch.arange(1, 14, 2))  # each finds its identity


def test_search_on_a_half_precision_gallery(gallery):
    t, w, _, keys, p = gallery
    probes, pw = t[1::2].float(), w[1::2].float()
    full = score_matrix(p.float(), keys.float(), probes, pw)
    half = score_matrix(p.half(), keys.half(), probes, pw)
    assert half.dtype == torch.float32
    assert torch.allclose(half, full, atol=2e-3)
    assert torch.equal(
        search(p.half(), keys.half(), probes, pw, top_k=1).indices[:, 0], torch.arange(1, 60, 2)
    )


def test_bad_inputs(gallery):
    t, w, _, keys, p = gallery
    with pytest.raises(FormatError, match="raw template"):
        match(t, t, w, keys)  # a raw template passed as the gallery
    bad = p.clone()
    bad[4, 1, 2] = float("inf")
    with pytest.raises(NonFiniteError, match="gallery"):
        match(bad, t, w, keys)
    with pytest.raises(ShapeError, match="same shape"):
        match(p, t, w, keys[:, :10])
    with pytest.raises(ShapeError):
        match(p, t, w[:, :10], keys)
    with pytest.raises(RangeError, match="top_k"):
        search(p, keys, t[:2], w[:2], top_k=0)
    with pytest.raises(ShapeError):
        score_matrix(p, keys[:5], t[:2], w[:2])
    zk = keys.clone()
    zk[3, 2] = 0
    with pytest.raises(ZeroVectorError, match="gallery_keys"):
        score_matrix(p, zk, t[:2], w[:2])
    with pytest.raises(ZeroVectorError, match="keys"):
        match(p, t, w, zk)
    zq = t.clone()
    zq[1, 0] = 0
    with pytest.raises(ZeroVectorError, match="probe_templates"):
        search(p, keys, zq[:2], w[:2])


def test_blockwise_match_and_protect_equal_the_reference(gallery, monkeypatch):
    """Several blocks with a short last one (buffers reused across blocks): scores equal the
    per-pair reference; a raw template in a later block is reported by its global index."""
    import sys

    t, w, _, keys, _ = gallery
    match_mod = sys.modules["facelab.slerpface.match"]
    protect_mod = sys.modules["facelab.slerpface.protect"]
    monkeypatch.setattr(match_mod, "BLOCK", 16)
    monkeypatch.setattr(protect_mod, "BLOCK", 16)
    p = protect(t, w, keys, generator=torch.Generator().manual_seed(0))  # 60 rows: 16+16+16+12
    assert torch.allclose(p.norm(dim=-1), w, atol=1e-12)
    q = t.roll(1, 0)  # each probe: another row's raw template
    ours = match(p, q, w, keys).scores.numpy()
    np.testing.assert_allclose(
        ours, reference_match(p.numpy(), q.numpy(), w.numpy(), keys.numpy()), atol=1e-10
    )
    bad = p.clone()
    bad[37] = t[37]
    with pytest.raises(FormatError, match="template 37 "):
        match(bad, q, w, keys)
