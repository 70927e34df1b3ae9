import pytest
import torch

# 2 shared cores: torch's intra-op threads spin against the other processes and make small
# elementwise ops many times slower; one thread keeps the tests fast and their timings stable
torch.set_num_threads(1)


def make_identities(n_ids=40, per_id=2, m=49, d=16, noise=0.8, seed=0, dtype=torch.float32):
    """Synthetic group templates: an identity centre plus per-image noise; softmax weights that
    share an identity-level component. Images of an identity are contiguous."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_ids, m, d, generator=g, dtype=torch.float64)
    t = centres.repeat_interleave(per_id, 0) + noise * torch.randn(
        n_ids * per_id, m, d, generator=g, dtype=torch.float64
    )
    logits = 0.5 * torch.randn(n_ids, m, generator=g, dtype=torch.float64)
    logits = logits.repeat_interleave(per_id, 0) + 0.2 * torch.randn(
        n_ids * per_id, m, generator=g, dtype=torch.float64
    )
    w = torch.softmax(logits, dim=-1)
    labels = torch.arange(n_ids).repeat_interleave(per_id)
    return t.to(dtype), w.to(dtype), labels


@pytest.fixture
def make_ids():
    return make_identities
