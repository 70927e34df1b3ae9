"""Deterministic data order for exact resume.

Two pieces make the stream of batches a pure function of ``(seed, epoch, position)``:

- ``EpochSampler``: the sample order of an epoch is ``randperm(n)`` from a generator seeded with
  ``(seed, epoch)`` (no hidden generator state), cut to a whole number of global batches so every
  process and every accumulation window is full.
- ``SeededBatches``: each batch is fetched with the global RNGs (torch CPU, numpy, random)
  seeded from ``(seed, epoch, indices of the batch)``. Random augmentations in a dataset then
  give the same values whether the batch is fetched in the main process or in any worker,
  before or after a resume. In the main process (``num_workers=0``) the torch and ``random``
  states are restored afterwards, so data loading never shifts the stream the training step
  draws from (dropout, noise). The legacy numpy global RNG is left seeded by the last fetched
  batch instead: saving and restoring it costs ~0.15 ms a batch, and since the loader always
  runs exactly one batch ahead, its state at every training step is the same in a straight
  run and after a resume. Training code that wants numpy randomness independent of the data
  should use its own ``np.random.Generator``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions)."""
    data = np.asarray(parts, dtype=np.int64).tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


class EpochSampler(Sampler[int]):
    """Indices ``0..n-1``, shuffled per epoch from ``(seed, epoch)``, cut to a multiple of
    ``multiple_of``. The trainer sets ``epoch`` before each pass; the object holds no other state.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, multiple_of: int = 1) -> None:
        self.n = int(n)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.multiple_of = int(multiple_of)
        self.epoch = 0

    def __len__(self) -> int:
        return self.n // self.multiple_of * self.multiple_of

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 0x5A))
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        return iter(order[: len(self)].tolist())


class SeededBatches(Dataset):
    """Wrap a map-style dataset so each batch is fetched under RNGs seeded from its indices.

    The DataLoader calls ``__getitems__`` with the indices of one batch; the wrapped dataset's
    own ``__getitems__`` is used when it has one (vectorized datasets stay vectorized).
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list:
        seed = mix_seed(self.seed, self.epoch, 0xB7, *indices)
        # inside a DataLoader worker nothing else uses the RNGs: no save/restore there
        in_worker = get_worker_info() is not None
        if not in_worker:
            torch_state = torch.default_generator.get_state()
            py_state = random.getstate()
        try:
            torch.default_generator.manual_seed(seed)  # CPU only: CUDA streams stay untouched
            np.random.seed(seed % 2**32)  # noqa: NPY002 - datasets use the legacy global RNG
            random.seed(seed)
            many = getattr(self.dataset, "__getitems__", None)
            if many is not None:
                return many(list(indices))
            return [self.dataset[i] for i in indices]
        finally:
            if not in_worker:
                torch.default_generator.set_state(torch_state)
                random.setstate(py_state)
