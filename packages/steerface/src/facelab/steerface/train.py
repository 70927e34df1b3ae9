"""The SteerFace training recipe: the base's generator recipe plus :class:`SteerTransform`.

``train(cfg)`` runs ``facelab.core.diffusion.train_diffusion`` with the hook, so every denoiser
and data source of the base works (``cfg.synth.denoiser`` "reference" or "diffusers"); the hook
(strength head) is saved next to the generator as ``generator/context_transform.safetensors``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from facelab.core.diffusion.train import SynthTrainConfig, synth_presets
from facelab.steerface.strength import SteerConfig


@dataclass
class SteerTrainConfig:
    """``synth``: the base's generator recipe (data, denoiser, schedule, trainer); ``steer``:
    SteerFace's regularizer."""

    synth: SynthTrainConfig = field(default_factory=SynthTrainConfig)
    steer: SteerConfig = field(default_factory=SteerConfig)


def steer_presets() -> dict[str, SteerTrainConfig]:
    """``paper``: the base's paper recipe (CASIA-WebFace images, their embeddings and the VQ-f4
    autoencoder as local paths: ``--synth.data.source``, ``--synth.data.embeddings``,
    ``--synth.autoencoder.encoder/decoder``) with SteerFace's defaults; ``toy``: the base's toy
    recipe (pixel space, 32 px toyfaces, CPU-sized) with the same regularizer."""
    base = synth_presets()
    paper = copy.deepcopy(base["paper"])
    paper.train.output_dir = "runs/steerface"
    toy = copy.deepcopy(base["toy"])
    toy.train.output_dir = "runs/steerface-toy"
    return {
        "paper": SteerTrainConfig(synth=paper, steer=SteerConfig()),
        "toy": SteerTrainConfig(synth=toy, steer=SteerConfig()),
    }


def build_transform(cfg: SteerTrainConfig):
    """The hook for this recipe (its width = the denoiser's context width)."""
    from facelab.steerface.hook import SteerTransform

    width = (
        cfg.synth.unet.context_input_channels
        if cfg.synth.denoiser == "reference"
        else cfg.synth.diffusers_unet.context_input_channels
    )
    return SteerTransform(cfg.steer, dim=width)


def train(cfg: SteerTrainConfig, **kwargs: Any):
    """Train the generator with SteerFace; returns the base's ``SynthTrainResult`` (its
    ``denoiser`` holds the EMA weights). ``kwargs`` go to ``train_diffusion`` (``denoiser=``)."""
    from facelab.core.diffusion.train import train_diffusion

    hook = build_transform(cfg)
    return train_diffusion(cfg.synth, context_transform=hook, **kwargs)


__all__ = ["SteerTrainConfig", "build_transform", "steer_presets", "train"]
