"""The keyed storage format: the same scores as the paper format, a stored file without the
weights and in a key-derived group order, and clear failures without the key record."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from facelab.core.errors import (
    FormatError,
    KeyMismatchError,
    NonFiniteError,
    RangeError,
    ShapeError,
    UnknownNameError,
    ZeroVectorError,
)
from facelab.slerpface import (
    KeyRecord,
    KeyStore,
    ProtectedTemplate,
    SlerpFaceProtector,
    from_keyed,
    generate_keys,
    key_permutation,
    match,
    protect,
    score_matrix,
    search,
    to_keyed,
)
from facelab.slerpface.cli import _save_raw, main


def assert_close(actual, expected, atol=1e-6, rtol=0):
    """Max abs difference within ``atol`` (torch.testing.assert_close imports
    torch.distributed on first use: tens of seconds on a busy machine)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    diff = float((actual.double() - expected.double()).abs().max()) if actual.numel() else 0.0
    assert diff <= atol, f"max |difference| {diff:.3g} > {atol:.3g}"


def _data(n, m=49, d=16, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, m, d, generator=g, dtype=dtype)
    w = torch.softmax(torch.randn(n, m, generator=g, dtype=dtype), -1)
    q = t + 0.6 * torch.randn(n, m, d, generator=g, dtype=dtype)
    q[1::2] = q.roll(1, 0)[1::2]  # odd rows: another template's probe (impostor pairs)
    wq = torch.softmax(torch.log(w) + 0.3 * torch.randn(n, m, generator=g, dtype=dtype), -1)
    k = generate_keys(n, m, d, seed=seed + 1, dtype=dtype)
    return t, w, q, wq, k


def _both(t, w, k, seed=5, **kw):
    paper = protect(t, w, k, generator=torch.Generator().manual_seed(seed), **kw)
    rec = KeyRecord(k, w)
    keyed = protect(t, w, rec, generator=torch.Generator().manual_seed(seed), storage="keyed", **kw)
    return paper, keyed, rec


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_keyed_match_gives_the_paper_scores_on_thousands_of_pairs(dtype, tol):
    t, w, q, wq, k = _data(3000, dtype=dtype)
    paper, keyed, rec = _both(t, w, k)
    s_paper = match(paper, q, wq, k).scores
    s_keyed = match(keyed, q, wq, rec, storage="keyed").scores
    # keys + gallery_weights (order derived from the keys) is the same record
    s_bare = match(keyed, q, wq, k, storage="keyed", gallery_weights=w).scores
    # genuine (even) above impostor (odd) pairs, with a spread far beyond the tolerance
    assert float(s_paper[0::2].mean() - s_paper[1::2].mean()) > 0.005
    assert float(s_paper.std()) > 1e3 * tol
    assert_close(s_keyed, s_paper, atol=tol, rtol=0)
    assert_close(s_bare, s_paper, atol=tol, rtol=0)
    # different key material gives different scores (the equality above is not vacuous)
    other = generate_keys(3000, 49, 16, seed=99, dtype=dtype)
    s_other = match(keyed, q, wq, KeyRecord(other, w), storage="keyed").scores
    assert float((s_other - s_paper).abs().mean()) > 0.01


def test_keyed_1_to_n_gives_the_paper_scores():
    t, w, q, wq, k = _data(400, dtype=torch.float32, seed=3)
    paper, keyed, rec = _both(t, w, k)
    probes, pw = q[:20], wq[:20]
    a = score_matrix(paper, k, probes, pw)
    b = score_matrix(keyed, rec, probes, pw, storage="keyed", chunk_size=64)
    assert a.shape == (20, 400)
    assert_close(b, a, atol=2e-6, rtol=0)  # 8,000 scores
    ra = search(paper, k, probes, pw, top_k=5)
    rb = search(keyed, k, probes, pw, top_k=5, storage="keyed", gallery_weights=w, chunk_size=50)
    assert torch.equal(ra.indices, rb.indices)
    assert_close(rb.scores, ra.scores, atol=2e-6, rtol=0)
    # mostly, each probe's own template ranks first (odd probes belong to template i - 1)
    own = torch.arange(20) - torch.arange(20) % 2
    assert int((rb.indices[:, 0] == own).sum()) >= 17


def _reference_keyed_match(stored, w_gallery, order, q, wq, k, alpha=0.9):
    """Per pair, per stored position, in numpy: the key holder's matching written out."""
    scores = np.zeros(stored.shape[0])
    for b in range(stored.shape[0]):
        for j in range(stored.shape[1]):
            i = order[b, j]
            t_hat = q[b, i] / np.linalg.norm(q[b, i])
            k_hat = k[b, i] / np.linalg.norm(k[b, i])
            th = np.arccos(np.clip(t_hat @ k_hat, -1, 1))
            a = alpha - wq[b, i]
            r = (np.sin((1 - a) * th) * t_hat + np.sin(a * th) * k_hat) / np.sin(th)
            r[stored[b, j] == 0] = 0
            scores[b] += w_gallery[b, i] * (stored[b, j] @ (r / np.linalg.norm(r)))
    return scores


def test_keyed_match_equals_a_per_pair_loop():
    t, w, q, wq, k = _data(12, seed=7)
    _, keyed, rec = _both(t, w, k)
    ours = match(keyed, q, wq, rec, storage="keyed").scores.numpy()
    order = key_permutation(k).numpy()
    ref = _reference_keyed_match(keyed.numpy(), w.numpy(), order, q.numpy(), wq.numpy(), k.numpy())
    np.testing.assert_allclose(ours, ref, atol=1e-10)


def test_stored_groups_are_unit_in_key_order_without_weights():
    t, w, _, _, k = _data(64, seed=2)
    w = w.clone()
    w[0, 3] = 0.0  # a zero weight is stored as a zero group, as in the paper format
    w = w / w.sum(-1, keepdim=True)
    paper, keyed, rec = _both(t, w, k)
    norms = keyed.norm(dim=-1)
    order = key_permutation(k)
    expected = (w.gather(1, order) > 0).double()
    assert_close(norms, expected, atol=1e-12, rtol=0)
    # position j holds the paper format's group order[j], unit-normalized, zeros where dropped
    unit = paper / paper.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    assert_close(keyed, unit.gather(1, order.unsqueeze(-1).expand(-1, -1, 16)))
    assert torch.equal(keyed == 0, (paper == 0).gather(1, order.unsqueeze(-1).expand(-1, -1, 16)))
    # the key holder's round trip, and the migration of a paper-format database
    assert_close(from_keyed(keyed, rec), paper, atol=1e-15, rtol=0)
    stored, weights = to_keyed(paper, k)
    assert_close(stored, keyed, atol=1e-12, rtol=0)
    assert_close(weights, w, atol=1e-12, rtol=0)


def test_exact_sampling_and_fixed_masks_keep_the_scores_identical():
    t, w, q, wq, k = _data(200, seed=4)
    paper, keyed, rec = _both(t, w, k, sampling="exact")
    assert_close(match(keyed, q, wq, rec, storage="keyed").scores, match(paper, q, wq, k).scores)
    dropped = torch.rand(200, 49, 16, generator=torch.Generator().manual_seed(1)) < 0.4
    dropped[..., 0] = False  # every group keeps a coordinate
    paper, keyed, rec = _both(t, w, k, dropped=dropped)
    assert_close(match(keyed, q, wq, rec, storage="keyed").scores, match(paper, q, wq, k).scores)


def test_key_permutation_is_a_uniform_key_secret_order():
    k = generate_keys(4000, 5, 16, seed=0)
    order = key_permutation(k)
    assert torch.equal(order.sort(-1).values, torch.arange(5).expand(4000, 5))
    assert torch.equal(key_permutation(k), order)  # a function of the key
    assert torch.equal(key_permutation(k.half()), order)  # float16 storage keeps it
    assert torch.equal(key_permutation(k.double()), order)
    # all 120 orders of 5 groups about equally often (chi-square, 119 dof: p ~ 1e-4 at 170)
    code = (order * torch.tensor([625, 125, 25, 5, 1])).sum(-1)
    counts = torch.bincount(code, minlength=3125)
    counts = counts[counts > 0]
    assert counts.numel() == 120
    chi2 = float(((counts - 4000 / 120) ** 2 / (4000 / 120)).sum())
    assert chi2 < 170
    # the order says nothing about the directions the stored groups show: the key group stored
    # first is no different from any other (a naive argsort of a coordinate would fail this)
    k49 = generate_keys(4000, 49, 16, seed=1)
    first = k49.gather(1, key_permutation(k49)[:, :1, None].expand(-1, 1, 16))[:, 0]
    assert abs(float(first[:, 0].mean())) < 0.02 and abs(float(first[:, 1].mean())) < 0.02
    with pytest.raises(ShapeError, match=r"\(n, m, d\)"):
        key_permutation(torch.zeros(3, 16))


def test_key_record_checks_and_never_prints_keys():
    k = generate_keys(3, 4, 16, seed=0)
    w = torch.full((3, 4), 0.25)
    rec = KeyRecord(k, w)
    assert "0." not in repr(rec) and "weights=yes" in repr(rec)
    assert torch.equal(rec.select(slice(1, 3)).order, rec.order[1:])
    with pytest.raises(ShapeError, match="permutation"):
        KeyRecord(k, w, order=torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(RangeError, match="summing to 1"):
        KeyRecord(k, torch.full((3, 4), 0.5))
    with pytest.raises(ShapeError):
        KeyRecord(k, torch.full((3, 5), 0.2))


def test_cached_key_norms_follow_the_record_and_bad_keys_still_fail():
    """The record's cached key norms (which spare protect / match a pass over the keys) are the
    norms of its own keys after select / with_weights, and a zero or NaN key group is still
    refused by name in the keyed path."""
    t, w, q, wq, k = _data(6, seed=2)
    rec = KeyRecord(k, w)
    _ = rec.key_norms, rec.stored_keys
    rows = torch.tensor([4, 1])
    for derived, keys in ((rec.select(rows), k[rows]), (rec.with_weights(w), k)):
        assert_close(derived.key_norms, keys.norm(dim=-1, keepdim=True), atol=1e-12)
        assert_close(derived.stored_keys, KeyRecord(keys).stored_keys, atol=0)
    for bad_value, error in ((0.0, ZeroVectorError), (float("nan"), NonFiniteError)):
        kb = k.clone()
        kb[3, 7] = bad_value
        with pytest.raises(error, match="keys"):
            protect(t, w, KeyRecord(kb, w), storage="keyed")
        with pytest.raises(error, match="keys"):
            match(protect(t, w, rec, storage="keyed"), q, wq, KeyRecord(kb, w), storage="keyed")


def test_matching_without_the_key_record_fails_clearly():
    t, w, q, wq, k = _data(8, seed=1)
    paper, keyed, rec = _both(t, w, k)
    with pytest.raises(KeyMismatchError, match="without its key record"):
        match(keyed, q, wq, k, storage="keyed")
    with pytest.raises(KeyMismatchError, match="without its key record"):
        match(keyed, q, wq, KeyRecord(k), storage="keyed")  # a key without weights
    with pytest.raises(KeyMismatchError, match="one or the other"):
        match(keyed, q, wq, rec, storage="keyed", gallery_weights=w)
    with pytest.raises(KeyMismatchError, match="only keyed templates"):
        match(paper, q, wq, k, gallery_weights=w)
    # each format refuses the other's templates
    with pytest.raises(FormatError, match="keyed one"):
        match(keyed, q, wq, k)
    with pytest.raises(FormatError, match="paper-format"):
        match(paper, q, wq, rec, storage="keyed")
    with pytest.raises(FormatError, match="paper-format"):
        search(paper, rec, q[:2], wq[:2], storage="keyed")
    with pytest.raises(UnknownNameError, match="storage"):
        match(keyed, q, wq, rec, storage="hidden")
    prot = SlerpFaceProtector(storage="keyed")
    with pytest.raises(KeyMismatchError, match="bare key tensor"):
        prot.match({"templates": keyed}, q, wq, k)


def test_protector_store_and_files_for_both_formats(tmp_path):
    t, w, q, wq, _ = _data(6, seed=3, dtype=torch.float32)
    scores = {}
    for storage in ("paper", "keyed"):
        prot = SlerpFaceProtector(storage=storage)
        store = KeyStore(tmp_path / f"keys_{storage}.safetensors")
        pt = prot.enroll_with_store(
            t, w, store, seed=11, generator=torch.Generator().manual_seed(12)
        )
        store.save()
        pt.save(tmp_path / f"gallery_{storage}.safetensors")
        back = ProtectedTemplate.load(tmp_path / f"gallery_{storage}.safetensors")
        assert back.storage == storage and back.version == (2 if storage == "keyed" else 1)
        scores[storage] = prot.verify(back, KeyStore.load(store.path), q, wq).scores
    assert_close(scores["keyed"], scores["paper"], atol=2e-6, rtol=0)

    # the files are told apart by their metadata
    for storage, version in (("paper", "1"), ("keyed", "2")):
        raw = (tmp_path / f"gallery_{storage}.safetensors").read_bytes()
        header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])["__metadata__"]
        assert header["version"] == version
        assert ("storage" in header["params"]) == (storage == "keyed")
        store_raw = (tmp_path / f"keys_{storage}.safetensors").read_bytes()
        store_hdr = json.loads(store_raw[8 : 8 + int.from_bytes(store_raw[:8], "little")])
        assert store_hdr["__metadata__"]["version"] == version
        assert ("weights" in store_hdr) == (storage == "keyed")
        # the keyed template file holds the unit groups only: no weights tensor, no weight bytes
        assert set(store_hdr) - {"__metadata__"} == (
            {"keys", "weights"} if storage == "keyed" else {"keys"}
        )
    keyed_file = (tmp_path / "gallery_keyed.safetensors").read_bytes()
    for row in w:
        assert row.numpy().tobytes()[:16] not in keyed_file

    keyed_pt = ProtectedTemplate.load(tmp_path / "gallery_keyed.safetensors")
    keyed_prot = SlerpFaceProtector(storage="keyed")
    # a keyed template cannot be matched without its key record
    with pytest.raises(KeyMismatchError, match="no attention weights"):
        paper_store = KeyStore.load(tmp_path / "keys_paper.safetensors")
        paper_store._keys.update(KeyStore.load(tmp_path / "keys_keyed.safetensors")._keys)
        keyed_prot.verify(keyed_pt, paper_store, q, wq)
    with pytest.raises(UnknownNameError, match="unknown key id"):
        keyed_prot.verify(keyed_pt, KeyStore.load(tmp_path / "keys_paper.safetensors"), q, wq)
    with pytest.raises(KeyMismatchError, match="storage"):
        SlerpFaceProtector().verify(
            keyed_pt, KeyStore.load(tmp_path / "keys_keyed.safetensors"), q, wq
        )


def test_template_versions_and_storage_must_agree(tmp_path):
    t, w, _, _, k = _data(2, dtype=torch.float32)
    _, keyed, _ = _both(t, w, k)
    params = SlerpFaceProtector(storage="keyed").params()
    with pytest.raises(FormatError, match="version 1 does not match"):
        ProtectedTemplate("slerpface", {"templates": keyed}, ("a", "b"), params, version=1)
    with pytest.raises(FormatError, match="only 'templates'"):
        ProtectedTemplate("slerpface", {"templates": keyed, "w": w}, ("a", "b"), params)
    with pytest.raises(FormatError, match="storage"):
        ProtectedTemplate("biohashing", {"bits": keyed}, ("a", "b"), {"storage": "keyed"})
    # a file whose metadata says version 1 for keyed parameters is refused on load
    pt = ProtectedTemplate("slerpface", {"templates": keyed}, ("a", "b"), params)
    path = pt.save(tmp_path / "k.safetensors")
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    meta = json.loads(raw[8 : 8 + n])["__metadata__"]
    meta["version"] = "1"
    meta.pop("digest")
    from facelab.slerpface.template import _content_digest

    meta["digest"] = _content_digest({"templates": keyed.contiguous()}, meta, None)
    save_file({"templates": keyed.contiguous()}, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(FormatError, match="version 1 does not match"):
        ProtectedTemplate.load(tmp_path / "bad.safetensors")


def test_keystore_records_with_weights(tmp_path):
    k = generate_keys(5, 7, 16, seed=0)
    w = torch.softmax(torch.randn(5, 7, generator=torch.Generator().manual_seed(0)), -1)
    store = KeyStore(tmp_path / "s.safetensors")
    ids = store.add(k, weights=w)
    plain = store.add(generate_keys(1, 7, 16, seed=1))
    rec = store.record(ids)
    assert_close(rec.weights, w.double())
    assert torch.equal(rec.order, key_permutation(k))
    new_id = store.rekey(ids[0], generate_keys(1, 7, 16, seed=2)[0], weights=w[0])
    assert store.has_weights(new_id) and not store.has_weights(ids[0])
    store.save()
    back = KeyStore.load(store.path)
    assert_close(back.record(ids[1:]).weights, w[1:].double())
    assert torch.equal(back.record(ids[1:]).order, key_permutation(k[1:]))
    with pytest.raises(KeyMismatchError, match="no attention weights"):
        back.record(plain)
    with pytest.raises(KeyMismatchError, match="revoked"):
        back.record(ids[0])
    with pytest.raises(RangeError, match="summing to 1"):
        store.add(k, weights=w * 2)
    with pytest.raises(ShapeError, match="only SlerpFace keys"):
        KeyStore(kind="biohashing").add(torch.zeros(2, 1, dtype=torch.int64), weights=w[:2, :1])
    # the weights are covered by the store's integrity digest
    data = bytearray(store.path.read_bytes())
    data[-3] ^= 0x10
    store.path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="integrity"):
        KeyStore.load(store.path)


def test_cli_keyed_enroll_match_and_search(tmp_path, capsys):
    t, w, _, _, _ = _data(10, m=4, dtype=torch.float32, seed=8)
    q = t + 0.2 * torch.randn(t.shape, generator=torch.Generator().manual_seed(0))
    raw = tmp_path / "raw.safetensors"
    _save_raw(raw, torch.cat([t, q]), torch.cat([w, w]), torch.arange(20) % 10)
    gallery, keys = tmp_path / "g.safetensors", tmp_path / "k.safetensors"
    argv = ["enroll", "--templates", str(raw), "--keystore", str(keys), "--out", str(gallery)]
    assert main([*argv, "--rows", "0:10", "--storage", "keyed"]) == 0
    assert ProtectedTemplate.load(gallery).storage == "keyed"
    out = tmp_path / "m.json"
    common = ["match", "--protected", str(gallery), "--keystore", str(keys), "--probes", str(raw)]
    assert main([*common, "--rows", "10:20", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["storage"] == "keyed" and len(res["scores"]) == 10
    assert all(math.isfinite(s) for s in res["scores"])
    assert main([*common, "--rows", "10:20", "--top-k", "3", "--out", str(out)]) == 0
    found = json.loads(out.read_text())["indices"]
    assert sum(row[0] == i for i, row in enumerate(found)) >= 8  # own template ranks first
    capsys.readouterr()
    # through the `facelab` command: one error line, exit status 2
    from facelab.core.cli import main as facelab

    bad = ["--rows", "0:10", "--storage", "keyed", "--method", "biohashing", "--bits", "16"]
    assert facelab(["slerpface", *argv[:-1], str(tmp_path / "b.safetensors"), *bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only slerpface has storage formats" in err[0]
