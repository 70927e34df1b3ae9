"""Keys: CSPRNG generation and a file-based key store kept apart from the templates.

A SlerpFace key is m Gaussian groups of d dims (normalized: only the direction matters). The
reference draws every key from ``numpy.random`` seeded with 1337, so every deployment shares the
same key sequence, and pickles the key next to the template. Here keys come from the operating
system's CSPRNG (``secrets``/``os.urandom`` bytes -> uniform -> Box-Muller) unless a seed is
passed explicitly (reproducible experiments; such keys are *not* secret), and they live in a
``KeyStore`` -- a separate safetensors file -- addressed by random key ids that the protected
templates reference.

Renewability: ``KeyStore.rekey(old_id, new_key)`` revokes the old key and stores a new one;
revoked ids stay known (so a template that references one fails with a clear "revoked" error)
but their key material is erased from the store.

Keyed SlerpFace templates (``storage="keyed"``) keep the image's attention weights in the key
record, next to the key (``add(keys, weights=...)``, ``record(ids)``); the group order those
templates are stored in is derived from the key (``key_permutation``) when a record is added
or loaded, and never written anywhere. A store with weighted records is written as version 2
(version 1 readers refuse it rather than lose the weights); one without stays version 1.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from facelab.core.errors import (
    FacelabTypeError,
    FormatError,
    KeyMismatchError,
    RangeError,
    ShapeError,
    UnknownNameError,
    expect_finite,
    expect_tensor,
)
from facelab.slerpface._checks import check_weights
from facelab.slerpface.keyed import KeyRecord, key_permutation

KEYSTORE_FORMAT = "facelab.slerpface.keystore"
KEYSTORE_VERSION = 2  # 2: records may carry attention weights (keyed SlerpFace templates)
_KNOWN_VERSIONS = ("1", "2")
_KEY_ID_BYTES = 12  # 96-bit random ids: collisions are negligible, ids reveal nothing


def new_key_id() -> str:
    """A fresh random key id (hex, from the CSPRNG)."""
    return secrets.token_hex(_KEY_ID_BYTES)


def _csprng_normal(n: int) -> torch.Tensor:
    """``n`` standard normal float64 values from OS randomness (Box-Muller on 32-bit uniforms)."""
    pairs = (n + 1) // 2
    raw = np.frombuffer(secrets.token_bytes(8 * pairs), dtype=np.uint32).astype(np.float64)
    u1 = (raw[0::2] + 1.0) / 2.0**32  # (0, 1]: log is finite
    u2 = raw[1::2] / 2.0**32  # [0, 1)
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([r * np.cos(2 * math.pi * u2), r * np.sin(2 * math.pi * u2)])
    return torch.from_numpy(z[:n].copy())


def generate_keys(
    n: int,
    num_groups: int = 49,
    group_size: int = 16,
    *,
    seed: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``n`` SlerpFace keys ``(n, num_groups, group_size)``, each group a unit vector.

    Without ``seed`` the values come from the OS CSPRNG. With ``seed`` they come from a seeded
    torch generator: reproducible, for experiments only.
    """
    for name, v, lo in (("n", n, 0), ("num_groups", num_groups, 1), ("group_size", group_size, 2)):
        if not isinstance(v, int) or v < lo:
            raise RangeError(f"{name}: expected an integer >= {lo}, got {v!r}")
    shape = (n, num_groups, group_size)
    count = n * num_groups * group_size
    if seed is None:
        z = _csprng_normal(count).reshape(shape)
    else:
        g = torch.Generator().manual_seed(int(seed))
        z = torch.randn(shape, generator=g, dtype=torch.float64)
    # a Gaussian group of >= 2 dims has norm 0 with probability 0; guard anyway
    norm = z.norm(dim=-1, keepdim=True)
    if count and bool((norm == 0).any()):  # pragma: no cover - probability ~0
        raise RuntimeError("generate_keys: drew an all-zero key group; draw again")
    return (z / norm).to(dtype=dtype, device=device)


def generate_seeds(n: int, per_key: int = 1, *, seed: int | None = None) -> torch.Tensor:
    """``(n, per_key)`` int64 secrets (63-bit) for baselines whose key is a PRNG seed."""
    if not isinstance(n, int) or n < 0:
        raise RangeError(f"n: expected an integer >= 0, got {n!r}")
    if seed is None:
        vals = [secrets.randbits(63) for _ in range(n * per_key)]
        return torch.tensor(vals, dtype=torch.int64).reshape(n, per_key)
    g = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, 2**62, (n, per_key), generator=g, dtype=torch.int64)


def _digest(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.cpu().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and ``__metadata__`` of a safetensors file; any corruption -> ``FormatError``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    data = path.read_bytes()
    if len(data) < 8:
        raise FormatError(f"{path}: not a safetensors file ({len(data)} bytes)")
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise FormatError(f"{path}: corrupted safetensors header (declared length {n})")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
        meta = header.get("__metadata__") or {}
        tensors = st_load(data)
    except Exception as exc:
        raise FormatError(
            f"{path}: corrupted safetensors file ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise FormatError(f"{path}: safetensors metadata must map strings to strings")
    return tensors, dict(meta)


class KeyStore:
    """Keys addressed by id, saved as one safetensors file (mode 0600), apart from templates.

    All keys in one store share a shape and dtype (e.g. ``(49, 16)`` float32 for SlerpFace,
    ``(1,)`` int64 seeds for BioHashing). ``repr`` and errors never print key material.

    >>> store = KeyStore()
    >>> ids = store.add(generate_keys(2))
    >>> new_id = store.rekey(ids[0], generate_keys(1)[0])
    >>> store.is_revoked(ids[0])
    True
    """

    def __init__(self, path: str | os.PathLike | None = None, kind: str = "slerpface") -> None:
        self.path = Path(path) if path is not None else None
        self.kind = kind
        self._keys: dict[str, torch.Tensor] = {}
        self._revoked: dict[str, str | None] = {}  # revoked id -> id that replaced it (or None)
        # keyed SlerpFace records: the attention weights (saved) and the derived order (not)
        self._weights: dict[str, torch.Tensor] = {}
        self._orders: dict[str, torch.Tensor] = {}

    # ---- persistence -------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, kind: str = "slerpface") -> KeyStore:
        """Load the store at ``path`` if it exists, else an empty store bound to it."""
        p = Path(path)
        return cls.load(p) if p.exists() else cls(p, kind)

    @classmethod
    def load(cls, path: str | os.PathLike) -> KeyStore:
        tensors, meta = read_safetensors(path)
        if meta.get("format") != KEYSTORE_FORMAT:
            raise FormatError(
                f"{path}: expected a {KEYSTORE_FORMAT} file, got format {meta.get('format')!r}"
            )
        if meta.get("version") not in _KNOWN_VERSIONS:
            raise FormatError(
                f"{path}: unsupported key store version {meta.get('version')!r} "
                f"(this reader knows {', '.join(_KNOWN_VERSIONS)})"
            )
        digest = meta.pop("sha256", None)
        if digest is None or digest != _digest(tensors, meta):
            raise FormatError(
                f"{path}: key store integrity check failed (file modified or corrupted)"
            )
        try:
            ids = json.loads(meta["ids"])
            revoked = json.loads(meta["revoked"])
            weighted = json.loads(meta.get("weighted", "[]"))
        except (KeyError, json.JSONDecodeError) as exc:
            raise FormatError(f"{path}: key store metadata is incomplete: {exc}") from exc
        store = cls(path, meta.get("kind", "slerpface"))
        keys = tensors.get("keys")
        if ids:
            if keys is None or keys.shape[0] != len(ids):
                raise FormatError(f"{path}: {len(ids)} key ids but no matching 'keys' tensor")
            store._keys = {i: keys[n].clone() for n, i in enumerate(ids)}
        if weighted:
            weights = tensors.get("weights")
            if weights is None or weights.shape[0] != len(weighted) or meta["version"] == "1":
                raise FormatError(f"{path}: {len(weighted)} weighted ids but no matching weights")
            if not set(weighted) <= set(store._keys):
                raise FormatError(f"{path}: weights recorded for ids the store does not hold")
            ids_w = list(weighted)
            order = key_permutation(torch.stack([store._keys[i] for i in ids_w]))
            for n, i in enumerate(ids_w):
                store._weights[i] = weights[n].clone()
                store._orders[i] = order[n]
        store._revoked = {str(k): v for k, v in revoked.items()}
        return store

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the store atomically with owner-only permissions; returns the path."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise FacelabTypeError("KeyStore.save: no path given and the store is not bound to one")
        ids = list(self._keys)
        tensors = {"keys": torch.stack([self._keys[i] for i in ids])} if ids else {}
        weighted = [i for i in ids if i in self._weights]
        meta = {
            "format": KEYSTORE_FORMAT,
            "version": str(KEYSTORE_VERSION) if weighted else "1",
            "kind": self.kind,
            "ids": json.dumps(ids),
            "revoked": json.dumps(self._revoked),
        }
        if weighted:
            tensors["weights"] = torch.stack([self._weights[i] for i in weighted])
            meta["weighted"] = json.dumps(weighted)
        meta["sha256"] = _digest(tensors, meta)
        atomic_write(target, st_save(tensors, metadata=meta), mode=0o600)
        self.path = target
        return target

    # ---- key management ----------------------------------------------------------------
    @property
    def key_shape(self) -> tuple[int, ...] | None:
        first = next(iter(self._keys.values()), None)
        return None if first is None else tuple(first.shape)

    def _check_new(self, keys: torch.Tensor) -> None:
        expect_tensor(keys, "keys")
        expect_finite(keys, "keys")
        shape = self.key_shape
        if shape is not None:
            ref = next(iter(self._keys.values()))
            if tuple(keys.shape[1:]) != shape or keys.dtype != ref.dtype:
                raise ShapeError(
                    f"keys: this store holds keys of shape {shape} and dtype {ref.dtype}, got "
                    f"{tuple(keys.shape[1:])} and {keys.dtype}"
                )

    def add(self, keys: torch.Tensor, *, weights: torch.Tensor | None = None) -> list[str]:
        """Store a batch of keys ``(n, ...)``; returns their new ids.

        ``weights`` ``(n, m)``: the attention weights of keyed SlerpFace templates enrolled with
        these keys (``(n, m, d)`` keys), kept in each key's record."""
        keys = expect_tensor(keys, "keys")
        if keys.dim() < 1:
            raise ShapeError(f"keys: expected a batch (n, ...), got shape {tuple(keys.shape)}")
        self._check_new(keys)
        order = None
        if weights is not None:
            if keys.dim() != 3:
                raise ShapeError(
                    f"weights: only SlerpFace keys (n, m, d) take weights, got keys of shape "
                    f"{tuple(keys.shape)}"
                )
            weights = check_weights(weights, keys.shape[0], keys.shape[1], "weights")
            weights = weights.detach().cpu().double()
            order = key_permutation(keys.detach().cpu())
        ids = [new_key_id() for _ in range(keys.shape[0])]
        for n, (i, k) in enumerate(zip(ids, keys.detach().cpu())):
            self._keys[i] = k.clone()
            if weights is not None and order is not None:
                self._weights[i] = weights[n].clone()
                self._orders[i] = order[n]
        return ids

    def _require(self, key_id: str) -> None:
        if key_id in self._revoked:
            by = self._revoked[key_id]
            hint = f" (replaced by {by})" if by else ""
            raise KeyMismatchError(f"key id {key_id} was revoked{hint}; re-enroll with a new key")
        if key_id not in self._keys:
            raise UnknownNameError(f"unknown key id {key_id!r}: not in this key store")

    def get(self, key_ids: str | Sequence[str]) -> torch.Tensor:
        """Keys for ``key_ids`` stacked ``(n, ...)`` (a single id gives ``(1, ...)``)."""
        ids = [key_ids] if isinstance(key_ids, str) else list(key_ids)
        if not ids:
            raise ShapeError("key_ids: expected at least one key id, got none")
        for i in ids:
            self._require(i)
        return torch.stack([self._keys[i] for i in ids])

    def record(self, key_ids: str | Sequence[str]) -> KeyRecord:
        """The key records of keyed SlerpFace templates: keys, weights and the derived order.

        Fails (``KeyMismatchError``) for a key stored without weights: a keyed template cannot
        be matched without them."""
        ids = [key_ids] if isinstance(key_ids, str) else list(key_ids)
        keys = self.get(ids)
        missing = [i for i in ids if i not in self._weights]
        if missing:
            raise KeyMismatchError(
                f"key id {missing[0]} has no attention weights in its record "
                f"({len(missing)} of {len(ids)} ids): a keyed SlerpFace template cannot be "
                "matched without them (was it enrolled with storage='paper'?)"
            )
        weights = torch.stack([self._weights[i] for i in ids])
        order = torch.stack([self._orders[i] for i in ids])
        return KeyRecord(keys, weights, order)

    def has_weights(self, key_id: str) -> bool:
        return key_id in self._weights

    def revoke(self, key_ids: str | Iterable[str], replaced_by: str | None = None) -> None:
        """Erase the key material; the ids stay known as revoked."""
        for i in [key_ids] if isinstance(key_ids, str) else list(key_ids):
            self._require(i)
            del self._keys[i]
            self._weights.pop(i, None)
            self._orders.pop(i, None)
            self._revoked[i] = replaced_by

    def rekey(
        self, key_id: str, new_key: torch.Tensor, *, weights: torch.Tensor | None = None
    ) -> str:
        """Renew: store ``new_key`` (one key, no batch dim; ``weights`` ``(m,)`` for a keyed
        SlerpFace re-enrollment) under a new id, revoke ``key_id``."""
        self._require(key_id)
        new_key = expect_tensor(new_key, "new_key")
        w = None if weights is None else expect_tensor(weights, "weights").unsqueeze(0)
        (new_id,) = self.add(new_key.unsqueeze(0), weights=w)
        self.revoke(key_id, replaced_by=new_id)
        return new_id

    def is_revoked(self, key_id: str) -> bool:
        return key_id in self._revoked

    def ids(self) -> list[str]:
        """Ids of the active (not revoked) keys, in insertion order."""
        return list(self._keys)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return (
            f"KeyStore(path={str(self.path) if self.path else None!r}, kind={self.kind!r}, "
            f"active={len(self._keys)}, revoked={len(self._revoked)}, "
            f"with weights={len(self._weights)}, shape={self.key_shape})"
        )
