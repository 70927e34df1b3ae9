import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F
from PIL import Image

from facelab.core import freq
from facelab.core.errors import (
    FacelabTypeError,
    NonFiniteError,
    RangeError,
    ShapeError,
    UnknownNameError,
)
from facelab.core.freq import FrequencyCodec, block_dct, rgb_to_ycbcr


def textured(n, size=112, seed=0, unit=False):
    """Smooth structure plus fine texture, in [-1, 1] (or [0, 1])."""
    g = torch.Generator().manual_seed(seed)
    low = F.interpolate(
        torch.rand(n, 3, size // 8, size // 8, generator=g), size=(size, size), mode="bilinear"
    )
    img = (0.7 * low + 0.3 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)
    return img if unit else img * 2 - 1


def scipy_blocks(x):
    """Independent reference: per-block scipy dctn, laid out colour-major, k = 8u + v."""
    x = np.asarray(x, dtype=np.float64)
    b, c, h, w = x.shape
    out = np.zeros((b, c * 64, h // 8, w // 8))
    for i in range(h // 8):
        for j in range(w // 8):
            blk = scipy.fft.dctn(
                x[:, :, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8], axes=(-2, -1), norm="ortho"
            )
            for u in range(8):
                for v in range(8):
                    out[:, np.arange(c) * 64 + 8 * u + v, i, j] = blk[:, :, u, v]
    return out


def jpeg_ycbcr_numpy(rgb255):
    """JPEG full-range YCbCr written out from the JFIF formulas (independent of the code)."""
    r, g, b = rgb255[:, 0], rgb255[:, 1], rgb255[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.stack([y, cb, cr], axis=1)


def test_block_dct_matches_scipy_per_block():
    x = torch.randn(2, 3, 16, 24, dtype=torch.float64)
    ours = freq.block_dct(x).numpy()
    np.testing.assert_allclose(ours, scipy_blocks(x.numpy()), atol=1e-10)
    # float32 agrees to float32 precision
    ours32 = freq.block_dct(x.float()).double().numpy()
    np.testing.assert_allclose(ours32, scipy_blocks(x.numpy()), atol=1e-5)


def test_block_idct_inverts_block_dct_and_batches_leading_dims():
    x = torch.randn(2, 4, 3, 16, 16, dtype=torch.float64)
    np.testing.assert_allclose(freq.block_idct(freq.block_dct(x)).numpy(), x.numpy(), atol=1e-12)
    assert freq.block_dct(x).shape == (2, 4, 192, 2, 2)


def test_dct_matrix_is_orthonormal():
    c = freq.dct_matrix(8)
    assert torch.allclose(c @ c.T, torch.eye(8, dtype=torch.float64), atol=1e-12)


def test_ycbcr_matches_jfif_formulas_and_pillow():
    rgb = torch.rand(2, 3, 8, 8, dtype=torch.float64) * 255
    ours = freq.rgb_to_ycbcr(rgb).numpy()
    np.testing.assert_allclose(ours, jpeg_ycbcr_numpy(rgb.numpy()), atol=1e-3)
    # Pillow's integer JPEG conversion agrees within rounding
    img = (rgb[0].permute(1, 2, 0).numpy()).round().astype(np.uint8)
    pil = np.asarray(Image.fromarray(img).convert("YCbCr"), dtype=np.float64).transpose(2, 0, 1)
    ours_int = freq.rgb_to_ycbcr(
        torch.from_numpy(img.transpose(2, 0, 1).astype(np.float64))
    ).numpy()
    assert np.abs(ours_int - pil).max() <= 1.0


def test_ycbcr_round_trip_and_scale():
    x = torch.rand(3, 3, 5, 7, dtype=torch.float64)
    np.testing.assert_allclose(
        freq.ycbcr_to_rgb(freq.rgb_to_ycbcr(x, 1.0), 1.0).numpy(), x.numpy(), atol=1e-12
    )
    white = torch.ones(1, 3, 1, 1, dtype=torch.float64) * 255
    np.testing.assert_allclose(
        freq.rgb_to_ycbcr(white).flatten().numpy(), [255, 128, 128], atol=1e-9
    )


def reference_pipeline(images_pm1, factor=8):
    """The TFace reference pipeline step by step (interpolate, x255, YCbCr, -128, block DCT)."""
    x = (images_pm1.double() + 1) / 2
    if factor > 1:
        x = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=True)
    ycc = jpeg_ycbcr_numpy(x.numpy() * 255) - 128
    return scipy_blocks(ycc)


@pytest.mark.parametrize("size", [16, 112])
def test_reference_mode_equals_upsample_then_block_dct(size):
    x = textured(2, size)
    ours = FrequencyCodec("reference").encode(x).double().numpy()
    ref = reference_pipeline(x, 8)
    assert ours.shape == (2, 192, size, size)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(ours, ref, atol=2e-6 * scale)


def test_compact_mode_equals_block_dct():
    x = textured(2, 112)
    ours = FrequencyCodec("compact").encode(x).double().numpy()
    assert ours.shape == (2, 192, 14, 14)
    np.testing.assert_allclose(ours, reference_pipeline(x, 1), atol=1e-3)
    # the fused float64 path, both input ranges, a non-square image
    x = textured(2, 112)[..., :96].double()
    ours = FrequencyCodec("compact").encode(x).numpy()
    np.testing.assert_allclose(ours, reference_pipeline(x, 1), atol=1e-3)
    unfused = block_dct(rgb_to_ycbcr((x + 1) / 2 * 255) - 128).numpy()  # each part checked above
    np.testing.assert_allclose(ours, unfused, atol=1e-9)
    unit = FrequencyCodec("compact", input_range=(0.0, 1.0)).encode((x + 1) / 2).numpy()
    np.testing.assert_allclose(unit, ours, atol=1e-9)


@pytest.mark.parametrize("conv", [True, False])
def test_compact_fused_forms_equal_the_unfused_pipeline(conv):
    """Both one-pass forms (convolution: CPU; block matmul: other devices) in float64."""
    from facelab.core.freq import _compact_encode

    x = textured(2, 112)[..., :96].double()
    unfused = block_dct(rgb_to_ycbcr((x + 1) / 2 * 255) - 128)
    out = _compact_encode(x, -1.0, 1.0, conv=conv)
    assert out.shape == unfused.shape and out.is_contiguous()
    np.testing.assert_allclose(out.numpy(), unfused.numpy(), atol=1e-9)


@pytest.mark.parametrize("mode", ["reference", "compact"])
@pytest.mark.parametrize("input_range", [(-1.0, 1.0), (0.0, 1.0)])
def test_round_trip(mode, input_range):
    x = textured(3, 112, unit=input_range[0] == 0.0)
    codec = FrequencyCodec(mode, input_range=input_range)
    y = codec.decode(codec.encode(x))
    assert y.shape == x.shape
    assert (y - x).abs().max() < 1e-5


def test_exact_inverse_beats_reference_bilinear_downsample():
    x = textured(2, 112)
    exact = FrequencyCodec("reference")
    approx = FrequencyCodec("reference", inverse="bilinear")
    c = exact.encode(x)
    err_exact = (exact.decode(c) - x).abs().max()
    err_approx = (approx.decode(c) - x).abs().max()
    assert err_exact < 1e-5
    # several grey levels off on textured images (2/255 in the [-1, 1] range is one grey level)
    assert err_approx > 4 * 2 / 255


def test_float64_and_bfloat16():
    x = textured(1, 16)
    c64 = FrequencyCodec("reference").encode(x.double())
    assert c64.dtype == torch.float64
    cb = FrequencyCodec("compact", check=False).encode(x.bfloat16())
    assert cb.dtype == torch.bfloat16
    ref = FrequencyCodec("compact").encode(x.double())
    assert (cb.double() - ref).abs().max() < 0.02 * ref.abs().max()


def test_channel_sets_and_split():
    assert len(freq.DUETFACE_CLIENT) == 10 and len(freq.PARTIALFACE_PRUNED) == 10
    assert len(freq.complement_positions(freq.PARTIALFACE_PRUNED)) == 54
    c = FrequencyCodec("compact").encode(textured(2, 16))
    client, server = freq.split_channels(c, freq.DUETFACE_CLIENT)
    assert client.shape[1] == 30 and server.shape[1] == 162
    assert freq.channel_indices([0, 1], ("Y", "Cr")) == [0, 1, 128, 129]
    # client channel 10 is Cb's coefficient 0 (colour-major)
    assert torch.equal(client[:, 10], c[:, 64])
    assert torch.equal(freq.merge_channels(client, server, freq.DUETFACE_CLIENT), c)
    assert freq.get_channel_set("DuetFace_Client") == freq.DUETFACE_CLIENT


def test_low_frequencies_carry_the_image():
    x = textured(2, 112)
    codec = FrequencyCodec("reference")
    c = codec.encode(x)
    client, server = freq.split_channels(c, freq.DUETFACE_CLIENT)
    low_only = codec.decode(
        freq.merge_channels(client, torch.zeros_like(server), freq.DUETFACE_CLIENT)
    )
    high_only = codec.decode(
        freq.merge_channels(torch.zeros_like(client), server, freq.DUETFACE_CLIENT)
    )
    assert (low_only - x).pow(2).mean() < (high_only - x).pow(2).mean() / 4


def test_bad_inputs():
    codec = FrequencyCodec("compact")
    with pytest.raises(ShapeError, match="4-dimensional"):
        codec.encode(torch.zeros(3, 112, 112))
    with pytest.raises(ShapeError, match="3 RGB channels"):
        codec.encode(torch.zeros(1, 1, 112, 112))
    with pytest.raises(ShapeError, match="divisible"):
        codec.encode(torch.zeros(1, 3, 100, 112))
    with pytest.raises(ShapeError, match="divisible"):
        freq.block_dct(torch.zeros(1, 3, 12, 16))
    x = torch.zeros(1, 3, 16, 16)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        codec.encode(x)
    with pytest.raises(RangeError, match=r"\[-1.0, 1.0\]"):
        codec.encode(torch.full((1, 3, 16, 16), 255.0))
    with pytest.raises(RangeError, match=r"\[0.0, 1.0\]"):
        FrequencyCodec("compact", input_range=(0, 1)).encode(torch.full((1, 3, 16, 16), -0.5))
    with pytest.raises(FacelabTypeError):
        codec.encode(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ShapeError, match="192"):
        codec.decode(torch.zeros(1, 191, 2, 2))
    with pytest.raises(UnknownNameError, match="duetface_client"):
        freq.get_channel_set("nope")
    with pytest.raises(UnknownNameError):
        FrequencyCodec("upsampled")
    with pytest.raises(ShapeError, match=r"0\.\.63"):
        freq.channel_indices([64])
    with pytest.raises(ShapeError, match="unique"):
        freq.channel_indices([1, 1])
    with pytest.raises(FacelabTypeError):
        FrequencyCodec(input_range=(0, 255))
