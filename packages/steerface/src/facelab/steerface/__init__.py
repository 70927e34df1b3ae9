"""SteerFace (2026): steer ID embeddings toward random orthogonal directions while training an
ID-conditioned generator, with learned per-sample strengths (see README.md).

Light names load lazily: ``import facelab.steerface`` does not import diffusers."""

from __future__ import annotations

from facelab.steerface.steer import steer, steer_reference
from facelab.steerface.strength import (
    SteerConfig,
    StrengthHead,
    sample_uniform_theta,
    strength_regularizer,
)

__version__ = "0.1.0"

_LAZY = {
    "SteerTransform": "facelab.steerface.hook",
    "SteerTrainConfig": "facelab.steerface.train",
    "steer_presets": "facelab.steerface.train",
    "train": "facelab.steerface.train",
    "TendencyToyConfig": "facelab.steerface.toyset",
    "build_tendency_set": "facelab.steerface.toyset",
    "tendency_metrics": "facelab.steerface.tendency",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'facelab.steerface' has no attribute {name!r}")


__all__ = [
    "SteerConfig",
    "StrengthHead",
    "sample_uniform_theta",
    "steer",
    "steer_reference",
    "strength_regularizer",
    *_LAZY,
]
