"""GloTok: a global-perspective image tokenizer (AAAI 2026) and an autoregressive generator.

Public API (see README.md):

* ``codebook_histogram`` / ``histogram_relation_loss`` / ``TeacherHistogram``: the
  codebook-wise histogram relation loss (memory-safe, chunked with recomputation);
* ``GloTok`` / ``GloTokConfig``: the dual-codebook tokenizer with residual refiners;
* ``VectorQuantizer``: the learnable straight-through quantizer;
* ``ARTransformer`` / ``ARConfig``: the class-conditional AR generator over both token grids
  (KV cache, classifier-free guidance, top-k / temperature);
* recipes ``train`` (tokenizer) and ``train_ar`` (generator) on the core trainer, presets
  ``paper`` and ``toy``; metrics (PSNR, SSIM, usage, perplexity, uniformity, FID with a
  pluggable extractor).
"""

from __future__ import annotations

from facelab.glotok.histogram import (
    DEFAULT_BINS,
    EMPTY_BIN_EPS,
    TeacherHistogram,
    bin_centers,
    codebook_histogram,
    codebook_histogram_naive,
    default_alpha,
    histogram_relation_loss,
    kmeans_centroids,
    teacher_histogram_from_codebook,
    teacher_histogram_from_features,
)
from facelab.glotok.quantize import Quantized, VectorQuantizer

_LAZY = {
    "GloTok": "model",
    "GloTokConfig": "model",
    "GloTokOutput": "model",
    "ARConfig": "ar",
    "ARTransformer": "ar",
    "TokenizerRecipe": "train",
    "LossConfig": "train",
    "presets": "train",
    "train": "train",
    "ARRecipe": "generate",
    "ar_presets": "generate",
    "train_ar": "generate",
    "tokenize_dataset": "generate",
    "sample_images": "generate",
    "tokenizer_metrics": "evaluate",
    "psnr": "metrics",
    "ssim": "metrics",
    "codebook_usage": "metrics",
    "perplexity": "metrics",
    "uniformity": "metrics",
    "frechet_distance": "metrics",
    "RecognizerFeatures": "metrics",
    "PatchDiscriminator": "losses",
    "PerceptualLoss": "losses",
    "TeacherConfig": "teacher",
    "ImageDataConfig": "data",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'facelab.glotok' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"facelab.glotok.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_BINS",
    "EMPTY_BIN_EPS",
    "Quantized",
    "TeacherHistogram",
    "VectorQuantizer",
    "bin_centers",
    "codebook_histogram",
    "codebook_histogram_naive",
    "default_alpha",
    "histogram_relation_loss",
    "kmeans_centroids",
    "teacher_histogram_from_codebook",
    "teacher_histogram_from_features",
    *sorted(_LAZY),
]
