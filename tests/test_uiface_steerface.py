"""Cross-package: UIFace's training recipe with SteerFace's hook (neither imports the other;
the base's ``context_transform`` joins them)."""

import pytest
import torch

pytest.importorskip("diffusers")
uiface_train = pytest.importorskip("facelab.uiface.train")
pytest.importorskip("facelab.steerface")


def test_uiface_recipe_trains_with_steerface(tmp_path):
    from safetensors.torch import load_file

    from facelab.core.diffusion.train import (
        AutoencoderConfig,
        ReferenceUNetConfig,
        SynthDataConfig,
        SynthTrainConfig,
    )
    from facelab.core.train import TrainConfig
    from facelab.steerface import SteerConfig, SteerTransform

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = SynthTrainConfig(
        data=SynthDataConfig(
            source="toyfaces",
            image_size=32,
            contexts="identity",
            toy_identities=4,
            toy_images_per_identity=2,
        ),
        unet=ReferenceUNetConfig(
            initial_channels=32,
            channel_multipliers=(1, 2),
            is_attention=(False, True),
            n_blocks_per_resolution=1,
            context_channels=32,
            n_context_tokens=4,
        ),
        autoencoder=AutoencoderConfig(kind="pixel"),
        train=TrainConfig(
            output_dir=str(tmp_path),
            max_steps=3,
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
    try:
        res = uiface_train.train(cfg, context_transform=SteerTransform(SteerConfig(), dim=512))
    finally:
        torch.set_num_threads(threads)
    assert "hook_strength_reg" in res.train.losses
    saved = load_file(str(tmp_path / "generator" / "context_transform.safetensors"))
    assert saved["head.net.2.weight"].abs().sum() > 0  # the head trained with UIFace's recipe
