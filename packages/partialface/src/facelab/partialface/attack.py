"""Privacy evaluation: inversion attacks on what PartialFace sends, against two references.

An adversary who sees the payloads (and the challenges, which travel in clear) and who has
paired training faces trains the core :class:`~facelab.core.privacy.InversionAttack` from an
observation back to the face. Observations compared (all from the same images):

* ``subset``: one challenge's channels, ``3 * s`` (27) -- what one PartialFace query reveals;
* ``pruned``: all 162 unpruned channels -- an adversary who collected every subset of a face;
* ``duetface``: DuetFace's server-side 162 channels (``split_channels(c, DUETFACE_CLIENT)``:
  everything but the 30 lowest-frequency channels);
* ``full``: the whole 192-channel spectrum (equivalent to the image itself).

Rows come from :func:`facelab.core.privacy.compare_attacks` (same decoder, budget and seed for
each, plus the "mean image" no-information baseline); identity leakage needs an independent
recognizer (e.g. a plain RGB ArcFace model trained with another seed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facelab.core.errors import UnknownNameError
from facelab.core.freq import DUETFACE_CLIENT, split_channels
from facelab.core.privacy import AttackConfig, compare_attacks
from facelab.partialface.plan import SubsetPlan
from facelab.partialface.spectrum import SubsetEncoder

OBSERVATIONS = ("subset", "pruned", "duetface", "full")


@dataclass
class AttackSettings:
    """Budget of every inversion attack (the same for each observation)."""

    steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-3
    width: int = 32
    depth: int = 3
    seed: int = 0
    far: float | None = 1e-2
    """success rate threshold chosen at this FAR on the real test images (needs a recognizer)"""

    def config(self) -> AttackConfig:
        return AttackConfig(width=self.width, depth=self.depth)


def observe(
    kind: str,
    images: torch.Tensor,
    encoder: SubsetEncoder,
    plan: SubsetPlan,
    challenge: tuple[int, int] = (0, 0),
    *,
    batch_size: int = 256,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """What an adversary of type ``kind`` (see ``OBSERVATIONS``) observes of ``images``."""
    if kind not in OBSERVATIONS:
        raise UnknownNameError(f"unknown observation {kind!r}; valid: {list(OBSERVATIONS)}")
    positions = plan.positions(*challenge)

    def one(x: torch.Tensor) -> torch.Tensor:
        if kind == "subset":
            return encoder.encode(x, positions)
        if kind == "pruned":
            return encoder.pruned(x)
        full = encoder.full(x)
        return split_channels(full, DUETFACE_CLIENT)[1] if kind == "duetface" else full

    with torch.no_grad():
        return torch.cat([one(x).to(dtype) for x in images.split(batch_size)])


def run_attacks(
    train_images: torch.Tensor,
    test_images: torch.Tensor,
    plan: SubsetPlan,
    *,
    encoder: SubsetEncoder | None = None,
    kinds: Sequence[str] = OBSERVATIONS,
    settings: AttackSettings | None = None,
    challenge: tuple[int, int] = (0, 0),
    recognizer: nn.Module | None = None,
    test_labels: torch.Tensor | None = None,
    grid_path: str | Path | None = None,
    storage_dtype: torch.dtype = torch.float16,
) -> list[dict[str, Any]]:
    """One inversion attack per observation kind, same budget; rows of ``compare_attacks``.

    Observations are stored in ``storage_dtype`` (float16 halves the memory of the 192-channel
    spectra; the decoder trains in float32).
    """
    settings = settings or AttackSettings()
    encoder = encoder or SubsetEncoder()
    obs = {
        kind: (
            observe(kind, train_images, encoder, plan, challenge, dtype=storage_dtype),
            observe(kind, test_images, encoder, plan, challenge, dtype=storage_dtype),
        )
        for kind in kinds
    }
    far = settings.far if recognizer is not None and test_labels is not None else None
    return compare_attacks(
        obs,
        train_images,
        test_images,
        config=settings.config(),
        steps=settings.steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        seed=settings.seed,
        recognizer=recognizer,
        test_labels=test_labels if recognizer is not None else None,
        far=far,
        grid_path=grid_path,
    )
