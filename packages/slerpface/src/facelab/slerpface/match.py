"""SlerpFace matching: 1:1 (row-aligned pairs), the full score matrix, and 1:N search.

A probe is matched against a protected gallery template by rotating the probe's groups toward
that template's key with ``alpha_i = alpha - w_i(probe)``, zeroing the coordinates the gallery
template dropped (its zeros), re-normalizing each group and summing the group dot products with
the gallery groups (which carry the gallery weights ``w_i``, summing to 1). So the score lies in
[-1, 1]; the distance is ``arccos(score) / pi`` in [0, 1].

1:N search needs a different rotation of the probe for every gallery template (each has its own
key). Instead of materializing ``P x N`` rotated probes, the score is expanded in per-group dot
products that are all batched matrix products over the groups. With unit probe group ``q``, unit
key group ``k``, keep-mask ``M`` and gallery group ``g`` (zero outside M): the rotated probe is
``r = A q + B k`` with ``c = q.k``, ``th = arccos c``, ``B = sin(a th) / sin th`` and
``A = cos(a th) - B c``; hence

    g.r       = A (g.q) + B (g.k)
    |M r|^2   = A^2 (M.q^2) + 2 A B ((M k).q) + B^2 (M.k^2)

where ``g.q``, ``k.q``, ``(M k).q`` and ``M.q^2`` are ``(m, N, d) @ (m, d, P)`` products and the
rest depends on the gallery alone. Galleries may be stored in float16/bfloat16 (half the memory);
each chunk is computed in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from facelab.core.errors import (
    FormatError,
    KeyMismatchError,
    RangeError,
    ShapeError,
    ZeroVectorError,
    expect_finite,
    expect_tensor,
    extremes,
)
from facelab.slerpface._checks import (
    as_groups,
    check_alpha,
    check_nonzero_groups,
    check_same_shape,
    check_weights,
    compute_dtype,
)
from facelab.slerpface.keyed import (
    KeyRecord,
    Storage,
    as_record,
    check_keyed_groups,
    check_storage,
    gather_groups,
    require_weights,
)
from facelab.slerpface.protect import (
    BLOCK,
    DEFAULT_ALPHA,
    DEFAULT_GROUP_SIZE,
    slerp_block,
)

# the group norms of a protected template are its weights, which sum to 1; a raw template or
# a template of another method fails this (tolerance covers float16 storage)
_GALLERY_NORM_TOL = 2e-2


@dataclass(frozen=True)
class MatchResult:
    """``scores`` in [-1, 1] (higher = more similar) and ``distances = arccos(score) / pi``."""

    scores: torch.Tensor
    distances: torch.Tensor


@dataclass(frozen=True)
class SearchResult:
    """Top-k gallery entries per probe: ``scores`` and gallery ``indices``, both ``(P, k)``."""

    scores: torch.Tensor
    indices: torch.Tensor

    @property
    def distances(self) -> torch.Tensor:
        return score_to_distance(self.scores)


def score_to_distance(scores: torch.Tensor) -> torch.Tensor:
    """``arccos(score) / pi``; scores beyond [-1, 1] by float round-off are clipped first."""
    return torch.arccos(scores.clamp(-1.0, 1.0)) / torch.pi


def _check_gallery(gallery: object, group_size: int, name: str = "gallery") -> torch.Tensor:
    g = as_groups(gallery, group_size, name, finite=False)
    _check_mass(g, g, 0, name)
    return g


def _check_mass(g: torch.Tensor, whole: torch.Tensor, offset: int, name: str) -> None:
    """Rows ``offset ..`` of ``whole`` (given as ``g``) must be protected templates: finite,
    group norms summing to 1."""
    wide = torch.float64 if g.dtype == torch.float64 else torch.float32
    mass = torch.linalg.vector_norm(g, dim=-1, dtype=wide).sum(-1)
    lo, hi = extremes(mass)  # one pass, one sync
    if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN/Inf anywhere makes its mass so
        expect_finite(whole, name)
    if not (abs(lo - 1) <= _GALLERY_NORM_TOL and abs(hi - 1) <= _GALLERY_NORM_TOL):
        off = (mass - 1).abs()
        i = int(off.argmax())
        raise FormatError(
            f"{name}: expected SlerpFace-protected templates (group norms = attention weights, "
            f"summing to 1), template {offset + i} has group norms summing to "
            f"{float(mass[i]):.4g}; is this a raw template, or a keyed one (then match it with "
            "storage='keyed' and its key record)?"
        )


def keyed_record(
    storage: str, keys: torch.Tensor | KeyRecord, gallery_weights: torch.Tensor | None
) -> KeyRecord | None:
    """``None`` for the paper format; for the keyed format the key record to match with: a
    ``KeyRecord`` holding the weights, or one built from bare ``keys`` and ``gallery_weights``
    (its order derived)."""
    if check_storage(storage) == "paper":
        if gallery_weights is not None:
            raise KeyMismatchError(
                "gallery_weights: only keyed templates take them (storage='keyed'); a "
                "paper-format gallery carries its weights as group norms"
            )
        return None
    if not isinstance(keys, KeyRecord) and gallery_weights is None:
        raise KeyMismatchError(
            "storage='keyed': a keyed SlerpFace template cannot be matched without its key "
            "record, the key AND the attention weights kept next to it (pass a KeyRecord with "
            "weights, or gallery_weights)"
        )
    rec = as_record(keys)
    if gallery_weights is not None:
        if rec.weights is not None:
            raise KeyMismatchError(
                "gallery_weights: the key record already holds the weights; pass one or the other"
            )
        return rec.with_weights(gallery_weights)
    require_weights(rec)
    return rec


def match(
    gallery: torch.Tensor,
    probe_templates: torch.Tensor,
    probe_weights: torch.Tensor,
    keys: torch.Tensor | KeyRecord,
    alpha: float = DEFAULT_ALPHA,
    group_size: int = DEFAULT_GROUP_SIZE,
    *,
    storage: Storage = "paper",
    gallery_weights: torch.Tensor | None = None,
) -> MatchResult:
    """Scores of row-aligned pairs: protected ``gallery[i]`` (with ``keys[i]``) vs raw probe i.

    ``gallery``, ``probe_templates``, ``keys``: ``(B, m, d)``; ``probe_weights``: ``(B, m)``.
    Keyed templates (``storage="keyed"``) need their key record: a ``KeyRecord`` with the
    weights as ``keys``, or the keys and ``gallery_weights`` ``(B, m)`` (the order is then
    derived here). The score equals the paper format's for the same key material and dropout.
    Returns ``MatchResult`` with ``(B,)`` scores and distances.
    """
    check_alpha(alpha)
    rec = keyed_record(storage, keys, gallery_weights)
    if isinstance(keys, KeyRecord):
        keys = keys.keys
    g = as_groups(gallery, group_size, "gallery", finite=False)
    q = as_groups(probe_templates, group_size, "probe_templates", finite=False)
    if rec is not None:
        rec = rec.to(q.device)
        keys = rec.keys
    k = as_groups(keys, group_size, "keys", finite=False)
    check_same_shape(g, q, "gallery", "probe_templates")
    check_same_shape(g, k, "gallery", "keys")
    w = check_weights(probe_weights, q.shape[0], q.shape[1], "probe_weights")
    dt = compute_dtype(q)
    w = w.to(device=q.device, dtype=dt)
    order = k_stored = k_norms = gw = None
    if rec is not None:
        order, k_stored, k_norms = rec.order, rec.stored_keys, rec.key_norms
        gw = rec.weights.to(dt).gather(1, order)  # type: ignore[union-attr]  # storage order
    scores = torch.empty(q.shape[0], dtype=dt, device=q.device)
    # two block-sized buffers reused by every block (fresh multi-MB temporaries cost page
    # faults on each allocation: +7 % throughput on CPU)
    rbuf = torch.empty((min(BLOCK, q.shape[0]), *q.shape[1:]), dtype=dt, device=q.device)
    tmp = torch.empty_like(rbuf)
    for i in range(0, q.shape[0], BLOCK):
        sl = slice(i, i + BLOCK)
        gb = g[sl].to(device=q.device, dtype=dt)
        b = gb.shape[0]
        # the gallery check, block by block while the block is in cache
        if order is None:
            _check_mass(gb, g, i, "gallery")
            ob = ks = kn = None
        else:
            check_keyed_groups(gb, i, "gallery", g)
            ob, ks, kn = order[sl], k_stored[sl], k_norms[sl]  # type: ignore[index]
        # keyed: the probe's rotated groups come out in the gallery's storage order
        # (keyed: into a fresh block, the gather allocates one anyway)
        r = slerp_block(
            q[sl],
            k[sl],
            alpha - w[sl],
            dt,
            q,
            k,
            ("probe_templates", "keys"),
            rbuf[:b] if ob is None else None,
            ob,
            ks,
            kn,
        )
        # g is zero where the gallery dropped a coordinate, so g.r needs no mask
        dots = torch.mul(gb, r, out=tmp[:b]).sum(-1)  # (b, m)
        # the norm of r on the kept coordinates: r * sign(g) has the same magnitudes there and
        # zeros elsewhere (one cheap pass; a bool mask costs 2.5x as much on CPU)
        n = torch.linalg.vector_norm(r.mul_(torch.sign(gb, out=tmp[:b])), dim=-1)
        # a group the gallery dropped entirely (zero weight) contributes 0
        contrib = dots / n.clamp_min(torch.finfo(dt).tiny)
        if gw is not None:  # keyed groups are unit: their weights come from the key record
            contrib.mul_(gw[sl])
        scores[sl] = contrib.sum(-1)
    return MatchResult(scores, score_to_distance(scores))


def _probe_side(
    probe_templates: torch.Tensor, probe_weights: torch.Tensor, alpha: float, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q = as_groups(probe_templates, group_size, "probe_templates")
    w = check_weights(probe_weights, q.shape[0], q.shape[1], "probe_weights")
    dt = compute_dtype(q)
    q = q.to(dt)
    check_nonzero_groups(q, "probe_templates")
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    qt = q.permute(1, 2, 0).contiguous()  # (m, d, P)
    a = (alpha - w.to(device=q.device, dtype=dt)).t().unsqueeze(1)  # (m, 1, P)
    return qt, (qt * qt), a


def _chunk_scores(
    g: torch.Tensor, k: torch.Tensor, qt: torch.Tensor, qt2: torch.Tensor, a: torch.Tensor
) -> torch.Tensor:
    """Scores ``(P, n)`` of one gallery chunk ``g``, ``k`` ``(n, m, d)`` against all probes."""
    dt = qt.dtype
    g = g.to(device=qt.device, dtype=dt)
    k = k.to(device=qt.device, dtype=dt)
    kn = k.norm(dim=-1, keepdim=True)
    if bool((kn <= 1e-12).any()):
        raise ZeroVectorError("gallery_keys: expected non-zero key groups, got a zero group")
    k = k / kn
    mask = (g != 0).to(dt)
    mk = mask * k
    gk = (g * k).sum(-1).t().unsqueeze(-1)  # (m, n, 1)
    mkk = (mk * k).sum(-1).t().unsqueeze(-1)
    gm = g.transpose(0, 1)  # (m, n, d)
    km = k.transpose(0, 1)
    mkm = mk.transpose(0, 1)
    maskm = mask.transpose(0, 1)
    gq = torch.bmm(gm, qt)  # (m, n, P)
    c = torch.bmm(km, qt).clamp(-1.0, 1.0)
    mkq = torch.bmm(mkm, qt)
    mqq = torch.bmm(maskm, qt2)
    theta = torch.arccos(c)
    s = torch.sin(theta)
    small = s < 1e-6
    # sin(a th) / sin th -> a as th -> 0 (th -> pi is a measure-zero degenerate case: the
    # great circle through antipodal points is not unique)
    b = torch.where(small, a.expand_as(s), torch.sin(a * theta) / torch.where(small, 1.0, s))
    aa = torch.cos(a * theta) - b * c
    num = aa * gq + b * gk
    den2 = aa * aa * mqq + 2 * aa * b * mkq + b * b * mkk
    den = den2.clamp_min(0).sqrt()
    contrib = torch.where(den > 0, num / den.clamp_min(torch.finfo(dt).tiny), 0.0)
    return contrib.sum(0).t()  # (P, n)


def _chunk_rows(n_probes: int, groups: int, budget: int = 1 << 22) -> int:
    """Gallery rows per chunk so that an (m, rows, P) temporary stays near ``budget`` floats."""
    return max(256, budget // max(1, groups * n_probes))


def _check_search_inputs(
    gallery: torch.Tensor,
    gallery_keys: torch.Tensor | KeyRecord,
    group_size: int,
    check_gallery: bool,
    storage: str,
    gallery_weights: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    rec = keyed_record(storage, gallery_keys, gallery_weights)
    if isinstance(gallery_keys, KeyRecord):
        gallery_keys = gallery_keys.keys
    if check_gallery and rec is None:
        g = _check_gallery(gallery, group_size)
    else:
        g = as_groups(gallery, group_size, "gallery")
        if check_gallery:
            check_keyed_groups(g, 0, "gallery", g)
    k = expect_tensor(gallery_keys, "gallery_keys", floating=True)
    if k.dim() == 2:
        k = k.reshape(k.shape[0], -1, group_size)
    check_same_shape(g, k, "gallery", "gallery_keys")
    if rec is None:
        return g, k, None
    # the weights (float32 at least: each chunk is computed in float32 or float64) and where
    # each original group sits in storage
    rec = rec.to(g.device)
    wide = torch.float64 if g.dtype == torch.float64 else torch.float32
    return g, k, (rec.weights.to(wide), rec.inverse)  # type: ignore[union-attr]


def _gallery_chunk(
    g: torch.Tensor, keyed: tuple[torch.Tensor, torch.Tensor] | None, rows: slice, dt: torch.dtype
) -> torch.Tensor:
    """Gallery rows as paper-format templates (keyed ones put back in place and weighted, one
    fused gather per chunk, amortized over all probes)."""
    if keyed is None:
        return g[rows]
    return gather_groups(g[rows].to(dt), keyed[1][rows], keyed[0][rows].to(dt))


def score_matrix(
    gallery: torch.Tensor,
    gallery_keys: torch.Tensor | KeyRecord,
    probe_templates: torch.Tensor,
    probe_weights: torch.Tensor,
    alpha: float = DEFAULT_ALPHA,
    group_size: int = DEFAULT_GROUP_SIZE,
    *,
    chunk_size: int | None = None,
    check_gallery: bool = True,
    storage: Storage = "paper",
    gallery_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """All scores ``(P, N)``: every raw probe against every protected gallery template.

    ``check_gallery=False`` skips the full pass that checks every gallery template's group norms
    (useful for a large, already validated gallery). Keyed galleries: as in ``match``.
    """
    check_alpha(alpha)
    g, k, keyed = _check_search_inputs(
        gallery, gallery_keys, group_size, check_gallery, storage, gallery_weights
    )
    qt, qt2, a = _probe_side(probe_templates, probe_weights, alpha, group_size)
    if qt.shape[0] != g.shape[1]:
        raise ShapeError(
            f"probe_templates have {qt.shape[0]} groups, the gallery {g.shape[1]}: they must agree"
        )
    rows = chunk_size or _chunk_rows(qt.shape[-1], g.shape[1])
    out = [
        _chunk_scores(
            _gallery_chunk(g, keyed, slice(i, i + rows), qt.dtype), k[i : i + rows], qt, qt2, a
        )
        for i in range(0, g.shape[0], rows)
    ]
    return torch.cat(out, dim=1)


def search(
    gallery: torch.Tensor,
    gallery_keys: torch.Tensor | KeyRecord,
    probe_templates: torch.Tensor,
    probe_weights: torch.Tensor,
    alpha: float = DEFAULT_ALPHA,
    group_size: int = DEFAULT_GROUP_SIZE,
    *,
    top_k: int = 5,
    chunk_size: int | None = None,
    check_gallery: bool = True,
    storage: Storage = "paper",
    gallery_weights: torch.Tensor | None = None,
) -> SearchResult:
    """1:N search: the ``top_k`` best gallery entries for each probe, streamed over chunks.

    Memory stays bounded by one chunk whatever N is; scores equal ``score_matrix``'s. Keyed
    galleries: as in ``match``.
    """
    check_alpha(alpha)
    g, k, keyed = _check_search_inputs(
        gallery, gallery_keys, group_size, check_gallery, storage, gallery_weights
    )
    if not isinstance(top_k, int) or not (1 <= top_k <= g.shape[0]):
        raise RangeError(f"top_k: expected an integer in [1, {g.shape[0]}], got {top_k!r}")
    qt, qt2, a = _probe_side(probe_templates, probe_weights, alpha, group_size)
    if qt.shape[0] != g.shape[1]:
        raise ShapeError(
            f"probe_templates have {qt.shape[0]} groups, the gallery {g.shape[1]}: they must agree"
        )
    rows = chunk_size or _chunk_rows(qt.shape[-1], g.shape[1])
    best_s = best_i = None
    for i in range(0, g.shape[0], rows):
        gc = _gallery_chunk(g, keyed, slice(i, i + rows), qt.dtype)
        s = _chunk_scores(gc, k[i : i + rows], qt, qt2, a)
        idx = torch.arange(i, i + s.shape[1], device=s.device).expand_as(s)
        if best_s is not None:
            s = torch.cat([best_s, s], dim=1)
            idx = torch.cat([best_i, idx], dim=1)
        kk = min(top_k, s.shape[1])
        best_s, pos = s.topk(kk, dim=1)
        best_i = idx.gather(1, pos)
    return SearchResult(best_s, best_i)
