"""ImmerIris: off-axis (immersive) iris recognition on procedural near-infrared ocular images.

Public API (see README.md):

* data: :class:`OcularConfig`, :class:`OcularDataset` (render, render_truth, metadata),
  ``QUALITY_FACTORS``;
* protocols: :func:`build_protocols`, :class:`Protocol`, :class:`QualityThresholds`,
  :func:`read_protocol`, :func:`write_protocol`, ``PROTOCOLS``;
* classical pipeline: :class:`EllipseSegmenter`, :func:`oracle_segmentation`,
  :func:`rubber_sheet`, :class:`IrisEncoder` (open-iris's Gabor bank and fragile bits),
  :func:`hamming_distance`, :func:`hamming_matrix`;
* networks: :class:`IrisNet` (NormFree / NormKeep), :func:`toy_normfree` (the shipped toy
  network), :func:`iris_crop`, the training recipe
  (:class:`RecipeConfig`, :func:`presets`, :func:`train`);
* evaluation: :func:`verification` (FRR@FAR, EER, d', rank-1), :func:`fuse`,
  :class:`EvalConfig`, :func:`evaluate`.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "OcularConfig": "generator",
    "OcularDataset": "generator",
    "OcularBatch": "generator",
    "QUALITY_FACTORS": "generator",
    "GAZE_POINTS": "generator",
    "BRIGHTNESS_LEVELS": "generator",
    "PROTOCOLS": "protocols",
    "Protocol": "protocols",
    "QualityThresholds": "protocols",
    "build_protocols": "protocols",
    "protocol_table": "protocols",
    "read_protocol": "protocols",
    "write_protocol": "protocols",
    "ProtocolFile": "protocols",
    "Segmentation": "segment",
    "EllipseSegmenter": "segment",
    "oracle_segmentation": "segment",
    "rubber_sheet": "normalize",
    "Strip": "normalize",
    "GaborFilter": "gabor",
    "IrisCodeConfig": "gabor",
    "IrisEncoder": "gabor",
    "IrisTemplate": "gabor",
    "hamming_distance": "hamming",
    "hamming_matrix": "hamming",
    "HammingMatrix": "hamming",
    "NoValidBitsError": "hamming",
    "normalized_distance": "hamming",
    "reference_hamming_distance": "hamming",
    "IrisNet": "model",
    "iris_crop": "model",
    "strip_input": "model",
    "toy_normfree": "model",
    "TOY_WEIGHTS": "model",
    "RecipeConfig": "train",
    "DataConfig": "train",
    "ModelConfig": "train",
    "presets": "train",
    "train": "train",
    "Verification": "metrics",
    "verification": "metrics",
    "dprime": "metrics",
    "rank1": "metrics",
    "fuse": "metrics",
    "EvalConfig": "evaluate",
    "Report": "evaluate",
    "evaluate": "evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'facelab.immeriris' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"facelab.immeriris.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
