"""The strategies called as Flower calls them: ``aggregate_train(round, replies)`` with replies
built like a ClientApp's (``{"arrays": ArrayRecord, "metrics": MetricRecord}``)."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAvg

from facelab.ariba.strategy import ARIBA, NormClipping, NormDetection, reply
from facelab.core.errors import FacelabError, RangeError


def _global(seed=100):
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(16, 3, 3, 3, generator=g),
        "conv.bias": torch.randn(16, generator=g),
        "fc.weight": torch.randn(10, 32, generator=g),
        "bn.num_batches_tracked": torch.tensor(5),
    }


def _deltas(n, seed=0, scale=0.01):
    g = torch.Generator().manual_seed(seed)
    base = _global()
    common = {
        k: torch.randn(v.shape, generator=g) for k, v in base.items() if v.is_floating_point()
    }
    return [
        {k: scale * (common[k] + torch.randn(common[k].shape, generator=g)) for k in common}
        for _ in range(n)
    ]


def _replies(deltas, attackers=(), sizes=None):
    g = _global()
    out = []
    for i, d in enumerate(deltas):
        arrays = {k: (g[k] + d[k]) if k in d else g[k] for k in g}
        n = sizes[i] if sizes else 50 + 10 * i
        out.append(reply(arrays, n, node_id=100 + i, extra={"attacker": int(i in attackers)}))
    return out


def _arrays(rec):
    return {k: rec[k].numpy() for k in rec}


def _fedavg(replies):
    arrays, _ = FedAvg().aggregate_train(1, replies)
    return _arrays(arrays)


def test_benign_round_equals_fedavg():
    deltas = _deltas(8, seed=1)
    s = ARIBA(global_arrays=ArrayRecord(_global()))
    arrays, metrics = s.aggregate_train(1, _replies(deltas))
    assert metrics["ariba-pruned"] == 0 and metrics["ariba-nonfinite"] == 0
    ref = _fedavg(_replies(deltas))
    got = _arrays(arrays)
    assert set(got) == set(ref)
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k])


def test_boosted_attacker_pruned_and_rest_averaged():
    deltas = _deltas(8, seed=2)
    deltas[5] = {k: 8.0 * v for k, v in deltas[5].items()}  # model replacement
    s = ARIBA(global_arrays=ArrayRecord(_global()), memory=0.0)
    arrays, metrics = s.aggregate_train(3, _replies(deltas, attackers=(5,)))
    assert s.history[-1].pruned == [105]
    assert (metrics["ariba-tp"], metrics["ariba-fp"], metrics["ariba-fn"]) == (1, 0, 0)
    rest = [r for i, r in enumerate(_replies(deltas)) if i != 5]
    ref = _fedavg(rest)
    for k, v in _arrays(arrays).items():
        np.testing.assert_allclose(v, ref[k], rtol=0, atol=1e-7)
    # the kept clients' metrics are averaged: no attacker weight left
    assert metrics["attacker"] == 0


def test_nan_reply_never_reaches_the_aggregate():
    deltas = _deltas(6, seed=3)
    deltas[2] = {k: v.clone() for k, v in deltas[2].items()}
    deltas[2]["conv.bias"][3] = float("nan")
    deltas[4] = {k: torch.full_like(v, float("inf")) for k, v in deltas[4].items()}
    for strategy in (
        ARIBA(global_arrays=ArrayRecord(_global()), num_prune=0),
        NormDetection(global_arrays=ArrayRecord(_global())),
        NormClipping(global_arrays=ArrayRecord(_global())),
    ):
        arrays, metrics = strategy.aggregate_train(1, _replies(deltas))
        assert metrics["ariba-nonfinite"] == 2, type(strategy).__name__
        assert sorted(strategy.history[-1].nonfinite) == [102, 104]
        for v in _arrays(arrays).values():
            assert np.isfinite(v).all()


def test_malformed_replies_are_dropped_not_fatal():
    deltas = _deltas(6, seed=4)
    replies = _replies(deltas)
    g = _global()
    bad_shape = {**{k: g[k] for k in g}, "fc.weight": torch.zeros(10, 31)}
    missing = {k: g[k] for k in g if k != "conv.bias"}
    replies += [reply(bad_shape, 40, node_id=900), reply(missing, 40, node_id=901)]
    s = ARIBA(global_arrays=ArrayRecord(g), num_prune=0, truth_key=None)
    arrays, metrics = s.aggregate_train(1, replies)
    assert metrics["ariba-malformed"] == 2
    assert s.history[-1].malformed == [900, 901]
    ref = _fedavg(_replies(deltas))
    for k, v in _arrays(arrays).items():
        np.testing.assert_array_equal(v, ref[k])


def test_norm_clipping_matches_a_direct_computation():
    deltas = _deltas(5, seed=5)
    deltas[1] = {k: 10 * v for k, v in deltas[1].items()}
    sizes = [10, 20, 30, 40, 50]
    s = NormClipping(global_arrays=ArrayRecord(_global()))
    arrays, _ = s.aggregate_train(1, _replies(deltas, sizes=sizes))
    g = _global()
    flat = [np.concatenate([d[k].double().numpy().ravel() for k in d]) for d in deltas]
    norms = np.array([np.linalg.norm(f) for f in flat])
    bound = np.median(norms)
    w = np.array(sizes, dtype=float) / sum(sizes)
    for k in deltas[0]:
        expect = g[k].double().numpy() + sum(
            w[i] * min(1.0, bound / norms[i]) * deltas[i][k].double().numpy() for i in range(5)
        )
        np.testing.assert_allclose(_arrays(arrays)[k], expect, rtol=1e-6, atol=1e-7)


def test_memory_carries_a_node_s_past_counts():
    # round 1: node 100 sends a boosted update; round 2: a benign one. With memory 0.5 its
    # moving-average count still passes round 2's threshold; with memory 0 it does not.
    g = ArrayRecord(_global())
    r1 = _deltas(9, seed=6)
    r1[0] = {k: 8.0 * v for k, v in r1[0].items()}
    r2 = _deltas(9, seed=7)
    pruned = {}
    for memory in (0.0, 0.5):
        s = ARIBA(global_arrays=g, memory=memory)
        s.aggregate_train(1, _replies(r1))
        assert s.history[-1].pruned == [100]
        s.aggregate_train(2, _replies(r2))
        pruned[memory] = s.history[-1].pruned
    assert 100 not in pruned[0.0]
    assert 100 in pruned[0.5]


def test_needs_the_global_model_and_valid_arguments():
    with pytest.raises(FacelabError, match="global model"):
        ARIBA().aggregate_train(1, _replies(_deltas(4)))
    with pytest.raises(RangeError, match="num_prune"):
        ARIBA(num_prune=-1)
    with pytest.raises(RangeError, match="memory"):
        ARIBA(memory=1.0)
    with pytest.raises(RangeError, match="clip_norm"):
        NormClipping(clip_norm=0.0)
