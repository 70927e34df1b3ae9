"""Training batches of random channel subsets (the paper's bold S and P), vectorized.

Every identity owns one group of ``subsets_per_identity`` subsets (a "triple"): identity ``y``
owns ``plan.triples[y % num_triples]`` (the reference's rule; it depends on the label only, so
it is the same whatever the shuffling). For every sample and every epoch one subset of its
triple and one permutation are drawn uniformly, and the sample is encoded to those channels.

The draws are a pure function of ``(seed, epoch, sample index)`` -- a counter-based hash, no
RNG state -- so they are the same on every process, with any number of data-loader workers,
and after resuming a stopped run. With ``repeat = r`` (TFace's NUM_AUG) each image occurs r
times per epoch under different dataset indices, hence with independent draws.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.utils.data import Dataset

from facelab.core.errors import FacelabTypeError, RangeError, ShapeError
from facelab.partialface.plan import SubsetPlan
from facelab.partialface.spectrum import SubsetEncoder

_MASK32 = 0xFFFFFFFF
_MUL1 = 0x7FEB352D
_MUL2 = 0x846CA68B
#: domain separation of the two draws
SALT_SUBSET = 0x51B5E7
SALT_PERMUTATION = 0x9E2A11


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2^32`` for int64 tensors holding 32-bit values, without int64 overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32: xorshift-multiply) on int64 tensors."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, _MUL1)
    x = x ^ (x >> 15)
    x = _mul32(x, _MUL2)
    return x ^ (x >> 16)


def _mix32_int(x: int) -> int:
    return int(_mix32(torch.tensor([x & _MASK32], dtype=torch.int64))[0])


def hash_draws(seed: int, epoch: int, indices: torch.Tensor, salt: int) -> torch.Tensor:
    """Uniform 32-bit values (int64 tensor, shape of ``indices``) from ``(seed, epoch, index,
    salt)``; the same inputs give the same values on any device."""
    for name, v in (("seed", seed), ("epoch", epoch), ("salt", salt)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise RangeError(f"{name}: expected a non-negative int, got {v!r}")
    if not isinstance(indices, torch.Tensor) or indices.is_floating_point():
        raise FacelabTypeError("indices: expected an integer tensor of sample indices")
    key = _mix32_int(salt)
    for part in (seed & _MASK32, seed >> 32, epoch & _MASK32, epoch >> 32):
        key = _mix32_int(key ^ part)
    idx = indices.long()
    h = _mix32((idx & _MASK32) ^ key)
    return _mix32(h ^ (idx >> 32))


def draw_challenges(
    plan: SubsetPlan,
    labels: torch.Tensor,
    indices: torch.Tensor,
    *,
    seed: int,
    epoch: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(subset, permutation)`` of every sample, int64 ``(B,)`` each, on the labels' device.

    ``subset`` is drawn uniformly from the identity's triple ``plan.triples[label %
    num_triples]``, ``permutation`` uniformly from the plan's permutations.
    """
    if labels.dim() != 1 or indices.shape != labels.shape:
        raise ShapeError(
            f"labels and indices: expected two (B,) tensors, got {tuple(labels.shape)} and "
            f"{tuple(indices.shape)}"
        )
    if labels.is_floating_point():
        raise FacelabTypeError(f"labels: expected integer class labels, got {labels.dtype}")
    device = labels.device
    indices = indices.to(device)
    if device.type == "cpu" and bool((labels < 0).any()):  # no host sync on accelerators
        raise RangeError("labels: expected non-negative class labels")
    triple = labels.long() % plan.num_triples
    pick = hash_draws(seed, epoch, indices, SALT_SUBSET) % plan.subsets_per_identity
    subset = plan.triple_table(device)[triple, pick]
    perm = hash_draws(seed, epoch, indices, SALT_PERMUTATION) % plan.num_permutations
    return subset, perm


class TrainingBatch(NamedTuple):
    channels: torch.Tensor
    """(B, 3s, H', W') each sample's channels"""
    positions: torch.Tensor
    """(B, s) each sample's DCT positions, in the permuted order of its channels"""
    subset: torch.Tensor
    """(B,) drawn subset indices"""
    permutation: torch.Tensor
    """(B,) drawn permutation indices"""


def form_training_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    plan: SubsetPlan,
    encoder: SubsetEncoder,
    *,
    seed: int,
    epoch: int,
) -> TrainingBatch:
    """RGB batch -> each sample's channels under its drawn (subset, permutation).

    One batched encode with per-sample positions (no per-sample loop).
    """
    subset, perm = draw_challenges(plan, labels, indices, seed=seed, epoch=epoch)
    subset, perm = subset.to(images.device), perm.to(images.device)
    positions = plan.position_table(images.device)[subset, perm]
    return TrainingBatch(encoder.encode(images, positions), positions, subset, perm)


class IndexedDataset(Dataset):
    """``base[i] + (i,)``: the training loss needs each sample's dataset index for its draws."""

    def __init__(self, base: Dataset) -> None:
        self.base = base
        self.labels = getattr(base, "labels", None)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        item = self.base[i]
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise FacelabTypeError(
                f"training dataset: expected (image, label) items, got {type(item).__name__}"
            )
        return item[0], item[1], i
