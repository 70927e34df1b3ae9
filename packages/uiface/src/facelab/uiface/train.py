"""UIFace's training recipe: the base's DDPM recipe with the reference's conditioning.

UIFace trains the IDiff-Face denoiser with one change that the sampler relies on: a *learnable
empty context* (256-d, N(0, 1) init) that replaces a sample's projected ID vector with
probability 0.2 (and always for sample 0 of a batch), next to element-wise context dropout 0.25.
All of it lives in the fields of the core ``ConditionalUNet`` (``learn_empty_context``,
``unconditioned_probability``, ``context_dropout_probability``; ours:
``first_sample_unconditional=False`` turns the reference's "sample 0 is always unconditional"
off). Optimizer, schedule and EMA are the reference's: Adam 1e-4, cosine warm restarts (T_0 10k,
x2), EMA with inv_gamma 1, power 0.75, max decay 0.9999, fp16, batch 64 per GPU on 8 GPUs
(``accelerate launch``), 900k steps on CASIA-WebFace at 128 px in the VQ-f4 latent space with
precomputed ID embeddings. :func:`train` runs it on the core trainer through
``facelab.core.diffusion.train_diffusion`` and accepts the base's conditioning hook
(``ContextTransform``).

Presets: ``paper`` (the above; data, embeddings and autoencoder weights as local paths) and
``toy`` (pixel-space toyfaces at 32 px on a CPU, our choice of sizes).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from facelab.core.diffusion.train import (
    TOY_UNET,
    AutoencoderConfig,
    EMAConfig,
    ReferenceUNetConfig,
    SynthDataConfig,
    SynthTrainConfig,
    SynthTrainResult,
    synth_presets,
    train_diffusion,
)
from facelab.core.errors import RangeError

#: the recipe's config class (the base's; UIFace changes only values)
UIFaceTrainConfig = SynthTrainConfig

#: toy preset: 24 toyfaces identities ("easy" nuisance) x 40 images at 32 px, the base's toy UNet
#: (32 x [1, 2, 2], attention at 8 px, 8 context tokens of 64) with UIFace's unconditional
#: probability 0.2 (the empty context is what the sampler starts from)
TOY_IDENTITIES = 24
TOY_IMAGES_PER_IDENTITY = 40
TOY_STEPS = 1500


def uiface_presets() -> dict[str, SynthTrainConfig]:
    """``paper``: the reference recipe; ``toy``: pixel-space toyfaces on a CPU."""
    base = synth_presets()
    paper = dataclasses.replace(
        base["paper"],
        data=SynthDataConfig(source="", image_size=128, flip=True, contexts="file"),
        unet=ReferenceUNetConfig(),  # the UIFace YAML (unet_cond_ca_cpd25_uncond20)
        autoencoder=AutoencoderConfig(kind="vq-f4"),
        ema=EMAConfig(),
        train=dataclasses.replace(base["paper"].train, output_dir="runs/uiface"),
    )
    toy_unet = {**TOY_UNET, "unconditioned_probability": 0.2}
    toy = dataclasses.replace(
        base["toy"],
        data=dataclasses.replace(
            base["toy"].data,
            toy_identities=TOY_IDENTITIES,
            toy_images_per_identity=TOY_IMAGES_PER_IDENTITY,
        ),
        unet=ReferenceUNetConfig(**toy_unet),
        train=dataclasses.replace(
            base["toy"].train, output_dir="runs/uiface-toy", max_steps=TOY_STEPS
        ),
    )
    return {"paper": paper, "toy": toy}


def check_recipe(cfg: SynthTrainConfig) -> None:
    """UIFace needs a denoiser that learns the empty context: a reference UNet with
    ``learn_empty_context`` and a non-zero unconditional probability."""
    if cfg.denoiser == "reference":
        if not cfg.unet.learn_empty_context:
            raise RangeError(
                "unet.learn_empty_context: UIFace samples stage 1 from a learned empty context; "
                "expected True, got False"
            )
        p = cfg.unet.unconditioned_probability
    else:
        p = cfg.diffusers_unet.unconditioned_probability
    if not p > 0:
        raise RangeError(
            "unconditioned_probability: UIFace needs the empty context trained (reference 0.2), "
            f"got {p}"
        )


def train(cfg: SynthTrainConfig, context_transform: Any = None, **kwargs: Any) -> SynthTrainResult:
    """Train the UIFace generator (``output_dir/generator``, loadable with
    ``facelab.core.diffusion.load_generator`` and :class:`facelab.uiface.UIFaceSampler`).

    ``context_transform``: the base's conditioning hook (an ``nn.Module`` ``ContextTransform``),
    trained with the denoiser and saved next to it; ``kwargs`` go to ``train_diffusion``.
    """
    check_recipe(cfg)
    return train_diffusion(cfg, context_transform=context_transform, **kwargs)


__all__ = [
    "TOY_IDENTITIES",
    "TOY_IMAGES_PER_IDENTITY",
    "TOY_STEPS",
    "UIFaceTrainConfig",
    "check_recipe",
    "train",
    "uiface_presets",
]
