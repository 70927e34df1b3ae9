"""``ProtectedTemplate``: what the server stores -- protected data and key ids, never the key.

One file holds a batch of N protected templates of one method (``slerpface``, ``unprotected``,
``biohashing``, ``ironmask``) as safetensors tensors whose first dim is N, plus metadata:
format name and version, method, protection parameters, one key id per template, optional
subject labels, and an integrity digest (SHA-256 of tensors + metadata, or HMAC-SHA256 when a
secret is given, which also authenticates the file). Loading checks all of it; a modified byte
fails with ``FormatError``.

The reference pickles ``[template, key]`` together into one ``.npy`` (loaded with
``allow_pickle=True``): anyone holding the database holds the keys, and loading runs arbitrary
code. Here tensor names containing "key" are refused outright, and the key stays in a
``KeyStore``.

Versions: 1 is every method's format and SlerpFace's paper format (``storage`` absent from the
parameters); 2 is SlerpFace's keyed format (``params["storage"] == "keyed"``: unit groups in a
key-derived order, the weights in the key record -- never a tensor of this file). A reader tells
them apart by the version and refuses a file whose version and storage disagree.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save

from facelab.core.errors import (
    FacelabTypeError,
    FormatError,
    ShapeError,
    UnknownNameError,
    expect_tensor,
)
from facelab.slerpface.keys import atomic_write, read_safetensors

TEMPLATE_FORMAT = "facelab.slerpface.protected-template"
TEMPLATE_VERSION = 2  # the newest version this code writes (keyed SlerpFace templates)
PAPER_VERSION = 1  # every other template, written as before the keyed format existed
KNOWN_VERSIONS: tuple[int, ...] = (1, 2)
METHODS: tuple[str, ...] = ("slerpface", "unprotected", "biohashing", "ironmask")


def _storage_of(method: str, params: dict[str, Any]) -> str:
    return str(params.get("storage", "paper")) if isinstance(params, dict) else "paper"


def _content_digest(
    tensors: dict[str, torch.Tensor], meta: dict[str, str], secret: bytes | None
) -> str:
    h = hmac.new(secret, digestmod=hashlib.sha256) if secret else hashlib.sha256()
    h.update(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class ProtectedTemplate:
    """A batch of N protected templates and the ids of their keys (kept elsewhere).

    ``tensors``: method-specific arrays, each with first dim N (SlerpFace: ``"templates"``
    ``(N, m, d)``); ``key_ids``: N ids into a ``KeyStore``; ``params``: the protection
    parameters (JSON-serializable); ``subjects``: optional N labels. ``version`` follows from
    the storage (2 for keyed SlerpFace templates, else 1); a different one is refused.
    """

    method: str
    tensors: dict[str, torch.Tensor]
    key_ids: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)
    subjects: tuple[str, ...] | None = None
    version: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UnknownNameError(f"method: expected one of {METHODS}, got {self.method!r}")
        storage = _storage_of(self.method, self.params)
        if storage not in ("paper", "keyed") or (storage == "keyed" and self.method != "slerpface"):
            raise FormatError(
                f"params['storage']: expected 'paper' or (for slerpface) 'keyed', got "
                f"{storage!r} for method {self.method!r}"
            )
        expected = TEMPLATE_VERSION if storage == "keyed" else PAPER_VERSION
        if self.version is None:
            self.version = expected
        elif self.version != expected:
            raise FormatError(
                f"version {self.version} does not match the storage: {storage!r} templates are "
                f"version {expected}"
            )
        if storage == "keyed" and set(self.tensors) != {"templates"}:
            raise FormatError(
                "a keyed SlerpFace template file holds only 'templates' (the weights stay in the "
                f"key record), got tensors {sorted(self.tensors)}"
            )
        if not isinstance(self.tensors, dict) or not self.tensors:
            raise FacelabTypeError("tensors: expected a non-empty dict of name -> tensor")
        self.key_ids = tuple(str(k) for k in self.key_ids)
        n = len(self.key_ids)
        for name, t in self.tensors.items():
            expect_tensor(t, f"tensors[{name!r}]")
            if "key" in name.lower():
                raise FormatError(
                    f"tensors[{name!r}]: a protected template never embeds key material; keep "
                    "keys in a KeyStore"
                )
            if t.dim() < 1 or t.shape[0] != n:
                raise ShapeError(
                    f"tensors[{name!r}]: expected first dim {n} (one row per key id), got shape "
                    f"{tuple(t.shape)}"
                )
        if self.subjects is not None:
            self.subjects = tuple(str(s) for s in self.subjects)
            if len(self.subjects) != n:
                raise ShapeError(f"subjects: expected {n} labels, got {len(self.subjects)}")
        try:
            json.dumps(self.params)
        except TypeError as exc:
            raise FacelabTypeError(f"params: must be JSON-serializable ({exc})") from exc

    def __len__(self) -> int:
        return len(self.key_ids)

    @property
    def storage(self) -> str:
        """``"paper"`` or ``"keyed"`` (SlerpFace); ``"paper"`` for the other methods."""
        return _storage_of(self.method, self.params)

    def select(self, index: int | slice | Sequence[int] | torch.Tensor) -> ProtectedTemplate:
        """A subset of the rows (int, slice, index list or tensor)."""
        if isinstance(index, int):
            index = [index]
        if isinstance(index, slice):
            rows = list(range(len(self)))[index]
        else:
            rows = [int(i) for i in (index.tolist() if torch.is_tensor(index) else index)]
        for r in rows:
            if not (-len(self) <= r < len(self)):
                raise IndexError(f"row {r} out of range for {len(self)} templates")
        idx = torch.tensor(rows, dtype=torch.long)
        return ProtectedTemplate(
            self.method,
            {k: v[idx] for k, v in self.tensors.items()},
            tuple(self.key_ids[r] for r in rows),
            dict(self.params),
            None if self.subjects is None else tuple(self.subjects[r] for r in rows),
            self.version,
        )

    @staticmethod
    def concat(parts: Sequence[ProtectedTemplate]) -> ProtectedTemplate:
        """Join batches of the same method and parameters."""
        if not parts:
            raise ShapeError("concat: expected at least one ProtectedTemplate")
        first = parts[0]
        for p in parts[1:]:
            if p.method != first.method or p.params != first.params:
                raise FormatError(
                    "concat: all parts must share method and parameters, got "
                    f"{first.method}/{first.params} and {p.method}/{p.params}"
                )
            if set(p.tensors) != set(first.tensors):
                raise FormatError("concat: parts hold different tensors")
        subjects = None
        if all(p.subjects is not None for p in parts):
            subjects = tuple(s for p in parts for s in p.subjects)  # type: ignore[union-attr]
        return ProtectedTemplate(
            first.method,
            {k: torch.cat([p.tensors[k] for p in parts]) for k in first.tensors},
            tuple(i for p in parts for i in p.key_ids),
            dict(first.params),
            subjects,
        )

    # ---- file format -------------------------------------------------------------------
    def _metadata(self, integrity: str) -> dict[str, str]:
        meta = {
            "format": TEMPLATE_FORMAT,
            "version": str(self.version),
            "method": self.method,
            "params": json.dumps(self.params, sort_keys=True),
            "key_ids": json.dumps(list(self.key_ids)),
            "integrity": integrity,
        }
        if self.subjects is not None:
            meta["subjects"] = json.dumps(list(self.subjects))
        return meta

    def save(self, path: str | os.PathLike, *, secret: bytes | None = None) -> Path:
        """Write atomically. With ``secret`` the digest is an HMAC (authenticated file)."""
        if secret is not None and not isinstance(secret, bytes | bytearray):
            raise FacelabTypeError(f"secret: expected bytes, got {type(secret).__name__}")
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.tensors.items()}
        meta = self._metadata("hmac-sha256" if secret else "sha256")
        meta["digest"] = _content_digest(tensors, meta, bytes(secret) if secret else None)
        path = Path(path)
        atomic_write(path, st_save(tensors, metadata=meta))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, secret: bytes | None = None) -> ProtectedTemplate:
        """Read and verify a file written by ``save``; any inconsistency -> ``FormatError``."""
        tensors, meta = read_safetensors(path)
        if meta.get("format") != TEMPLATE_FORMAT:
            raise FormatError(
                f"{path}: expected a {TEMPLATE_FORMAT} file, got format {meta.get('format')!r}"
            )
        if meta.get("version") not in [str(v) for v in KNOWN_VERSIONS]:
            raise FormatError(
                f"{path}: unsupported protected-template version {meta.get('version')!r} "
                f"(this reader knows {', '.join(str(v) for v in KNOWN_VERSIONS)})"
            )
        digest = meta.pop("digest", None)
        integrity = meta.get("integrity")
        if integrity == "hmac-sha256" and secret is None:
            raise FormatError(f"{path}: the file is HMAC-authenticated; pass the secret to load it")
        if integrity not in ("sha256", "hmac-sha256"):
            raise FormatError(f"{path}: unknown integrity scheme {integrity!r}")
        expected = _content_digest(tensors, meta, bytes(secret) if secret else None)
        if digest is None or not hmac.compare_digest(digest, expected):
            raise FormatError(
                f"{path}: integrity check failed (the file was modified, corrupted, or the "
                "secret is wrong)"
            )
        try:
            params = json.loads(meta["params"])
            key_ids = json.loads(meta["key_ids"])
            subjects = json.loads(meta["subjects"]) if "subjects" in meta else None
            method = meta["method"]
        except (KeyError, json.JSONDecodeError) as exc:
            raise FormatError(f"{path}: protected-template metadata is incomplete: {exc}") from exc
        try:
            return cls(method, tensors, tuple(key_ids), params, subjects, int(meta["version"]))
        except (ShapeError, UnknownNameError, FacelabTypeError, FormatError) as exc:
            raise FormatError(f"{path}: inconsistent protected template: {exc}") from exc
