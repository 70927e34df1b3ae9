import pytest
import torch

from facelab.core.errors import FacelabTypeError, RangeError, ShapeError
from facelab.core.hub import from_pretrained
from facelab.partialface.model import PartialFaceModel, estimate_position_std
from facelab.partialface.plan import reference_plan
from facelab.partialface.spectrum import SubsetEncoder


def test_subset_scaling_divides_each_sample_by_its_subsets_rms():
    torch.manual_seed(0)
    model = PartialFaceModel(image_size=32, embedding_size=8, base_width=4)
    std = torch.rand(3, 64) + 0.01
    model.set_position_std(std)
    plan = reference_plan()
    pos = plan.position_table()[torch.tensor([0, 3, 5]), torch.tensor([1, 0, 2])]  # (3, 9)
    x = torch.randn(3, 27, 32, 32)
    got = model.normalize_input(x, pos)

    def rms(row):  # loop reference
        vals = [float(std[c, int(p)]) for c in range(3) for p in row]
        return (sum(v * v for v in vals) / len(vals)) ** 0.5

    for i in range(3):
        torch.testing.assert_close(got[i], x[i] / rms(pos[i]))
    # one challenge for the whole batch
    torch.testing.assert_close(model.normalize_input(x, pos[1]), x / rms(pos[1]))
    none = PartialFaceModel(image_size=32, embedding_size=8, base_width=4, input_norm="none")
    assert torch.equal(none.normalize_input(x, pos), x)


def test_position_std_matches_a_direct_computation():
    from facelab.core.data.toyfaces import ToyFaces

    x = ToyFaces(3, 2, size=32).render(slice(None))
    enc = SubsetEncoder()
    got = estimate_position_std(x, enc, batch_size=4)
    full = enc.full(x.double())
    want = full.permute(1, 0, 2, 3).reshape(192, -1).std(dim=1, unbiased=False).view(3, 64)
    torch.testing.assert_close(got.double(), want.clamp_min(1e-6), rtol=1e-4, atol=1e-6)


def test_save_and_load_keep_config_and_statistics(tmp_path):
    model = PartialFaceModel(
        image_size=32, embedding_size=8, base_width=4, codec_mode="reference", plan_id="abc"
    )
    model.set_position_std(torch.rand(3, 64) + 0.5)
    model.save_pretrained(tmp_path / "m")
    back = from_pretrained(tmp_path / "m")
    assert isinstance(back, PartialFaceModel) and back.config == model.config
    assert torch.equal(back.position_std, model.position_std)
    compact = PartialFaceModel(image_size=112, codec_mode="compact", embedding_size=8, base_width=4)
    assert compact.map_size == 14


def test_bad_inputs():
    model = PartialFaceModel(image_size=32, embedding_size=8, base_width=4)
    pos = torch.tensor(reference_plan().positions(0))
    with pytest.raises(FacelabTypeError, match="positions"):
        model(torch.randn(1, 27, 32, 32))
    with pytest.raises(ShapeError):
        model(torch.randn(1, 26, 32, 32), pos)
    with pytest.raises(ShapeError):
        model(torch.randn(1, 27, 40, 40), pos)
    with pytest.raises(ShapeError):
        model.set_position_std(torch.ones(64))
    with pytest.raises(RangeError):
        model.set_position_std(torch.zeros(3, 64))
    with pytest.raises(RangeError):
        PartialFaceModel(codec_mode="jpeg")
    with pytest.raises(RangeError):
        PartialFaceModel(input_norm="batch")
    with pytest.raises(RangeError):
        PartialFaceModel(image_size=30)


def test_initial_weights_depend_on_the_seed_alone(monkeypatch):
    """Two runs with one seed start from the same weights whatever the global RNG did before."""
    import dataclasses
    import importlib

    from facelab.core.recipe import DataConfig
    from facelab.core.train import TrainConfig

    pf_train = importlib.import_module("facelab.partialface.train")

    captured = []
    real_build = pf_train.build_model

    def spy(cfg, plan):
        model = real_build(cfg, plan)
        captured.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        raise RuntimeError("stop after initialization")

    cfg = dataclasses.replace(
        pf_train.partialface_presets()["toy"],
        data=DataConfig(image_size=32, toy_identities=4, toy_images_per_identity=2, repeat=1),
        base_width=4,
        embedding_size=8,
        norm_samples=4,
        train=TrainConfig(output_dir="unused", max_steps=1, seed=3),
    )
    monkeypatch.setattr(pf_train, "build_model", spy)
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        with pytest.raises(RuntimeError, match="stop after"):
            pf_train.train(cfg)
    assert len(captured) == 2 and torch.equal(captured[0], captured[1])


def test_paper_shape_preset_has_the_papers_layout():
    from facelab.partialface.train import partialface_presets

    presets = partialface_presets()
    cfg = presets["paper-shape"]
    assert cfg.data.image_size == 112 and cfg.data.is_toy and cfg.data.repeat == 3
    assert cfg.codec_mode == presets["paper"].codec_mode == "reference"  # 112 x 112 maps
    assert (cfg.backbone, cfg.base_width, cfg.train.max_steps) == (
        presets["paper"].backbone,
        presets["toy"].base_width,
        presets["toy"].train.max_steps,
    )
