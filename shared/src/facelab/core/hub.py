"""Save and rebuild models offline: ``config.json`` + ``model.safetensors`` in one directory.

A saved directory holds

* ``model.safetensors`` — the state dict (safetensors: no pickle, so loading is safe);
* ``config.json`` — ``{"format": "facelab-hub", "format_version": 1, "class": KEY,
  "config": {...init kwargs...}, "weights": {"file": ..., "sha256": ...}}``.

``KEY`` names a class in a small registry filled by :func:`register_model`; a file never names a
Python import path, so loading a directory cannot import arbitrary code. The core's classes
(backbones, heads) are registered by importing :mod:`facelab.core.backbones` and
:mod:`facelab.core.heads`, which :func:`from_pretrained` does itself; a method package
registers its model classes at import time or, so that ``from_pretrained`` finds them without
an explicit import, under the entry-point group ``facelab.models`` (entry-point name = the class key).

A registered class exposes ``config`` (a mapping or dataclass of JSON values) such that
``cls(**config)`` — or ``cls.from_config(config)`` where the class defines it — rebuilds it.

Writes are atomic per file and ordered: the weights are written to a temporary file in the same
folder and renamed, then ``config.json`` the same way. ``config.json`` records the SHA-256 of
the weights, so a directory left half-written by a crash between the two renames, or a weights
file edited afterwards, fails loudly at load time instead of silently loading other weights.

We do not use ``huggingface_hub.PyTorchModelHubMixin``: its ``from_pretrained`` falls back to
the network for names that are not local directories, and it has no class registry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from facelab.core.errors import FacelabTypeError, FormatError, UnknownNameError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "facelab-hub"
FORMAT_VERSION = 1
ENTRY_POINT_GROUP = "facelab.models"
#: modules of facelab-core whose import registers model classes (a fixed list, never from files)
_BUILTIN_MODULES = ("facelab.core.backbones", "facelab.core.heads")

_REGISTRY: dict[str, type[torch.nn.Module]] = {}

M = TypeVar("M", bound=type[torch.nn.Module])


def register_model(cls: M | None = None, *, key: str | None = None) -> Any:
    """Register an ``nn.Module`` class for :func:`from_pretrained`; usable as a decorator.

    ``key`` defaults to ``"<module>.<qualname>"``; it is only a name in the registry (never
    imported). Pick an explicit, stable key if the class may move between modules.
    """

    def add(c: M) -> M:
        if not (isinstance(c, type) and issubclass(c, torch.nn.Module)):
            raise FacelabTypeError(f"register_model: expected an nn.Module subclass, got {c!r}")
        k = key or f"{c.__module__}.{c.__qualname__}"
        old = _REGISTRY.get(k)
        if old is not None and old is not c and _class_id(old) != _class_id(c):
            raise ValueError(
                f"register_model: key {k!r} is already registered for {_class_id(old)}, "
                f"cannot register {_class_id(c)} under it"
            )
        _REGISTRY[k] = c
        c._facelab_hub_key = k  # type: ignore[attr-defined]
        return c

    return add if cls is None else add(cls)


def registered_models() -> list[str]:
    """The class keys known right now (after importing the built-in modules)."""
    _import_builtins()
    return sorted(_REGISTRY)


def model_key(model_or_cls: torch.nn.Module | type) -> str:
    cls = model_or_cls if isinstance(model_or_cls, type) else type(model_or_cls)
    key = getattr(cls, "_facelab_hub_key", None)
    if key is None or _REGISTRY.get(key) is not cls:
        raise UnknownNameError(
            f"{_class_id(cls)} is not registered for save_pretrained/from_pretrained; "
            "decorate it with facelab.core.hub.register_model"
        )
    return key


def _class_id(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _import_builtins() -> None:
    import importlib

    for name in _BUILTIN_MODULES:
        importlib.import_module(name)


def _lookup(key: str) -> type[torch.nn.Module]:
    if key not in _REGISTRY:
        _import_builtins()
    if key not in _REGISTRY:
        # installed packages may declare their classes as entry points; loading one imports
        # installed code chosen by the key, never a path taken from the file
        for ep in entry_points(group=ENTRY_POINT_GROUP, name=key):
            cls = ep.load()
            if key not in _REGISTRY and isinstance(cls, type):
                register_model(cls, key=key)
    cls = _REGISTRY.get(key)
    if cls is None:
        raise UnknownNameError(
            f"unknown model class key {key!r} in {CONFIG_NAME}; registered: {sorted(_REGISTRY)}. "
            "Import the package that defines this model (it registers the class) and retry."
        )
    return cls


def model_config(model: torch.nn.Module) -> dict[str, Any]:
    """The JSON-ready init kwargs of a registered model (its ``config`` attribute)."""
    cfg = getattr(model, "config", None)
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = dataclasses.asdict(cfg)
    if not isinstance(cfg, Mapping):
        raise FacelabTypeError(
            f"{_class_id(type(model))}: save_pretrained needs a `config` mapping or dataclass of "
            f"init kwargs, got {type(cfg).__name__}"
        )
    cfg = dict(cfg)
    try:
        # round trip: tuples become lists, non-JSON values and NaN fail here, not at load time
        return json.loads(json.dumps(cfg, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise FacelabTypeError(
            f"{_class_id(type(model))}: config must hold JSON values only ({e})"
        ) from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through ``write(tmp)`` to a temp file beside ``path``, fsync, rename over it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        _fsync_file(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_pretrained(model: torch.nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``model`` to ``directory`` (created if needed); returns the directory path."""
    if not isinstance(model, torch.nn.Module):
        raise FacelabTypeError(
            f"save_pretrained: expected an nn.Module, got {type(model).__name__}"
        )
    key = model_key(model)
    cfg = model_config(model)
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise FormatError(f"save_pretrained: {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)

    weights = out / WEIGHTS_NAME
    metadata = {"format": "pt", "facelab_class": key}
    _atomic_write(weights, lambda p: save_model(model, str(p), metadata=metadata))
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "class": key,
        "config": cfg,
        "weights": {"file": WEIGHTS_NAME, "sha256": _sha256(weights)},
    }
    text = json.dumps(doc, indent=2, sort_keys=False) + "\n"
    _atomic_write(out / CONFIG_NAME, lambda p: p.write_text(text, encoding="utf-8"))
    return out


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``config.json`` of a saved directory."""
    path = Path(directory) / CONFIG_NAME
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"from_pretrained: {directory} is not a directory")
    if not path.is_file():
        raise FileNotFoundError(f"from_pretrained: missing {CONFIG_NAME} in {directory}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise FormatError(f"{path}: expected a {FORMAT!r} config, got {str(doc)[:120]}")
    if doc.get("format_version") != FORMAT_VERSION:
        raise FormatError(
            f"{path}: expected format_version {FORMAT_VERSION}, got {doc.get('format_version')!r}"
        )
    weights = doc.get("weights")
    if (
        not isinstance(doc.get("class"), str)
        or not isinstance(doc.get("config"), dict)
        or not isinstance(weights, dict)
        or not isinstance(weights.get("sha256"), str)
        or weights.get("file") != WEIGHTS_NAME
    ):
        raise FormatError(
            f"{path}: expected keys class (str), config (object) and weights "
            f"{{file: {WEIGHTS_NAME!r}, sha256}}, got {sorted(doc)}"
        )
    return doc


def from_pretrained(
    directory: str | os.PathLike,
    *,
    map_location: str | torch.device = "cpu",
    verify: bool = True,
    **overrides: Any,
) -> torch.nn.Module:
    """Rebuild a model saved by :func:`save_pretrained`, strictly offline, in eval mode.

    ``overrides`` replace init kwargs from ``config.json`` (e.g. ``dropout=0.0``); an override
    that changes parameter shapes makes the weights mismatch and fails. With ``verify`` the
    weights file must have the SHA-256 recorded in ``config.json``.
    """
    directory = Path(directory)
    doc = read_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"from_pretrained: missing {WEIGHTS_NAME} in {directory}")
    if verify:
        got = _sha256(weights)
        if got != doc["weights"]["sha256"]:
            raise FormatError(
                f"{weights}: SHA-256 {got[:16]}... does not match {doc['weights']['sha256'][:16]}... "
                f"recorded in {CONFIG_NAME}: the weights were modified, corrupted, or belong to "
                "another save"
            )
    cls = _lookup(doc["class"])
    cfg = {**doc["config"], **overrides}
    try:
        build = getattr(cls, "from_config", None)
        model = build(cfg) if callable(build) else cls(**cfg)
    except TypeError as e:
        raise FormatError(
            f"{directory}: cannot build {doc['class']} from config {cfg}: {e}"
        ) from None
    load_weights(model, weights, map_location=map_location)
    return model.eval()


def load_weights(
    model: torch.nn.Module, path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> None:
    """Load a safetensors file into ``model`` strictly; any mismatch is a :class:`FormatError`."""
    device = str(torch.device(map_location))
    try:
        missing, unexpected = load_model(model, str(path), strict=False, device=device)
    except SafetensorError as e:
        raise FormatError(f"{path}: not a readable safetensors file ({e})") from None
    except RuntimeError as e:  # shape mismatches from load_state_dict
        raise FormatError(f"{path}: weights do not fit {type(model).__name__}: {e}") from None
    if missing or unexpected:
        raise FormatError(
            f"{path}: weights do not fit {type(model).__name__}: "
            f"missing keys {sorted(missing)[:10]} ({len(missing)} in all), "
            f"unexpected keys {sorted(unexpected)[:10]} ({len(unexpected)} in all)"
        )


class PretrainedMixin:
    """``model.save_pretrained(dir)`` and ``Cls.from_pretrained(dir)`` for registered classes."""

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        return save_pretrained(self, directory)  # type: ignore[arg-type]

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **kwargs: Any) -> Any:
        model = from_pretrained(directory, **kwargs)
        if not isinstance(model, cls):
            raise FormatError(
                f"{directory}: holds a {type(model).__name__}, expected a {cls.__name__}"
            )
        return model
