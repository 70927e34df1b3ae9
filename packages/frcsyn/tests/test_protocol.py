"""Runner parts without training: the team protocol's defaults, concatenated training sets
(sub-tasks x.3), source opening, and the run's early refusals."""

import numpy as np
import pytest
import torch

from facelab.core.data.toyfaces import ToyFaces
from facelab.core.errors import RangeError, ShapeError
from facelab.frcsyn import PairSet, RunConfig, run, run_presets, write_toy_standin
from facelab.frcsyn.protocol import LabelOffsetConcat, open_source


def test_team_protocol_defaults():
    paper = run_presets()["paper"]
    r, t = paper.recipe, paper.recipe.train
    assert (r.backbone, r.embedding_size, r.image_size, r.hflip) == ("r50", 512, 112, True)
    assert (r.head.name, r.head.s, r.head.m) == ("arcface", 64.0, 0.5)
    assert (t.epochs, t.lr, t.milestones, t.weight_decay, t.batch_size) == (
        40,
        0.1,
        (22, 28, 32),
        5e-4,
        64,
    )
    assert (t.optimizer, t.momentum, t.gamma) == ("sgd", 0.9, 0.1)
    assert (
        paper.eval.fmr == 0.01
        and paper.eval.group_threshold == "global"
        and paper.eval.sd_ddof == 0
    )
    toy = run_presets()["toy"]
    assert toy.baseline == "toyfaces" and toy.recipe.image_size == 56


def test_label_offset_concat(tmp_path):
    a = ToyFaces(3, 2, size=32)
    b, nb = open_source("toyfaces", 32, (5, 2))  # real toyfaces, 5 images of 2 people
    cat = LabelOffsetConcat([(a, 3), (b, nb)])
    assert len(cat) == 11 and cat.num_classes == 5
    labels = [int(cat[i][1]) for i in range(11)]
    assert labels == [
        0,
        0,
        1,
        1,
        2,
        2,
        3,
        3,
        3,
        4,
        4,
    ]  # b: 3 images of its first person, 2 of its second
    idx = [10, 0, 7, 3]
    batch = cat.__getitems__(idx)
    for i, (img, lab) in zip(idx, batch):
        ref_img, ref_lab = cat[i]
        assert torch.equal(img, ref_img) and int(lab) == int(ref_lab)
    with pytest.raises(IndexError):
        cat[11]


def test_open_source_checks_the_image_size(tmp_path):
    root = write_toy_standin(tmp_path / "syn", 2, 2, image_size=32)
    ds, c = open_source(str(root), 32)
    assert len(ds) == 4 and c == 2
    with pytest.raises(ShapeError, match="expected 56x56 training images"):
        open_source(str(root), 56)


def test_run_refuses_before_training(tmp_path):
    root = write_toy_standin(tmp_path / "syn", 2, 2, image_size=32)
    plain = PairSet(
        "plain",
        torch.zeros(4, 3, 32, 32),
        np.array([0, 1]),
        np.array([2, 3]),
        np.array([True, False]),
    )
    cfg = RunConfig(subtask="1.2", train=(str(root),), output_dir=str(tmp_path / "out"))
    with pytest.raises(RangeError, match="needs an evaluation set with demographic groups"):
        run(cfg, sets=[plain])
    with pytest.raises(RangeError, match="at least one training set"):
        run(RunConfig(subtask="2.1"), sets=[plain])
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written
