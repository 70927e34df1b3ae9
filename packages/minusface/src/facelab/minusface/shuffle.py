"""Per-sample random channel shuffling of the residue (MinusFace stage 2).

Every sample gets its own uniformly random permutation of its C residue channels (crossing the
colours), independently for each of the ``n`` duplicates. Vectorized: one random key per
(sample, duplicate, channel), ``argsort`` along the channels, one ``gather``.

Randomness: with ``generator=None`` the keys are 64-bit integers from the operating system's
CSPRNG (``os.urandom``), so a client's permutations cannot be predicted from earlier ones; with
a ``torch.Generator`` (seeded explicitly) they are reproducible, which the training recipe uses
for exact resume. Distinct keys give every permutation the same probability; 64-bit keys tie
with probability < C^2 / 2^64, and ties are broken by position (stable sort), so the result is
always a permutation.

Convention: ``shuffled[b, k, c] = coeffs[b, perms[b, k, c]]``;
``unshuffle_channels(shuffled, perms)`` undoes it.
"""

from __future__ import annotations

import os

import torch

from facelab.core.errors import (
    FacelabTypeError,
    KeyMismatchError,
    RangeError,
    ShapeError,
    expect_rank,
    expect_tensor,
)


def _check_count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FacelabTypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise RangeError(f"{name}: expected an int >= 1, got {value}")
    return value


def random_keys(
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """int64 random keys of ``shape``: CSPRNG bytes without a generator, else from it."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise FacelabTypeError(
            f"generator: expected a torch.Generator or None, got {type(generator).__name__}"
        )
    numel = 1
    for s in shape:
        numel *= s
    if generator is None:
        keys = torch.frombuffer(bytearray(os.urandom(8 * numel)), dtype=torch.int64)
        return keys.reshape(shape).to(device or "cpu")
    gen_device = generator.device
    keys = torch.randint(0, 2**62, shape, generator=generator, device=gen_device, dtype=torch.int64)
    return keys.to(device or gen_device)


def random_permutations(
    batch: int,
    channels: int,
    n_duplicates: int = 1,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``(batch, n_duplicates, channels)`` int64: an independent uniform permutation per row."""
    batch = _check_count(batch, "batch")
    channels = _check_count(channels, "channels")
    n_duplicates = _check_count(n_duplicates, "n_duplicates")
    keys = random_keys((batch, n_duplicates, channels), generator=generator, device=device)
    return keys.argsort(dim=-1, stable=True)


def _check_coeffs(coeffs: object, name: str = "coeffs") -> torch.Tensor:
    x = expect_tensor(coeffs, name)
    expect_rank(x, 4, name, "B, C, H, W")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ShapeError(f"{name}: expected a non-empty batch of channels, got {tuple(x.shape)}")
    return x


def check_permutations(perms: object, batch: int, channels: int, name: str = "perms") -> None:
    """``perms`` is ``(batch, n, channels)`` int64 and every row is a permutation of 0..C-1."""
    p = expect_tensor(perms, name)
    expect_rank(p, 3, name, "B, n_duplicates, C")
    if p.dtype != torch.int64:
        raise FacelabTypeError(f"{name}: expected int64 indices, got dtype {p.dtype}")
    if p.shape[0] != batch or p.shape[2] != channels:
        raise KeyMismatchError(
            f"{name}: expected shape ({batch}, n, {channels}) for this batch, got {tuple(p.shape)}"
        )
    ok = torch.sort(p, dim=-1).values == torch.arange(channels, device=p.device)
    if not bool(ok.all()):
        raise KeyMismatchError(f"{name}: some rows are not permutations of 0..{channels - 1}")


def shuffle_channels(
    coeffs: torch.Tensor,
    n_duplicates: int = 1,
    *,
    generator: torch.Generator | None = None,
    perms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle the channels of every sample independently, ``n_duplicates`` times.

    Args:
        coeffs: ``(B, C, H, W)``.
        n_duplicates: independent shuffles per sample.
        generator: the RNG of the permutations (None: the OS CSPRNG).
        perms: given permutations ``(B, n, C)`` instead of random ones.

    Returns ``(shuffled, perms)``: ``(B, n, C, H, W)`` and ``(B, n, C)``.
    """
    x = _check_coeffs(coeffs)
    b, c, h, w = x.shape
    if perms is None:
        perms = random_permutations(b, c, n_duplicates, generator=generator, device=x.device)
    else:
        if generator is not None:
            raise FacelabTypeError("pass either perms or a generator, not both")
        check_permutations(perms, b, c)
        if perms.shape[1] != n_duplicates:
            raise KeyMismatchError(
                f"perms: expected {n_duplicates} duplicates, got shape {tuple(perms.shape)}"
            )
        perms = perms.to(x.device)
    n = perms.shape[1]
    index = perms.view(b, n, c, 1, 1).expand(b, n, c, h, w)
    shuffled = x.unsqueeze(1).expand(b, n, c, h, w).gather(2, index)
    return shuffled, perms


def unshuffle_channels(shuffled: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    """Undo :func:`shuffle_channels`: ``(B, n, C, H, W)`` -> ``(B, n, C, H, W)`` in the original
    channel order (every duplicate restored)."""
    s = expect_tensor(shuffled, "shuffled")
    expect_rank(s, 5, "shuffled", "B, n_duplicates, C, H, W")
    b, n, c, h, w = s.shape
    check_permutations(perms, b, c)
    if perms.shape[1] != n:
        raise KeyMismatchError(
            f"perms: expected {n} duplicates for shuffled of shape {tuple(s.shape)}, got "
            f"{tuple(perms.shape)}"
        )
    inverse = perms.to(s.device).argsort(dim=-1)
    index = inverse.view(b, n, c, 1, 1).expand(b, n, c, h, w)
    return s.gather(2, index)
