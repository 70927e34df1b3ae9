"""Per-sample channel shuffling: a permutation per sample and duplicate, invertible, uniform."""

import itertools

import pytest
import torch
from scipy.stats import chisquare

from facelab.core.errors import FacelabTypeError, KeyMismatchError, RangeError, ShapeError
from facelab.minusface import random_permutations, shuffle_channels, unshuffle_channels


def test_shuffle_is_a_per_sample_permutation_matching_a_loop():
    torch.manual_seed(0)
    r = torch.randn(5, 192, 3, 4)
    shuffled, perms = shuffle_channels(r, 2, generator=torch.Generator().manual_seed(1))
    assert shuffled.shape == (5, 2, 192, 3, 4) and perms.shape == (5, 2, 192)
    for b in range(5):
        for k in range(2):
            assert sorted(perms[b, k].tolist()) == list(range(192))
            for c in range(0, 192, 7):
                assert torch.equal(shuffled[b, k, c], r[b, perms[b, k, c]])
    # different across samples and across duplicates of one sample
    rows = {tuple(p.tolist()) for p in perms.reshape(-1, 192)}
    assert len(rows) == 10
    # the multiset of channel maps of every sample is kept: sorting along channels agrees
    torch.testing.assert_close(
        shuffled.sort(dim=2).values, r.unsqueeze(1).expand_as(shuffled).sort(dim=2).values
    )


def test_unshuffle_inverts_with_the_permutation():
    torch.manual_seed(0)
    r = torch.randn(4, 192, 2, 2)
    shuffled, perms = shuffle_channels(r, 3)
    back = unshuffle_channels(shuffled, perms)
    assert torch.equal(back, r.unsqueeze(1).expand(4, 3, 192, 2, 2))
    # another sample's permutation does not invert it
    wrong = unshuffle_channels(shuffled, perms.roll(1, dims=0))
    assert not torch.equal(wrong, back)


def test_given_permutations_are_applied():
    r = torch.arange(2 * 4, dtype=torch.float32).view(2, 4, 1, 1)
    perms = torch.tensor([[[3, 2, 1, 0]], [[1, 0, 3, 2]]])
    shuffled, out = shuffle_channels(r, 1, perms=perms)
    assert torch.equal(out, perms)
    assert shuffled.flatten().tolist() == [3, 2, 1, 0, 5, 4, 7, 6]


def test_seeded_permutations_are_reproducible_and_csprng_ones_are_not():
    a = random_permutations(4, 192, 2, generator=torch.Generator().manual_seed(7))
    b = random_permutations(4, 192, 2, generator=torch.Generator().manual_seed(7))
    c = random_permutations(4, 192, 2, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    d, e = random_permutations(4, 192, 2), random_permutations(4, 192, 2)
    assert not torch.equal(d, e)


@pytest.mark.parametrize("seeded", [True, False])
def test_permutations_are_uniform(seeded):
    gen = torch.Generator().manual_seed(3) if seeded else None
    perms = random_permutations(6000, 3, generator=gen).view(-1, 3)
    index = {p: i for i, p in enumerate(itertools.permutations(range(3)))}
    counts = torch.zeros(6)
    for p in map(tuple, perms.tolist()):
        counts[index[p]] += 1
    assert chisquare(counts.numpy()).pvalue > 1e-4
    # every channel lands on every position equally often
    pos = torch.stack([(perms == c).float().mean(0) for c in range(3)])
    torch.testing.assert_close(pos, torch.full((3, 3), 1 / 3), atol=0.03, rtol=0)


def test_bad_inputs():
    r = torch.randn(2, 8, 2, 2)
    with pytest.raises(ShapeError):
        shuffle_channels(r[0])
    with pytest.raises(RangeError):
        shuffle_channels(r, 0)
    with pytest.raises(FacelabTypeError):
        shuffle_channels(r, 1, generator="seed")
    with pytest.raises(KeyMismatchError):  # not a permutation
        shuffle_channels(r, 1, perms=torch.zeros(2, 1, 8, dtype=torch.int64))
    with pytest.raises(KeyMismatchError):  # other batch size
        shuffle_channels(r, 1, perms=random_permutations(3, 8))
    with pytest.raises(FacelabTypeError):
        shuffle_channels(r, 1, perms=random_permutations(2, 8).int())
    with pytest.raises(KeyMismatchError):  # duplicates differ
        shuffle_channels(r, 2, perms=random_permutations(2, 8))
    shuffled, perms = shuffle_channels(r, 2)
    with pytest.raises(KeyMismatchError):
        unshuffle_channels(shuffled, perms[:, :1])
    with pytest.raises(ShapeError):
        unshuffle_channels(shuffled[:, 0], perms)
