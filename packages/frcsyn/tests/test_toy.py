"""The toy edition: sets rebuilt independently from toyfaces (people, pixels, conditions)."""

import numpy as np
import pytest
import torch

from facelab.core.data.toyfaces import ToyFaces
from facelab.core.errors import FacelabError, RangeError, UnknownNameError
from facelab.frcsyn import (
    ToyEditionConfig,
    count_source,
    toy_eval_sets,
    toy_real_dataset,
    write_toy_standin,
)
from facelab.frcsyn.toy import TOY_EVAL_OFFSET

CFG = ToyEditionConfig(
    image_size=32,
    group_identities=4,
    group_images=4,
    group_pairs=40,
    hard_identities=20,
    hard_pairs=80,
)


@pytest.fixture(scope="module")
def sets():
    return {s.name: s for s in toy_eval_sets(CFG)}


def reference(identity, image):
    """The image and attributes toyfaces gives (identity, image) on its own."""
    ds = ToyFaces(1, image + 1, size=CFG.image_size, seed=CFG.seed, identity_offset=int(identity))
    return ds.render([image])[0], ds.attributes(image)


def test_sets_and_names(sets):
    assert list(sets) == ["toy-bupt", "toy-cfpfp", "toy-rof", "toy-agedb"]
    assert [s.stands_in_for for s in sets.values()] == [
        "BUPT-BalancedFace",
        "CFP-FP",
        "ROF",
        "AgeDB",
    ]
    ids = [set(s.identities.tolist()) for s in sets.values()]
    assert all(min(i) >= TOY_EVAL_OFFSET for i in ids)  # held-out people only
    assert all(not (a & b) for k, a in enumerate(ids) for b in ids[k + 1 :])  # disjoint sets


def test_balanced_set(sets):
    s = sets["toy-bupt"]
    id1, id2 = s.identities[s.index1], s.identities[s.index2]
    assert np.array_equal(id1 == id2, s.issame)
    names, counts = np.unique(s.groups, return_counts=True)
    assert names.tolist() == [f"skin{g}" for g in range(1, 7)] and set(counts) == {CFG.group_pairs}
    people = {}
    for ident in np.unique(s.identities):
        people[int(ident)] = reference(ident, 0)[1]["skin_tone_group"]
    for g in range(6):  # impostors inside the group, equal people per group
        inside = s.groups == f"skin{g + 1}"
        assert {people[int(i)] for i in np.concatenate([id1[inside], id2[inside]])} == {g}
        assert (
            len({int(i) for i in id1[inside]} | {int(i) for i in id2[inside]})
            == CFG.group_identities
        )


@pytest.mark.parametrize("name", ["toy-cfpfp", "toy-rof", "toy-agedb"])
def test_hard_sets_conditions_and_pixels(sets, name):
    s = sets[name]
    assert s.issame[:40:2].all() and not s.issame[1:40:2].any()  # genuine / impostor alternate
    id1, id2 = s.identities[s.index1], s.identities[s.index2]
    assert np.array_equal(id1 == id2, s.issame)
    rng = np.random.default_rng(0)
    for k in rng.choice(s.num_pairs, 12, replace=False):
        (img1, a1), (img2, a2) = (
            reference(s.attributes["identity"][i], s.attributes["image"][i])
            for i in (s.index1[k], s.index2[k])
        )
        assert torch.equal(img1, s.images[s.index1[k]]) and torch.equal(img2, s.images[s.index2[k]])
        if name == "toy-cfpfp":
            assert abs(a1["yaw"]) <= 10 and abs(a2["yaw"]) >= 25
        elif name == "toy-rof":
            assert a1["occlusion_type"] == 0 and a2["occlusion_type"] in (2, 3, 4)
        else:
            assert abs(a1["light_azimuth"]) <= 20 and abs(np.log(a1["exposure"])) <= 0.15
            assert abs(a2["light_azimuth"]) >= 45 and a2["light_strength"] >= 0.4


def test_real_dataset_and_standin(tmp_path):
    ds, c = toy_real_dataset(50, 8, 32)
    labels = torch.stack([ds[i][1] for i in range(len(ds))])
    assert len(ds) == 50 and c == 8 and torch.bincount(labels).min() >= 6
    root = write_toy_standin(tmp_path / "syn", 5, 3, image_size=32)
    cnt = count_source(root, scan=True)  # the manifest agrees with the files
    assert (cnt.num_images, cnt.num_identities, cnt.real_images) == (15, 5, 0)
    with pytest.raises(FacelabError, match="holds files already"):
        write_toy_standin(tmp_path / "syn", 5, 3, image_size=32)
    with pytest.raises(RangeError):
        toy_real_dataset(4, 8, 32)
    with pytest.raises(UnknownNameError):
        ToyEditionConfig(sets=("lfw",))
    with pytest.raises(RangeError, match="allow 60"):  # 10 people x 4 images: 60 genuine pairs
        ToyEditionConfig(group_identities=10, group_images=4, group_pairs=200)
