import itertools
import json

import pytest
import torch

from facelab.core.errors import (
    FacelabTypeError,
    FormatError,
    RangeError,
    ShapeError,
    UnknownNameError,
)
from facelab.partialface.plan import SubsetPlan, reference_plan, resolve_plan

PRUNED = [0, 1, 2, 3, 8, 9, 10, 16, 17, 24]  # the paper's pruned low frequencies
TFACE_SELECTION = [
    [1, 24, 28, 12, 32, 45, 47, 40, 52],
    [35, 39, 44, 42, 10, 4, 37, 31, 53],
    [0, 50, 19, 6, 22, 51, 49, 23, 21],
    [38, 8, 25, 13, 17, 30, 7, 33, 9],
    [26, 29, 16, 2, 43, 14, 5, 11, 48],
    [36, 41, 46, 34, 15, 27, 18, 20, 3],
]
TFACE_PERMUTATIONS = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8],
    [7, 3, 0, 6, 5, 4, 1, 2, 8],
    [4, 8, 6, 0, 2, 5, 3, 7, 1],
]


def tface_channels(subset: int, perm: int) -> list[int]:
    """Which of the 192 channels TFace's create_channel_subsets + form_training_batch feed the
    model for (subset, perm), re-enacted on a tensor whose every channel holds its own index."""
    x = torch.arange(192, dtype=torch.float64).view(1, 192, 1, 1)
    # dct_transform(chs_remove=...): per colour keep list(set(range(64)) - set(pruned))
    kept = list(set(range(64)) - set(PRUNED))
    x = x.view(1, 3, 64, 1, 1)[:, :, kept].reshape(1, 162, 1, 1)
    # create_channel_subsets
    x = x.reshape(1, 3, 54, 1, 1)[:, :, torch.tensor(TFACE_SELECTION).reshape(-1)]
    x = x.reshape(1, 3, 6, 9, 1, 1).permute(2, 0, 1, 3, 4, 5).reshape(6, 27, 1, 1)
    one = x[subset].reshape(3, 9)
    # form_training_batch: input_splits[i] = input_splits[i, :, perm]
    one = one[:, torch.tensor(TFACE_PERMUTATIONS[perm])]
    return [int(v) for v in one.reshape(-1)]


def test_reference_preset_reproduces_tface_channel_indices():
    plan = reference_plan()
    assert plan.num_subsets == 6 and plan.subset_size == 9 and plan.num_permutations == 3
    for s in range(6):
        for p in range(3):
            assert plan.channel_indices(s, p) == tface_channels(s, p), (s, p)
    assert SubsetPlan.preset("reference") == plan


def test_reference_row0_is_the_documented_dct_positions():
    # the spec: row 0 is original DCT indices 5, 34, 38, 21, 42, 55, 57, 50, 62
    assert reference_plan().positions(0, 0) == (5, 34, 38, 21, 42, 55, 57, 50, 62)


@pytest.mark.parametrize(
    "plan_fn",
    [
        reference_plan,
        lambda: SubsetPlan.generate(seed=3),
        lambda: SubsetPlan.generate(),
        lambda: SubsetPlan.generate(9, 2, seed=1),
        lambda: SubsetPlan.generate(3, 5, seed=2, subsets_per_identity=2),
    ],
)
def test_plans_are_disjoint_and_cover_the_54_unpruned_positions(plan_fn):
    plan = plan_fn()
    flat = [p for row in plan.subsets for p in row]
    assert len(flat) == len(set(flat)) == 54
    assert set(flat) == set(range(64)) - set(PRUNED)
    # every (subset, permutation) is a reordering of its subset, same positions in each colour
    for s in range(plan.num_subsets):
        for p in range(plan.num_permutations):
            pos = plan.positions(s, p)
            assert sorted(pos) == sorted(plan.subsets[s])
            idx = plan.channel_indices(s, p)
            assert idx == [c * 64 + k for c in range(3) for k in pos]
    table = plan.position_table()
    for s, p in itertools.product(range(plan.num_subsets), range(plan.num_permutations)):
        assert tuple(table[s, p].tolist()) == plan.positions(s, p)
    assert len({tuple(r) for r in plan.permutations}) == plan.num_permutations


def test_triples_are_lexicographic_combinations():
    plan = reference_plan()
    assert plan.triples == tuple(itertools.combinations(range(6), 3))
    assert plan.num_triples == 20
    assert plan.triples[12] == (1, 2, 5)  # the reference's worked example: label 15232 % 20


def test_generation_seeded_is_reproducible_and_csprng_is_not():
    assert SubsetPlan.generate(seed=5) == SubsetPlan.generate(seed=5)
    assert SubsetPlan.generate(seed=5) != SubsetPlan.generate(seed=6)
    a, b = SubsetPlan.generate(), SubsetPlan.generate()
    assert a != b  # 54! splits: a collision means the generator is not random


def test_generation_uses_the_csprng_without_a_seed(monkeypatch):
    import secrets

    calls = []
    real = secrets.SystemRandom.shuffle

    def spy(self, x):
        calls.append(len(x))
        return real(self, x)

    monkeypatch.setattr(secrets.SystemRandom, "shuffle", spy)
    SubsetPlan.generate()
    assert calls and calls[0] == 54


@pytest.mark.parametrize("suffix", [".json", ".safetensors"])
def test_save_load_round_trip(tmp_path, suffix):
    plan = SubsetPlan.generate(seed=11)
    path = plan.save(tmp_path / f"plan{suffix}")
    back = SubsetPlan.load(path)
    assert back == plan and back.subsets == plan.subsets and back.permutations == plan.permutations
    assert back.plan_id == plan.plan_id
    assert resolve_plan(path) == plan


def test_repr_does_not_reveal_the_positions():
    plan = reference_plan()
    text = repr(plan)
    assert "34, 38" not in text and plan.plan_id in text


def test_bad_plans_are_rejected():
    ref = reference_plan()
    subsets = [list(r) for r in ref.subsets]
    perms = [list(r) for r in ref.permutations]
    overlap = [list(r) for r in subsets]
    overlap[1][0] = overlap[0][0]
    with pytest.raises(ShapeError, match="disjoint"):
        SubsetPlan(overlap, perms)
    with pytest.raises(ShapeError, match="cover"):
        SubsetPlan(subsets[:5], perms)
    pruned = [list(r) for r in subsets]
    pruned[0][0] = 9
    with pytest.raises(RangeError, match="pruned"):
        SubsetPlan(pruned, perms)
    with pytest.raises(RangeError, match=r"0\.\.63"):
        SubsetPlan([[*subsets[0][:-1], 64], *subsets[1:]], perms)
    with pytest.raises(RangeError, match="permutation"):
        SubsetPlan(subsets, [[0, 0, 1, 2, 3, 4, 5, 6, 7]])
    with pytest.raises(ShapeError, match="distinct"):
        SubsetPlan(subsets, [perms[0], perms[0]])
    with pytest.raises(ShapeError, match="length"):
        SubsetPlan(subsets, [[0, 1, 2]])
    with pytest.raises(FacelabTypeError):
        SubsetPlan([[0.5] * 9] * 6, perms)
    with pytest.raises(ShapeError):
        SubsetPlan([[5, 6], [7]], perms)
    with pytest.raises(RangeError, match="divide"):
        SubsetPlan.generate(num_subsets=7)
    with pytest.raises(RangeError, match="subsets_per_identity"):
        SubsetPlan(subsets, perms, subsets_per_identity=7)
    with pytest.raises(UnknownNameError):
        SubsetPlan.preset("tface")
    with pytest.raises(RangeError):
        ref.positions(6, 0)
    with pytest.raises(RangeError):
        ref.positions(0, 3)


def test_bad_plan_files_are_rejected(tmp_path):
    plan = reference_plan()
    p = plan.save(tmp_path / "plan.json")
    doc = json.loads(p.read_text())
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(FormatError, match="JSON"):
        SubsetPlan.load(tmp_path / "bad.json")
    (tmp_path / "v2.json").write_text(json.dumps(doc | {"format_version": 2}))
    with pytest.raises(FormatError, match="format_version"):
        SubsetPlan.load(tmp_path / "v2.json")
    (tmp_path / "other.json").write_text(json.dumps(doc | {"format": "something"}))
    with pytest.raises(FormatError, match="format"):
        SubsetPlan.load(tmp_path / "other.json")
    (tmp_path / "prune.json").write_text(json.dumps(doc | {"pruned": [0, 1]}))
    with pytest.raises(FormatError, match="pruned"):
        SubsetPlan.load(tmp_path / "prune.json")
    bad = json.loads(json.dumps(doc))
    bad["subsets"][0][0] = bad["subsets"][1][0]
    (tmp_path / "overlap.json").write_text(json.dumps(bad))
    with pytest.raises(ShapeError):
        SubsetPlan.load(tmp_path / "overlap.json")
    st = plan.save(tmp_path / "plan.safetensors")
    data = st.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError):
        SubsetPlan.load(tmp_path / "trunc.safetensors")
    with pytest.raises(FormatError, match=r"\.json or \.safetensors"):
        plan.save(tmp_path / "plan.txt")
    with pytest.raises(FileNotFoundError):
        SubsetPlan.load(tmp_path / "missing.json")
