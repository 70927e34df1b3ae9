"""MinusFace: privacy-preserving face recognition by trainable feature subtraction (CVPR 2024).

Public API (see README.md):

* models: :class:`MinusFaceGenerator` (encoder ``e``, U-Net generator ``g``, decoder ``d``),
  :class:`UNet`, :class:`ResidueCodec`;
* protection: :func:`shuffle_channels` / :func:`unshuffle_channels` /
  :func:`random_permutations`, :class:`MinusFaceClient` (faces -> protected images),
  :class:`MinusFaceServer` (protected images -> embeddings), :class:`MinusFacePipeline`
  (both, as one module), :class:`ProtectedImages` (the payload that crosses the boundary);
* recipe: :class:`MinusFaceConfig`, :func:`minusface_presets`, :func:`train`;
* privacy: :func:`privacy_eval` (inversion attacks with and without shuffling).
"""

from __future__ import annotations

from facelab.minusface.client import (
    MinusFaceClient,
    MinusFacePipeline,
    MinusFaceServer,
    protect_uint8,
)
from facelab.minusface.evaluate import PrivacyReport, observations, privacy_eval
from facelab.minusface.model import (
    GeneratorOutput,
    MinusFaceGenerator,
    ResidueCodec,
    UNet,
    kl_sparsity,
)
from facelab.minusface.protocol import ProtectedImages
from facelab.minusface.shuffle import random_permutations, shuffle_channels, unshuffle_channels
from facelab.minusface.train import (
    MinusFaceConfig,
    MinusFaceResult,
    ResidueRecognizer,
    minusface_presets,
    train,
)

__all__ = [
    "GeneratorOutput",
    "MinusFaceClient",
    "MinusFaceConfig",
    "MinusFaceGenerator",
    "MinusFacePipeline",
    "MinusFaceResult",
    "MinusFaceServer",
    "PrivacyReport",
    "ProtectedImages",
    "ResidueCodec",
    "ResidueRecognizer",
    "UNet",
    "kl_sparsity",
    "minusface_presets",
    "observations",
    "privacy_eval",
    "protect_uint8",
    "random_permutations",
    "shuffle_channels",
    "train",
    "unshuffle_channels",
]
