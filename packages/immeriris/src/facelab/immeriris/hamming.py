"""Fractional Hamming distance between iris codes, minimised over rotations.

Codes and masks are bool tensors ``(N, H, W, C)``: ``H`` radial rows, ``W`` angular columns (the
axis a rotation of the eye shifts), ``C`` bits per position (for two complex Gabor filters, real
and imaginary: 4). A pair's distance at shift ``s`` compares ``a`` rolled by ``s`` along ``W``
(``torch.roll(a, s, dim=2)``, like open-iris's ``np.roll(probe, shift, axis=1)``) with ``b``::

    valid(s) = roll(mask_a, s) & mask_b
    hd(s)    = popcount((roll(code_a, s) ^ code_b) & valid(s)) / popcount(valid(s))

and the pair's distance is ``min over s in [-max_shift, max_shift]`` of ``hd(s)``. Shifts with no
jointly valid bit are skipped, as open-iris skips them; a pair whose every shift has none has no
distance (an error in :func:`hamming_distance`, NaN in :func:`hamming_matrix`).

``normalize=True`` first rescales each shift's distance for its number of valid bits ``n`` (few
bits give distances that stray further from the impostor mean), then takes the minimum:

* ``norm="linear"`` (default; open-iris ``normalized_HD``):
  ``max(0, mu - (mu - hd) * (gradient * n + 0.5))`` with ``mu = 0.45``, ``gradient = 5e-5``;
* ``norm="sqrt"`` (Daugman's form, of which the linear one is the tangent at ``n = n0``):
  ``max(0, mu - (mu - hd) * sqrt(n / n0))`` with ``n0 = 0.5 / gradient = 10,000`` bits.

Two implementations, both exact (integer bit counts):

* DFT correlation (:func:`hamming_matrix`, and :func:`hamming_distance` by default): with
  ``p = mask * (2 code - 1)`` in {-1, 0, 1}, ``popcount(valid) = corr(mask_a, mask_b)`` and
  ``popcount(mismatch & valid) = (corr(mask_a, mask_b) - corr(p_a, p_b)) / 2``, where ``corr``
  is the circular cross-correlation along ``W`` summed over ``H x C``. The correlations of
  every pair and every shift come from a real DFT along ``W``: for all-vs-all one batched
  matrix product per frequency (inner size ``2 H C``: 128 for 16 x 256 x 4 codes, instead of
  16,384 per shift for a direct product), then a small inverse transform onto the
  ``2 max_shift + 1`` shifts. Row means are taken out before the transform and added back as
  exact integers, so float32 spectra stay accurate; every count is checked to lie within 0.25
  of an integer before it is rounded, and a block that fails is recomputed in float64.
* packed bits (``hamming_distance(..., method="packed")``): the ``H x C`` bits of each column
  packed 32 to an int64 word, so a rotation along ``W`` moves whole words; all shifts of a
  chunk of pairs at once, XOR / AND / SWAR popcount. Exact by construction; slower on CPU (each
  word operation is a pass over memory), kept as the second, independent implementation.

:func:`reference_hamming_distance` is a per-pair numpy loop written like open-iris's matcher,
used by the tests and the speed benchmark.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from facelab.core.errors import FacelabError, FacelabTypeError, RangeError, ShapeError, describe

Norm = Literal["linear", "sqrt"]
NORM_MEAN = 0.45  # open-iris: the peak of the impostor distribution
NORM_GRADIENT = 5e-5  # open-iris: slope of the linear approximation
WORD_BITS = 32  # bits per int64 word (32 keeps every SWAR step free of overflow)


class NoValidBitsError(FacelabError):
    """A pair of iris codes shares no valid bit at any allowed shift."""


@dataclass(frozen=True)
class HammingMatrix:
    """All-vs-all distances: ``distances[i, j]`` between ``a[i]`` and ``b[j]`` (NaN where the
    pair has no jointly valid bit at any shift), the minimising ``shifts`` (0 where NaN), the
    valid-bit count at that shift, and how many pairs had no valid bits (``empty``)."""

    distances: torch.Tensor
    shifts: torch.Tensor
    bits: torch.Tensor
    empty: int


# --------------------------------------------------------------------------------------------
# checks and the per-shift formula


def _check_codes(
    code_a: object,
    mask_a: object,
    code_b: object,
    mask_b: object,
    max_shift: object,
    pairwise: bool,
) -> int:
    names = ("code_a", "mask_a", "code_b", "mask_b")
    tensors = (code_a, mask_a, code_b, mask_b)
    for name, t in zip(names, tensors):
        if not isinstance(t, torch.Tensor):
            raise FacelabTypeError(
                f"{name}: expected a bool torch.Tensor (N, H, W, C), got {describe(t)}"
            )
        if t.dtype != torch.bool:
            raise FacelabTypeError(f"{name}: expected dtype torch.bool, got {t.dtype}")
        if t.dim() != 4:
            raise ShapeError(
                f"{name}: expected a 4-D tensor (N, H, W, C), got shape {tuple(t.shape)}"
            )
    if code_a.shape != mask_a.shape:
        raise ShapeError(
            f"mask_a: expected the shape of code_a {tuple(code_a.shape)}, got {tuple(mask_a.shape)}"
        )
    if code_b.shape != mask_b.shape:
        raise ShapeError(
            f"mask_b: expected the shape of code_b {tuple(code_b.shape)}, got {tuple(mask_b.shape)}"
        )
    if code_a.shape[1:] != code_b.shape[1:]:
        raise ShapeError(
            f"code_b: expected codes of (H, W, C) = {tuple(code_a.shape[1:])} like code_a, got "
            f"{tuple(code_b.shape[1:])}"
        )
    if pairwise and code_a.shape[0] != code_b.shape[0]:
        raise ShapeError(
            f"code_b: expected {code_a.shape[0]} codes, one per code of code_a (pairs), got "
            f"{code_b.shape[0]}; use hamming_matrix for all-vs-all"
        )
    if len({t.device for t in tensors}) != 1:
        raise FacelabTypeError(
            f"codes and masks: expected one device, got {[str(t.device) for t in tensors]}"
        )
    w = code_a.shape[2]
    if isinstance(max_shift, bool) or not isinstance(max_shift, (int, np.integer)):
        raise FacelabTypeError(
            f"max_shift: expected an int, got {type(max_shift).__name__} {max_shift!r}"
        )
    if not 0 <= int(max_shift) < w:
        raise RangeError(
            f"max_shift: expected an int in [0, W) = [0, {w}) (W = angular columns, dim 2), got {max_shift}"
        )
    return int(max_shift)


def _check_norm(norm: str, norm_mean: float, norm_gradient: float) -> None:
    if norm not in ("linear", "sqrt"):
        raise RangeError(f"norm: expected 'linear' (open-iris) or 'sqrt' (Daugman), got {norm!r}")
    if not (0.0 < float(norm_mean) <= 1.0):
        raise RangeError(f"norm_mean: expected a value in (0, 1], got {norm_mean}")
    if not float(norm_gradient) > 0.0:
        raise RangeError(f"norm_gradient: expected a positive value, got {norm_gradient}")


def normalized_distance(
    mismatches: torch.Tensor,
    bits: torch.Tensor,
    norm: Norm = "linear",
    norm_mean: float = NORM_MEAN,
    norm_gradient: float = NORM_GRADIENT,
) -> torch.Tensor:
    """The bit-count normalization of ``mismatches / bits`` (see the module doc); ``bits > 0``."""
    hd = mismatches / bits
    if norm == "linear":
        factor = norm_gradient * bits + 0.5
    else:
        factor = torch.sqrt(bits * (2.0 * norm_gradient))  # sqrt(n / n0), n0 = 0.5 / gradient
    return (norm_mean - (norm_mean - hd) * factor).clamp_min(0.0)


def _distances(
    mism: torch.Tensor, bits: torch.Tensor, normalize: bool, norm: Norm, mean: float, grad: float
) -> torch.Tensor:
    """Per-shift distances (inf where a shift has no valid bit) from integer counts."""
    m, b = mism.to(torch.float64), bits.to(torch.float64)
    safe = b.clamp_min(1.0)
    d = normalized_distance(m, safe, norm, mean, grad) if normalize else m / safe
    return torch.where(bits > 0, d, torch.full_like(d, math.inf))


def _shifts(max_shift: int, device: torch.device) -> torch.Tensor:
    return torch.arange(-max_shift, max_shift + 1, device=device)


# --------------------------------------------------------------------------------------------
# packed bits (pairs)


def pack_columns(bits: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) bool -> (N, W, K) int64 words, K = ceil(H C / 32): column ``w``'s ``H x C``
    bits, 32 to a word, so a rotation along W moves whole words."""
    n, h, w, c = bits.shape
    flat = bits.permute(0, 2, 1, 3).reshape(n, w, h * c)
    k = -(-h * c // WORD_BITS)
    pad = k * WORD_BITS - h * c
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    weights = torch.pow(2, torch.arange(WORD_BITS, device=bits.device, dtype=torch.int64))
    return (flat.view(n, w, k, WORD_BITS).to(torch.int64) * weights).sum(-1)


def popcount(words: torch.Tensor) -> torch.Tensor:
    """Bits set in each int64 word holding a 32-bit value (SWAR, no overflow)."""
    x = words - ((words >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return ((x * 0x01010101) & 0xFFFFFFFF) >> 24


def _pair_counts(
    ca: torch.Tensor,
    ma: torch.Tensor,
    cb: torch.Tensor,
    mb: torch.Tensor,
    max_shift: int,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, S) mismatch and valid-bit counts of every pair at every shift (packed words)."""
    n, w = ca.shape[0], ca.shape[2]
    pa, qa, pb, qb = (pack_columns(t) for t in (ca, ma, cb, mb))
    shifts = _shifts(max_shift, ca.device)
    # roll by s: out[w] = in[w - s]
    src = (torch.arange(w, device=ca.device).view(1, -1) - shifts.view(-1, 1)) % w  # (S, W)
    mism = torch.empty(n, shifts.numel(), dtype=torch.int64, device=ca.device)
    bits = torch.empty_like(mism)
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        ra = pa[sl][:, src]  # (B, S, W, K)
        rq = qa[sl][:, src]
        valid = rq & qb[sl].unsqueeze(1)
        bits[sl] = popcount(valid).sum(dim=(2, 3))
        mism[sl] = popcount((ra ^ pb[sl].unsqueeze(1)) & valid).sum(dim=(2, 3))
    return mism, bits


def hamming_distance(
    code_a: torch.Tensor,
    mask_a: torch.Tensor,
    code_b: torch.Tensor,
    mask_b: torch.Tensor,
    max_shift: int = 15,
    normalize: bool = False,
    *,
    norm: Norm = "linear",
    norm_mean: float = NORM_MEAN,
    norm_gradient: float = NORM_GRADIENT,
    return_shift: bool = False,
    method: Literal["dft", "packed"] = "dft",
    chunk: int = 256,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Distance of each pair ``(a[i], b[i])``: float64 (N,), minimum over shifts (module doc).

    ``method="dft"`` (default) counts bits through the DFT correlation (exact, verified to
    round to integers, float64 fallback); ``method="packed"`` through packed words, XOR and
    popcount (exact by construction, slower on CPU). With ``return_shift=True`` also the
    minimising shift of each pair (the first of ties in the order -max_shift ... max_shift). A
    pair with no jointly valid bit at any shift raises :class:`NoValidBitsError` naming it."""
    max_shift = _check_codes(code_a, mask_a, code_b, mask_b, max_shift, pairwise=True)
    _check_norm(norm, norm_mean, norm_gradient)
    n = code_a.shape[0]
    if n == 0:
        empty = torch.zeros(0, dtype=torch.float64, device=code_a.device)
        return (empty, empty.long()) if return_shift else empty
    if method == "packed":
        mism, bits = _pair_counts(code_a, mask_a, code_b, mask_b, max_shift, max(1, int(chunk)))
    elif method == "dft":
        mism, bits = _dft_counts_pairs(code_a, mask_a, code_b, mask_b, max_shift, torch.float32)
    else:
        raise RangeError(f"method: expected 'dft' or 'packed', got {method!r}")
    d = _distances(mism, bits, normalize, norm, norm_mean, norm_gradient)
    best, arg = d.min(dim=1)
    none = torch.isinf(best)
    if bool(none.any()):
        bad = torch.nonzero(none).flatten()
        raise NoValidBitsError(
            f"hamming_distance: pair {int(bad[0])} (code_a[{int(bad[0])}] vs code_b[{int(bad[0])}]) "
            f"has no jointly valid bit at any shift in [-{max_shift}, {max_shift}] "
            f"({bad.numel()} such pair(s) of {n}); expected masks that overlap"
        )
    if return_shift:
        return best, arg - max_shift
    return best


# --------------------------------------------------------------------------------------------
# DFT correlation


def _spectra(
    code: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    """Real-DFT spectra along W of ``mask`` and of ``p = mask * (2 code - 1)``, each
    (F, N, 2 H C) as ``[real | imag]``, and their integer row sums (N, H C).

    Each row's mean is removed before the transform (its DC term): that keeps the spectra
    small, so float32 stays accurate; the means come back as exact integers (row sums)."""
    n, h, w, c = code.shape
    m = mask.permute(0, 1, 3, 2).reshape(n, h * c, w).to(dtype)
    p = code.permute(0, 1, 3, 2).reshape(n, h * c, w).to(dtype).mul_(2.0).sub_(1.0).mul_(m)
    out = []
    for x in (m, p):
        total = x.sum(-1, keepdim=True)  # exact: integers below 2^24
        spec = torch.fft.rfft(x.sub_(total / w), dim=-1).permute(2, 0, 1)  # (F, N, HC)
        out.append((torch.cat([spec.real, spec.imag], dim=-1), total.squeeze(-1).round().long()))
    (sm, rm), (sp, rp) = out
    return sm, sp, rm, rp


def _shift_basis(w: int, max_shift: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(2F, S) matrix turning ``[Re Z; Im Z]`` (per frequency) into circular correlations."""
    f = torch.arange(w // 2 + 1, dtype=torch.float64)
    weight = torch.full_like(f, 2.0)
    weight[0] = 1.0
    if w % 2 == 0:
        weight[-1] = 1.0
    s = torch.arange(-max_shift, max_shift + 1, dtype=torch.float64)
    phase = 2.0 * math.pi * f.view(-1, 1) * s.view(1, -1) / w
    basis = torch.cat(
        [weight.view(-1, 1) * torch.cos(phase), weight.view(-1, 1) * torch.sin(phase)], 0
    )
    return (basis / w).to(dtype=dtype, device=device)


def _im_first(x: torch.Tensor) -> torch.Tensor:
    """``[re | im] -> [im | -re]``: its product with ``[re_b | im_b]`` is ``Im(X conj(Y))``."""
    hc = x.shape[-1] // 2
    return torch.cat([x[..., hc:], -x[..., :hc]], dim=-1)


def _correlate_matrix(xa: torch.Tensor, xb: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Mean-free correlation ``sum_{h,c} sum_w a(h, w - s, c) b(h, w, c)`` of all (i, j, s):
    (Na, Nb, S). With ``Z = sum X_a conj(X_b)``, ``corr(s) = 1/W sum_f c_f (Re Z cos(2 pi f s
    / W) + Im Z sin(2 pi f s / W))``: one batched product per frequency, then the basis."""
    f, na, _ = xa.shape
    nb = xb.shape[1]
    z = torch.bmm(torch.cat([xa, _im_first(xa)], dim=1), xb.transpose(1, 2))  # (F, 2Na, Nb)
    z = z.view(f, 2, na, nb).permute(2, 3, 1, 0).reshape(na, nb, 2 * f)
    return z @ basis


def _correlate_pairs(xa: torch.Tensor, xb: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """The same for pairs (a[i], b[i]): (N, S)."""
    hc = xa.shape[-1] // 2
    ar, ai, br, bi = xa[..., :hc], xa[..., hc:], xb[..., :hc], xb[..., hc:]
    z_re = (xa * xb).sum(-1)  # (F, N): sum ar br + ai bi
    z_im = (ai * br).sum(-1) - (ar * bi).sum(-1)
    return torch.cat([z_re, z_im], 0).transpose(0, 1) @ basis


def _exact(corr: torch.Tensor, dc: torch.Tensor, w: int) -> torch.Tensor | None:
    """Integer counts ``corr + dc / W`` (dc: exact integer products of row sums), or None when
    the floating result is not within 0.25 of an integer (then recompute in float64)."""
    total = corr.double() + dc.double() / w
    rounded = total.round()
    if float((total - rounded).abs().max()) > 0.25:
        return None
    return rounded.to(torch.int64)


def _dft_counts_pairs(
    ca: torch.Tensor,
    ma: torch.Tensor,
    cb: torch.Tensor,
    mb: torch.Tensor,
    max_shift: int,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    w = ca.shape[2]
    for dt in (dtype, torch.float64) if dtype != torch.float64 else (dtype,):
        basis = _shift_basis(w, max_shift, dt, ca.device)
        am, ap, ra_m, ra_p = _spectra(ca, ma, dt)
        bm, bp, rb_m, rb_p = _spectra(cb, mb, dt)
        dc_m = (ra_m * rb_m).sum(-1, keepdim=True)  # (N, 1): the removed means' part
        dc_p = (ra_p * rb_p).sum(-1, keepdim=True)
        bits = _exact(_correlate_pairs(am, bm, basis), dc_m, w)
        pq = _exact(_correlate_pairs(ap, bp, basis), dc_p, w)
        if bits is not None and pq is not None:
            return (bits - pq) // 2, bits
    raise RuntimeError(
        "hamming: float64 correlation not within 0.25 of an integer"
    )  # pragma: no cover


def hamming_matrix(
    code_a: torch.Tensor,
    mask_a: torch.Tensor,
    code_b: torch.Tensor,
    mask_b: torch.Tensor,
    max_shift: int = 15,
    normalize: bool = False,
    *,
    norm: Norm = "linear",
    norm_mean: float = NORM_MEAN,
    norm_gradient: float = NORM_GRADIENT,
    memory_mb: int = 256,
    dtype: torch.dtype = torch.float32,
) -> HammingMatrix:
    """All-vs-all distances between ``a`` (Na codes) and ``b`` (Nb codes): a
    :class:`HammingMatrix`. Pairs without any jointly valid bit get NaN and are counted in
    ``empty``; the matrix is computed anyway.

    ``memory_mb`` bounds the working set (``b`` is processed in blocks). The correlations run
    in ``dtype``; every count is checked to lie within 0.25 of an integer and a block that does
    not is recomputed in float64, so the counts are exact either way."""
    max_shift = _check_codes(code_a, mask_a, code_b, mask_b, max_shift, pairwise=False)
    _check_norm(norm, norm_mean, norm_gradient)
    if dtype not in (torch.float32, torch.float64):
        raise FacelabTypeError(f"dtype: expected torch.float32 or torch.float64, got {dtype}")
    na, w = code_a.shape[0], code_a.shape[2]
    nb = code_b.shape[0]
    device = code_a.device
    dist = torch.full((na, nb), math.nan, dtype=torch.float64, device=device)
    shifts = torch.zeros(na, nb, dtype=torch.int64, device=device)
    bits_out = torch.zeros(na, nb, dtype=torch.int64, device=device)
    if na == 0 or nb == 0:
        return HammingMatrix(dist, shifts, bits_out, 0)
    spectra = {dtype: (_spectra(code_a, mask_a, dtype), _spectra(code_b, mask_b, dtype))}
    _, _, ra_m, ra_p = spectra[dtype][0]
    _, _, rb_m, rb_p = spectra[dtype][1]
    f = w // 2 + 1
    n_shift = 2 * max_shift + 1
    itemsize = torch.finfo(dtype).bits // 8
    per_col = na * (f * 2 * 2 * itemsize + 2 * n_shift * (itemsize + 16))
    block = max(1, min(nb, (memory_mb << 20) // max(per_col, 1)))
    for start in range(0, nb, block):
        sl = slice(start, min(nb, start + block))
        dc_m = (ra_m @ rb_m[sl].T).unsqueeze(-1)  # exact integers
        dc_p = (ra_p @ rb_p[sl].T).unsqueeze(-1)
        for dt in (dtype, torch.float64) if dtype != torch.float64 else (dtype,):
            if dt not in spectra:
                spectra[dt] = (_spectra(code_a, mask_a, dt), _spectra(code_b, mask_b, dt))
            (am, ap, _, _), (bm, bp, _, _) = spectra[dt]
            basis = _shift_basis(w, max_shift, dt, device)
            bits = _exact(_correlate_matrix(am, bm[:, sl], basis), dc_m, w)
            pq = (
                _exact(_correlate_matrix(ap, bp[:, sl], basis), dc_p, w)
                if bits is not None
                else None
            )
            if bits is not None and pq is not None:
                break
        else:  # pragma: no cover - float64 is exact for any code size that fits in memory
            raise RuntimeError("hamming_matrix: float64 correlation not within 0.25 of an integer")
        mism = (bits - pq) // 2
        d = _distances(mism, bits, normalize, norm, norm_mean, norm_gradient)
        best, arg = d.min(dim=-1)
        ok = torch.isfinite(best)
        dist[:, sl] = torch.where(ok, best, torch.full_like(best, math.nan))
        shifts[:, sl] = torch.where(ok, arg - max_shift, torch.zeros_like(arg))
        bits_out[:, sl] = torch.where(ok, bits.gather(-1, arg.unsqueeze(-1)).squeeze(-1), 0)
    empty = int(torch.isnan(dist).sum())
    return HammingMatrix(dist, shifts, bits_out, empty)


# --------------------------------------------------------------------------------------------
# the per-pair reference (numpy, written like open-iris's matcher)


def reference_hamming_distance(
    code_a: np.ndarray,
    mask_a: np.ndarray,
    code_b: np.ndarray,
    mask_b: np.ndarray,
    max_shift: int = 15,
    normalize: bool = False,
    norm: Norm = "linear",
    norm_mean: float = NORM_MEAN,
    norm_gradient: float = NORM_GRADIENT,
) -> float:
    """One pair of (H, W, C) bool arrays, one shift at a time: ``np.roll`` the probe, count
    mismatching and jointly valid bits, normalize, keep the smallest (NaN if no shift has a
    valid bit)."""
    best = math.inf
    for shift in range(-max_shift, max_shift + 1):
        valid = np.roll(mask_a, shift, axis=1) & mask_b
        n = int(valid.sum())
        if n == 0:
            continue
        m = int(((np.roll(code_a, shift, axis=1) != code_b) & valid).sum())
        if normalize:
            factor = (
                norm_gradient * n + 0.5 if norm == "linear" else math.sqrt(n * 2.0 * norm_gradient)
            )
            d = max(0.0, norm_mean - (norm_mean - m / n) * factor)
        else:
            d = m / n
        best = min(best, d)
    return math.nan if best == math.inf else best
