import pytest
import torch

from facelab.core.errors import FacelabTypeError, RangeError, ShapeError
from facelab.core.freq import FrequencyCodec
from facelab.core.privacy import ssim
from facelab.partialface.plan import reference_plan
from facelab.partialface.spectrum import SubsetEncoder, flip_channels


def faces(n=6, size=32, seed=0):
    from facelab.core.data.toyfaces import ToyFaces

    return ToyFaces(n, 1, size=size, seed=seed).render(slice(None))


@pytest.mark.parametrize("mode", ["reference", "compact"])
def test_subset_encode_equals_the_core_codec_channels(mode):
    x = faces()
    plan = reference_plan()
    full = FrequencyCodec(mode).encode(x.double())
    enc = SubsetEncoder(mode)
    # one challenge for the whole batch
    pos = plan.positions(4, 2)
    got = enc.encode(x.double(), pos)
    want = full[:, plan.channel_indices(4, 2)]
    assert got.shape == (6, 27, *full.shape[2:])
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    # a different challenge per sample, float32
    rows = [plan.positions(i % 6, i % 3) for i in range(6)]
    got32 = enc.encode(x, torch.tensor(rows))
    want32 = torch.stack([full[i, plan.channel_indices(i % 6, i % 3)] for i in range(6)])
    torch.testing.assert_close(got32.double(), want32, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("mode", ["reference", "compact"])
def test_flip_channels_equals_encoding_the_mirrored_image(mode):
    x = faces(4)
    enc = SubsetEncoder(mode)
    pos = reference_plan().positions(1, 1)  # mixes odd and even horizontal frequencies
    assert {p % 8 % 2 for p in pos} == {0, 1}
    got = flip_channels(enc.encode(x.double(), pos), pos)
    want = enc.encode(x.double().flip(-1), pos)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_pruned_spectrum_has_162_channels_and_its_inverse_is_flat():
    x = faces(4, size=56)
    enc = SubsetEncoder()
    pruned = enc.pruned(x)
    assert pruned.shape == (4, 162, 56, 56)
    keep = [k for k in range(64) if k not in (0, 1, 2, 3, 8, 9, 10, 16, 17, 24)]
    full = enc.full(x)
    torch.testing.assert_close(pruned, full[:, [c * 64 + k for c in range(3) for k in keep]])
    # the high frequencies alone rebuild a (nearly) uniform mid-grey image: no more similar to
    # the face than a constant grey image, far from the exact full-spectrum decode
    rec = enc.decode_pruned(x)
    grey = torch.zeros_like(x)
    assert float(rec.abs().max()) < 0.05
    assert abs(float(ssim(rec, x).mean()) - float(ssim(grey, x).mean())) < 0.02
    assert float(ssim(enc.codec.decode(full), x).mean()) > 0.99


def test_bad_inputs():
    enc = SubsetEncoder()
    x = faces(2)
    pos = reference_plan().positions(0)
    with pytest.raises(RangeError, match=r"0\.\.63"):
        enc.encode(x, [5, 64])
    with pytest.raises(ShapeError):
        enc.encode(x, torch.tensor([[5, 6], [7, 11], [12, 13]]))  # 3 rows for 2 images
    with pytest.raises(ShapeError):
        enc.encode(x, [])
    with pytest.raises(ShapeError):
        enc.encode(x, [0.5, 1.5])
    with pytest.raises(ShapeError):
        enc.encode(x[:, :2], pos)
    with pytest.raises(RangeError):
        enc.encode(x * 3, pos)
    with pytest.raises(FacelabTypeError):
        enc.encode((x * 127).to(torch.uint8), pos)
    with pytest.raises(ShapeError):
        flip_channels(torch.zeros(1, 26, 32, 32), pos)
