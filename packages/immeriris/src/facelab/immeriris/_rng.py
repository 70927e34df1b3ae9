"""A counter-based hash RNG: every random number is a pure function of its key.

``uniform(seed, stream, keys, num)`` hashes ``(seed, stream, key columns..., column index)`` with
the splitmix64 finalizer in numpy ``uint64`` arithmetic (which wraps modulo 2^64). A generated
image therefore depends only on its own subject, capture and eye, never on the batch it is
rendered in or on how many subjects the dataset holds. Parameters are addressed by column
index: add new ones at the end so that existing data does not change.
"""

from __future__ import annotations

import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_KEY_MULT = (
    np.uint64(0xD6E8FEB86659FD93),
    np.uint64(0xA0761D6478BD642F),
    np.uint64(0xE7037ED1A0B428DB),
    np.uint64(0x8EBC6AF09C88C6E3),
)


def _mix(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer (a bijection on uint64 with good avalanche)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def hash_keys(seed: int, stream: int, *keys: np.ndarray) -> np.ndarray:
    """One uint64 per row of the broadcast ``keys`` (non-negative integer arrays)."""
    arrays = np.broadcast_arrays(*[np.asarray(k, dtype=np.int64) for k in keys])
    with np.errstate(over="ignore"):
        h = _mix(np.full(arrays[0].shape, seed, dtype=np.uint64) * _GOLDEN + np.uint64(stream))
        for i, k in enumerate(arrays):
            h = _mix(h ^ ((k.astype(np.uint64) + np.uint64(1)) * _KEY_MULT[i % len(_KEY_MULT)]))
    return h


def uniform(seed: int, stream: int, keys: tuple[np.ndarray, ...], num: int) -> np.ndarray:
    """``(len, num)`` float64 uniforms in (0, 1) for each row of ``keys``."""
    h = hash_keys(seed, stream, *keys)[..., None]
    cols = np.arange(1, num + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        bits = _mix(h + cols * _GOLDEN) >> np.uint64(11)  # 53 bits
    return (bits.astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


def normal(u: np.ndarray, clip: float = 3.0) -> np.ndarray:
    """Standard normals from uniforms (inverse CDF), clipped to +-clip."""
    z = torch.special.ndtri(torch.from_numpy(np.asarray(u, dtype=np.float64))).numpy()
    return np.clip(z, -clip, clip)


def seed_of(seed: int, stream: int, *keys: np.ndarray) -> np.ndarray:
    """Non-negative int64 seeds (for ``torch.Generator.manual_seed``) of each key row."""
    return (hash_keys(seed, stream, *keys) >> np.uint64(1)).astype(np.int64)
