import os
import stat

import numpy as np
import pytest
import torch

from facelab.core.errors import FormatError, KeyMismatchError, ShapeError, UnknownNameError
from facelab.slerpface import (
    KeyStore,
    ProtectedTemplate,
    SlerpFaceProtector,
    generate_keys,
    generate_seeds,
    protect,
)


def test_generate_keys_are_unit_random_and_seedable():
    a, b = generate_keys(200), generate_keys(200)
    assert a.shape == (200, 49, 16) and a.dtype == torch.float32
    assert torch.allclose(a.norm(dim=-1), torch.ones(200, 49), atol=1e-6)
    assert not torch.equal(a, b)  # CSPRNG: two draws differ
    # directions look isotropic: coordinates centred, variance 1/16 each
    assert abs(float(a.mean())) < 0.005
    assert abs(float(a.var()) - 1 / 16) < 0.002
    assert abs(float((a[:, :, 0] * a[:, :, 1]).mean())) < 0.005
    assert torch.equal(generate_keys(3, seed=5), generate_keys(3, seed=5))
    assert not torch.equal(generate_keys(3, seed=5), generate_keys(3, seed=6))
    s = generate_seeds(4, 2)
    assert s.shape == (4, 2) and s.dtype == torch.int64 and bool((s >= 0).all())


def test_keystore_roundtrip_rekey_revoke(tmp_path):
    path = tmp_path / "keys.safetensors"
    store = KeyStore(path)
    keys = generate_keys(3)
    ids = store.add(keys)
    assert len(set(ids)) == 3 and all(len(i) == 24 for i in ids)
    assert torch.equal(store.get(ids), keys)
    new_key = generate_keys(1)[0]
    new_id = store.rekey(ids[0], new_key)
    assert store.is_revoked(ids[0]) and new_id in store and ids[0] not in store
    with pytest.raises(KeyMismatchError, match="revoked"):
        store.get(ids[0])
    store.revoke(ids[1])
    store.save()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    loaded = KeyStore.load(path)
    assert loaded.ids() == [ids[2], new_id]
    assert torch.equal(loaded.get([new_id, ids[2]]), torch.stack([new_key, keys[2]]))
    with pytest.raises(KeyMismatchError, match=f"replaced by {new_id}"):
        loaded.get([ids[0]])
    with pytest.raises(UnknownNameError, match="unknown key id"):
        loaded.get(["0" * 24])
    with pytest.raises(ShapeError, match="holds keys of shape"):
        loaded.add(torch.zeros(1, 7, 16))
    assert "0." not in repr(loaded)  # no key values in the repr


def test_keystore_tampered_or_foreign_file(tmp_path):
    path = tmp_path / "keys.safetensors"
    store = KeyStore(path)
    store.add(generate_keys(2))
    store.save()
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="integrity"):
        KeyStore.load(path)
    path.write_bytes(b"\x05\x00\x00\x00")
    with pytest.raises(FormatError):
        KeyStore.load(path)


def _protected(n=4, seed=0):
    prot = SlerpFaceProtector()
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, 49, 16, generator=g)
    w = torch.softmax(torch.randn(n, 49, generator=g), -1)
    store = KeyStore()
    pt = prot.enroll_with_store(t, w, store, subjects=[f"id{i}" for i in range(n)])
    return prot, t, w, store, pt


def test_protected_template_roundtrip_and_verify(tmp_path):
    prot, t, w, store, pt = _protected()
    pt.save(tmp_path / "gallery.safetensors")
    store.save(tmp_path / "keys.safetensors")
    back = ProtectedTemplate.load(tmp_path / "gallery.safetensors")
    assert back.method == "slerpface" and back.key_ids == pt.key_ids
    assert back.params == prot.params() and back.subjects == pt.subjects
    assert torch.equal(back.tensors["templates"], pt.tensors["templates"])
    keys = KeyStore.load(tmp_path / "keys.safetensors")
    same = prot.verify(back, keys, t, w).scores
    other = prot.verify(back, keys, t.roll(1, 0), w.roll(1, 0)).scores
    assert float(same.min()) > float(other.max())
    sub = back.select([2, 0])
    assert sub.key_ids == (pt.key_ids[2], pt.key_ids[0]) and sub.subjects == ("id2", "id0")
    both = ProtectedTemplate.concat([sub, back.select(slice(1, 2))])
    assert len(both) == 3


def test_keys_never_appear_in_a_protected_template_file(tmp_path):
    _, _, _, store, pt = _protected(n=8)
    path = pt.save(tmp_path / "gallery.safetensors")
    raw = path.read_bytes()
    keys = store.get(list(pt.key_ids))
    for k in keys.reshape(-1, 16):
        # not one group of any key, in float32 or float64 bytes
        assert k.numpy().tobytes() not in raw
        assert k.double().numpy().tobytes() not in raw
    # and no two consecutive key coordinates either (8-byte windows at every offset). Single
    # 4-byte coordinates are not checked: ~6k random 32-bit words against ~30k file windows
    # collide by chance in a few percent of runs (the test was flaky that way).
    flat = keys.numpy().reshape(-1).view(np.uint8)
    key_pairs = {bytes(flat[i : i + 8]) for i in range(0, len(flat) - 7, 4)}
    windows = {raw[i : i + 8] for i in range(len(raw) - 7)}
    assert not (key_pairs & windows)
    with pytest.raises(FormatError, match="never embeds key"):
        ProtectedTemplate("slerpface", {"keys": keys}, pt.key_ids)


def test_tampered_truncated_and_authenticated_files(tmp_path):
    _, _, _, _, pt = _protected()
    path = pt.save(tmp_path / "g.safetensors")
    data = bytearray(path.read_bytes())
    flipped = bytearray(data)
    flipped[-3] ^= 0x01  # a tensor byte
    (tmp_path / "flip.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(FormatError, match="integrity"):
        ProtectedTemplate.load(tmp_path / "flip.safetensors")
    header_edit = bytes(data).replace(b'alpha\\": 0.9', b'alpha\\": 0.8')
    assert header_edit != bytes(data)
    (tmp_path / "hdr.safetensors").write_bytes(header_edit)
    with pytest.raises(FormatError, match="integrity"):
        ProtectedTemplate.load(tmp_path / "hdr.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(FormatError):
        ProtectedTemplate.load(tmp_path / "cut.safetensors")
    secret = b"server-side secret"
    pt.save(tmp_path / "mac.safetensors", secret=secret)
    assert ProtectedTemplate.load(tmp_path / "mac.safetensors", secret=secret).key_ids == pt.key_ids
    with pytest.raises(FormatError, match="secret"):
        ProtectedTemplate.load(tmp_path / "mac.safetensors")
    with pytest.raises(FormatError, match="integrity"):
        ProtectedTemplate.load(tmp_path / "mac.safetensors", secret=b"wrong")


def test_template_shape_and_method_checks():
    p = protect(torch.randn(2, 49, 16), torch.full((2, 49), 1 / 49), generate_keys(2))
    with pytest.raises(ShapeError, match="one row per key id"):
        ProtectedTemplate("slerpface", {"templates": p}, ("a",))
    with pytest.raises(UnknownNameError):
        ProtectedTemplate("rot13", {"templates": p}, ("a", "b"))
    with pytest.raises(ShapeError, match="labels"):
        ProtectedTemplate("slerpface", {"templates": p}, ("a", "b"), subjects=("x",))
