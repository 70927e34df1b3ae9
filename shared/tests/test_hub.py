import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

from facelab.core import hub
from facelab.core.backbones import IResNet, MobileFaceNet, get_backbone
from facelab.core.errors import FacelabTypeError, FormatError, UnknownNameError
from facelab.core.heads import get_head


def images(b, c, h, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, h, generator=g) * 2 - 1


def perturb_buffers(model, seed=0):
    """Non-default BN statistics so a lost buffer would change the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model


def same(a, b):
    np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())


# a method-package style model: registered class, config dataclass, from_config
@dataclasses.dataclass
class ToyConfig:
    width: int = 4
    scale: float = 2.0
    sizes: tuple[int, ...] = (3, 5)


@hub.register_model(key="tests.ToyModel")
class ToyModel(nn.Module, hub.PretrainedMixin):
    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        self.config = cfg
        self.body = get_backbone("r18", input_size=16, base_width=cfg.width, embedding_size=8)
        self.proj = nn.Linear(8, cfg.sizes[-1])
        self.register_buffer("scale", torch.tensor(cfg.scale))

    @classmethod
    def from_config(cls, cfg: dict) -> "ToyModel":
        return cls(ToyConfig(**{**cfg, "sizes": tuple(cfg["sizes"])}))

    def forward(self, x):
        return self.proj(self.body(x)) * self.scale


@hub.register_model(key="tests.Tied")
class Tied(nn.Module):
    def __init__(self, n: int = 6) -> None:
        super().__init__()
        self.config = {"n": n}
        self.enc = nn.Linear(n, n, bias=False)
        self.dec = nn.Linear(n, n, bias=False)
        self.dec.weight = self.enc.weight  # shared parameter

    def forward(self, x):
        return self.dec(self.enc(x))


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: get_backbone("r18", input_size=32, base_width=8, in_channels=5), (2, 5, 32)),
        (lambda: get_backbone("ir_se50", input_size=32, base_width=8, dropout=0.2), (2, 3, 32)),
        (lambda: get_backbone("mobilefacenet", width=0.125, embedding_size=32), (2, 3, 112)),
    ],
)
def test_backbone_round_trip_identical_outputs(tmp_path, make, shape):
    model = perturb_buffers(make()).eval()
    out = model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    loaded = hub.from_pretrained(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.config == model.config
    assert not loaded.training
    x = images(shape[0], shape[1], shape[2])
    with torch.no_grad():
        same(loaded(x), model(x))
    for k, v in model.state_dict().items():
        same(loaded.state_dict()[k], v)


def test_config_json_contents(tmp_path):
    model = get_backbone("r18", input_size=(32, 24), base_width=8)
    hub.save_pretrained(model, tmp_path)
    doc = json.loads((tmp_path / "config.json").read_text())
    assert doc["format"] == "facelab-hub" and doc["format_version"] == 1
    assert doc["class"] == "facelab.core.IResNet"
    assert doc["config"] == {
        "depth": 18,
        "in_channels": 3,
        "stem_stride": 1,
        "input_size": [32, 24],
        "embedding_size": 512,
        "dropout": 0.0,
        "base_width": 8,
    }
    assert doc["weights"]["file"] == "model.safetensors" and len(doc["weights"]["sha256"]) == 64


def test_method_model_with_dataclass_config_and_from_config(tmp_path):
    model = perturb_buffers(ToyModel(ToyConfig(width=4, scale=3.0, sizes=(2, 7)))).eval()
    hub.save_pretrained(model, tmp_path)
    loaded = ToyModel.from_pretrained(tmp_path)
    assert loaded.config == ToyConfig(width=4, scale=3.0, sizes=(2, 7))
    x = images(2, 3, 16)
    with torch.no_grad():
        same(loaded(x), model(x))


def test_shared_parameters_round_trip(tmp_path):
    model = Tied()
    hub.save_pretrained(model, tmp_path)
    loaded = hub.from_pretrained(tmp_path)
    assert loaded.dec.weight is loaded.enc.weight
    same(loaded.enc.weight, model.enc.weight)


def test_heads_round_trip(tmp_path):
    head = get_head("curricularface", 8, 30, sample_rate=0.5, seed=3)
    head.train()(torch.randn(4, 8), torch.tensor([1, 2, 3, 4]))  # moves t and sample_step
    head.save_pretrained(tmp_path)
    loaded = hub.from_pretrained(tmp_path)
    assert loaded.config == head.config and int(loaded.sample_step) == 1
    same(loaded.t, head.t)
    same(loaded.weight, head.weight)


def test_overrides(tmp_path):
    model = get_backbone("r18", input_size=32, base_width=8, dropout=0.4)
    hub.save_pretrained(model, tmp_path)
    assert hub.from_pretrained(tmp_path, dropout=0.0).config["dropout"] == 0.0
    with pytest.raises(FormatError, match=r"(?s)weights do not fit IResNet.*fc.weight"):
        hub.from_pretrained(tmp_path, embedding_size=128)
    with pytest.raises(FormatError, match=r"cannot build facelab.core.IResNet"):
        hub.from_pretrained(tmp_path, colour="blue")


def test_unknown_class_key_is_a_clear_error(tmp_path):
    hub.save_pretrained(get_backbone("r18", input_size=16, base_width=4), tmp_path)
    doc = json.loads((tmp_path / "config.json").read_text())
    doc["class"] = "os.system"  # a dotted path is only a key: never imported
    (tmp_path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(UnknownNameError, match=r"unknown model class key 'os.system'.*registered"):
        hub.from_pretrained(tmp_path)
    assert "facelab.core.IResNet" in hub.registered_models()


def test_tampered_weights_fail_the_checksum(tmp_path):
    hub.save_pretrained(get_backbone("r18", input_size=16, base_width=4), tmp_path)
    path = tmp_path / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # flip one bit of tensor data: still a valid safetensors file
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="SHA-256"):
        hub.from_pretrained(tmp_path)


def test_corrupted_safetensors_is_a_format_error(tmp_path):
    hub.save_pretrained(get_backbone("r18", input_size=16, base_width=4), tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])  # truncated header
    with pytest.raises(FormatError, match="not a readable safetensors file"):
        hub.from_pretrained(tmp_path, verify=False)
    with pytest.raises(FormatError, match="SHA-256"):
        hub.from_pretrained(tmp_path)


def test_mismatched_weights_name_the_keys(tmp_path):
    hub.save_pretrained(get_backbone("r18", input_size=16, base_width=4), tmp_path / "a")
    hub.save_pretrained(get_backbone("r34", input_size=16, base_width=4), tmp_path / "b")
    # put r34 weights under r18's config (as a careless copy would), checksum fixed up
    (tmp_path / "a" / "model.safetensors").write_bytes(
        (tmp_path / "b" / "model.safetensors").read_bytes()
    )
    with pytest.raises(FormatError, match="SHA-256"):
        hub.from_pretrained(tmp_path / "a")
    with pytest.raises(FormatError, match=r"unexpected keys \['layer1.2.bn1.bias'"):
        hub.from_pretrained(tmp_path / "a", verify=False)


def test_missing_files_and_bad_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        hub.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"missing config.json"):
        hub.from_pretrained(tmp_path)
    hub.save_pretrained(get_backbone("r18", input_size=16, base_width=4), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing model.safetensors"):
        hub.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(FormatError, match="not valid JSON"):
        hub.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(FormatError, match="facelab-hub"):
        hub.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps({"format": "facelab-hub", "format_version": 9})
    )
    with pytest.raises(FormatError, match="format_version 1, got 9"):
        hub.from_pretrained(tmp_path)


def test_class_check_of_from_pretrained(tmp_path):
    hub.save_pretrained(get_backbone("mobilefacenet", width=0.125), tmp_path)
    assert isinstance(MobileFaceNet.from_pretrained(tmp_path), MobileFaceNet)
    with pytest.raises(FormatError, match="holds a MobileFaceNet, expected a IResNet"):
        IResNet.from_pretrained(tmp_path)


def test_unregistered_and_bad_configs_fail_on_save(tmp_path):
    with pytest.raises(UnknownNameError, match="not registered"):
        hub.save_pretrained(nn.Linear(2, 2), tmp_path)

    @hub.register_model(key="tests.BadConfig")
    class BadConfig(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = {"fn": print}

    with pytest.raises(FacelabTypeError, match="JSON"):
        hub.save_pretrained(BadConfig(), tmp_path)
    with pytest.raises(ValueError, match="already registered"):
        hub.register_model(Tied, key="tests.ToyModel")
    with pytest.raises(FacelabTypeError, match=r"nn.Module subclass"):
        hub.register_model(int)
    assert not list(tmp_path.iterdir())  # nothing written by failed saves


def test_writes_are_atomic(tmp_path, monkeypatch):
    old = get_backbone("r18", input_size=16, base_width=4).eval()
    hub.save_pretrained(old, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def crash(model, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(hub, "save_model", crash)
    with pytest.raises(OSError, match="disk full"):
        hub.save_pretrained(get_backbone("r34", input_size=16, base_width=4), tmp_path)
    # the previous save is intact, no temporary file is left behind
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    monkeypatch.undo()
    x = images(1, 3, 16)
    with torch.no_grad():
        same(hub.from_pretrained(tmp_path)(x), old(x))
    # overwriting an existing save replaces both files
    new = get_backbone("r34", input_size=16, base_width=4)
    hub.save_pretrained(new, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert hub.from_pretrained(tmp_path).config["depth"] == 34
