"""JPEG-style block DCT codec used by the frequency-domain privacy methods.

Layout (the TFace convention): 8x8 non-overlapping blocks, orthonormal 2-D DCT-II per block,
channels colour-major (Y 0-63, Cb 64-127, Cr 128-191) and, inside a colour, coefficient
``k = 8u + v`` row-major, where ``u`` is the vertical and ``v`` the horizontal frequency.

Two codec modes:

* ``"reference"`` reproduces TFace's ``_images_to_dct``: bilinear x8 upsampling (align_corners)
  before the block DCT, so a 112x112 face becomes 192x112x112. The upsampling and the DCT are
  both linear and separable, so we fold them into one ``(8H x H)`` matrix ``M`` per axis and
  compute ``M X M^T`` instead of materialising the 896x896 image pixel by pixel. The colour
  transform is affine with weights summing to one per output pixel, so it commutes with the
  upsampling and is applied at the native resolution.
* ``"compact"``: the same without upsampling, 112x112 -> 192x14x14.

``decode`` is the exact inverse in both modes. For the reference mode the x8 upsampling is
inverted by least squares with the separable interpolation matrix (exact, because the matrix has
full column rank); TFace's bilinear /8 downsample is kept as ``inverse="bilinear"`` for
comparison only: it is off by several grey levels on textured images.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Literal

import torch
import torch.nn.functional as F

from facelab.core.errors import (
    FacelabTypeError,
    ShapeError,
    UnknownNameError,
    expect_finite,
    expect_finite_in_range,
    expect_rank,
    expect_tensor,
)

BLOCK = 8
COEFFS_PER_COLOR = BLOCK * BLOCK
COLORS = ("Y", "Cb", "Cr")
NUM_CHANNELS = len(COLORS) * COEFFS_PER_COLOR
REFERENCE_UPSAMPLE = 8

#: coefficient positions (per colour) that DuetFace keeps on the client: 30 channels in all.
DUETFACE_CLIENT: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 8, 9, 16, 24)
#: coefficient positions (per colour) that PartialFace removes: 54 per colour remain.
PARTIALFACE_PRUNED: tuple[int, ...] = (0, 1, 2, 3, 8, 9, 10, 16, 17, 24)

CHANNEL_SETS: dict[str, tuple[int, ...]] = {
    "duetface_client": DUETFACE_CLIENT,
    "partialface_pruned": PARTIALFACE_PRUNED,
}

# JPEG (JFIF) full-range RGB -> YCbCr, on the 0..255 scale.
_RGB_TO_YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168735891647856, -0.331264108352144, 0.5),
    (0.5, -0.418687589158345, -0.081312410841655),
)
_CHROMA_OFFSET = 128.0


# --------------------------------------------------------------------------------------------
# DCT basis and block transform


def dct_matrix(n: int = BLOCK, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """Orthonormal 1-D DCT-II matrix ``C`` (n x n): ``dct(x) = C @ x``, ``x = C.T @ dct(x)``."""
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    c = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c.to(dtype=dtype, device=device)


@lru_cache(maxsize=32)
def _dct_basis_cached(block: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    c = dct_matrix(block)
    # coefficient (u, v) of block P is sum_ab C[u,a] P[a,b] C[v,b]  ->  kron(C, C) on flat blocks
    return torch.kron(c, c).to(dtype=dtype, device=device)


def dct_basis(block: int = BLOCK, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """The (block^2 x block^2) 2-D DCT-II basis acting on row-major flattened blocks."""
    return _dct_basis_cached(block, dtype, str(torch.device(device or "cpu")))


def _check_block_input(x: torch.Tensor, block: int, name: str) -> None:
    expect_tensor(x, name, floating=True)
    if x.dim() < 3:
        raise ShapeError(
            f"{name}: expected (..., C, H, W) with at least 3 dimensions, got shape {tuple(x.shape)}"
        )
    h, w = x.shape[-2:]
    if h % block or w % block:
        raise ShapeError(
            f"{name}: height and width must be divisible by the block size {block}, got {h}x{w}"
        )


def block_dct(x: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """Orthonormal 2-D DCT-II on non-overlapping ``block x block`` tiles, as one matmul.

    ``(..., C, H, W) -> (..., C * block^2, H / block, W / block)``, channel ``c * block^2 + k``.
    """
    _check_block_input(x, block, "block_dct input")
    *lead, c, h, w = x.shape
    hb, wb = h // block, w // block
    tiles = x.reshape(*lead, c, hb, block, wb, block).transpose(-3, -2)  # (..., c, hb, wb, b, b)
    tiles = tiles.reshape(*lead, c, hb, wb, block * block)
    coeffs = tiles @ dct_basis(block, dtype=x.dtype, device=x.device).T
    return coeffs.movedim(-1, -3).reshape(*lead, c * block * block, hb, wb)


def block_idct(coeffs: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """Inverse of :func:`block_dct`: ``(..., C * block^2, h, w) -> (..., C, h * block, w * block)``."""
    expect_tensor(coeffs, "block_idct input", floating=True)
    if coeffs.dim() < 3 or coeffs.shape[-3] % (block * block):
        raise ShapeError(
            f"block_idct input: expected (..., C*{block * block}, h, w), got shape {tuple(coeffs.shape)}"
        )
    *lead, ck, hb, wb = coeffs.shape
    c = ck // (block * block)
    k = coeffs.reshape(*lead, c, block * block, hb, wb).movedim(-3, -1)  # (..., c, hb, wb, 64)
    tiles = k @ dct_basis(block, dtype=coeffs.dtype, device=coeffs.device)
    tiles = tiles.reshape(*lead, c, hb, wb, block, block).transpose(-3, -2)
    return tiles.reshape(*lead, c, hb * block, wb * block)


# --------------------------------------------------------------------------------------------
# colour


def _color_matrix(dtype, device) -> torch.Tensor:
    return torch.tensor(_RGB_TO_YCBCR, dtype=torch.float64).to(dtype=dtype, device=device)


def _check_rgb(x: torch.Tensor, name: str) -> None:
    expect_tensor(x, name, floating=True)
    if x.dim() < 3 or x.shape[-3] != 3:
        raise ShapeError(f"{name}: expected (..., 3, H, W) RGB, got shape {tuple(x.shape)}")


def rgb_to_ycbcr(x: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """JPEG full-range RGB -> YCbCr on ``(..., 3, H, W)``; chroma offset 128/255 of the range."""
    _check_rgb(x, "rgb_to_ycbcr input")
    m = _color_matrix(x.dtype, x.device)
    out = torch.einsum("ij,...jhw->...ihw", m, x)
    offset = torch.tensor([0.0, 1.0, 1.0], dtype=x.dtype, device=x.device)
    return out + (offset * (_CHROMA_OFFSET / 255.0 * data_range)).view(3, 1, 1)


def ycbcr_to_rgb(x: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """Inverse of :func:`rgb_to_ycbcr`."""
    _check_rgb(x, "ycbcr_to_rgb input")
    offset = torch.tensor([0.0, 1.0, 1.0], dtype=x.dtype, device=x.device)
    centred = x - (offset * (_CHROMA_OFFSET / 255.0 * data_range)).view(3, 1, 1)
    m_inv = torch.linalg.inv(_color_matrix(torch.float64, "cpu")).to(x.dtype).to(x.device)
    return torch.einsum("ij,...jhw->...ihw", m_inv, centred)


# --------------------------------------------------------------------------------------------
# channel sets


def _check_positions(positions: Iterable[int], name: str = "positions") -> tuple[int, ...]:
    pos = tuple(int(p) for p in positions)
    bad = [p for p in pos if not 0 <= p < COEFFS_PER_COLOR]
    if bad:
        raise ShapeError(f"{name}: coefficient positions must lie in 0..63, got {bad}")
    if len(set(pos)) != len(pos):
        raise ShapeError(f"{name}: positions must be unique, got {list(pos)}")
    return pos


def get_channel_set(name: str) -> tuple[int, ...]:
    """A named per-colour coefficient set, e.g. ``"duetface_client"``."""
    try:
        return CHANNEL_SETS[name.lower()]
    except KeyError:
        raise UnknownNameError(
            f"unknown channel set {name!r}; valid names: {sorted(CHANNEL_SETS)}"
        ) from None


def complement_positions(positions: Iterable[int]) -> tuple[int, ...]:
    """The coefficient positions (0..63, ascending) not in ``positions``."""
    pos = set(_check_positions(positions))
    return tuple(k for k in range(COEFFS_PER_COLOR) if k not in pos)


def _check_colors(colors: Sequence[str]) -> tuple[int, ...]:
    idx = []
    for c in colors:
        if c not in COLORS:
            raise UnknownNameError(f"unknown colour {c!r}; valid colours: {list(COLORS)}")
        idx.append(COLORS.index(c))
    return tuple(idx)


def channel_indices(positions: Iterable[int], colors: Sequence[str] = COLORS) -> list[int]:
    """Colour-major channel indices of the given per-colour positions.

    ``channel_indices([0, 1], ("Y", "Cr")) == [0, 1, 128, 129]``.
    """
    pos = _check_positions(positions)
    return [ci * COEFFS_PER_COLOR + p for ci in _check_colors(colors) for p in pos]


def _check_coeffs(coeffs: torch.Tensor, name: str) -> None:
    expect_tensor(coeffs, name)
    expect_rank(coeffs, 4, name, "B, 192, H, W")
    if coeffs.shape[1] != NUM_CHANNELS:
        raise ShapeError(
            f"{name}: expected {NUM_CHANNELS} DCT channels at dim 1, got shape {tuple(coeffs.shape)}"
        )


def select_channels(
    coeffs: torch.Tensor, positions: Iterable[int], colors: Sequence[str] = COLORS
) -> torch.Tensor:
    """Channels of ``positions`` (per colour) from ``(B, 192, H, W)``, colour-major order."""
    _check_coeffs(coeffs, "select_channels input")
    idx = torch.tensor(channel_indices(positions, colors), device=coeffs.device)
    return coeffs.index_select(1, idx)


def split_channels(
    coeffs: torch.Tensor, positions: Iterable[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``(B, 192, H, W)`` into (the given positions, all other positions), all colours.

    ``split_channels(x, DUETFACE_CLIENT)`` gives the 30 client and the 162 server channels.
    """
    pos = _check_positions(positions)
    return select_channels(coeffs, pos), select_channels(coeffs, complement_positions(pos))


def merge_channels(
    selected: torch.Tensor, rest: torch.Tensor, positions: Iterable[int]
) -> torch.Tensor:
    """Inverse of :func:`split_channels`. Pass zeros for a part to see the other alone."""
    pos = _check_positions(positions)
    comp = complement_positions(pos)
    expect_rank(selected, 4, "selected", "B, C, H, W")
    expect_rank(rest, 4, "rest", "B, C, H, W")
    if selected.shape[1] != 3 * len(pos) or rest.shape[1] != 3 * len(comp):
        raise ShapeError(
            f"merge_channels: expected {3 * len(pos)} selected and {3 * len(comp)} remaining "
            f"channels, got {selected.shape[1]} and {rest.shape[1]}"
        )
    if selected.shape[0] != rest.shape[0] or selected.shape[2:] != rest.shape[2:]:
        raise ShapeError(
            f"merge_channels: batch and spatial sizes differ: {tuple(selected.shape)} vs {tuple(rest.shape)}"
        )
    out = selected.new_zeros(selected.shape[0], NUM_CHANNELS, *selected.shape[2:])
    out[:, channel_indices(pos)] = selected
    out[:, channel_indices(comp)] = rest
    return out


# --------------------------------------------------------------------------------------------
# the codec


def bilinear_upsample_matrix(n: int, factor: int) -> torch.Tensor:
    """(n*factor x n) matrix of 1-D linear interpolation with align_corners=True (float64)."""
    m = n * factor
    u = torch.zeros(m, n, dtype=torch.float64)
    if n == 1:
        u[:, 0] = 1.0
        return u
    src = torch.arange(m, dtype=torch.float64) * (n - 1) / (m - 1)
    i0 = src.floor().clamp(max=n - 2).long()
    frac = src - i0
    rows = torch.arange(m)
    u[rows, i0] = 1.0 - frac
    u[rows, i0 + 1] += frac
    return u


@lru_cache(maxsize=16)
def _reference_matrices(n: int, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, M^+) in float64: M = blockdiag(C) @ U maps one image axis to (block, coefficient)."""
    u = bilinear_upsample_matrix(n, factor)
    c = dct_matrix(BLOCK)
    m = torch.block_diag(*([c] * (n * factor // BLOCK))) @ u  # (n*factor, n)
    return m, torch.linalg.pinv(m)


@lru_cache(maxsize=4)
def _compact_kernel(lo: float, hi: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Compact encode as one strided convolution, in float64: weight ``(192, 3, 8, 8)`` and
    bias ``(192,)``.

    Range scaling, the YCbCr matrix, the chroma offset, the -128 level shift and the block DCT
    are all affine, so they fold into ``weight[c' * 64 + k, c, i, j] = s * M[c', c] * D[k, 8i + j]``
    with ``s = 255 / (hi - lo)``; the constant part only reaches the DC coefficient (an
    orthonormal 8x8 DCT of a constant ``v`` is ``8 v`` at DC).
    """
    m = torch.tensor(_RGB_TO_YCBCR, dtype=torch.float64)
    d = dct_basis(BLOCK, dtype=torch.float64)
    scale = 255.0 / (hi - lo)
    weight = torch.kron(m * scale, d).view(NUM_CHANNELS, len(COLORS), BLOCK, BLOCK)
    offset = torch.tensor([0.0, _CHROMA_OFFSET, _CHROMA_OFFSET], dtype=torch.float64)
    const = m @ torch.full((3,), -lo * scale, dtype=torch.float64) + offset - 128.0
    bias = torch.zeros(NUM_CHANNELS, dtype=torch.float64)
    bias[:: BLOCK * BLOCK] = const * BLOCK
    return weight, bias


@lru_cache(maxsize=8)
def _compact_kernel_on(
    lo: float, hi: float, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    weight, bias = _compact_kernel(lo, hi)
    return weight.to(device, dtype), bias.to(device, dtype)


def _compact_encode(images: torch.Tensor, lo: float, hi: float, conv: bool | None = None):
    """Compact encode in one pass: a strided convolution on CPU (oneDNN's is the fastest CPU
    form), elsewhere one matmul over the blocks (cuDNN runs the convolution in TF32 by default,
    about 1e-4 relative error, where a float32 matmul stays float32; measured on an H100 it is
    also 1.7x faster). ``conv`` forces one form (tests compare them)."""
    weight, bias = _compact_kernel_on(lo, hi, images.device, images.dtype)
    if conv if conv is not None else images.device.type == "cpu":
        return F.conv2d(images, weight, bias, stride=BLOCK)
    b, c, h, w = images.shape
    hb, wb = h // BLOCK, w // BLOCK
    blocks = images.reshape(b, c, hb, BLOCK, wb, BLOCK).permute(0, 2, 4, 1, 3, 5)
    out = torch.addmm(bias, blocks.reshape(b * hb * wb, -1), weight.view(NUM_CHANNELS, -1).T)
    return out.view(b, hb, wb, NUM_CHANNELS).permute(0, 3, 1, 2).contiguous()


CodecMode = Literal["reference", "compact"]


class FrequencyCodec:
    """RGB images <-> 192 DCT channels (see the module docstring for the layout).

    Args:
        mode: ``"reference"`` (x8 upsample, H x W -> 192 x H x W) or ``"compact"``
            (-> 192 x H/8 x W/8).
        input_range: the value range of the images, ``(-1, 1)`` (face-model convention, the
            default) or ``(0, 1)``. ``encode`` checks it; ``decode`` returns this range.
        inverse: how ``decode`` undoes the reference upsampling: ``"exact"`` (least squares,
            the default) or ``"bilinear"`` (TFace's /8 downsample, approximate).
        check: validate inputs (range and finiteness need one device sync per call).
    """

    def __init__(
        self,
        mode: CodecMode = "reference",
        input_range: tuple[float, float] = (-1.0, 1.0),
        inverse: Literal["exact", "bilinear"] = "exact",
        check: bool = True,
    ) -> None:
        if mode not in ("reference", "compact"):
            raise UnknownNameError(f"unknown codec mode {mode!r}; valid: ['reference', 'compact']")
        if inverse not in ("exact", "bilinear"):
            raise UnknownNameError(f"unknown inverse {inverse!r}; valid: ['exact', 'bilinear']")
        lo, hi = (float(v) for v in input_range)
        if (lo, hi) not in ((-1.0, 1.0), (0.0, 1.0)):
            raise FacelabTypeError(f"input_range must be (-1, 1) or (0, 1), got {input_range}")
        self.mode = mode
        self.input_range = (lo, hi)
        self.inverse = inverse
        self.check = check
        self.factor = REFERENCE_UPSAMPLE if mode == "reference" else 1

    def __repr__(self) -> str:
        return (
            f"FrequencyCodec(mode={self.mode!r}, input_range={self.input_range}, "
            f"inverse={self.inverse!r})"
        )

    def output_size(self, height: int, width: int) -> tuple[int, int, int]:
        """(channels, H', W') produced for an H x W image."""
        return NUM_CHANNELS, height * self.factor // BLOCK, width * self.factor // BLOCK

    # ---- helpers
    def _to_unit(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 1.0) * 0.5 if self.input_range[0] < 0 else x

    def _from_unit(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 - 1.0 if self.input_range[0] < 0 else x

    def _matrices(self, n: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        m, p = _reference_matrices(n, self.factor)
        return m.to(dtype=dtype, device=device), p.to(dtype=dtype, device=device)

    # ---- encode / decode
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in ``input_range`` -> ``(B, 192, H', W')`` DCT coefficients."""
        expect_tensor(images, "images", floating=True)
        expect_rank(images, 4, "images", "B, 3, H, W")
        if images.shape[1] != 3:
            raise ShapeError(f"images: expected 3 RGB channels, got shape {tuple(images.shape)}")
        b, _, h, w = images.shape
        if self.mode == "compact" and (h % BLOCK or w % BLOCK):
            raise ShapeError(
                f"images: compact mode needs height and width divisible by {BLOCK}, got {h}x{w}"
            )
        if self.check:
            expect_finite_in_range(images, *self.input_range, "images")
        if self.mode == "compact" and images.dtype in (torch.float32, torch.float64):
            # one fused pass (colour + level shift + block DCT); equals the path below
            return _compact_encode(images, *self.input_range)
        # [0,1] -> [0,255] -> YCbCr - 128, all at the native resolution (see module docstring)
        ycc = rgb_to_ycbcr(self._to_unit(images) * 255.0) - 128.0
        if self.mode == "compact":
            return block_dct(ycc)
        mh, _ = self._matrices(h, images.dtype, images.device)
        mw = mh if w == h else self._matrices(w, images.dtype, images.device)[0]
        up = mh @ ycc @ mw.T  # (B, 3, 8H, 8W) = DCT blocks of the upsampled image
        f = self.factor
        up = up.reshape(b, 3, h * f // BLOCK, BLOCK, w * f // BLOCK, BLOCK)
        return up.permute(0, 1, 3, 5, 2, 4).reshape(b, NUM_CHANNELS, h * f // BLOCK, w * f // BLOCK)

    __call__ = encode

    def decode(self, coeffs: torch.Tensor, clamp: bool = False) -> torch.Tensor:
        """``(B, 192, H', W')`` -> ``(B, 3, H, W)`` images in ``input_range``.

        Args:
            clamp: clamp to ``input_range`` (for coefficients that did not come from an image,
                e.g. shuffled or partial spectra; an exact round trip needs no clamp).
        """
        _check_coeffs(coeffs, "coeffs")
        if not coeffs.is_floating_point():
            raise FacelabTypeError(f"coeffs: expected a floating point tensor, got {coeffs.dtype}")
        if self.check:
            expect_finite(coeffs, "coeffs")
        b, _, hb, wb = coeffs.shape
        if self.mode == "compact":
            ycc = block_idct(coeffs)
        else:
            f = self.factor
            if (hb * BLOCK) % f or (wb * BLOCK) % f:
                raise ShapeError(f"coeffs: spatial size {hb}x{wb} is not a reference-mode output")
            blocks = coeffs.reshape(b, 3, BLOCK, BLOCK, hb, wb).permute(0, 1, 4, 2, 5, 3)
            blocks = blocks.reshape(b, 3, hb * BLOCK, wb * BLOCK)
            h, w = hb * BLOCK // f, wb * BLOCK // f
            if self.inverse == "exact":
                _, ph = self._matrices(h, coeffs.dtype, coeffs.device)
                pw = ph if w == h else self._matrices(w, coeffs.dtype, coeffs.device)[1]
                ycc = ph @ blocks @ pw.T
            else:
                # TFace's approximate inverse: block IDCT at full size, bilinear /8 downsample
                big = block_idct(coeffs)  # the (B, 3, 8H, 8W) upsampled image
                ycc = F.interpolate(big, size=(h, w), mode="bilinear", align_corners=True)
        rgb = ycbcr_to_rgb(ycc + 128.0) / 255.0
        out = self._from_unit(rgb)
        if clamp:
            out = out.clamp(*self.input_range)
        return out
