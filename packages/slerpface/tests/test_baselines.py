import hashlib

import numpy as np
import pytest
import torch

from facelab.core.errors import KeyMismatchError, RangeError, ShapeError, UnknownNameError
from facelab.slerpface import (
    BioHashing,
    IronMask,
    KeyStore,
    Unprotected,
    get_protector,
)


@pytest.fixture
def small(make_ids):
    # 8 groups of 16: a 128-dim weighted template keeps BioHashing/IronMask keys cheap
    return make_ids(n_ids=12, per_id=2, m=8, d=16, noise=0.5)


def weighted_unit(t, w):
    t = t.double().numpy()
    w = w.double().numpy()
    return (t / np.linalg.norm(t, axis=-1, keepdims=True) * w[..., None]).reshape(len(t), -1)


def test_unprotected_score_is_the_weighted_group_cosine(small):
    t, w, _ = small
    prot = Unprotected()
    keys = prot.new_keys(24, 8, 16)
    g = prot.enroll(t, w, keys)
    probe, pw = t.roll(1, 0), w.roll(1, 0)
    s = prot.match(g, probe, pw, keys).scores.numpy()
    tn, qn = t.double().numpy(), probe.double().numpy()
    cos = (tn * qn).sum(-1) / np.linalg.norm(tn, axis=-1) / np.linalg.norm(qn, axis=-1)
    np.testing.assert_allclose(s, (w.double().numpy() * cos).sum(-1), atol=1e-6)


def test_biohashing_bits_are_signs_of_an_orthonormal_projection(small):
    t, w, _ = small
    prot = BioHashing(bits=64)
    keys = prot.new_keys(24, 8, 16, seed=3)
    r = prot.projections(keys[:2], 128)
    eye = torch.eye(64).expand(2, 64, 64)
    assert torch.allclose(r.transpose(1, 2) @ r, eye, atol=1e-5)  # orthonormal columns
    assert torch.equal(prot.projections(keys[:2], 128), r)  # a function of the seed alone
    bits = prot.enroll(t, w, keys)["bits"]
    x = weighted_unit(t[:2], w[:2])
    ref = np.einsum("bd,bdl->bl", x, r.double().numpy()) > 0
    np.testing.assert_array_equal(bits[:2].numpy().astype(bool), ref)
    gen = prot.match({"bits": bits[0::2]}, t[1::2], w[1::2], keys[0::2]).scores
    other = torch.arange(1, 24, 2).roll(1)
    imp = prot.match({"bits": bits[0::2]}, t[other], w[other], keys[0::2]).scores
    assert float(gen.mean()) > 0.7 and abs(float(imp.mean()) - 0.5) < 0.1
    # a new key: the old bits no longer agree with the genuine probe beyond chance
    new = prot.new_keys(12, 8, 16, seed=4)
    renewed = prot.match({"bits": bits[0::2]}, t[1::2], w[1::2], new).scores
    assert abs(float(renewed.mean()) - 0.5) < 0.1


def test_ironmask_rotation_maps_the_template_onto_a_sparse_codeword(small):
    t, w, _ = small
    prot = IronMask(alpha=16)
    keys = prot.new_keys(24, 8, 16, seed=1)
    g = prot.enroll(t, w, keys)
    p = g["rotation"].double()
    eye = torch.eye(128, dtype=torch.float64).expand(24, 128, 128)
    assert torch.allclose(p @ p.transpose(1, 2), eye, atol=1e-5)
    x = torch.from_numpy(weighted_unit(t, w))
    x = x / x.norm(dim=-1, keepdim=True)
    y = (p @ x.unsqueeze(-1)).squeeze(-1)
    code = prot.codewords(keys, 128)
    assert bool(((code != 0).sum(-1) == 16).all())
    assert torch.allclose(y, code.double() / 4, atol=1e-5)  # P x = c, entries +-1/sqrt(16)
    digest = hashlib.sha256(code[0].numpy().astype(np.int8).tobytes()).digest()
    assert bytes(g["digest"][0].tolist()) == digest
    assert bool((prot.match(g, t, w, keys).scores == 1).all())  # the enrolled image itself
    other = torch.arange(24).roll(2)
    assert bool((prot.match(g, t[other], w[other], keys).scores == 0).all())


def test_store_flow_and_parameter_mismatch(small):
    t, w, _ = small
    store = KeyStore(kind="biohashing")
    prot = BioHashing(bits=32)
    pt = prot.enroll_with_store(t, w, store)
    assert "bits" in pt.tensors and pt.params == {"bits": 32}
    assert pt.tensors["bits"].dtype == torch.uint8
    with pytest.raises(KeyMismatchError, match="protected with"):
        BioHashing(bits=64).verify(pt, store, t, w)
    with pytest.raises(KeyMismatchError, match="cannot be matched"):
        get_protector("slerpface").verify(pt, store, t, w)


def test_bad_inputs(small):
    t, w, _ = small
    with pytest.raises(UnknownNameError):
        get_protector("fuzzyvault")
    with pytest.raises(RangeError, match="exceeds"):
        BioHashing(bits=200).new_keys(2, 8, 16)
    with pytest.raises(KeyMismatchError, match="int64 seeds"):
        BioHashing(bits=16).enroll(t, w, torch.zeros(24, 1))
    with pytest.raises(ShapeError, match="one key per template"):
        IronMask().enroll(t, w, torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(ShapeError):
        IronMask().match(
            {"rotation": torch.zeros(24, 4, 4)}, t, w, torch.zeros(24, 2, dtype=torch.int64)
        )
