"""What crosses MinusFace's trust boundary: protected images.

A protected image ``X_p = d(shuffle(r))`` is an ordinary 8-bit image (3 channels per duplicate):
the client sends it, the server stores and embeds it. :class:`ProtectedImages` holds a batch as
``uint8 (B, 3n, H, W)`` (exactly what PNG files hold) and moves it

* as bytes: safetensors with a format name and version in the metadata, validated on arrival
  (format, version, dtype, shape, channel count = 3 x n_duplicates);
* as PNG files: one file per face, the n duplicates side by side (``H x n*W``), lossless.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from facelab.core.errors import (
    FacelabTypeError,
    FormatError,
    RangeError,
    ShapeError,
    expect_finite,
    expect_range,
    expect_tensor,
)

FORMAT = "facelab.minusface.ProtectedImages"
FORMAT_VERSION = "1"
RGB = 3
_TENSOR_KEY = "images"


def _check_n(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise FacelabTypeError(f"n_duplicates: expected an int, got {type(n).__name__} {n!r}")
    if n < 1:
        raise RangeError(f"n_duplicates: expected an int >= 1, got {n}")
    return n


def quantize(images01: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> uint8 (round to nearest), what an 8-bit PNG stores."""
    return (images01 * 255.0).round().clamp(0, 255).to(torch.uint8)


def to_model_input(protected: torch.Tensor) -> torch.Tensor:
    """uint8 protected images -> float32 in [-1, 1] (the recognizer's input convention)."""
    return protected.float() / 127.5 - 1.0


@dataclass(frozen=True)
class ProtectedImages:
    """A batch of protected images, ``uint8 (B, 3 * n_duplicates, H, W)``."""

    images: torch.Tensor
    n_duplicates: int = 1

    def __post_init__(self) -> None:
        n = _check_n(self.n_duplicates)
        x = expect_tensor(self.images, "protected images")
        if x.dtype != torch.uint8:
            raise FacelabTypeError(
                f"protected images: expected uint8 (8-bit images), got dtype {x.dtype}"
            )
        if x.dim() != 4:
            raise ShapeError(
                f"protected images: expected (B, 3n, H, W), got shape {tuple(x.shape)}"
            )
        if x.shape[1] != RGB * n:
            raise ShapeError(
                f"protected images: expected {RGB * n} channels for n_duplicates={n}, got "
                f"shape {tuple(x.shape)}"
            )
        if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
            raise ShapeError(f"protected images: expected a non-empty batch, got {tuple(x.shape)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def nbytes_per_image(self) -> int:
        """Raw bytes of one protected face (3 * n * H * W)."""
        return int(self.images[0].numel())

    @classmethod
    def from_float(cls, images01: torch.Tensor, n_duplicates: int = 1) -> ProtectedImages:
        """From float images in [0, 1] (quantized to 8 bits)."""
        x = expect_tensor(images01, "protected images", floating=True)
        expect_finite(x, "protected images")
        expect_range(x, 0.0, 1.0, "protected images (float in [0, 1])")
        return cls(quantize(x), n_duplicates)

    def to_model_input(self) -> torch.Tensor:
        """float32 ``(B, 3n, H, W)`` in [-1, 1] for the server's recognizer."""
        return to_model_input(self.images)

    # ---- bytes
    def to_bytes(self) -> bytes:
        metadata = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "n_duplicates": str(self.n_duplicates),
        }
        return st_save({_TENSOR_KEY: self.images.detach().cpu().contiguous()}, metadata=metadata)

    @classmethod
    def from_bytes(cls, data: bytes) -> ProtectedImages:
        """Parse and validate a payload written by :meth:`to_bytes`."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise FacelabTypeError(f"payload: expected bytes, got {type(data).__name__}")
        data = bytes(data)
        try:
            tensors = st_load(data)
            metadata = _read_metadata(data)
        except (SafetensorError, ValueError, OSError) as e:
            raise FormatError(f"payload: not a readable safetensors payload ({e})") from None
        if metadata.get("format") != FORMAT:
            raise FormatError(
                f"payload: expected format {FORMAT!r}, got {metadata.get('format')!r}"
            )
        if metadata.get("format_version") != FORMAT_VERSION:
            raise FormatError(
                f"payload: expected format_version {FORMAT_VERSION!r}, got "
                f"{metadata.get('format_version')!r}"
            )
        if set(tensors) != {_TENSOR_KEY}:
            raise FormatError(
                f"payload: expected one tensor {_TENSOR_KEY!r}, got {sorted(tensors)}"
            )
        try:
            n = int(metadata.get("n_duplicates", ""))
        except ValueError:
            raise FormatError(
                f"payload: n_duplicates must be an int, got {metadata.get('n_duplicates')!r}"
            ) from None
        return cls(tensors[_TENSOR_KEY], n)

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_bytes` to ``path`` atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            tmp.write_bytes(self.to_bytes())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ProtectedImages:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"protected images: no such file {path}")
        return cls.from_bytes(path.read_bytes())

    # ---- PNG
    def to_pngs(
        self, directory: str | os.PathLike, names: Sequence[str] | None = None
    ) -> list[Path]:
        """One PNG per face (``H x n*W``, the duplicates side by side); returns the paths."""
        from PIL import Image

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        b, _c, h, w = self.images.shape
        if names is None:
            width = max(5, len(str(b - 1)))
            names = [f"{i:0{width}d}.png" for i in range(b)]
        if len(names) != b:
            raise ShapeError(f"names: expected {b} file names, got {len(names)}")
        n = self.n_duplicates
        # (B, n, 3, H, W) -> (B, H, n, W, 3) -> (B, H, n*W, 3)
        tiles = self.images.cpu().view(b, n, RGB, h, w).permute(0, 3, 1, 4, 2)
        tiles = tiles.reshape(b, h, n * w, RGB).numpy()
        paths = []
        for name, tile in zip(names, tiles):
            p = out / name
            if p.suffix.lower() != ".png":
                p = p.with_suffix(".png")
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(tile)).save(p)
            paths.append(p)
        return paths

    @classmethod
    def from_pngs(
        cls, paths: Sequence[str | os.PathLike], n_duplicates: int = 1
    ) -> ProtectedImages:
        """Read PNGs written by :meth:`to_pngs` (all the same size, width = n * W)."""
        from PIL import Image

        n = _check_n(n_duplicates)
        if not paths:
            raise ShapeError("paths: expected at least one PNG file")
        arrays = []
        for p in paths:
            with Image.open(p) as im:
                if im.mode != "RGB":
                    raise FormatError(f"{p}: expected an 8-bit RGB PNG, got mode {im.mode!r}")
                arrays.append(np.asarray(im, dtype=np.uint8))
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ShapeError(f"protected PNGs differ in size: {sorted(shapes)}")
        h, nw, _ = arrays[0].shape
        if nw % n:
            raise ShapeError(
                f"protected PNGs are {nw} pixels wide, not a multiple of n_duplicates={n}"
            )
        w = nw // n
        x = torch.from_numpy(np.stack(arrays))  # (B, H, n*W, 3)
        x = x.view(len(arrays), h, n, w, RGB).permute(0, 2, 4, 1, 3)
        return cls(x.reshape(len(arrays), n * RGB, h, w).contiguous(), n)


def _read_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors buffer (header: u64 length + JSON)."""
    import json

    if len(data) < 8:
        raise ValueError("buffer shorter than the safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError("header length exceeds the buffer")
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else {}
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}
