"""IrisNet inputs and persistence, a short training run on the core trainer, and the CLI."""

import math

import pytest
import torch

from facelab.core.errors import RangeError, ShapeError, UnknownNameError
from facelab.immeriris.generator import OcularConfig, OcularDataset
from facelab.immeriris.model import IrisNet, iris_crop, strip_input
from facelab.immeriris.segment import oracle_segmentation


def _disk_image(cu, cv, r, size=64):
    c = torch.arange(size) + 0.5
    d = (c.view(-1, 1) - cv) ** 2 + (c.view(1, -1) - cu) ** 2
    return torch.where(d < r * r, 1.0, -1.0).view(1, 1, size, size)


def test_crop_centres_and_scales_the_iris():
    img = _disk_image(20.0, 40.0, 10.0)
    iris = torch.tensor([[20.0, 40.0, 10.0, 10.0, 0.0]])
    crop = iris_crop(img, iris, 32, margin=1.0)
    # the disk fills the crop: corners outside, centre inside, symmetric
    assert crop[0, 0, 16, 16] > 0.9 and crop[0, 0, 0, 0] < -0.9
    assert torch.allclose(crop, crop.flip(-1), atol=0.15) and torch.allclose(
        crop, crop.flip(-2), atol=0.15
    )
    inside = (crop[0, 0] > 0).float().mean()
    assert float(inside) == pytest.approx(math.pi / 4, abs=0.05)
    jittered = iris_crop(img, iris, 32, margin=1.0, jitter=torch.tensor([[0.25, 0.0, 0.0]]))
    assert jittered[0, 0, 16, :8].mean() > jittered[0, 0, 16, -8:].mean()  # box moved right
    with pytest.raises(ShapeError):
        iris_crop(img[0], iris, 32)
    with pytest.raises(ShapeError):
        iris_crop(img, iris[:, :3], 32)


def test_irisnet_paradigms_and_save_load(tmp_path):
    ds = OcularDataset(1, OcularConfig(size=64, repeats=1), seed=0)
    b = ds.render_truth(torch.arange(4))
    seg = oracle_segmentation(b)
    torch.manual_seed(0)
    nf = IrisNet("normfree", backbone="r18", embedding_size=16, base_width=4, crop_size=32)
    nk = IrisNet("normkeep", backbone="r18", embedding_size=16, base_width=4, strip_size=(16, 64))
    assert nf.prepare(b.images, seg).shape == (4, 1, 32, 32)
    assert nk.prepare(b.images, seg).shape == (4, 1, 16, 64)
    assert torch.allclose(
        nk.prepare(b.images, seg), strip_input(b.images, seg.pupil, seg.iris, (16, 64))
    )
    e = nf.embed(b.images, seg, batch_size=3)
    assert e.shape == (4, 16) and torch.allclose(e.norm(dim=1), torch.ones(4), atol=1e-5)
    nf.save_pretrained(tmp_path / "m")
    back = IrisNet.from_pretrained(tmp_path / "m")
    assert back.config == nf.config
    assert torch.allclose(back.embed(b.images, seg), e, atol=1e-6)
    with pytest.raises(UnknownNameError):
        IrisNet("normwhat")
    with pytest.raises(RangeError):
        IrisNet(crop_margin=3.0)


def test_standardized_inputs_and_lazy_rendering_match():
    """``standardize`` makes the embedding blind to an input's offset and gain (an exposure
    change) and ``prerender=False`` cuts the same inputs as the pre-rendered set."""
    from facelab.immeriris.train import DataConfig, RenderedEyes

    torch.manual_seed(0)
    net = IrisNet("normfree", backbone="r18", embedding_size=16, base_width=4, crop_size=32)
    net.eval()
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    plain = IrisNet("normfree", backbone="r18", embedding_size=16, base_width=4, crop_size=32)
    plain.load_state_dict(net.state_dict())
    net.standardize = True
    assert torch.allclose(net.embed_inputs(0.4 * x + 0.3), net.embed_inputs(x), atol=1e-4)
    assert not torch.allclose(plain.embed_inputs(0.4 * x + 0.3), plain.embed_inputs(x), atol=1e-2)
    flat = x.flatten(1)  # per image: zero mean, standard deviation 0.5
    ref = ((flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True) * 0.5).view_as(x)
    assert torch.allclose(net.embed_inputs(x), plain.embed_inputs(ref), atol=1e-4)
    ds = OcularDataset(2, OcularConfig(size=64, repeats=1), seed=0, captures_per_subject=3)
    eager = RenderedEyes(ds, net, DataConfig(num_subjects=2, prerender=True))
    lazy = RenderedEyes(ds, net, DataConfig(num_subjects=2, prerender=False))
    assert eager.images is not None and lazy.images is None
    idx = torch.tensor([5, 0, 3])
    assert torch.allclose(eager.inputs(idx, augment=False), lazy.inputs(idx, augment=False))


def test_short_training_run_lowers_the_loss(tmp_path):
    from facelab.immeriris.train import preset, train

    cfg = preset("toy", "normfree")
    cfg.data.num_subjects, cfg.data.captures_per_subject = 6, 12
    cfg.data.generator = OcularConfig(size=64, repeats=1)
    cfg.model.base_width, cfg.model.crop_size, cfg.model.embedding_size = 4, 32, 32
    cfg.head.s, cfg.head.m = 16.0, 0.2
    cfg.train.output_dir = str(tmp_path / "run")
    cfg.train.epochs, cfg.train.batch_size, cfg.train.max_steps = 8, 16, None
    cfg.train.optimizer, cfg.train.scheduler, cfg.train.warmup = "sgd", "constant", 0
    cfg.train.lr, cfg.train.progress, cfg.train.log_every = 0.05, False, 3
    assert not cfg.data.prerender  # the toy preset renders each batch afresh
    out = train(cfg)
    hist = [h["loss"] for h in out.result.history]
    assert hist[-1] < 0.8 * hist[0]
    back = IrisNet.from_pretrained(tmp_path / "run" / "model")
    assert back.config["crop_size"] == 32 and (tmp_path / "run" / "recipe.json").is_file()


def _facelab(capsys, *args):
    """The ``facelab`` command in this process: (exit status, stdout, stderr)."""
    from facelab.core.cli import main

    capsys.readouterr()
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_generate_and_bad_input(tmp_path, capsys):
    out = tmp_path / "gen"
    rc, text, err = _facelab(
        capsys, "immeriris", "generate", "--out", str(out), "--subjects", "2", "--size", "48"
    )
    assert rc == 0, err
    assert "| Gaze | left |" in text
    from facelab.immeriris.protocols import read_protocol

    f = read_protocol(out / "protocols" / "Any-left.tsv")
    assert len(f.select("probe", "left")) > 0 and (out / "images.safetensors").is_file()
    header = (out / "metadata.tsv").read_text().splitlines()[0].split("\t")
    assert header[:6] == ["image", "subject", "eye", "capture", "gaze_point", "level"]
    rc, _, err = _facelab(
        capsys, "immeriris", "generate", "--out", str(out), "--subjects", "2", "--size", "16"
    )
    assert (
        rc == 2
        and err.strip().startswith("facelab immeriris: error: size")
        and len(err.strip().splitlines()) == 1
    )
    rc, _, err = _facelab(capsys, "immeriris", "bogus")
    assert rc == 2 and "unknown subcommand" in err
    rc, _, err = _facelab(
        capsys, "immeriris", "eval", "--no-classical", "--out", str(tmp_path / "e")
    )
    assert rc == 2 and "nothing to evaluate" in err
