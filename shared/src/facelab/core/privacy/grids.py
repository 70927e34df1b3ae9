"""Sample grids: originals in the first row, one row of reconstructions per attack.

Layout (pixels): every cell is ``H*scale x W*scale``, cells are separated and framed by ``pad``
pixels of background, and with ``labels`` a ``label_width`` column on the left names each row.
So a grid of ``R`` rows (1 + number of attacks) and ``n`` samples is
``R*(H*scale + pad) + pad`` high and ``label_width + n*(W*scale + pad) + pad`` wide.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from facelab.core.errors import FacelabTypeError, ShapeError
from facelab.core.privacy.metrics import check_images

DEFAULT_LABEL_WIDTH = 96


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """RGB ``(B, 3, H, W)`` in [-1, 1] -> ``(B, H, W, 3)`` uint8, -1 -> 0 and 1 -> 255."""
    x = check_images(images, "images").detach().float().cpu()
    # the range is checked above; clip only absorbs the check's float tolerance after rounding
    scaled = torch.round((x + 1.0) * 127.5).clip(0, 255).to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).numpy()


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def make_grid(
    originals: torch.Tensor,
    reconstructions: Mapping[str, torch.Tensor] | torch.Tensor,
    *,
    n: int = 8,
    pad: int = 2,
    scale: int = 1,
    labels: bool = True,
    label_width: int = DEFAULT_LABEL_WIDTH,
    background: int = 255,
) -> np.ndarray:
    """The grid as an ``(height, width, 3)`` uint8 array (see the module doc for the size).

    ``reconstructions`` is one tensor or a mapping ``attack name -> tensor``, each the shape of
    ``originals``; the first ``min(n, B)`` samples are shown. ``scale`` enlarges each image by
    pixel repetition (useful for 14x14 or 32x32 images).
    """
    if isinstance(reconstructions, torch.Tensor):
        reconstructions = {"reconstruction": reconstructions}
    if not isinstance(reconstructions, Mapping) or not reconstructions:
        raise FacelabTypeError(
            "reconstructions: expected a tensor or a non-empty mapping name -> tensor, got "
            f"{type(reconstructions).__name__}"
        )
    for value, name in ((n, "n"), (scale, "scale")):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    for value, name in ((pad, "pad"), (label_width, "label_width")):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
    if not 0 <= background <= 255:
        raise ValueError(f"background: expected a grey level in [0, 255], got {background!r}")
    orig = check_images(originals, "originals")
    k = min(n, orig.shape[0])
    rows = [to_uint8(orig[:k])]
    for name, rec in reconstructions.items():
        check_images(rec, f"reconstructions[{name!r}]")
        if rec.shape[1:] != orig.shape[1:] or rec.shape[0] < k:
            raise ShapeError(
                f"reconstructions[{name!r}]: expected at least {k} images of shape "
                f"{tuple(orig.shape[1:])} (like the originals), got {tuple(rec.shape)}"
            )
        rows.append(to_uint8(rec[:k]))
    cells = np.stack(rows)  # (R, k, H, W, 3)
    if scale > 1:
        cells = cells.repeat(scale, axis=2).repeat(scale, axis=3)
    r, _, h, w, _ = cells.shape
    # pad every cell bottom/right, tile, then frame top/left
    cells = np.pad(cells, ((0, 0), (0, 0), (0, pad), (0, pad), (0, 0)), constant_values=background)
    grid = cells.transpose(0, 2, 1, 3, 4).reshape(r * (h + pad), k * (w + pad), 3)
    grid = np.pad(grid, ((pad, 0), (pad, 0), (0, 0)), constant_values=background)
    if not labels or label_width == 0:
        return np.ascontiguousarray(grid)
    column = Image.new("RGB", (label_width, grid.shape[0]), (background,) * 3)
    draw = ImageDraw.Draw(column)
    font = ImageFont.load_default()
    ink = (0, 0, 0) if background >= 128 else (255, 255, 255)
    for i, name in enumerate(["original", *reconstructions]):
        text = _fit_text(draw, str(name), font, max(label_width - 2 * pad, 1))
        y = pad + i * (h + pad) + h // 2
        draw.text((pad, y), text, fill=ink, font=font, anchor="lm")
    return np.concatenate([np.asarray(column), grid], axis=1)


def save_grid(
    path: str | os.PathLike,
    originals: torch.Tensor,
    reconstructions: Mapping[str, torch.Tensor] | torch.Tensor,
    **options,
) -> Path:
    """Write ``make_grid(originals, reconstructions, **options)`` as a PNG; return the path."""
    path = Path(path)
    grid = make_grid(originals, reconstructions, **options)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid, mode="RGB").save(path, format="PNG")
    return path
