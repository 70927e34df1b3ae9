"""``facelab synth sample|eval`` end to end on a tiny generator, and their bad-input lines."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from facelab.core.cli import main
from facelab.core.diffusion import ConditionalUNet, SynthTrainConfig, save_generator
from facelab.core.diffusion.train import AutoencoderConfig, SynthDataConfig

TINY = {
    "initial_channels": 32,
    "channel_multipliers": (1, 2),
    "is_attention": (False, True),
    "n_blocks_per_resolution": 1,
    "context_channels": 32,
    "n_context_tokens": 4,
}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def generator(tmp_path):
    torch.manual_seed(0)
    cfg = SynthTrainConfig(
        data=SynthDataConfig(image_size=16), autoencoder=AutoencoderConfig(kind="pixel")
    )
    return save_generator(tmp_path / "gen", ConditionalUNet(**TINY), cfg)


def test_sample_then_eval(generator, tmp_path, capsys):
    out = tmp_path / "ds"
    args = [
        "synth",
        "sample",
        "--generator",
        str(generator),
        "--out",
        str(out),
        "--identities",
        "2",
        "--images-per-identity",
        "3",
        "--steps",
        "2",
        "--image-size",
        "24",
        "--no-progress",
    ]
    assert main(args) == 0
    assert "2 identities written" in capsys.readouterr().out
    man = json.loads((out / "manifest.json").read_text())["run"]
    assert man["sampler"]["num_steps"] == 2 and man["image_size"] == 24
    assert main(args) == 0
    assert "0 identities written, 2 already there" in capsys.readouterr().out
    from facelab.core.backbones import get_backbone
    from facelab.core.hub import save_pretrained

    rec = get_backbone("r18", input_size=24, embedding_size=32, base_width=8)
    save_pretrained(rec, tmp_path / "rec")
    report = tmp_path / "m.json"
    assert (
        main(
            [
                "synth",
                "eval",
                "--dataset",
                str(out),
                "--recognizer",
                str(tmp_path / "rec"),
                "--out",
                str(report),
            ]
        )
        == 0
    )
    metrics = json.loads(report.read_text())
    assert {"genuine_cos", "impostor_cos", "centroid_distance", "fisher_ratio"} <= set(metrics)


def test_bad_input_ends_with_one_line(generator, tmp_path, capsys):
    base = [
        "synth",
        "sample",
        "--generator",
        str(generator),
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
    ]
    assert main([*base, "--guidance-scale", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("facelab synth: error:") and "guidance_scale" in err
    np.save(tmp_path / "c.npy", np.ones((2, 512), dtype=np.float32))
    assert main([*base, "--contexts", str(tmp_path / "c.npy")]) == 2
    assert "unit" in capsys.readouterr().err
    assert main([*base, "--contexts", str(tmp_path / "c.npy"), "--normalize", "--steps", "0"]) == 2
    assert "num_steps" in capsys.readouterr().err
    assert (
        main(
            [
                "synth",
                "sample",
                "--generator",
                str(tmp_path / "nothing"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "generator" in capsys.readouterr().err
