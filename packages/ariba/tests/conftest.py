import os

import pytest
import torch

# 2 shared cores: one intra-op thread keeps small ops fast and timings stable
torch.set_num_threads(1)
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

SHAPES = {
    "conv1.weight": (16, 3, 3, 3),
    "conv1.bias": (16,),
    "conv2.weight": (32, 16, 3, 3),
    "conv2.bias": (32,),
    "fc.weight": (10, 64),
    "fc.bias": (10,),
}


def make_round(
    num_benign=10,
    attackers=(),
    seed=0,
    scale=0.01,
    shapes=SHAPES,
):
    """Synthetic round: benign deltas share a common direction plus client noise (as clients
    of one task do); an attacker is (kind, strength): ``boost`` multiplies a benign-like delta,
    ``filters`` pushes a quarter of conv2's filters and fc row 0 along a fixed direction and
    rescales the whole update to the benign norm (a norm-matched backdoor)."""
    g = torch.Generator().manual_seed(seed)
    common = {k: torch.randn(s, generator=g) for k, s in shapes.items()}

    def benign():
        return {k: scale * (common[k] + torch.randn(s, generator=g)) for k, s in shapes.items()}

    ups = [benign() for _ in range(num_benign)]
    norm_ref = torch.sqrt(sum((t**2).sum() for t in ups[0].values()))
    trigger_dir = {
        k: torch.randn(s, generator=torch.Generator().manual_seed(99)) for k, s in shapes.items()
    }
    for kind, strength in attackers:
        u = benign()
        if kind == "boost":
            u = {k: strength * v for k, v in u.items()}
        elif kind == "filters":
            u["conv2.weight"][:8] += strength * scale * trigger_dir["conv2.weight"][:8]
            u["fc.weight"][0] += strength * scale * trigger_dir["fc.weight"][0]
            n = torch.sqrt(sum((t**2).sum() for t in u.values()))
            u = {k: v * (norm_ref / n) for k, v in u.items()}
        ups.append(u)
    return ups


@pytest.fixture
def round_maker():
    return make_round
