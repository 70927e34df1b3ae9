import numpy as np
import pytest
import torch

# 2 shared cores: more intra-op threads only spin against the other processes
torch.set_num_threads(1)

TINY = 32  # image side of the tiny end-to-end runs


def identity_embeddings(n_ids=30, per_id=4, d=16, noise=0.9, seed=0):
    """(n_ids * per_id, d) embeddings: identity centres plus noise (images of an identity
    contiguous) and their identity labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_ids, d))
    emb = np.repeat(centres, per_id, 0) + noise * rng.standard_normal((n_ids * per_id, d))
    return emb.astype(np.float32), np.repeat(np.arange(n_ids), per_id)


def random_pairs(labels, n_pairs, seed=0):
    """Half genuine, half impostor pairs in random order (with repetition)."""
    rng = np.random.default_rng(seed + 1)
    n = labels.size
    i1, i2, same = [], [], []
    while len(i1) < n_pairs:
        a, b = rng.integers(0, n, 2)
        if a == b:
            continue
        s = labels[a] == labels[b]
        want_same = len(i1) % 2 == 0
        if s != want_same:
            if want_same:  # draw a partner of a
                cand = np.flatnonzero((labels == labels[a]) & (np.arange(n) != a))
                b = rng.choice(cand)
                s = True
            else:
                continue
        i1.append(a)
        i2.append(b)
        same.append(bool(s))
    perm = rng.permutation(n_pairs)
    return np.array(i1)[perm], np.array(i2)[perm], np.array(same)[perm]


@pytest.fixture
def make_embeddings():
    return identity_embeddings


@pytest.fixture
def make_pairs():
    return random_pairs
