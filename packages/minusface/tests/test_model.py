"""Encoder/decoder, U-Net and generator: shapes, the residue identity, configs, bad inputs."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.fft import dctn

from facelab.core.errors import (
    FacelabTypeError,
    NonFiniteError,
    RangeError,
    ShapeError,
    UnknownNameError,
)
from facelab.minusface import MinusFaceGenerator, ResidueCodec, UNet, kl_sparsity


def reference_encode(images: torch.Tensor) -> np.ndarray:
    """TFace's reference-mode encoding, written out: bilinear x8 upsampling (align_corners),
    JPEG YCbCr - 128, orthonormal 8x8 block DCT (scipy), channels colour-major, k = 8u + v."""
    x = (images.double() + 1) / 2
    up = F.interpolate(x, scale_factor=8, mode="bilinear", align_corners=True).numpy() * 255
    m = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
    ycc = np.einsum("ij,bjhw->bihw", m, up)
    ycc[:, 1:] += 128
    ycc -= 128
    b, _, hh, ww = ycc.shape
    out = np.zeros((b, 192, hh // 8, ww // 8))
    for i in range(hh // 8):
        for j in range(ww // 8):
            block = dctn(ycc[:, :, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8], axes=(2, 3), norm="ortho")
            out[:, :, i, j] = block.reshape(b, 192)
    return out


def test_frequency_encoder_matches_reference_and_decoder_inverts_it():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    codec = ResidueCodec("freq")
    z = codec.encode(x)
    assert z.shape == (2, 192, 16, 16)
    np.testing.assert_allclose(z.double().numpy(), reference_encode(x), atol=2e-2, rtol=1e-4)
    torch.testing.assert_close(codec.decode(z), (x + 1) / 2, atol=1e-5, rtol=0)


def test_decoder_clamps_to_unit_range():
    codec = ResidueCodec("freq")
    z = torch.zeros(1, 192, 16, 16)
    z[:, 0] = 5000.0  # far brighter than white
    z[:, 64] = -5000.0
    out = codec.decode(z)
    assert out.min() >= 0 and out.max() <= 1
    assert (out == 1).any() and (out == 0).any()
    rgb = ResidueCodec("rgb")
    assert rgb.channels == 3
    torch.testing.assert_close(
        rgb.decode(torch.tensor([-3.0, -1.0, 0.0, 3.0]).view(1, 4, 1, 1)),
        torch.tensor([0.0, 0.0, 0.5, 1.0]).view(1, 4, 1, 1),
    )


@pytest.mark.parametrize("domain", ["freq", "rgb"])
def test_residue_plus_regeneration_reconstructs_the_face(domain, faces):
    torch.manual_seed(1)
    g = MinusFaceGenerator(domain, 32, (4, 8, 16), input_scale=1 / 64).eval()
    with torch.no_grad():
        x, regen, latent = g(faces)
        r = g.residue(faces)
        # r + x' is the encoding, and decoding it gives the face back
        torch.testing.assert_close(r + regen, x, atol=1e-3, rtol=1e-5)
        back = g.decode(r + regen) * 2 - 1
    torch.testing.assert_close(back, faces, atol=1e-4, rtol=0)
    assert latent.shape == (faces.shape[0], 16, 8, 8)
    # the residue is not the face itself: g takes something away
    assert (r - x).abs().mean() > 0


def test_regenerate_is_decoded_generator_output(tiny_generator, faces):
    with torch.no_grad():
        _, regen, _ = tiny_generator(faces)
        want = tiny_generator.codec.decode(regen) * 2 - 1
        torch.testing.assert_close(tiny_generator.regenerate(faces), want)


def _conv_params(cin, cout, k):
    return cin * cout * k * k + cout


def test_unet_matches_the_paper_architecture():
    # parameter count of the spec's U-Net 192 -> 192 (64..512, bottleneck 1024), counted by hand
    widths = (64, 128, 256, 512, 1024)
    want = 0
    cin = 192
    for w in widths[:-1]:
        want += _conv_params(cin, w, 3) + _conv_params(w, w, 3)
        cin = w
    want += _conv_params(512, 1024, 3) + _conv_params(1024, 1024, 3)
    for lo, hi in itertools.pairwise(widths):
        want += hi * lo * 9 + lo  # transposed conv k3 s2
        want += _conv_params(2 * lo, lo, 3) + _conv_params(lo, lo, 3)
    want += _conv_params(64, 192, 1)
    with torch.device("meta"):
        net = UNet(192, 192)
    assert sum(p.numel() for p in net.parameters()) == want
    assert not any(isinstance(m, torch.nn.modules.batchnorm._NormBase) for m in net.modules())
    # 112 -> 7x7 bottleneck
    with torch.device("meta"):
        out, latent = net(torch.empty(1, 192, 112, 112))
    assert out.shape == (1, 192, 112, 112) and latent.shape == (1, 1024, 7, 7)


@pytest.mark.parametrize("size", [32, 36, 40])
def test_unet_handles_sizes_not_divisible_by_the_pooling(size):
    net = UNet(3, 5, (2, 4, 4, 8))
    out, latent = net(torch.randn(2, 3, size, size))
    assert out.shape == (2, 5, size, size)
    assert latent.shape == (2, 8, size // 8, size // 8)


def test_input_scale_rescales_the_unet():
    torch.manual_seed(0)
    g = MinusFaceGenerator("freq", 32, (4, 8), input_scale=0.25)
    z = torch.randn(2, 192, 32, 32)
    out, _ = g.generate(z)
    ref, _ = g.unet(z * 0.25)
    torch.testing.assert_close(out, ref / 0.25)


def test_generator_save_and_load_round_trip(tmp_path, tiny_generator, faces):
    tiny_generator.save_pretrained(tmp_path / "g")
    back = MinusFaceGenerator.from_pretrained(tmp_path / "g")
    assert back.config == tiny_generator.config
    with torch.no_grad():
        torch.testing.assert_close(back.residue(faces), tiny_generator.residue(faces))


def test_kl_sparsity_matches_formula():
    torch.manual_seed(0)
    latent = torch.rand(3, 2, 2, 2)
    q = latent.mean(0).flatten().double().numpy()
    q = np.clip(q / q.sum(), 1e-8, 1 - 1e-8)
    p = 0.05
    want = sum(p * math.log(p / v) + (1 - p) * math.log((1 - p) / (1 - v)) for v in q)
    assert float(kl_sparsity(latent, 0.05)) == pytest.approx(want, rel=1e-5)
    with pytest.raises(RangeError):
        kl_sparsity(latent, 1.5)


def test_bad_configs():
    with pytest.raises(UnknownNameError):
        MinusFaceGenerator("dct", 32, (4, 8))
    with pytest.raises(RangeError):
        MinusFaceGenerator("freq", 36, (4, 8))  # not a multiple of 8
    with pytest.raises(RangeError):
        MinusFaceGenerator("freq", 32, (4, 4, 4, 4, 4, 4, 8))  # 6 poolings of 32 px
    with pytest.raises(RangeError):
        MinusFaceGenerator("freq", 32, (4,))
    with pytest.raises(RangeError):
        MinusFaceGenerator("freq", 32, (4, 0))
    with pytest.raises(RangeError):
        MinusFaceGenerator("freq", 32, (4, 8), input_scale=0.0)
    with pytest.raises(FacelabTypeError):
        MinusFaceGenerator("freq", 32, "48")


def test_bad_images(tiny_generator, faces):
    with pytest.raises(ShapeError):
        tiny_generator(faces[:, :1])
    with pytest.raises(ShapeError):
        tiny_generator(faces[..., :24, :24])
    with pytest.raises(FacelabTypeError):
        tiny_generator((faces * 100).to(torch.uint8))
    bad = faces.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        tiny_generator.check_images(bad)
    with pytest.raises(RangeError):
        tiny_generator.check_images(faces * 3)
