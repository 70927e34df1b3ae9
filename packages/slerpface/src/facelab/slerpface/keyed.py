"""The keyed storage format (ours, not the paper's): stored templates that give away neither the
attention weights nor which group is which.

The paper's stored template holds group ``i`` as ``w_i * u_i`` (``u_i`` the unit, partly dropped,
rotated group) in the group's own position. Without any key that leaks the image's attention
weights twice: as the group norms, and through the dropout counts (groups below the median
weight drop more coordinates, so the zero pattern follows the weights' rank). Both link two
protections of one identity under different keys.

The keyed format stores the same ``u_i`` with unit norm and moves group ``i`` to a position given
by a secret permutation; the weights go into the key store's record, next to the key:

    stored[j] = u[order[j]] (0 where w[order[j]] = 0),  record = (key, weights)

``order = key_permutation(key)`` is a public function of the key material (a 32-bit
integer hash of the key's coordinates rounded to float16, one value per group, then a stable
argsort), so without the key the positions say nothing, and the key store needs to keep nothing
besides the key and the weights. The key holder undoes the permutation and re-applies the
weights when matching, which gives exactly the paper format's score for the same key material
(``from_keyed(to_keyed(p)) == p``).

The permutation is derived when a key record is created (``KeyRecord``, ``KeyStore``), not on
every protect / match: an argsort of ``(n, m)`` values costs about as much as a fifth of a
protect on CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from facelab.core.errors import (
    FacelabTypeError,
    FormatError,
    KeyMismatchError,
    ShapeError,
    expect_finite,
    expect_tensor,
    extremes,
)
from facelab.slerpface._checks import as_groups, check_weights

Storage = Literal["paper", "keyed"]
STORAGES: tuple[str, ...] = ("paper", "keyed")

# a keyed template's groups are unit vectors (or 0 where the weight is 0); the tolerance covers
# float16 storage
UNIT_TOL = 2e-2

_M32 = 0xFFFFFFFF
# odd multipliers below 2^31 keep every product of a 32-bit value below 2^63 (no int64 overflow);
# the shift/multiply sequence is the "lowbias32" integer hash family (C. Wellons)
_MUL1, _MUL2 = 0x21F0AAAD, 0x735A2D97
_GROUP_SALT = 0x9E3779B1
#: key coordinates per group that feed the hash (float16 bit patterns, two per 32-bit word)
_HASH_COORDS = 4


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash of int64 values in [0, 2^32), exact on every device."""
    x = x ^ (x >> 16)
    x = (x * _MUL1) & _M32
    x = x ^ (x >> 15)
    x = (x * _MUL2) & _M32
    return x ^ (x >> 15)


def key_permutation(keys: torch.Tensor) -> torch.Tensor:
    """The secret group order of each key: ``(n, m)`` int64, row ``b`` a permutation of
    ``0..m-1``; stored position ``j`` holds group ``order[b, j]``.

    A stable argsort of a per-group hash of the key's first coordinates rounded to float16, so a
    key kept in float32 or float16 gives the same order (the rounding is idempotent), and CPU and
    CUDA agree (integer arithmetic). Keys are random, so the order is uniformly random and, being
    a hash, unrelated to the directions the stored groups show.
    """
    k = expect_tensor(keys, "keys", floating=True)
    if k.dim() != 3:
        raise ShapeError(f"keys: expected (n, m, d) key groups, got shape {tuple(k.shape)}")
    n, m, d = k.shape
    c = min(d, _HASH_COORDS)
    bits = k[..., :c].to(torch.float16).contiguous().view(torch.int16).to(torch.int64) & 0xFFFF
    h = (torch.arange(m, device=k.device, dtype=torch.int64) * _GROUP_SALT) & _M32
    h = h.expand(n, m)
    for j in range(0, c, 2):
        word = bits[..., j] if j + 1 >= c else bits[..., j] | (bits[..., j + 1] << 16)
        h = _mix32(h ^ word)
    return h.argsort(dim=-1, stable=True)


def inverse_order(order: torch.Tensor) -> torch.Tensor:
    """``inv`` with ``inv[b, order[b, j]] = j``: where each original group sits in storage."""
    n, m = order.shape
    pos = torch.arange(m, device=order.device, dtype=order.dtype).expand(n, m)
    return torch.empty_like(order).scatter_(1, order, pos)


def check_order(order: object, n: int, m: int, device: torch.device) -> torch.Tensor:
    """``(n, m)`` integer rows, each a permutation of ``0..m-1``."""
    o = expect_tensor(order, "order")
    if o.dtype not in (torch.int64, torch.int32) or tuple(o.shape) != (n, m):
        raise ShapeError(
            f"order: expected an int64 tensor of shape ({n}, {m}) (one permutation per key), "
            f"got dtype {o.dtype} and shape {tuple(o.shape)}"
        )
    o = o.to(device=device, dtype=torch.int64)
    lo, hi = (int(v) for v in torch.aminmax(o)) if o.numel() else (0, 0)
    hits = torch.zeros((n, m), dtype=torch.int64, device=device)
    if lo < 0 or hi >= m or not bool(hits.scatter_add_(1, o, torch.ones_like(o)).eq(1).all()):
        raise ShapeError(f"order: every row must be a permutation of 0..{m - 1}")
    return o


def gather_groups(
    x: torch.Tensor, order: torch.Tensor, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """``out[b, j] = x[b, order[b, j]] * scale[b, j]`` for ``(b, m, d)`` ``x``, ``(b, m)`` order
    and scale (the scale in the output's order).

    One fused gather-and-scale: ``embedding_bag`` with one index per bag and per-sample weights
    (on CPU about half the time of ``index_select`` followed by a multiply).
    """
    b, m, d = x.shape
    rows = x.reshape(b * m, d)
    flat = (order + torch.arange(b, device=x.device, dtype=order.dtype).unsqueeze(1) * m).view(-1)
    offsets = _bag_offsets(b * m, x.device)
    psw = None if scale is None else scale.to(x.dtype).reshape(-1)
    out = F.embedding_bag(flat, rows, offsets, mode="sum", per_sample_weights=psw)
    return out.view(b, m, d)


_OFFSETS: dict[tuple[int, str], torch.Tensor] = {}


def _bag_offsets(n: int, device: torch.device) -> torch.Tensor:
    """``arange(n)``: one index per bag (1-D indices with offsets are ~30 % faster on CPU than
    2-D indices, for which ``embedding_bag`` builds this tensor on every call)."""
    key = (n, str(device))
    offsets = _OFFSETS.get(key)
    if offsets is None:
        if len(_OFFSETS) > 8:
            _OFFSETS.clear()
        offsets = _OFFSETS[key] = torch.arange(n, device=device)
    return offsets


@dataclass(eq=False)
class KeyRecord:
    """What the key holder keeps for keyed templates: the keys ``(n, m, d)``, the attention weights
    ``(n, m)`` of the enrolled images (``None`` until enrollment), and the group order derived
    from the keys (``key_permutation``; derived here when not given, else checked to be
    permutations). ``protect`` / ``match`` / ``search`` take a record in place of the keys.

    Derived once per record and cached: ``inverse`` (where each group sits in storage),
    ``stored_keys`` (the key groups in storage order), which let protect and match produce the
    rotated groups directly in storage order, and ``key_norms`` (which spares them a pass over
    the keys).
    """

    keys: torch.Tensor
    weights: torch.Tensor | None = None
    order: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.keys = expect_tensor(self.keys, "keys", floating=True)
        if self.keys.dim() != 3:
            raise ShapeError(f"keys: expected (n, m, d) key groups, got {tuple(self.keys.shape)}")
        n, m, _ = self.keys.shape
        if self.order is None:
            self.order = key_permutation(self.keys)
        else:
            self.order = check_order(self.order, n, m, self.keys.device)
        if self.weights is not None:
            self.weights = check_weights(self.weights, n, m, "key record weights")
        self._cache: dict[str, torch.Tensor] = {}

    @classmethod
    def _trusted(
        cls,
        keys: torch.Tensor,
        weights: torch.Tensor | None,
        order: torch.Tensor,
        cache: dict[str, torch.Tensor] | None = None,
    ) -> KeyRecord:
        """A record from parts this package derived and checked itself (no re-validation), with
        the derived tensors already computed for these keys (``cache``)."""
        rec = cls.__new__(cls)
        rec.keys, rec.weights, rec.order = keys, weights, order
        rec._cache = dict(cache or {})
        return rec

    @property
    def inverse(self) -> torch.Tensor:
        """``(n, m)``: the storage position of each original group."""
        if "inverse" not in self._cache:
            self._cache["inverse"] = inverse_order(self.order)  # type: ignore[arg-type]
        return self._cache["inverse"]

    @property
    def key_norms(self) -> torch.Tensor:
        """``(n, m, 1)``: each key group's norm, in the keys' own order (checked once: finite and
        non-zero), so protect and match need not read the keys for it again."""
        if "key_norms" not in self._cache:
            from facelab.slerpface._checks import check_group_norms

            wide = torch.float64 if self.keys.dtype == torch.float64 else torch.float32
            nk = torch.linalg.vector_norm(self.keys, dim=-1, keepdim=True, dtype=wide)
            check_group_norms(nk, self.keys, "keys")
            self._cache["key_norms"] = nk
        return self._cache["key_norms"]

    @property
    def stored_keys(self) -> torch.Tensor:
        """``(n, m, d)``: key group ``order[:, j]`` at position ``j``."""
        if "stored_keys" not in self._cache:
            self._cache["stored_keys"] = gather_groups(self.keys, self.order)  # type: ignore[arg-type]
        return self._cache["stored_keys"]

    def with_weights(self, weights: torch.Tensor) -> KeyRecord:
        """The same keys and order with (checked) ``weights``."""
        n, m, _ = self.keys.shape
        w = check_weights(weights, n, m, "key record weights")
        return KeyRecord._trusted(self.keys, w, self.order, self._cache)  # type: ignore[arg-type]

    def to(self, device: torch.device | str) -> KeyRecord:
        """The record on ``device`` (caches moved along)."""
        dev = torch.device(device)
        if self.keys.device == dev:
            return self
        w = None if self.weights is None else self.weights.to(dev)
        return KeyRecord._trusted(
            self.keys.to(dev),
            w,
            self.order.to(dev),  # type: ignore[union-attr]
            {name: x.to(dev) for name, x in self._cache.items()},
        )

    def __len__(self) -> int:
        return self.keys.shape[0]

    def select(self, rows: slice | torch.Tensor) -> KeyRecord:
        """A subset of the records (int index lists, tensors or slices)."""
        w = None if self.weights is None else self.weights[rows]
        return KeyRecord._trusted(
            self.keys[rows],
            w,
            self.order[rows],  # type: ignore[index]
            {name: x[rows] for name, x in self._cache.items()},
        )

    def __repr__(self) -> str:  # never print key material
        w = "none" if self.weights is None else "yes"
        return f"KeyRecord(n={len(self)}, key_shape={tuple(self.keys.shape[1:])}, weights={w})"


def as_record(keys: object, what: str = "keys") -> KeyRecord:
    """A ``KeyRecord`` from a record or a bare key tensor (its order derived)."""
    if isinstance(keys, KeyRecord):
        return keys
    if isinstance(keys, torch.Tensor):
        return KeyRecord(keys)
    raise FacelabTypeError(
        f"{what}: expected a KeyRecord or a key tensor, got {type(keys).__name__}"
    )


def require_weights(record: KeyRecord) -> torch.Tensor:
    if record.weights is None:
        raise KeyMismatchError(
            "a keyed SlerpFace template cannot be matched without its key record: the key AND "
            "the attention weights kept next to it (got a key without weights)"
        )
    return record.weights


def check_keyed_groups(g: torch.Tensor, offset: int, name: str, whole: torch.Tensor) -> None:
    """Rows ``offset ..`` of ``whole`` (given as ``g``) must be keyed templates: every group of
    norm 1 (or 0 where its weight is 0)."""
    wide = torch.float64 if g.dtype == torch.float64 else torch.float32
    norms = torch.linalg.vector_norm(g, dim=-1, dtype=wide)
    lo, hi = extremes(norms)  # one pass, one sync: all unit is the common case
    if lo >= 1 - UNIT_TOL and hi <= 1 + UNIT_TOL:
        return
    dev = torch.minimum(norms, (norms - 1).abs())  # zero groups (zero weights) are allowed
    worst = float(dev.max())
    if worst <= UNIT_TOL:
        return
    if not math.isfinite(worst):
        expect_finite(whole, name)
    i, j = divmod(int(dev.argmax()), g.shape[1])
    raise FormatError(
        f"{name}: expected keyed SlerpFace templates (unit groups, zeros where dropped), "
        f"template {offset + i} group {j} has norm {float(norms[i, j]):.4g}; is this a "
        "paper-format (weighted) or raw template?"
    )


def check_storage(storage: str) -> str:
    if storage not in STORAGES:
        from facelab.core.errors import UnknownNameError

        raise UnknownNameError(f"storage: expected one of {STORAGES}, got {storage!r}")
    return storage


def to_keyed(
    gallery: torch.Tensor, keys: KeyRecord | torch.Tensor, group_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper-format protected templates ``(n, m, d)`` and their keys -> ``(stored, weights)``
    of the keyed format (for the key holder migrating a paper-format database): the group norms
    are the weights, the unit groups go to the key's order."""
    g = as_groups(gallery, group_size, "gallery")
    rec = as_record(keys)
    if tuple(rec.keys.shape) != tuple(g.shape):
        raise ShapeError(
            f"keys: expected shape {tuple(g.shape)} (one key per template), got "
            f"{tuple(rec.keys.shape)}"
        )
    wide = torch.float64 if g.dtype == torch.float64 else torch.float32
    w = torch.linalg.vector_norm(g, dim=-1, dtype=wide)
    off = (w.sum(-1) - 1).abs()
    if bool((off > UNIT_TOL).any()):
        i = int(off.argmax())
        raise FormatError(
            f"gallery: expected paper-format SlerpFace templates (group norms = attention "
            f"weights, summing to 1), template {i} has group norms summing to "
            f"{float(w[i].sum()):.4g}"
        )
    inv_w = torch.where(w > 0, 1.0 / w.clamp_min(torch.finfo(wide).tiny), 0.0)
    order = rec.order.to(g.device)
    stored = gather_groups(g.to(wide), order, inv_w.gather(1, order))
    return stored.to(g.dtype), w / w.sum(-1, keepdim=True)


def from_keyed(stored: torch.Tensor, record: KeyRecord, group_size: int = 16) -> torch.Tensor:
    """The paper-format templates ``(n, m, d)`` back from keyed ones and their key record (key
    holder only): groups returned to their positions and scaled by the record's weights."""
    s = as_groups(stored, group_size, "stored")
    rec = as_record(record, "record")
    w = require_weights(rec)
    if tuple(rec.keys.shape) != tuple(s.shape):
        raise ShapeError(
            f"record: expected keys of shape {tuple(s.shape)} (one per template), got "
            f"{tuple(rec.keys.shape)}"
        )
    check_keyed_groups(s, 0, "stored", s)
    inv = inverse_order(rec.order.to(s.device))
    return gather_groups(s, inv, w.to(device=s.device, dtype=s.dtype))
