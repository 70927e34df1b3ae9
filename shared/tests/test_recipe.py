import json

import pytest
import torch
from safetensors.torch import load_file

from facelab.core import recipe
from facelab.core.data.toyfaces import ToyFaces
from facelab.core.errors import FormatError, RangeError, UnknownNameError
from facelab.core.hub import from_pretrained
from facelab.core.train import TrainConfig


def tiny_config(tmp_path, **train_overrides):
    return recipe.ArcFaceConfig(
        data=recipe.DataConfig(
            image_size=32,
            toy_identities=12,
            toy_images_per_identity=6,
            eval_identities=12,
            eval_images_per_identity=4,
            eval_pairs=60,
        ),
        backbone="r18",
        embedding_size=16,
        base_width=8,
        train=TrainConfig(
            output_dir=str(tmp_path / "run"),
            epochs=2,
            batch_size=24,
            lr=0.05,
            progress=False,
            **train_overrides,
        ),
        eval_batch_size=64,
    )


def test_train_arcface_saves_a_loadable_model_and_metrics(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config(tmp_path)
    rr = recipe.train_arcface(cfg)
    assert rr.train.step == 2 * (12 * 6 // 24)
    res = rr.verification["toy-heldout"]
    assert 0.0 <= res.accuracy <= 1.0 and res.n_pairs == 60
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == rr.train.step
    assert metrics["config"]["backbone"] == "r18"
    # the saved model reproduces the trained one
    loaded = from_pretrained(tmp_path / "run" / "model")
    x = ToyFaces(2, 2, size=32, identity_offset=500).render(slice(0, 4))
    rr.model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), rr.model(x), atol=1e-6)


def test_heldout_identities_are_disjoint_from_training():
    cfg = recipe.DataConfig(
        image_size=32,
        toy_identities=5,
        toy_images_per_identity=2,
        eval_identities=5,
        eval_images_per_identity=2,
        eval_pairs=10,
    )
    train, n = recipe.build_train_dataset(cfg)
    assert n == 5
    heldout = recipe.toy_eval_set(cfg)
    assert heldout.images.shape == (20, 3, 32, 32) and heldout.issame.shape == (10,)
    # held-out faces never equal a training face
    train_imgs = torch.stack([train[i][0] for i in range(len(train))])
    d = torch.cdist(heldout.images.flatten(1), train_imgs.flatten(1))
    assert d.min() > 1.0
    # pair labels agree with the identities of the interleaved images
    assert torch.equal(heldout.labels[0::2] == heldout.labels[1::2], heldout.issame)


def test_repeat_dataset():
    base, _ = recipe.build_train_dataset(
        recipe.DataConfig(image_size=32, toy_identities=3, toy_images_per_identity=2)
    )
    rep = recipe.RepeatDataset(base, 3)
    assert len(rep) == 18
    assert torch.equal(rep[7][0], base[1][0]) and int(rep[7][1]) == int(base[1][1])
    assert torch.equal(rep.labels, base.labels.repeat(3))
    with pytest.raises(RangeError):
        recipe.RepeatDataset(base, 0)


def test_heads_by_name():
    for name, attr in (("arcface", "m2"), ("cosface", "m3"), ("sphereface", "m1")):
        head = recipe.build_head(recipe.HeadConfig(name=name, m=0.35), 8, 5)
        assert getattr(head, attr) == pytest.approx(0.35)
    cur = recipe.build_head(recipe.HeadConfig(name="curricularface"), 8, 5)
    assert type(cur).__name__ == "CurricularFace"
    with pytest.raises(UnknownNameError):
        recipe.build_head(recipe.HeadConfig(name="softmax"), 8, 5)  # type: ignore[arg-type]


def test_presets_and_overrides():
    presets = recipe.arcface_presets()
    paper = presets["paper"]
    # paper-scale defaults (insightface / TFace)
    assert (
        paper.train.lr == 0.1 and paper.train.momentum == 0.9 and paper.train.weight_decay == 5e-4
    )
    assert paper.train.milestones == (10, 18, 22) and paper.train.epochs == 24
    assert paper.train.batch_size == 128 and paper.head.s == 64 and paper.head.m == 0.5
    cfg = recipe.parse_with_presets(
        recipe.ArcFaceConfig,
        presets,
        ["--preset", "toy", "--train.epochs", "3", "--backbone", "r34"],
        "t",
    )
    assert cfg.train.epochs == 3 and cfg.backbone == "r34"
    assert cfg.data.image_size == presets["toy"].data.image_size
    with pytest.raises(UnknownNameError, match="valid presets"):
        recipe.parse_with_presets(recipe.ArcFaceConfig, presets, ["--preset", "huge"], "t")


def test_bad_data_config():
    with pytest.raises(RangeError, match="multiple of 8"):
        recipe.DataConfig(image_size=30)
    with pytest.raises(FormatError, match="existing folder"):
        recipe.build_train_dataset(recipe.DataConfig(source="/definitely/not/here"))


def test_train_cli_reports_errors_cleanly(capsys):
    rc = recipe.train_main(["--preset", "toy", "--data.source", "/definitely/not/here"])
    assert rc == 2
    assert "existing folder" in capsys.readouterr().err


def test_embed_folder(tmp_path):
    from facelab.core.backbones import get_backbone
    from facelab.core.hub import save_pretrained

    model = get_backbone("r18", input_size=32, embedding_size=8, base_width=8).eval()
    save_pretrained(model, tmp_path / "model")
    ToyFaces(2, 3, size=32).write_folders(tmp_path / "faces")
    out = tmp_path / "emb.safetensors"
    assert (
        recipe.embed_main(
            [
                "--model",
                str(tmp_path / "model"),
                "--images",
                str(tmp_path / "faces"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    data = load_file(str(out))
    assert data["embeddings"].shape == (6, 8)
    assert torch.allclose(data["embeddings"].norm(dim=1), torch.ones(6), atol=1e-5)
    assert data["labels"].tolist() == [0, 0, 0, 1, 1, 1]
    # independent check of one embedding: flip-sum then normalize
    img = ToyFaces(2, 3, size=32)[0][0].unsqueeze(0)
    with torch.no_grad():
        e = model(img) + model(torch.flip(img, dims=[3]))
    assert torch.allclose(data["embeddings"][0], (e / e.norm()).squeeze(0), atol=1e-4)


def test_initial_weights_depend_on_the_seed_only(tmp_path):
    cfg = tiny_config(tmp_path)
    torch.manual_seed(123)
    b1, h1 = recipe.build_arcface_models(cfg, 7)
    state = torch.get_rng_state()
    torch.rand(1000)  # consume the global RNG in between
    b2, h2 = recipe.build_arcface_models(cfg, 7)
    for a, b in zip(
        list(b1.state_dict().values()) + list(h1.state_dict().values()),
        list(b2.state_dict().values()) + list(h2.state_dict().values()),
    ):
        assert torch.equal(a, b)
    cfg.train.seed = 7
    b3, _ = recipe.build_arcface_models(cfg, 7)
    assert not torch.equal(b3.conv1.weight, b1.conv1.weight)
    # the global RNG is not touched by building models
    torch.set_rng_state(state)
    expected = torch.rand(3)
    torch.set_rng_state(state)
    recipe.build_arcface_models(cfg, 7)
    assert torch.equal(torch.rand(3), expected)


def test_paper_shape_data_is_toyfaces_at_112_px():
    d = recipe.paper_shape_data()
    assert d.is_toy and d.image_size == recipe.PAPER_IMAGE_SIZE == 112
    assert (d.toy_identities, d.toy_images_per_identity, d.toy_difficulty) == (100, 10, "easy")
    assert (d.eval_identities, d.eval_images_per_identity, d.eval_pairs) == (60, 6, 600)
    assert recipe.paper_shape_data(repeat=3, toy_identities=7).repeat == 3
    assert recipe.paper_shape_data(toy_identities=7).toy_identities == 7
    with pytest.raises(RangeError):
        recipe.paper_shape_data(image_size=100)  # not a multiple of 8
