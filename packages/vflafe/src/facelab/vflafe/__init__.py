"""VFL-AFE: differentially private vertical federated learning with adaptive feature embeddings.

Public API (see README.md): the mechanism ``privatize`` / ``clip_rows``; accounting through
opacus (``epsilon``, ``noise_for``, ``embedding_epsilon``, ``embedding_noise_for``); vertical
datasets (``VerticalData``, ``align``, loaders); the model (``VFLModel``, ``PassiveParty``,
``ActiveParty``, ``AdaptiveEmbedding``, ``NoiseAwareAdjust``, ``PrivacyConfig``,
``ModelConfig``); the recipe (``RecipeConfig``, ``train``); attacks (``label_leakage``,
``invert_features``); the comparison (``CompareConfig``, ``compare``). The Flower app lives in
``facelab.vflafe.flower`` (imported on use: it loads flwr).
"""

from __future__ import annotations

from facelab.vflafe.accounting import (
    embedding_epsilon,
    embedding_noise_for,
    epsilon,
    noise_for,
)
from facelab.vflafe.errors import AlignmentError, BudgetError, ProtocolError
from facelab.vflafe.privatize import clip_rows, privatize, row_norms

_LAZY = {
    "VerticalData": "data",
    "align": "data",
    "breast_cancer": "data",
    "digits": "data",
    "toyfaces": "data",
    "load": "data",
    "ActiveParty": "model",
    "AdaptiveEmbedding": "model",
    "ModelConfig": "model",
    "NoiseAwareAdjust": "model",
    "PassiveParty": "model",
    "PrivacyConfig": "model",
    "Transcript": "model",
    "VFLModel": "model",
    "DataConfig": "recipe",
    "RecipeConfig": "recipe",
    "TrainOutcome": "recipe",
    "evaluate": "recipe",
    "presets": "recipe",
    "train": "recipe",
    "InversionResult": "attacks",
    "LabelLeakage": "attacks",
    "invert_features": "attacks",
    "label_leakage": "attacks",
    "CompareConfig": "compare",
    "compare": "compare",
    "markdown": "compare",
    "plot_privacy_utility": "compare",
    "summarize": "compare",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'facelab.vflafe' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"facelab.vflafe.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "ActiveParty",
    "AdaptiveEmbedding",
    "AlignmentError",
    "BudgetError",
    "CompareConfig",
    "DataConfig",
    "InversionResult",
    "LabelLeakage",
    "ModelConfig",
    "NoiseAwareAdjust",
    "PassiveParty",
    "PrivacyConfig",
    "ProtocolError",
    "RecipeConfig",
    "TrainOutcome",
    "Transcript",
    "VFLModel",
    "VerticalData",
    "align",
    "breast_cancer",
    "clip_rows",
    "compare",
    "digits",
    "embedding_epsilon",
    "embedding_noise_for",
    "epsilon",
    "evaluate",
    "invert_features",
    "label_leakage",
    "load",
    "markdown",
    "noise_for",
    "plot_privacy_utility",
    "presets",
    "privatize",
    "row_norms",
    "summarize",
    "toyfaces",
    "train",
]
