"""The identity-conditioned diffusion base every synthesis method shares (extra ``[diffusion]``).

``pip install "facelab-core[diffusion]"`` (diffusers). Modules:

* ``unet``: ``ConditionalUNet``, the UIFace / IDiff-Face reference denoiser (released weights load
  strictly: ``ConditionalUNet.from_reference_checkpoint``);
* ``denoiser``: ``UNet2DConditionDenoiser``, diffusers' ``UNet2DConditionModel`` with the ID
  vector projected to context tokens;
* ``autoencoder``: pixel space, the LDM VQ-f4 first stage, any diffusers autoencoder folder;
* ``attention``: controllers that record / replace pre-softmax attention logits per layer;
* ``sampling``: ``IdentitySampler`` (DDIM, per-sample context choice and guidance per step);
* ``hooks``: ``ContextTransform``, the conditioning hook of the training step, and
  ``ExtraConditioner``, per-image extra conditioning as extra context tokens (and, with
  ``ExtraOutput``, pixel-aligned maps for a denoiser built with ``extra_input_channels``);
* ``train``: the recipe on the core trainer (``SynthTrainConfig``, ``train_diffusion``,
  ``synth_presets``, ``save_generator`` / ``load_generator``);
* ``identities``: random / recognizer-embedded / filtered "virtual" identities;
* ``generate``: ``generate_dataset``, the resumable multi-process dataset writer;
* ``metrics``: synthetic-data metrics (identity consistency, diversity, separability, FR accuracy).

Names are re-exported lazily; without diffusers the package imports, and the first name taken
from it raises an ImportError that says how to install the extra.
"""

from __future__ import annotations

import importlib
import importlib.util

INSTALL_HINT = "facelab.core.diffusion needs diffusers: pip install 'facelab-core[diffusion]'"


def available() -> bool:
    """True when the ``[diffusion]`` extra (diffusers) is installed."""
    return importlib.util.find_spec("diffusers") is not None


_EXPORTS: dict[str, str] = {
    "ConditionalUNet": "unet",
    "load_reference_state_dict": "unet",
    "UNet2DConditionDenoiser": "denoiser",
    "Autoencoder": "autoencoder",
    "PixelAutoencoder": "autoencoder",
    "VQAutoencoder": "autoencoder",
    "DiffusersAutoencoder": "autoencoder",
    "ldm_vq_to_diffusers": "autoencoder",
    "AttentionController": "attention",
    "AttentionRecorder": "attention",
    "AttentionSite": "attention",
    "attention_sites": "attention",
    "set_attention_controller": "attention",
    "attention_controller": "attention",
    "query_hw": "attention",
    "IdentitySampler": "sampling",
    "StepState": "sampling",
    "Branch": "sampling",
    "ClassifierFreeGuidance": "sampling",
    "SampleOutput": "sampling",
    "make_scheduler": "sampling",
    "noise_from_seeds": "sampling",
    "image_seed": "sampling",
    "check_contexts": "sampling",
    "ContextTransform": "hooks",
    "ContextOutput": "hooks",
    "apply_transform": "hooks",
    "ExtraConditioner": "hooks",
    "apply_extra": "hooks",
    "ExtraOutput": "hooks",
    "input_channels": "hooks",
    "token_width": "hooks",
    "SynthTrainConfig": "train",
    "SynthDataConfig": "train",
    "AutoencoderConfig": "train",
    "ReferenceUNetConfig": "train",
    "DiffusersUNetConfig": "train",
    "EMAConfig": "train",
    "synth_presets": "train",
    "train_diffusion": "train",
    "SynthImages": "train",
    "load_extra_conditioner": "train",
    "generator_document": "train",
    "build_denoiser": "train",
    "build_autoencoder": "train",
    "save_generator": "train",
    "load_generator": "train",
    "random_identities": "identities",
    "filter_identities": "identities",
    "virtual_identities": "identities",
    "embed_identities": "identities",
    "identity_means": "identities",
    "generate_dataset": "generate",
    "GenerationResult": "generate",
    "model_fingerprint": "generate",
    "identity_consistency": "metrics",
    "intra_class_diversity": "metrics",
    "inter_class_separability": "metrics",
    "attribute_spread": "metrics",
    "synthetic_quality": "metrics",
    "train_on_synthetic": "metrics",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'facelab.core.diffusion' has no attribute {name!r}")
    if not available():
        raise ImportError(INSTALL_HINT)
    value = getattr(importlib.import_module(f"facelab.core.diffusion.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
