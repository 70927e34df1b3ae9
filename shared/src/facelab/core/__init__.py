"""facelab-core: the shared foundation of every facelab method package.

Submodules: ``freq`` (block DCT codec), ``sphere`` (hypersphere math), ``backbones``
(insightface-compatible IResNets, IR-SE-50, MobileFaceNet), ``heads`` (margin heads, Partial
FC), ``train`` (the Accelerate trainer), ``hub`` (offline save/load), ``data`` (toyfaces,
identity folders, RecordIO, .bin, alignment), ``eval`` (verification, ROC, IJB, identification,
demographics), ``privacy`` (inversion attacks), ``recipe`` (the ArcFace baseline and shared
recipe parts), ``errors`` (the error hierarchy), ``cli`` (the ``facelab`` command).

The public names below are re-exported lazily (PEP 562) so that ``import facelab.core`` stays
cheap for the CLI; ``from facelab.core import FrequencyCodec`` works as usual.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("facelab-core")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

_EXPORTS: dict[str, str] = {
    # freq
    "FrequencyCodec": "freq",
    "block_dct": "freq",
    "block_idct": "freq",
    "rgb_to_ycbcr": "freq",
    "ycbcr_to_rgb": "freq",
    "DUETFACE_CLIENT": "freq",
    "PARTIALFACE_PRUNED": "freq",
    "split_channels": "freq",
    "select_channels": "freq",
    "merge_channels": "freq",
    "channel_indices": "freq",
    # sphere
    "normalize": "sphere",
    "angle": "sphere",
    "slerp": "sphere",
    "random_orthogonal": "sphere",
    "rotate_toward": "sphere",
    # backbones, heads, hub
    "get_backbone": "backbones",
    "list_backbones": "backbones",
    "load_insightface": "backbones",
    "Backbone": "backbones",
    "IResNet": "backbones",
    "IRSE": "backbones",
    "MobileFaceNet": "backbones",
    "MarginHead": "heads",
    "CurricularFace": "heads",
    "get_head": "heads",
    "HeadOutput": "heads",
    "save_pretrained": "hub",
    "from_pretrained": "hub",
    "register_model": "hub",
    # training
    "TrainConfig": "train",
    "Trainer": "train",
    "TrainResult": "train",
    "TrainingInterrupted": "train",
    "StepContext": "train",
    # evaluation
    "embed": "eval",
    "verify": "eval",
    "verify_interleaved": "eval",
    "roc": "eval",
    "tar_at_far": "eval",
    "eer": "eval",
    "fnmr_at_fmr": "eval",
    "EvalReport": "eval",
    # privacy
    "InversionAttack": "privacy",
    "AttackConfig": "privacy",
    "AttackResult": "privacy",
    "compare_attacks": "privacy",
    "evaluate_reconstructions": "privacy",
    # recipe
    "ArcFaceConfig": "recipe",
    "DataConfig": "recipe",
    "HeadConfig": "recipe",
    "train_arcface": "recipe",
    # errors
    "FacelabError": "errors",
    "ShapeError": "errors",
    "RangeError": "errors",
    "NonFiniteError": "errors",
    "ZeroVectorError": "errors",
    "FormatError": "errors",
    "KeyMismatchError": "errors",
    "UnknownNameError": "errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'facelab.core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"facelab.core.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
