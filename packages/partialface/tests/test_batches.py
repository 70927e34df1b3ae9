import pytest
import torch

from facelab.core.errors import FacelabTypeError, RangeError, ShapeError
from facelab.core.freq import FrequencyCodec
from facelab.core.recipe import RepeatDataset
from facelab.partialface.batches import (
    SALT_PERMUTATION,
    SALT_SUBSET,
    IndexedDataset,
    draw_challenges,
    form_training_batch,
    hash_draws,
)
from facelab.partialface.plan import SubsetPlan, reference_plan
from facelab.partialface.spectrum import SubsetEncoder

M32 = 0xFFFFFFFF


def lowbias32(x: int) -> int:
    """Pure-Python 32-bit lowbias32 hash (arbitrary precision ints, masked by hand)."""
    x &= M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def reference_draw(seed: int, epoch: int, index: int, salt: int) -> int:
    key = lowbias32(salt)
    for part in (seed & M32, seed >> 32, epoch & M32, epoch >> 32):
        key = lowbias32(key ^ part)
    return lowbias32(lowbias32((index & M32) ^ key) ^ (index >> 32))


def test_hash_matches_a_pure_python_reference():
    idx = torch.tensor([0, 1, 2, 12345, 2**31 - 1, 2**32 + 7, 2**40 + 3])
    for seed, epoch in [(0, 0), (1337, 5), (2**33 + 1, 2**32 + 9)]:
        got = hash_draws(seed, epoch, idx, SALT_SUBSET).tolist()
        assert got == [reference_draw(seed, epoch, int(i), SALT_SUBSET) for i in idx]


def test_draws_depend_only_on_seed_epoch_and_index():
    plan = reference_plan()
    labels = torch.arange(64) % 37
    idx = torch.arange(1000, 1064)
    s, p = draw_challenges(plan, labels, idx, seed=3, epoch=2)
    # another batch order and composition: every sample keeps its draw
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    s2, p2 = draw_challenges(plan, labels[perm], idx[perm], seed=3, epoch=2)
    assert torch.equal(s2, s[perm]) and torch.equal(p2, p[perm])
    s3, p3 = draw_challenges(plan, labels[:5], idx[:5], seed=3, epoch=2)
    assert torch.equal(s3, s[:5]) and torch.equal(p3, p[:5])
    # other epochs and seeds give other draws
    s4, p4 = draw_challenges(plan, labels, idx, seed=3, epoch=3)
    s5, _ = draw_challenges(plan, labels, idx, seed=4, epoch=2)
    assert not torch.equal(s4, s) and not torch.equal(p4, p) and not torch.equal(s5, s)


def test_subsets_come_from_the_identity_triple_and_are_uniform():
    plan = reference_plan()
    n = 60000
    labels = torch.arange(n) % 997
    idx = torch.arange(n)
    subset, perm = draw_challenges(plan, labels, idx, seed=7, epoch=0)
    # brute force: each sample's subset belongs to triples[label % 20]
    triples = plan.triples
    for i in range(0, n, 97):
        assert int(subset[i]) in triples[int(labels[i]) % 20]
    # the choice within the triple and the permutation are uniform (3 values each)
    pick = torch.tensor(
        [triples[int(lab) % 20].index(int(s)) for lab, s in zip(labels[:6000], subset[:6000])]
    )
    for values in (pick, perm):
        freq = torch.bincount(values, minlength=3).double() / values.numel()
        assert torch.all((freq - 1 / 3).abs() < 0.025), freq
    # an identity only ever sees its own 3 subsets, and all 3 of them
    for lab in (0, 5, 19, 20, 996):
        seen = set(subset[labels == lab].tolist())
        assert seen == set(triples[lab % 20])


def test_training_batch_gathers_each_samples_channels():
    from facelab.core.data.toyfaces import ToyFaces

    plan = SubsetPlan.generate(seed=2)
    ds = ToyFaces(5, 2, size=32)
    images, labels = ds.render(slice(None)), ds.labels
    idx = torch.arange(10) + 40
    enc = SubsetEncoder()
    ch, positions, subset, perm = form_training_batch(
        images, labels, idx, plan, enc, seed=1, epoch=4
    )
    assert ch.shape == (10, 27, 32, 32) and positions.shape == (10, 9)
    full = FrequencyCodec().encode(images)
    for i in range(10):  # per-sample loop: the independent reference
        want = full[i, plan.channel_indices(int(subset[i]), int(perm[i]))]
        torch.testing.assert_close(ch[i], want, rtol=1e-4, atol=2e-3)
        assert tuple(positions[i].tolist()) == plan.positions(int(subset[i]), int(perm[i]))
    exp_s = [plan.triples[int(lab) % plan.num_triples] for lab in labels]
    for i in range(10):
        k = reference_draw(1, 4, int(idx[i]), SALT_SUBSET) % 3
        assert int(subset[i]) == exp_s[i][k]
        assert int(perm[i]) == reference_draw(1, 4, int(idx[i]), SALT_PERMUTATION) % 3


def test_repeated_samples_get_independent_draws():
    from facelab.core.data.toyfaces import ToyFaces

    base = ToyFaces(4, 2, size=32)
    ds = IndexedDataset(RepeatDataset(base, 3))
    assert len(ds) == 24
    img0, lab0, i0 = ds[1]
    img1, lab1, i1 = ds[9]
    assert torch.equal(img0, img1) and int(lab0) == int(lab1) and (i0, i1) == (1, 9)
    plan = reference_plan()
    idx = torch.arange(0, 3000, 8)  # the same image (index % 8 == 0) in many repeats
    s, _ = draw_challenges(plan, torch.zeros_like(idx), idx, seed=0, epoch=0)
    assert len(set(s.tolist())) == 3


def test_bad_inputs():
    plan = reference_plan()
    with pytest.raises(ShapeError):
        draw_challenges(plan, torch.zeros(4, dtype=torch.long), torch.arange(5), seed=0, epoch=0)
    with pytest.raises(FacelabTypeError):
        draw_challenges(plan, torch.zeros(4), torch.arange(4), seed=0, epoch=0)
    with pytest.raises(RangeError):
        draw_challenges(plan, -torch.ones(4, dtype=torch.long), torch.arange(4), seed=0, epoch=0)
    with pytest.raises(RangeError):
        hash_draws(-1, 0, torch.arange(3), SALT_SUBSET)
    with pytest.raises(FacelabTypeError):
        hash_draws(0, 0, torch.rand(3), SALT_SUBSET)
