"""UIFace (ICLR 2025): two-stage sampling with an empty context and attention injection.

Public API (see README.md):

* sampling: ``UIFaceSampler`` (on a core ``IdentitySampler``), ``UIFaceSamplingConfig``,
  ``sampling_presets`` (``paper``, ``toy``), ``VARIANTS`` / ``variant`` (the ablation ladder),
  ``UIFaceOutput``;
* attention: ``UIFaceController``, ``aggregate_cross_attention``, ``inject_cross_logits``,
  ``map_distance``;
* training: ``uiface_presets``, ``train`` (the base recipe with UIFace's conditioning);
* datasets: ``generate``, ``load_released``, ``load_sampler``, ``load_contexts``;
* evaluation: ``run_ablation``, ``dataset_metrics``, ``switch_statistics``, ``fr_accuracy``,
  ``toy_setup``; ``bench.fr_claim`` (the FR comparison with its seed spread).
"""

from __future__ import annotations

from facelab.uiface.attention import (
    MAP_SIZE,
    UIFaceController,
    aggregate_cross_attention,
    inject_cross_logits,
    layer_attention_map,
    map_distance,
)
from facelab.uiface.evaluate import (
    AblationConfig,
    AblationReport,
    FRConfig,
    dataset_metrics,
    fr_accuracy,
    pixel_diversity,
    read_switches,
    run_ablation,
    switch_statistics,
    toy_setup,
)
from facelab.uiface.generate import generate, load_contexts, load_released, load_sampler
from facelab.uiface.sampler import (
    VARIANTS,
    UIFaceOutput,
    UIFaceSampler,
    UIFaceSamplingConfig,
    sampling_presets,
    variant,
)
from facelab.uiface.train import train, uiface_presets

__all__ = [
    "MAP_SIZE",
    "VARIANTS",
    "AblationConfig",
    "AblationReport",
    "FRConfig",
    "UIFaceController",
    "UIFaceOutput",
    "UIFaceSampler",
    "UIFaceSamplingConfig",
    "aggregate_cross_attention",
    "dataset_metrics",
    "fr_accuracy",
    "generate",
    "inject_cross_logits",
    "layer_attention_map",
    "load_contexts",
    "load_released",
    "load_sampler",
    "map_distance",
    "pixel_diversity",
    "read_switches",
    "run_ablation",
    "sampling_presets",
    "switch_statistics",
    "toy_setup",
    "train",
    "uiface_presets",
    "variant",
]
