"""The PartialFace view of an image: a few channels of its pruned DCT spectrum.

``SubsetEncoder`` wraps the core :class:`~facelab.core.freq.FrequencyCodec` (reference mode by
default: 3 x H x W -> 192 x H x W) and adds what PartialFace needs:

* :meth:`SubsetEncoder.encode` -- only the channels of given positions, per sample or shared
  by the batch. Every channel of the codec is ``A_u @ Y_c @ A_v^T`` (``Y_c`` one colour plane
  of the YCbCr image, ``A_u`` the rows ``8i + u`` of the codec's per-axis matrix "x8 bilinear
  upsampling, then 8-point DCT"), so a 27-channel subset costs 27/192 of the full spectrum and
  the per-sample gather of the training batch is one batched matmul. It equals
  ``codec.encode(x)[:, channels]`` (tested);
* :meth:`SubsetEncoder.pruned` -- the 162 channels left after removing ``PARTIALFACE_PRUNED``;
* :func:`flip_channels` -- the channels of the horizontally mirrored image computed from the
  channels alone (mirror each map, negate odd horizontal frequencies ``v``), exact in both codec
  modes, so the server can run the flip test on a payload without a second one.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch

from facelab.core.errors import (
    RangeError,
    ShapeError,
    expect_finite,
    expect_range,
    expect_rank,
    expect_tensor,
)
from facelab.core.freq import (
    BLOCK,
    COEFFS_PER_COLOR,
    COLORS,
    PARTIALFACE_PRUNED,
    CodecMode,
    FrequencyCodec,
    bilinear_upsample_matrix,
    complement_positions,
    dct_matrix,
    merge_channels,
    rgb_to_ycbcr,
    select_channels,
)

_CHROMA_CENTRE = 128.0


@lru_cache(maxsize=16)
def _axis_rows(n: int, factor: int) -> torch.Tensor:
    """``(8, n * factor / 8, n)`` float64: ``A[u]`` maps an image axis of length n to the DCT
    coefficient u of every block along it (after the codec's x``factor`` upsampling)."""
    up = bilinear_upsample_matrix(n, factor) if factor > 1 else torch.eye(n, dtype=torch.float64)
    m = n * factor
    c = dct_matrix(BLOCK)  # (8 coeffs, 8 samples)
    blocks = up.reshape(m // BLOCK, BLOCK, n)  # (blocks, sample in block, n)
    return torch.einsum("ua,ban->ubn", c, blocks).contiguous()


def _as_positions(positions: object, name: str = "positions") -> torch.Tensor:
    if isinstance(positions, torch.Tensor):
        pos = positions
    else:
        try:
            pos = torch.as_tensor(positions)
        except (TypeError, ValueError, RuntimeError):
            raise ShapeError(f"{name}: expected ints of shape (s,) or (B, s)") from None
    if pos.is_floating_point() or pos.is_complex() or pos.dtype == torch.bool:
        raise ShapeError(f"{name}: expected integer positions, got dtype {pos.dtype}")
    if pos.dim() not in (1, 2) or pos.shape[-1] == 0:
        raise ShapeError(f"{name}: expected shape (s,) or (B, s), got {tuple(pos.shape)}")
    pos = pos.long()
    if bool(((pos < 0) | (pos >= COEFFS_PER_COLOR)).any()):
        raise RangeError(f"{name}: DCT positions must lie in 0..63, got {pos.tolist()}")
    return pos


class SubsetEncoder:
    """RGB images -> chosen DCT channels (see the module docstring).

    Args:
        mode: the codec mode, ``"reference"`` (TFace: x8 upsampling, H x W maps) or
            ``"compact"`` (H/8 x W/8 maps).
        input_range: ``(-1, 1)`` (default) or ``(0, 1)``.
        check: validate image ranges and finiteness (one host sync per call).
    """

    def __init__(
        self,
        mode: CodecMode = "reference",
        input_range: tuple[float, float] = (-1.0, 1.0),
        check: bool = True,
    ) -> None:
        self.codec = FrequencyCodec(mode=mode, input_range=input_range, check=check)

    def __repr__(self) -> str:
        return f"SubsetEncoder(mode={self.mode!r}, input_range={self.codec.input_range})"

    @property
    def mode(self) -> str:
        return self.codec.mode

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(H', W') of the channel maps for an H x W image."""
        _, h, w = self.codec.output_size(height, width)
        return h, w

    def _ycc(self, images: torch.Tensor) -> torch.Tensor:
        """Validated images -> YCbCr planes on the 0..255 scale minus 128 (the codec's input)."""
        codec = self.codec
        expect_tensor(images, "images", floating=True)
        expect_rank(images, 4, "images", "B, 3, H, W")
        if images.shape[1] != len(COLORS):
            raise ShapeError(f"images: expected 3 RGB channels, got shape {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if codec.mode == "compact" and (h % BLOCK or w % BLOCK):
            raise ShapeError(
                f"images: compact mode needs height and width divisible by {BLOCK}, got {h}x{w}"
            )
        if codec.check:
            expect_finite(images, "images")
            expect_range(images, *codec.input_range, "images")
        unit = (images + 1.0) * 0.5 if codec.input_range[0] < 0 else images
        return rgb_to_ycbcr(unit * 255.0) - _CHROMA_CENTRE

    def _rows(self, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return _axis_rows(n, self.codec.factor).to(dtype=dtype, device=device)

    def encode(self, images: torch.Tensor, positions: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, 3 * s, H', W')``: positions ``(s,)`` for the whole batch or
        ``(B, s)`` per sample; channel ``c * s + j`` is colour ``c`` at ``positions[..., j]``."""
        ycc = self._ycc(images)
        pos = _as_positions(positions).to(images.device)
        b, _, h, w = images.shape
        if pos.dim() == 2 and pos.shape[0] != b:
            raise ShapeError(
                f"positions: expected one row per image ({b}), got shape {tuple(pos.shape)}"
            )
        s = pos.shape[-1]
        ah = self._rows(h, images.dtype, images.device)
        aw = ah if w == h else self._rows(w, images.dtype, images.device)
        pos3 = pos.repeat(1, len(COLORS)) if pos.dim() == 2 else pos.repeat(len(COLORS))
        left = ah[pos3 // BLOCK]  # (..., 3s, H', H)
        right = aw[pos3 % BLOCK].transpose(-1, -2)  # (..., 3s, W, W')
        planes = ycc.repeat_interleave(s, dim=1)  # (B, 3s, H, W), colour-major
        return left @ planes @ right

    def full(self, images: torch.Tensor) -> torch.Tensor:
        """All 192 channels (the core codec)."""
        return self.codec.encode(images)

    def pruned(self, images: torch.Tensor) -> torch.Tensor:
        """The 162 channels left after pruning (54 positions per colour, ascending)."""
        return select_channels(self.codec.encode(images), complement_positions(PARTIALFACE_PRUNED))

    def decode_pruned(self, images: torch.Tensor) -> torch.Tensor:
        """The images rebuilt from their pruned spectrum alone (low frequencies zeroed): what
        the high-frequency part looks like to a person. Clamped to ``input_range``."""
        coeffs = self.codec.encode(images)
        kept = complement_positions(PARTIALFACE_PRUNED)
        high = select_channels(coeffs, kept)
        low = coeffs.new_zeros(coeffs.shape[0], 3 * len(PARTIALFACE_PRUNED), *coeffs.shape[2:])
        spectrum = merge_channels(high, low, kept)
        # the DC terms are pruned too, so the result sits around mid-grey
        return self.codec.decode(spectrum, clamp=True)


def flip_channels(channels: torch.Tensor, positions: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """The channels of the horizontally mirrored images, from ``channels`` ``(B, 3s, H', W')``
    alone: the x8 upsampling commutes with mirroring and the DCT-II of a reversed block is
    ``(-1)^v`` times the original, so each map is mirrored and odd-``v`` channels negated."""
    expect_tensor(channels, "channels", floating=True)
    expect_rank(channels, 4, "channels", "B, 3s, H', W'")
    pos = _as_positions(positions)
    if pos.dim() != 1 or channels.shape[1] != len(COLORS) * pos.numel():
        raise ShapeError(
            f"flip_channels: expected {len(COLORS)} x {pos.numel()} channels for positions of "
            f"shape {tuple(pos.shape)}, got shape {tuple(channels.shape)}"
        )
    sign = 1.0 - 2.0 * (pos % BLOCK % 2).to(channels.dtype)  # (-1)^v
    sign = sign.repeat(len(COLORS)).to(channels.device).view(1, -1, 1, 1)
    return channels.flip(-1) * sign
