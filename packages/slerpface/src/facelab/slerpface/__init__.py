"""SlerpFace: face template protection by spherical linear interpolation (AAAI 2025).

Public API (see README.md): ``protect``/``match``/``search`` on batches of group templates,
``generate_keys`` and ``KeyStore`` (keys kept apart from templates), ``ProtectedTemplate`` (the
stored format), the protectors ``SlerpFaceProtector``, ``Unprotected``, ``BioHashing`` and
``IronMask`` behind one interface, and the ``unlinkability`` metric. The extractor, training
recipe and evaluation report live in ``model``, ``train`` and ``evaluate``.
"""

from __future__ import annotations

from facelab.slerpface.baselines import (
    PROTECTORS,
    BioHashing,
    IronMask,
    SlerpFaceProtector,
    TemplateProtector,
    Unprotected,
    get_protector,
    link_group_norms,
    weighted_template,
)
from facelab.slerpface.keys import KeyStore, generate_keys, generate_seeds
from facelab.slerpface.match import (
    MatchResult,
    SearchResult,
    match,
    score_matrix,
    score_to_distance,
    search,
)
from facelab.slerpface.protect import (
    SlerpParams,
    drop_counts,
    drop_mask,
    group_drop_counts,
    group_slerp,
    protect,
)
from facelab.slerpface.template import ProtectedTemplate
from facelab.slerpface.unlinkability import Unlinkability, plot_unlinkability, unlinkability

# the extractor, training recipe and report pull in the backbones and the trainer: loaded on use
_LAZY = {
    "SlerpFaceExtractor": "model",
    "Extraction": "model",
    "group_embedding": "model",
    "RecipeConfig": "train",
    "ModelConfig": "train",
    "DataConfig": "train",
    "presets": "train",
    "train": "train",
    "EvalConfig": "evaluate",
    "Report": "evaluate",
    "evaluate": "evaluate",
    "alpha_sweep": "evaluate",
    "sweep_markdown": "evaluate",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'facelab.slerpface' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"facelab.slerpface.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "PROTECTORS",
    "BioHashing",
    "DataConfig",
    "EvalConfig",
    "Extraction",
    "IronMask",
    "KeyStore",
    "MatchResult",
    "ModelConfig",
    "ProtectedTemplate",
    "RecipeConfig",
    "Report",
    "SearchResult",
    "SlerpFaceExtractor",
    "SlerpFaceProtector",
    "SlerpParams",
    "TemplateProtector",
    "Unlinkability",
    "Unprotected",
    "alpha_sweep",
    "drop_counts",
    "drop_mask",
    "evaluate",
    "generate_keys",
    "generate_seeds",
    "get_protector",
    "group_drop_counts",
    "group_embedding",
    "group_slerp",
    "link_group_norms",
    "match",
    "plot_unlinkability",
    "presets",
    "protect",
    "score_matrix",
    "score_to_distance",
    "search",
    "sweep_markdown",
    "train",
    "unlinkability",
    "weighted_template",
]
