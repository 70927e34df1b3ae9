"""SlerpFace enrollment: rotate each group toward its key, drop dimensions, re-normalize, weight.

For a template of m groups ``t_i`` (d dims each), attention weights ``w_i`` (sum 1) and a key of
m Gaussian groups ``k_i``:

1. ``alpha_i = alpha - w_i``: important groups are rotated a little less;
2. ``p_i = slerp(t_i / |t_i|, k_i / |k_i|, alpha_i)``, i.e.
   ``sin((1 - alpha_i) th) / sin th * t_i + sin(alpha_i th) / sin th * k_i``;
3. weighted dropout: groups with ``w_i`` below the median of w zero ``d * drop_rate + gap``
   coordinates, the others ``d * drop_rate - gap``, with ``gap = int(8 * drop_rate)``;
4. each group is re-normalized and multiplied by ``w_i``.

Everything is vectorized over the batch and the groups. The slerp is the rotation form from
``facelab.core.sphere`` (no division by ``sin th``, exact at both ends).

Dropout sampling: the reference draws the indices *with replacement*
(``np.random.choice(..., replace=True)``), so a group loses fewer distinct coordinates than the
nominal count (12 draws out of 16 hit about 8.7 distinct ones on average; 4 draws about 3.6).
That is the default here, for compatibility with the reference's accuracy numbers.
``sampling="exact"`` drops exactly the nominal number of distinct coordinates per group.
"""

from __future__ import annotations

import functools
import math
import secrets
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any, Literal

import numpy as np
import torch

from facelab.core.errors import (
    FacelabError,
    FacelabTypeError,
    RangeError,
    ShapeError,
    UnknownNameError,
    ZeroVectorError,
    expect_finite,
    expect_tensor,
)
from facelab.core.sphere import slerp
from facelab.slerpface._checks import (
    as_groups,
    check_alpha,
    check_group_norms,
    check_nonzero_groups,
    check_same_shape,
    check_weights,
    compute_dtype,
)
from facelab.slerpface.keyed import (
    KeyRecord,
    Storage,
    as_record,
    check_storage,
    gather_groups,
)

Sampling = Literal["replacement", "exact"]
SAMPLINGS: tuple[str, ...] = ("replacement", "exact")

#: reference defaults (TFace slerpface enrollment.py)
DEFAULT_ALPHA = 0.9
DEFAULT_DROP_RATE = 0.5
DEFAULT_GROUP_SIZE = 16
DEFAULT_GAP_BASE = 8


@dataclass(frozen=True)
class SlerpParams:
    """The protection parameters; stored in every protected template's metadata.

    ``alpha``: slerp position toward the key before the weight correction (paper 0.9).
    ``drop_rate``: nominal share of each group's dims that is dropped (paper 0.5).
    ``group_size``: dims per group (16 = the channels of ``group_cov``).
    ``sampling``: ``"replacement"`` (reference) or ``"exact"`` (see the module docstring).
    ``gap_base``: the reference's ``gap = int(gap_base * drop_rate)`` (8).
    ``storage``: ``"paper"`` (the paper's stored format: group i = ``w_i`` times a unit group, in
    place) or ``"keyed"`` (ours: unit groups in a key-derived order, the weights in the key
    record; see ``facelab.slerpface.keyed``). Both give identical match scores.
    """

    alpha: float = DEFAULT_ALPHA
    drop_rate: float = DEFAULT_DROP_RATE
    group_size: int = DEFAULT_GROUP_SIZE
    sampling: Sampling = "replacement"
    gap_base: int = DEFAULT_GAP_BASE
    storage: Storage = "paper"

    def __post_init__(self) -> None:
        check_alpha(self.alpha)
        drop_counts(self.drop_rate, self.group_size, self.gap_base)
        if self.sampling not in SAMPLINGS:
            raise UnknownNameError(f"sampling: expected one of {SAMPLINGS}, got {self.sampling!r}")
        check_storage(self.storage)

    @property
    def counts(self) -> tuple[int, int]:
        """(dims dropped in a low-weight group, dims dropped in a high-weight group)."""
        return drop_counts(self.drop_rate, self.group_size, self.gap_base)

    def to_dict(self) -> dict[str, Any]:
        """The fields; ``storage`` only when it is ``"keyed"``, so paper-format files keep the
        metadata they had before the keyed format existed."""
        d = asdict(self)
        if d["storage"] == "paper":
            del d["storage"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SlerpParams:
        known = {"alpha", "drop_rate", "group_size", "sampling", "gap_base", "storage"}
        extra = set(d) - known
        if extra:
            raise UnknownNameError(f"SlerpParams: unknown fields {sorted(extra)}")
        return cls(**d)


def drop_counts(
    drop_rate: float,
    group_size: int = DEFAULT_GROUP_SIZE,
    gap_base: int = DEFAULT_GAP_BASE,
) -> tuple[int, int]:
    """How many coordinates a low-weight and a high-weight group drop.

    ``(d * drop_rate + gap, d * drop_rate - gap)`` with ``gap = int(gap_base * drop_rate)``.
    ``d * drop_rate`` must be a whole number (the reference reshapes the drawn indices into
    equal rows and fails otherwise), and every group must keep at least one coordinate.
    """
    if not isinstance(group_size, int) or group_size < 2:
        raise RangeError(f"group_size: expected an integer >= 2, got {group_size!r}")
    drop_rate = float(drop_rate)
    if not (0.0 <= drop_rate < 1.0):
        raise RangeError(f"drop_rate: expected a value in [0, 1), got {drop_rate}")
    base = group_size * drop_rate
    if abs(base - round(base)) > 1e-9:
        raise RangeError(
            f"drop_rate: group_size * drop_rate must be a whole number of dims, got "
            f"{group_size} * {drop_rate} = {base:g}"
        )
    gap = int(gap_base * drop_rate)
    low, high = round(base) + gap, round(base) - gap
    if high < 0 or low > group_size - 1:
        raise RangeError(
            f"drop_rate={drop_rate} with gap_base={gap_base} gives drop counts ({low}, {high}) "
            f"per group of {group_size}; expected 0 <= counts <= {group_size - 1}"
        )
    return low, high


def _generator(device: torch.device, generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise FacelabTypeError(f"generator: expected a torch.Generator, got {generator!r}")
        return generator
    # the dropout pattern is visible in the stored template (its zeros), so it is not a secret;
    # still, it should not be predictable: seed a fresh generator from the OS CSPRNG
    return torch.Generator(device=device).manual_seed(secrets.randbits(63))


def group_drop_counts(
    weights: torch.Tensor,
    drop_rate: float = DEFAULT_DROP_RATE,
    group_size: int = DEFAULT_GROUP_SIZE,
    gap_base: int = DEFAULT_GAP_BASE,
) -> torch.Tensor:
    """Per-group drop count ``(B, m)``: the low count where ``w_i < median(w)``, else the high.

    The median is numpy's (mean of the two middle values for an even m), as in the reference.
    """
    low, high = drop_counts(drop_rate, group_size, gap_base)
    return torch.where(weights < median(weights), low, high)


def median(w: torch.Tensor) -> torch.Tensor:
    """numpy's median over the last dim (mean of the two middle values when the size is even),
    ``(..., 1)``. ``torch.median`` alone returns the lower middle value."""
    n = w.shape[-1]
    upper = w.kthvalue(n // 2 + 1, dim=-1, keepdim=True).values
    if n % 2:
        return upper
    return (w.kthvalue(n // 2, dim=-1, keepdim=True).values + upper) / 2


def drop_mask(
    weights: torch.Tensor,
    drop_rate: float = DEFAULT_DROP_RATE,
    group_size: int = DEFAULT_GROUP_SIZE,
    *,
    sampling: Sampling = "replacement",
    gap_base: int = DEFAULT_GAP_BASE,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Boolean ``(B, m, d)`` mask, True where a coordinate is dropped.

    ``sampling="replacement"`` draws each group's count of indices independently (duplicates
    allowed, as the reference); ``"exact"`` drops exactly that many distinct coordinates.
    """
    return _keep_mask(weights, drop_rate, group_size, sampling, gap_base, generator) == 0


#: group sizes up to this many dims sample their dropout pattern from a table of all 2^d masks
_TABLE_MAX_BITS = 16


def _size_distribution(group_size: int, count: int, exact: bool) -> list[Fraction]:
    """P(a group loses exactly j distinct coordinates), j = 0..d.

    With replacement, ``count`` uniform draws from d coordinates hit exactly j distinct ones with
    probability ``C(d, j) * surj(count, j) / d^count``, ``surj`` counting the maps of the draws
    onto a j-set that use every element (inclusion-exclusion). Exact sampling: j = count.
    """
    d = group_size
    if exact:
        return [Fraction(int(j == count)) for j in range(d + 1)]
    out = []
    for j in range(d + 1):
        surj = sum((-1) ** i * math.comb(j, i) * (j - i) ** count for i in range(j + 1))
        out.append(Fraction(math.comb(d, j) * surj, d**count))
    return out


@functools.lru_cache(maxsize=8)
def _patterns_by_size(group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All ``2^d`` bit patterns sorted by popcount, the start of each popcount's block, and the
    block sizes ``C(d, j)``. Bit i set = coordinate i dropped."""
    d = group_size
    pattern = np.arange(1 << d, dtype=np.int64)
    popcount = np.zeros(1 << d, dtype=np.int64)
    for bit in range(d):
        popcount += (pattern >> bit) & 1
    order = np.argsort(popcount, kind="stable")
    sizes = np.array([math.comb(d, j) for j in range(d + 1)], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return torch.from_numpy(pattern[order]), torch.from_numpy(starts), torch.from_numpy(sizes)


@functools.lru_cache(maxsize=32)
def _size_cdf(group_size: int, count: int, exact: bool) -> torch.Tensor:
    cdf = np.cumsum([float(f) for f in _size_distribution(group_size, count, exact)])
    return torch.from_numpy(cdf / cdf[-1]).float()


def _sample_patterns(
    is_low: torch.Tensor, counts: tuple[int, int], group_size: int, exact: bool, g: torch.Generator
) -> torch.Tensor:
    """One drop pattern per group (``(B, m)`` int64 bit masks).

    Exactly the distribution of the reference's draws, sampled in two steps: the number j of
    distinct dropped coordinates from its (17-entry) distribution, then a uniformly random
    j-subset (every j-subset is equally likely by symmetry) from the table of patterns by size.
    """
    dev = is_low.device
    u = torch.rand((2, *is_low.shape), generator=g, device=dev)
    low, high = (
        torch.searchsorted(_size_cdf(group_size, c, exact).to(dev), u[0], right=True)
        for c in counts
    )
    size = torch.where(is_low, low, high)
    table, starts, sizes = (x.to(dev) for x in _patterns_by_size(group_size))
    flat = size.flatten()
    # float64 product: u < 1 must give an offset < C(d, j) (float32 can round up to C(d, j))
    offset = (u[1].flatten().double() * sizes.index_select(0, flat)).long()
    idx = starts.index_select(0, flat) + offset
    return table.index_select(0, idx).view(size.shape)


def _keep_mask(
    weights: torch.Tensor,
    drop_rate: float,
    group_size: int,
    sampling: str,
    gap_base: int,
    generator: torch.Generator | None,
    order: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float ``(B, m, d)``: 1 where a coordinate is kept, 0 where it is dropped. With ``order``
    the same draws, position ``j`` holding group ``order[:, j]``'s mask."""
    w = expect_tensor(weights, "weights", floating=True)
    if w.dim() != 2:
        raise ShapeError(f"weights: expected (B, m), got shape {tuple(w.shape)}")
    if sampling not in SAMPLINGS:
        raise UnknownNameError(f"sampling: expected one of {SAMPLINGS}, got {sampling!r}")
    low, high = drop_counts(drop_rate, group_size, gap_base)
    is_low = w < median(w)
    b, m = w.shape
    dev = w.device
    dt = w.dtype if w.dtype == torch.float64 else torch.float32
    g = _generator(dev, generator)
    exact = sampling == "exact"
    if group_size <= _TABLE_MAX_BITS:
        bits = _sample_patterns(is_low, (low, high), group_size, exact, g).to(torch.int32)
        if order is not None:
            bits = bits.gather(1, order)
        one_hot = torch.tensor([1 << i for i in range(group_size)], dtype=torch.int32, device=dev)
        return (torch.bitwise_and(bits.unsqueeze(-1), one_hot) == 0).to(dt)
    counts = torch.where(is_low, low, high)
    if exact:
        # a random permutation per group; its first `count` positions are dropped
        perm = torch.rand((b, m, group_size), generator=g, device=dev).argsort(dim=-1)
        first = (torch.arange(group_size, device=dev) >= counts.unsqueeze(-1)).to(dt)
        return _ordered(torch.empty_like(first).scatter_(-1, perm, first), order)
    cmax = int(counts.max()) if counts.numel() else 0
    if cmax == 0:
        return torch.ones((b, m, group_size), dtype=dt, device=dev)
    idx = torch.randint(0, group_size, (b, m, cmax), generator=g, device=dev)
    # draws beyond a group's count go to a spare column that is cut off afterwards
    idx.masked_fill_(torch.arange(cmax, device=dev) >= counts.unsqueeze(-1), group_size)
    keep = torch.ones((b, m, group_size + 1), dtype=dt, device=dev)
    return _ordered(keep.scatter_(-1, idx, 0.0)[..., :group_size].contiguous(), order)


def _ordered(x: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    return x if order is None else gather_groups(x, order)


#: below this sin(theta) (about 3 degrees) a group takes the exact path (see ``slerp_groups``)
_SMALL_SIN = 0.05


def _slerp_coefficients(
    t: torch.Tensor,
    k: torch.Tensor,
    alphas: torch.Tensor,
    names: tuple[str, str] | None,
    k_norms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group ``A``, ``B`` (``(..., 1)``) with ``slerp = A t + B k`` and the groups too close
    to th = 0 or pi for them (``(...)`` bool; see ``slerp_groups``). ``k_norms``: the key
    group norms ``(..., 1)`` when already known and checked (``KeyRecord.key_norms``)."""
    nt = torch.linalg.vector_norm(t, dim=-1, keepdim=True)
    if names is not None:
        check_group_norms(nt, t, names[0])
    if k_norms is None:
        nk = torch.linalg.vector_norm(k, dim=-1, keepdim=True)
        if names is not None:
            check_group_norms(nk, k, names[1])
    else:
        nk = k_norms.to(t.dtype)
    c = (torch.linalg.vecdot(t, k).unsqueeze(-1) / (nt * nk)).clamp_(-1.0, 1.0)
    s = (1.0 - c * c).clamp_(min=0.0).sqrt_()
    phi = alphas.unsqueeze(-1) * torch.atan2(s, c)
    sin_phi = torch.sin(phi)
    s_safe = s.clamp(min=_SMALL_SIN)
    coef_t = (torch.cos(phi) - sin_phi * c / s_safe) / nt
    coef_k = sin_phi / (s_safe * nk)
    return coef_t, coef_k, (s < _SMALL_SIN).squeeze(-1)


def slerp_groups(
    t: torch.Tensor,
    k: torch.Tensor,
    alphas: torch.Tensor,
    names: tuple[str, str] | None = ("templates", "keys"),
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Unit ``slerp(t/|t|, k/|k|, alphas)`` per group of unnormalized ``(..., d)`` inputs
    (written into ``out`` when given: a buffer of ``t``'s shape, dtype and device).

    Written as ``A t + B k`` with per-group coefficients ``A = (cos phi - sin phi cos th /
    sin th) / |t|``, ``B = sin phi / (sin th |k|)``, ``phi = alpha th``: two passes over the big
    tensors instead of normalizing both first. ``sin th`` comes from ``1 - cos^2 th``, which is
    accurate away from th = 0 and pi; groups within ~3 degrees of those go through
    ``facelab.core.sphere.slerp`` (rotation form, deterministic great circle at th = pi).
    The group norms also validate the inputs (finite, no zero group) unless ``names`` is None.
    """
    coef_t, coef_k, near = _slerp_coefficients(t, k, alphas, names)
    out = torch.mul(coef_t, t, out=out).addcmul_(coef_k, k)
    if bool(near.any()):
        out[near] = slerp(t[near], k[near], alphas[near], check=False)
    return out


def slerp_groups_ordered(
    t: torch.Tensor,
    k: torch.Tensor,
    alphas: torch.Tensor,
    order: torch.Tensor,
    k_stored: torch.Tensor,
    names: tuple[str, str] | None = ("templates", "keys"),
    out: torch.Tensor | None = None,
    k_norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """``slerp_groups(t, k, alphas)`` with position ``j`` holding group ``order[:, j]``, for
    ``(b, m, d)`` inputs; ``k_stored`` is ``k`` in that order (``KeyRecord.stored_keys``) and
    ``k_norms`` its group norms in ``k``'s order (``KeyRecord.key_norms``; computed when None).

    The first pass over ``t`` gathers and scales it at once (``gather_groups``), so the result
    costs one gather more than ``slerp_groups`` minus one multiply pass; with ``k_norms`` given
    it also reads the keys one time fewer.
    """
    coef_t, coef_k, near = _slerp_coefficients(t, k, alphas, names, k_norms)
    ct = coef_t.squeeze(-1).gather(1, order)
    ck = coef_k.squeeze(-1).gather(1, order).unsqueeze(-1)
    tg = gather_groups(t, order, ct)
    # in place when no output buffer is given (the gather allocated one already)
    out = tg.addcmul_(ck, k_stored) if out is None else torch.addcmul(tg, ck, k_stored, out=out)
    if bool(near.any()):
        near_st = near.gather(1, order)
        b, m, d = t.shape
        flat = order + torch.arange(b, device=t.device).unsqueeze(1) * m
        src = flat[near_st]
        a = alphas.reshape(-1)[src]
        out[near_st] = slerp(t.reshape(-1, d)[src], k.reshape(-1, d)[src], a, check=False)
    return out


def group_slerp(
    templates: torch.Tensor, keys: torch.Tensor, alphas: float | torch.Tensor
) -> torch.Tensor:
    """Unit groups ``slerp(t_i, k_i, alpha_i)`` for ``(B, m, d)`` inputs and ``(B, m)`` alphas.

    ``alphas = 0`` gives the normalized template, ``1`` the normalized key.
    """
    t = expect_tensor(templates, "templates", floating=True)
    k = expect_tensor(keys, "keys", floating=True)
    check_same_shape(t, k, "templates", "keys")
    check_nonzero_groups(t, "templates")
    check_nonzero_groups(k, "keys")
    a = torch.as_tensor(alphas, dtype=t.dtype, device=t.device).expand(t.shape[:-1])
    return slerp_groups(t, k, a)


def protect(
    templates: torch.Tensor,
    weights: torch.Tensor,
    keys: torch.Tensor | KeyRecord,
    alpha: float = DEFAULT_ALPHA,
    drop_rate: float = DEFAULT_DROP_RATE,
    group_size: int = DEFAULT_GROUP_SIZE,
    *,
    sampling: Sampling = "replacement",
    gap_base: int = DEFAULT_GAP_BASE,
    generator: torch.Generator | None = None,
    dropped: torch.Tensor | None = None,
    storage: Storage = "paper",
) -> torch.Tensor:
    """Protect a batch of group templates; returns ``(B, m, d)`` protected templates.

    ``templates``: ``(B, m, d)`` (or flat ``(B, m*d)``) raw group features;
    ``weights``: ``(B, m)`` attention weights summing to 1; ``keys``: ``(B, m, d)`` key groups
    (normalized here), or their ``KeyRecord``. ``dropped`` optionally fixes the dropout mask
    (``(B, m, d)`` bool, True = dropped) instead of drawing one with ``generator`` (a fresh
    CSPRNG-seeded generator when None).

    ``storage="paper"``: group i of the result has norm ``w_i`` and is zero on its dropped
    coordinates. ``storage="keyed"`` (ours): the same groups with unit norm (0 where ``w_i =
    0``), position j holding group ``order[:, j]`` of the key's order (``key_permutation``; pass
    a ``KeyRecord`` to reuse it, else it is derived here, about a fifth of a protect's time);
    the weights belong in the key record. The same generator state draws the same dropout in
    both formats, so both give the same match scores.
    """
    check_alpha(alpha)
    drop_counts(drop_rate, group_size, gap_base)
    keyed = check_storage(storage) == "keyed"
    rec = as_record(keys) if keyed else None
    if rec is None and isinstance(keys, KeyRecord):
        keys = keys.keys
    t = as_groups(templates, group_size, "templates", finite=False)
    if rec is not None:
        rec = rec.to(t.device)
        keys = rec.keys
    k = as_groups(keys, group_size, "keys", finite=False)
    check_same_shape(t, k, "templates", "keys")
    b, m, d = t.shape
    w = check_weights(weights, b, m)
    dt = compute_dtype(t)
    w = w.to(device=t.device, dtype=dt)
    if dropped is not None:
        dropped = expect_tensor(dropped, "dropped")
        if dropped.dtype != torch.bool or tuple(dropped.shape) != (b, m, d):
            raise ShapeError(
                f"dropped: expected a bool mask of shape {(b, m, d)}, got {describe_mask(dropped)}"
            )
    else:
        generator = _generator(t.device, generator)
    order = k_stored = k_norms = None
    if rec is not None:
        order, k_stored, k_norms = rec.order, rec.stored_keys, rec.key_norms
    out = torch.empty((b, m, d), dtype=dt, device=t.device)
    # blocks of templates that stay in cache: several times faster than whole-batch passes
    for i in range(0, b, BLOCK):
        sl = slice(i, i + BLOCK)
        wb = w[sl]
        ob = None if order is None else order[sl]
        ks = None if k_stored is None else k_stored[sl]
        kn = None if k_norms is None else k_norms[sl]
        # computed in place in the output (no block-sized temporary to allocate); keyed: each
        # group written straight to its stored position
        p = slerp_block(
            t[sl], k[sl], alpha - wb, dt, t, k, ("templates", "keys"), out[sl], ob, ks, kn
        )
        if dropped is None:
            keep = _keep_mask(wb, drop_rate, group_size, sampling, gap_base, generator, ob)
        else:
            keep = _ordered((~dropped[sl]).to(device=p.device, dtype=dt), ob)
        p = p.mul_(keep)
        n = torch.linalg.vector_norm(p, dim=-1, keepdim=True)
        if bool((n <= 1e-12).any()):
            raise ZeroVectorError(
                f"protect: {int((n <= 1e-12).sum())} group(s) are zero after dropout (every "
                "kept coordinate of the rotated group is 0); the mask keeps too few coordinates"
            )
        if ob is None:
            p.mul_(wb.unsqueeze(-1) / n)
        else:
            # unit groups, 0 where the weight is 0 (as the paper format stores them)
            p.mul_(torch.where(wb.gather(1, ob) > 0, 1.0, 0.0).unsqueeze(-1) / n)
    return out


#: templates per block in protect/match: bounds the temporaries of large batches
BLOCK = 1024


def slerp_block(
    tb: torch.Tensor,
    kb: torch.Tensor,
    alphas: torch.Tensor,
    dt: torch.dtype,
    t_full: torch.Tensor,
    k_full: torch.Tensor,
    names: tuple[str, str],
    out: torch.Tensor | None = None,
    order: torch.Tensor | None = None,
    k_stored: torch.Tensor | None = None,
    k_norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """``slerp_groups`` on one block (``slerp_groups_ordered`` with ``order``, ``k_stored`` and
    ``k_norms``); a bad input is reported against the whole batch (so the template index in the
    message is global)."""
    try:
        if order is None or k_stored is None:
            return slerp_groups(tb.to(dt), kb.to(dt), alphas, names, out=out)
        return slerp_groups_ordered(
            tb.to(dt), kb.to(dt), alphas, order, k_stored.to(dt), names, out=out, k_norms=k_norms
        )
    except FacelabError:
        for x, name in zip((t_full, k_full), names):
            expect_finite(x, name)
            check_nonzero_groups(x, name)
        raise


def describe_mask(x: torch.Tensor) -> str:
    return f"dtype {x.dtype} and shape {tuple(x.shape)}"


def expected_distinct_drops(count: int, group_size: int = DEFAULT_GROUP_SIZE) -> float:
    """Expected number of distinct coordinates hit by ``count`` draws with replacement."""
    return group_size * (1.0 - math.pow(1.0 - 1.0 / group_size, count))
