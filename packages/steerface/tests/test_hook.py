"""``SteerTransform`` as the base's conditioning hook: each mode on its own, then trained with
``train_diffusion`` on tiny reference and diffusers denoisers (the head trains, is saved, and
sampling ignores it), and the CLI end to end."""

import json
import math

import pytest
import torch

pytest.importorskip("diffusers")

from facelab.core.cli import main
from facelab.core.diffusion import load_generator
from facelab.core.diffusion.train import (
    AutoencoderConfig,
    DiffusersUNetConfig,
    ReferenceUNetConfig,
    SynthDataConfig,
    SynthTrainConfig,
)
from facelab.core.train import TrainConfig
from facelab.steerface.hook import SteerTransform
from facelab.steerface.strength import SteerConfig, strength_regularizer
from facelab.steerface.train import SteerTrainConfig, steer_presets, train

TINY_UNET = ReferenceUNetConfig(
    initial_channels=32,
    channel_multipliers=(1, 2),
    is_attention=(False, True),
    n_blocks_per_resolution=1,
    context_channels=32,
    n_context_tokens=4,
)


def _ctx(n=64, d=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


def _angles_deg(a, b):
    return torch.rad2deg(torch.acos((a.double() * b.double()).sum(1).clamp(-1, 1)))


def test_modes():
    c, t = _ctx(), torch.randint(0, 1000, (64,))
    off = SteerTransform(SteerConfig(mode="off"))
    out = off(c, t)
    assert torch.equal(out.context, c) and out.loss is None
    fixed = SteerTransform(SteerConfig(mode="fixed", theta_mean=25.0))(c, t)
    assert torch.allclose(
        _angles_deg(c, fixed.context), torch.full((64,), 25.0, dtype=torch.float64), atol=1e-3
    )
    assert fixed.loss is None
    uni = SteerTransform(SteerConfig(mode="uniform", theta_mean=30.0, theta_std=10.0))(c, t)
    ang = _angles_deg(c, uni.context)
    half = math.sqrt(3) * 10.0
    assert ang.min() >= 30 - half - 1e-3 and ang.max() <= 30 + half + 1e-3 and ang.std() > 5
    hook = SteerTransform(SteerConfig(mode="adaptive", theta_mean=30.0, theta_std=10.0))
    out = hook(c, t)
    # the head starts at theta_mean for every sample: only the spread term of the loss is left
    assert torch.allclose(
        _angles_deg(c, out.context), torch.full((64,), 30.0, dtype=torch.float64), atol=1e-3
    )
    want = 10.0 * strength_regularizer(
        torch.full((64,), math.radians(30.0)), math.radians(30.0), math.radians(10.0)
    )
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-4)
    assert set(out.logs) == {"theta_mean_deg", "theta_std_deg", "strength_reg"}
    out.loss.backward()
    assert hook.head.net[2].weight.grad.abs().sum() > 0


def _synth(out, steps=3, denoiser="reference", image_size=32):
    return SynthTrainConfig(
        data=SynthDataConfig(
            source="toyfaces",
            image_size=image_size,
            contexts="identity",
            toy_identities=4,
            toy_images_per_identity=2,
        ),
        denoiser=denoiser,
        unet=TINY_UNET,
        diffusers_unet=DiffusersUNetConfig(
            block_out_channels=(32, 32),
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=16,
            n_tokens=4,
        ),
        autoencoder=AutoencoderConfig(kind="pixel"),
        train=TrainConfig(
            output_dir=str(out),
            max_steps=steps,
            batch_size=4,
            optimizer="adamw",
            lr=1e-2,
            weight_decay=0.0,
            scheduler="constant",
            seed=0,
            checkpoint_every=100,
            log_every=1,
            progress=False,
        ),
    )


@pytest.mark.parametrize("denoiser", ["reference", "diffusers"])
def test_trains_with_train_diffusion(tmp_path, denoiser):
    cfg = SteerTrainConfig(synth=_synth(tmp_path, denoiser=denoiser), steer=SteerConfig())
    res = train(cfg)
    assert "hook_theta_mean_deg" in res.train.losses and "hook_strength_reg" in res.train.losses
    hook_file = tmp_path / "generator" / "context_transform.safetensors"
    assert hook_file.is_file()
    from safetensors.torch import load_file

    saved = load_file(str(hook_file))
    w = saved["head.net.2.weight"]
    assert w.abs().sum() > 0  # started at zero: the head trained with the denoiser
    # sampling sees the unperturbed vectors: the saved generator samples as the bare denoiser
    sampler = load_generator(tmp_path, num_steps=2)
    c = _ctx(2)
    a = sampler.sample(c, seeds=[0, 1]).images
    b = sampler.sample(c, seeds=[0, 1]).images
    assert torch.equal(a, b) and a.shape == (2, 3, 32, 32)


def test_presets():
    p = steer_presets()
    assert set(p) == {"paper", "toy"}
    assert p["paper"].synth.autoencoder.kind == "vq-f4" and p["paper"].steer.mode == "adaptive"
    assert p["toy"].synth.train.output_dir != p["paper"].synth.train.output_dir


def test_cli_train_then_sample(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(
        [
            "steerface", "train", "--preset", "toy",
            "--synth.data.image-size", "32",
            "--synth.data.toy-identities", "2",
            "--synth.data.toy-images-per-identity", "2",
            "--synth.unet.initial-channels", "32",
            "--synth.unet.channel-multipliers", "1", "2",
            "--synth.unet.is-attention", "False", "True",
            "--synth.unet.context-channels", "32",
            "--synth.unet.n-context-tokens", "4",
            "--synth.train.max-steps", "2",
            "--synth.train.batch-size", "2",
            "--synth.train.warmup", "0",
            "--synth.train.no-progress",
            "--synth.train.output-dir", str(run),
            "--steer.mode", "fixed",
            "--steer.theta-mean", "20",
        ]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 2
    ds = tmp_path / "ds"
    rc = main(
        [
            "steerface", "sample", "--generator", str(run), "--out", str(ds),
            "--identities", "2", "--images-per-identity", "2", "--steps", "2",
            "--image-size", "16", "--no-progress",
        ]
    )  # fmt: skip
    assert rc == 0
    assert len(list(ds.rglob("*.png"))) == 4


def test_cli_bad_input_one_line(capsys):
    for argv in (
        ["steerface", "train", "--preset", "toy", "--steer.theta-mean", "200"],
        ["steerface", "train", "--preset", "toy", "--steer.mode", "nope"],
        ["steerface", "nope"],
    ):
        assert main(argv) == 2
        err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
        assert len(err) == 1 and err[0].startswith("facelab steerface") and ": error: " in err[0]
