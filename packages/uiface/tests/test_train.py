"""The recipe: presets carry the reference's values, the empty context is required, the base's
conditioning hook trains with the denoiser."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from facelab.core.diffusion import (
    AutoencoderConfig,
    ContextOutput,
    ContextTransform,
    ReferenceUNetConfig,
    SynthDataConfig,
    SynthTrainConfig,
    load_generator,
)
from facelab.core.errors import RangeError
from facelab.core.train import TrainConfig
from facelab.uiface import UIFaceSampler, UIFaceSamplingConfig, train, uiface_presets
from facelab.uiface.train import check_recipe


def test_paper_preset_is_the_reference_recipe():
    p = uiface_presets()["paper"]
    u = p.unet
    # the UIFace YAML (unet_cond_ca_cpd25_uncond20)
    assert (u.initial_channels, tuple(u.channel_multipliers), tuple(u.is_attention)) == (
        96,
        (1, 2, 2, 2),
        (False, True, True, True),
    )
    assert (u.attention_heads, u.attention_head_channels, u.n_blocks_per_resolution) == (-1, 32, 2)
    assert (u.context_input_channels, u.context_channels, u.condition_type) == (512, 256, "CA")
    assert u.learn_empty_context and u.first_sample_unconditional
    assert (u.context_dropout_probability, u.unconditioned_probability) == (0.25, 0.2)
    # train_config.yaml: Adam 1e-4, cosine warm restarts T_0 10k x2, batch 64, fp16, 900k steps
    t = p.train
    assert (t.optimizer, t.lr, t.weight_decay) == ("adamw", 1e-4, 0.0)
    assert (t.scheduler, t.restart_period, t.restart_mult) == ("cosine_restarts", 10_000, 2)
    assert (t.batch_size, t.mixed_precision, t.max_steps) == (64, "fp16", 900_000)
    assert (p.ema.inv_gamma, p.ema.power, p.ema.max_decay, p.ema.min_decay) == (
        1.0,
        0.75,
        0.9999,
        0.0,
    )
    assert (p.data.image_size, p.data.flip, p.data.contexts) == (128, True, "file")
    assert p.autoencoder.kind == "vq-f4"
    assert (p.num_train_timesteps, p.beta_start, p.beta_end) == (1000, 1e-4, 0.02)


def test_toy_preset_trains_the_empty_context():
    t = uiface_presets()["toy"]
    assert t.unet.learn_empty_context and t.unet.unconditioned_probability == 0.2
    assert (t.data.source, t.data.image_size, t.autoencoder.kind) == ("toyfaces", 32, "pixel")
    check_recipe(t)


def test_recipe_refuses_a_model_without_the_empty_context():
    p = uiface_presets()["toy"]
    with pytest.raises(RangeError, match="learn_empty_context"):
        check_recipe(dataclasses.replace(p, unet=ReferenceUNetConfig(learn_empty_context=False)))
    with pytest.raises(RangeError, match="unconditioned_probability"):
        check_recipe(
            dataclasses.replace(p, unet=ReferenceUNetConfig(unconditioned_probability=0.0))
        )


class Nudge(ContextTransform):
    """A conditioning hook with its own parameter and loss (as SteerFace plugs in)."""

    def __init__(self):
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(512))

    def forward(self, context, timesteps):
        new = nn.functional.normalize(context + self.delta, dim=1)
        return ContextOutput(new, (self.delta - 0.01).pow(2).sum(), {"norm": self.delta.norm()})


def test_recipe_trains_with_a_hook_and_the_result_samples(tmp_path):
    cfg = SynthTrainConfig(
        data=SynthDataConfig(
            source="toyfaces",
            image_size=32,
            contexts="identity",
            toy_identities=2,
            toy_images_per_identity=2,
            toy_difficulty="easy",
        ),
        unet=ReferenceUNetConfig(
            initial_channels=32,
            channel_multipliers=(1, 2),
            is_attention=(False, True),
            n_blocks_per_resolution=1,
            context_channels=32,
            n_context_tokens=4,
            first_sample_unconditional=False,
        ),
        autoencoder=AutoencoderConfig(kind="pixel"),
        train=TrainConfig(
            output_dir=str(tmp_path),
            max_steps=2,
            batch_size=4,
            optimizer="adamw",
            lr=1e-2,
            weight_decay=0.0,
            scheduler="constant",
            seed=0,
            progress=False,
            log_every=1,
        ),
    )
    hook = Nudge()
    res = train(cfg, context_transform=hook)
    assert res.train.step == 2
    assert float(hook.delta.detach().abs().max()) > 0  # the hook's parameter was trained
    assert (tmp_path / "generator" / "context_transform.safetensors").is_file()
    assert any("hook_norm" in h for h in res.train.history)
    base = load_generator(tmp_path, num_steps=2)
    assert base.denoiser.config.first_sample_unconditional is False
    out = UIFaceSampler(base, UIFaceSamplingConfig()).sample(
        torch.nn.functional.normalize(torch.randn(2, 512), dim=1), seeds=[0, 1]
    )
    assert out.images.shape == (2, 3, 32, 32)
