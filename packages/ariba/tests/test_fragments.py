import numpy as np
import pytest
import torch

from facelab.ariba.fragments import FragmentConfig, fragments, stack_fragments
from facelab.core.errors import FacelabError, FacelabTypeError, KeyMismatchError, ShapeError


def _update(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "conv.bias": torch.randn(4, generator=g),
        "fc.weight": torch.randn(5, 7, generator=g),
        "scale": torch.tensor(2.0),
        "bn.num_batches_tracked": torch.tensor(7),
        "mask": torch.ones(3, dtype=torch.bool),
    }


def test_filter_fragments_match_a_loop_over_output_units():
    u = _update()
    fr = fragments(u)
    assert set(fr) == {"conv.weight", "conv.bias", "fc.weight", "scale"}  # integer/bool ignored
    w = u["conv.weight"].numpy()
    for o in range(4):
        np.testing.assert_array_equal(fr["conv.weight"][o].numpy(), w[o].ravel())
    for o in range(5):
        np.testing.assert_array_equal(fr["fc.weight"][o].numpy(), u["fc.weight"][o].numpy())
    assert fr["conv.bias"].shape == (1, 4)
    assert fr["scale"].shape == (1, 1)


def test_tensor_and_chunk_fragments_keep_every_value_and_norm():
    u = _update()
    whole = fragments(u, FragmentConfig("tensor"))
    assert all(f.shape[0] == 1 for f in whole.values())
    chunks = fragments(u, FragmentConfig("chunk", chunk_size=10))
    w = u["conv.weight"].reshape(-1)
    c = chunks["conv.weight"]
    assert c.shape == (11, 10)  # 108 values -> 11 chunks, the last padded with two zeros
    np.testing.assert_array_equal(c.reshape(-1)[:108].numpy(), w.numpy())
    assert float(c.reshape(-1)[108:].abs().sum()) == 0.0
    assert torch.allclose(torch.linalg.vector_norm(c), torch.linalg.vector_norm(w))


def test_stack_fragments_groups_clients_and_accepts_numpy():
    ups = [_update(s) for s in range(3)]
    ups[1] = {k: v.numpy() for k, v in ups[1].items()}
    groups = stack_fragments(ups)
    assert groups["conv.weight"].shape == (3, 4, 27)
    assert groups["fc.weight"].shape == (3, 5, 7)
    np.testing.assert_array_equal(groups["fc.weight"][1].numpy(), ups[1]["fc.weight"])
    chunks = stack_fragments(ups, FragmentConfig("chunk", chunk_size=10))
    assert chunks["conv.weight"].shape == (3, 11, 10)


def test_bad_rounds_name_the_client_and_key():
    a, b = _update(0), _update(1)
    del b["fc.weight"]
    with pytest.raises(KeyMismatchError, match=r"updates\[1\].*missing \['fc.weight'\]"):
        stack_fragments([a, b])
    b = _update(1)
    b["conv.weight"] = torch.zeros(4, 3, 3, 2)
    with pytest.raises(ShapeError, match=r"updates\[1\]\['conv.weight'\].*\(4, 3, 3, 3\)"):
        stack_fragments([a, b])
    b = _update(1)
    b["conv.bias"] = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(FacelabTypeError, match=r"conv\.bias"):
        stack_fragments([a, b])
    b = _update(1)
    b["fc.weight"] = [[1.0]]
    with pytest.raises(FacelabTypeError, match="numpy array"):
        stack_fragments([a, b])
    with pytest.raises(FacelabError, match="at least one client"):
        stack_fragments([])
    with pytest.raises(FacelabTypeError):
        stack_fragments(a)  # a single mapping is not a round
    with pytest.raises(FacelabError, match="floating-point"):
        stack_fragments([{"n": torch.tensor(1)}, {"n": torch.tensor(2)}])
    with pytest.raises(FacelabError, match="granularity"):
        FragmentConfig("layer")  # type: ignore[arg-type]
