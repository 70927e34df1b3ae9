"""SlerpFace: face template protection by spherical linear interpolation (AAAI 2025).

Public API (see README.md): ``protect``/``match``/``search`` on batches of group templates,
``generate_keys`` and ``KeyStore`` (keys kept apart from templates), ``ProtectedTemplate`` (the
stored format), the protectors ``SlerpFaceProtector``, ``Unprotected``, ``BioHashing`` and
``IronMask`` behind one interface, and the ``unlinkability`` metric. ``storage="keyed"`` (ours,
``keyed``) stores SlerpFace templates without the attention weights and in a key-derived group
order, with the paper format's scores; ``linkability`` holds every key-less linkage attack. The
extractor, training recipe and evaluation report live in ``model``, ``train`` and ``evaluate``.
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
from facelab.slerpface.keyed import (
    STORAGES,
    KeyRecord,
    from_keyed,
    key_permutation,
    to_keyed,
)
from facelab.slerpface.keys import KeyStore, generate_keys, generate_seeds
from facelab.slerpface.linkability import (
    ATTACKS,
    Linkage,
    link_aligned,
    link_cosine,
    link_sorted_norms,
    link_zero_counts,
    link_zero_histogram,
    linkability,
    permutation_null,
)
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
    "linkability_sweep": "evaluate",
    "linkability_markdown": "evaluate",
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
    "ATTACKS",
    "PROTECTORS",
    "STORAGES",
    "BioHashing",
    "DataConfig",
    "EvalConfig",
    "Extraction",
    "IronMask",
    "KeyRecord",
    "KeyStore",
    "Linkage",
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
    "from_keyed",
    "generate_keys",
    "generate_seeds",
    "get_protector",
    "group_drop_counts",
    "group_embedding",
    "group_slerp",
    "key_permutation",
    "link_aligned",
    "link_cosine",
    "link_group_norms",
    "link_sorted_norms",
    "link_zero_counts",
    "link_zero_histogram",
    "linkability",
    "linkability_markdown",
    "linkability_sweep",
    "match",
    "permutation_null",
    "plot_unlinkability",
    "presets",
    "protect",
    "score_matrix",
    "score_to_distance",
    "search",
    "sweep_markdown",
    "to_keyed",
    "train",
    "unlinkability",
    "weighted_template",
]
