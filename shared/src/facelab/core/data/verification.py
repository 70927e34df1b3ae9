"""Verification sets: insightface ``.bin`` files and LFW-style ``pairs.txt``.

A ``.bin`` (LFW, CFP-FP, AgeDB-30 ... as distributed with insightface) is a pickle of
``(bins, issame_list)``: ``bins`` holds 2N encoded images (pair k = images 2k and 2k+1) and
``issame_list`` N booleans. Many were written by Python 2, so they are read with
``encoding='bytes'``. A pickle can run arbitrary code, so they are read through a restricted
unpickler that builds only bytes, bytearray, list, tuple, bool and numpy arrays and refuses
every other global by name.
"""

from __future__ import annotations

import codecs
import importlib
import io
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facelab.core.data.folders import decode_image, read_file_bytes
from facelab.core.errors import FacelabTypeError, FormatError, ShapeError

BIN_PICKLE_PROTOCOL = 4

_BYTES_TYPES = (bytes, bytearray)


def _numpy_attr(candidates: Sequence[str], name: str) -> Any:
    for mod in candidates:
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise AttributeError(name)  # pragma: no cover - numpy always has one of them


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 pickles of bytes at protocol <= 2 use it, limited to the
    latin-1 codec (the only one those pickles name)."""
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(text, str):
        raise pickle.UnpicklingError(
            f"refusing _codecs.encode with encoding {encoding!r}: only latin-1 is allowed"
        )
    return codecs.encode(text, "latin-1", errors)


def _bytearray(*args: Any) -> bytearray:
    if len(args) == 2 and isinstance(args[0], str):  # protocol <= 2: bytearray(str, 'latin-1')
        if codecs.lookup(args[1]).name != "iso8859-1":
            raise pickle.UnpicklingError(f"refusing bytearray with encoding {args[1]!r}")
        return bytearray(args[0], "latin-1")
    if len(args) <= 1 and all(isinstance(a, _BYTES_TYPES) for a in args):
        return bytearray(*args)
    raise pickle.UnpicklingError("refusing bytearray with unexpected arguments")


_MULTIARRAY = ("numpy._core.multiarray", "numpy.core.multiarray")
_NUMERIC = ("numpy._core.numeric", "numpy.core.numeric")

#: (module, name) -> object the restricted unpickler may build. Module names as they appear in
#: pickles written by numpy 1.x / 2.x and by Python 2 (``__builtin__``) or 3.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("builtins", "bytearray"): _bytearray,
    ("__builtin__", "bytearray"): _bytearray,
    ("builtins", "bytes"): bytes,
    ("builtins", "bool"): bool,
    ("__builtin__", "bool"): bool,
    ("_codecs", "encode"): _latin1_encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
for _mod in _MULTIARRAY:
    _ALLOWED[(_mod, "_reconstruct")] = _numpy_attr(_MULTIARRAY, "_reconstruct")
    _ALLOWED[(_mod, "scalar")] = _numpy_attr(_MULTIARRAY, "scalar")
for _mod in _NUMERIC:
    _ALLOWED[(_mod, "_frombuffer")] = _numpy_attr(_NUMERIC, "_frombuffer")


class RestrictedUnpickler(pickle.Unpickler):
    """Builds only bytes, bytearray, list, tuple, bool and numpy arrays; any other global is
    refused with an error naming it (so a malicious ``.bin`` cannot run code)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global '{module}.{name}': verification .bin files may only "
                "contain bytes, bytearray, list, tuple, bool and numpy arrays"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing a persistent id: not allowed in .bin files")


def restricted_loads(data: bytes, source: str = "pickle", encoding: str = "bytes") -> Any:
    """Unpickle ``data`` with ``RestrictedUnpickler`` (Python 2 strings -> bytes)."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise FormatError(f"{source}: cannot load pickle: {exc}") from exc


def _as_image_bytes(item: Any, i: int, source: str) -> bytes:
    if isinstance(item, _BYTES_TYPES):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1:
        return item.tobytes()
    raise FormatError(
        f"{source}: image {i}: expected encoded image bytes (bytes, bytearray or a 1-D uint8 "
        f"array), got {type(item).__name__}"
        + (f" of dtype {item.dtype}" if isinstance(item, np.ndarray) else "")
    )


def _as_bools(issame: Any, source: str) -> list[bool]:
    if isinstance(issame, np.ndarray):
        if issame.dtype != np.bool_ or issame.ndim != 1:
            raise FormatError(
                f"{source}: issame: expected a 1-D bool array, got dtype {issame.dtype} and "
                f"shape {issame.shape}"
            )
        return issame.tolist()
    if not isinstance(issame, list | tuple):
        raise FormatError(
            f"{source}: issame: expected a list of bools, got {type(issame).__name__}"
        )
    out = []
    for i, v in enumerate(issame):
        if not isinstance(v, bool | np.bool_):
            raise FormatError(f"{source}: issame[{i}]: expected a bool, got {type(v).__name__}")
        out.append(bool(v))
    return out


def read_bin(path: str | os.PathLike[str]) -> tuple[list[bytes], list[bool]]:
    """A ``.bin`` -> ``(encoded images, issame)``, checked: 2N images for N flags."""
    path = Path(path)
    data = read_file_bytes(path)
    obj = restricted_loads(data, str(path))
    if not isinstance(obj, tuple | list) or len(obj) != 2:
        raise FormatError(
            f"{path}: expected a pickled pair (bins, issame_list), got {type(obj).__name__}"
            + (f" of length {len(obj)}" if isinstance(obj, tuple | list) else "")
        )
    bins, issame_raw = obj
    if not isinstance(bins, list | tuple):
        raise FormatError(
            f"{path}: bins: expected a list of encoded images, got {type(bins).__name__}"
        )
    images = [_as_image_bytes(b, i, str(path)) for i, b in enumerate(bins)]
    issame = _as_bools(issame_raw, str(path))
    if len(images) != 2 * len(issame):
        raise FormatError(
            f"{path}: expected 2 images per pair, got {len(images)} images for {len(issame)} pairs"
        )
    return images, issame


def load_bin(
    path: str | os.PathLike[str], image_size: tuple[int, int] = (112, 112), *, resize: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """insightface ``load_bin``: -> ``(images, issame)``.

    ``images``: float32 ``(2N, 3, H, W)`` in [-1, 1], pair k = rows 2k and 2k+1; ``issame``:
    bool ``(N,)``. An image of another size than ``image_size`` is an error, unless ``resize``
    (bilinear, antialiased) is asked for.
    """
    path = Path(path)
    encoded, issame = read_bin(path)
    h, w = image_size
    out = torch.empty((len(encoded), 3, h, w), dtype=torch.float32)
    for i, data in enumerate(encoded):
        img = decode_image(data, f"{path} image {i}")
        if tuple(img.shape[1:]) != (h, w):
            if not resize:
                raise ShapeError(
                    f"{path} image {i}: expected {h}x{w}, got {img.shape[1]}x{img.shape[2]} "
                    "(pass resize=True to resize)"
                )
            img = torch.nn.functional.interpolate(
                img[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False
            )[0].clamp_(-1.0, 1.0)  # antialiasing overshoots the range by round-off only
        out[i] = img
    return out, torch.tensor(issame, dtype=torch.bool)


def write_bin(
    path: str | os.PathLike[str],
    images_bytes: Sequence[bytes | bytearray],
    issame: Sequence[bool],
) -> None:
    """Write a ``.bin`` as insightface does: a pickle of ``(list of bytes, list of bool)``.

    Each image must decode; written atomically (temporary file, then rename).
    """
    path = Path(path)
    flags = list(issame)
    for i, v in enumerate(flags):
        if not isinstance(v, bool | np.bool_):
            raise FacelabTypeError(
                f"write_bin: issame[{i}]: expected a bool, got {type(v).__name__}"
            )
    if len(images_bytes) != 2 * len(flags):
        raise ShapeError(
            f"write_bin: expected 2 images per pair, got {len(images_bytes)} images for "
            f"{len(flags)} pairs"
        )
    bins = []
    for i, b in enumerate(images_bytes):
        if not isinstance(b, _BYTES_TYPES):
            raise FacelabTypeError(
                f"write_bin: image {i}: expected encoded image bytes, got {type(b).__name__}"
            )
        decode_image(b, f"write_bin image {i}")
        bins.append(bytes(b))
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with open(tmp, "wb") as f:
            pickle.dump((bins, [bool(v) for v in flags]), f, protocol=BIN_PICKLE_PROTOCOL)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# LFW pairs.txt


def lfw_image_path(root: Path, name: str, number: int, ext: str) -> Path:
    """LFW naming: ``root/name/name_0001.jpg``."""
    return root / name / f"{name}_{number:04d}.{ext}"


def read_pairs(
    pairs_txt: str | os.PathLike[str],
    root: str | os.PathLike[str],
    ext: str = "jpg",
    *,
    check_exists: bool = True,
) -> tuple[list[tuple[Path, Path]], list[bool]]:
    """Read an LFW ``pairs.txt`` -> ``(path pairs, issame)``.

    Format: a header line ``folds<TAB>n`` (n same and n different pairs per fold; a single
    number n for ``pairsDevTrain.txt``-style files), then ``name i j`` for a same-person pair
    and ``name1 i name2 j`` for a different-person pair. The pair count must match the header;
    a missing image (with ``check_exists``) is an error naming the line.
    """
    pairs_txt, root = Path(pairs_txt), Path(root)
    ext = ext.lstrip(".")
    try:
        lines = pairs_txt.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"{pairs_txt}: cannot read pairs file: {exc}") from exc
    numbered = [(n, ln.split()) for n, ln in enumerate(lines, start=1) if ln.strip()]
    if not numbered:
        raise FormatError(f"{pairs_txt}: empty pairs file")
    head_no, head = numbered[0]
    try:
        counts = [int(v) for v in head]
    except ValueError:
        counts = []
    if len(counts) == 2:
        expected = counts[0] * counts[1] * 2
    elif len(counts) == 1:
        expected = counts[0] * 2
    else:
        raise FormatError(
            f"{pairs_txt} line {head_no}: expected a header 'folds<TAB>pairs per fold' or "
            f"'pairs', got {' '.join(head)!r}"
        )
    pairs: list[tuple[Path, Path]] = []
    issame: list[bool] = []
    for n, fields in numbered[1:]:
        try:
            if len(fields) == 3:
                a = lfw_image_path(root, fields[0], int(fields[1]), ext)
                b = lfw_image_path(root, fields[0], int(fields[2]), ext)
                same = True
            elif len(fields) == 4:
                a = lfw_image_path(root, fields[0], int(fields[1]), ext)
                b = lfw_image_path(root, fields[2], int(fields[3]), ext)
                same = False
            else:
                raise ValueError
        except ValueError:
            raise FormatError(
                f"{pairs_txt} line {n}: expected 'name i j' or 'name1 i name2 j', got "
                f"{' '.join(fields)!r}"
            ) from None
        if check_exists:
            for p in (a, b):
                if not p.is_file():
                    raise FormatError(f"{pairs_txt} line {n}: image {p} does not exist")
        pairs.append((a, b))
        issame.append(same)
    if len(pairs) != expected:
        raise FormatError(
            f"{pairs_txt}: header line {head_no} announces {expected} pairs, the file lists "
            f"{len(pairs)}"
        )
    return pairs, issame


def pairs_to_bin(
    pairs_txt: str | os.PathLike[str],
    root: str | os.PathLike[str],
    out_bin: str | os.PathLike[str],
    ext: str = "jpg",
) -> int:
    """LFW folder + ``pairs.txt`` -> insightface ``.bin`` (images stored as they are, so they
    should already be aligned). Returns the number of pairs."""
    pairs, issame = read_pairs(pairs_txt, root, ext)
    images = [read_file_bytes(p) for pair in pairs for p in pair]
    write_bin(out_bin, images, issame)
    return len(issame)
