"""Client/server API and the payload that crosses the boundary: PNG and bytes round trips,
what the recognizer sees equals what a stored PNG holds, validation on arrival."""

import pytest
import torch

from facelab.core.backbones import get_backbone
from facelab.core.errors import FacelabTypeError, FormatError, RangeError, ShapeError
from facelab.core.freq import FrequencyCodec
from facelab.minusface import (
    MinusFaceClient,
    MinusFacePipeline,
    MinusFaceServer,
    ProtectedImages,
    random_permutations,
)


def _recognizer(n=1, size=32):
    torch.manual_seed(0)
    return get_backbone("r18", in_channels=3 * n, input_size=size, embedding_size=16, base_width=4)


def test_protect_equals_decoding_the_shuffled_residue(tiny_generator, faces):
    """X_p = quantize(clamp(d(shuffle(r)))), with d written out through core's codec."""
    client = MinusFaceClient(tiny_generator, 2, seed=5)
    xp = client.protect(faces)
    assert xp.dtype == torch.uint8 and xp.shape == (8, 6, 32, 32)
    # the same permutations, drawn from the same seeded stream
    perms = random_permutations(8, 192, 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        r = tiny_generator.residue(faces)
    codec = FrequencyCodec("reference", input_range=(0, 1))
    for k in range(2):
        shuffled = torch.stack([r[b, perms[b, k]] for b in range(8)])  # per-sample loop
        want = (codec.decode(shuffled, clamp=True) * 255).round().to(torch.uint8)
        diff = (xp[:, 3 * k : 3 * k + 3].int() - want.int()).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3  # float round-off only


def test_every_protection_draws_fresh_permutations(tiny_generator, faces):
    client = MinusFaceClient(tiny_generator)  # CSPRNG
    a, b = client.protect(faces), client.protect(faces)
    assert not torch.equal(a, b)
    same_seed = [MinusFaceClient(tiny_generator, seed=1).protect(faces) for _ in range(2)]
    assert torch.equal(*same_seed)
    # duplicates of one face are shuffled independently
    xp = MinusFaceClient(tiny_generator, 2, seed=2).protect(faces)
    assert not torch.equal(xp[:, :3], xp[:, 3:])


@pytest.mark.parametrize("n", [1, 2])
def test_payload_round_trips(tmp_path, tiny_generator, faces, n):
    payload = MinusFaceClient(tiny_generator, n, seed=0).protect_payload(faces)
    assert payload.nbytes_per_image == 3 * n * 32 * 32
    back = ProtectedImages.from_bytes(payload.to_bytes())
    assert torch.equal(back.images, payload.images) and back.n_duplicates == n
    paths = payload.to_pngs(tmp_path / "png", [f"id{i // 2}/{i}.png" for i in range(8)])
    assert all(p.is_file() for p in paths)
    from PIL import Image

    with Image.open(paths[0]) as im:
        assert im.size == (32 * n, 32) and im.mode == "RGB"
    png = ProtectedImages.from_pngs(paths, n)
    assert torch.equal(png.images, payload.images)
    payload.save(tmp_path / "p.safetensors")
    assert torch.equal(ProtectedImages.load(tmp_path / "p.safetensors").images, payload.images)


def test_recognizer_sees_exactly_what_a_png_holds(tmp_path, tiny_generator, faces):
    rec = _recognizer().eval()
    pipe = MinusFacePipeline(tiny_generator, rec, seed=9).eval()
    with torch.no_grad():
        direct = pipe(faces)
    stored = MinusFaceClient(tiny_generator, seed=9).protect_payload(faces)
    loaded = ProtectedImages.from_pngs(stored.to_pngs(tmp_path), 1)
    served = MinusFaceServer(rec).embed(loaded, normalize=False)
    assert torch.equal(served, direct)


def test_server_validates_what_arrives(tiny_generator, faces):
    server = MinusFaceServer(_recognizer(2))
    assert server.n_duplicates == 2
    good = MinusFaceClient(tiny_generator, 2, seed=0).protect(faces)
    assert server.embed(good).shape == (8, 16)
    with pytest.raises(FacelabTypeError):
        server.embed(good.float() / 255)
    with pytest.raises(ShapeError):
        server.embed(good[:, :3])
    with pytest.raises(ShapeError):  # a payload for another recognizer
        server.embed(ProtectedImages(good[:, :3].contiguous(), 1))
    with pytest.raises(ShapeError):
        server.embed(good[..., :24, :24])
    with pytest.raises(FacelabTypeError):
        server.embed([good])
    with pytest.raises(ShapeError):
        MinusFaceServer(get_backbone("r18", in_channels=4, input_size=32, base_width=4))


def test_payload_validation():
    x = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(FacelabTypeError):
        ProtectedImages(x.float())
    with pytest.raises(ShapeError):
        ProtectedImages(x, 2)
    with pytest.raises(ShapeError):
        ProtectedImages(x[:0])
    with pytest.raises(RangeError):
        ProtectedImages(x, 0)
    with pytest.raises(RangeError):
        ProtectedImages.from_float(torch.full((1, 3, 8, 8), 1.5))
    assert torch.equal(
        ProtectedImages.from_float(torch.full((1, 3, 2, 2), 0.5)).images,
        torch.full((1, 3, 2, 2), 128, dtype=torch.uint8),
    )
    data = ProtectedImages(x).to_bytes()
    for broken in (b"", b"not a payload", data[: len(data) // 2]):
        with pytest.raises(FormatError):
            ProtectedImages.from_bytes(broken)
    from safetensors.torch import save

    with pytest.raises(FormatError):  # another format
        ProtectedImages.from_bytes(save({"images": x}, metadata={"format": "other"}))
    meta = {
        "format": "facelab.minusface.ProtectedImages",
        "format_version": "99",
        "n_duplicates": "1",
    }
    with pytest.raises(FormatError):
        ProtectedImages.from_bytes(save({"images": x}, metadata=meta))
    meta["format_version"] = "1"
    with pytest.raises(FormatError):
        ProtectedImages.from_bytes(save({"images": x, "extra": x.clone()}, metadata=meta))
    with pytest.raises(FacelabTypeError):
        ProtectedImages.from_bytes(save({"images": x.float()}, metadata=meta))
    with pytest.raises(FacelabTypeError):
        ProtectedImages.from_bytes("text")


def test_client_rejects_bad_input(tiny_generator, faces):
    client = MinusFaceClient(tiny_generator)
    with pytest.raises(ShapeError):
        client.protect(faces[:, :, :16, :16])
    with pytest.raises(RangeError):
        client.protect(faces * 2)
    with pytest.raises(ShapeError):
        client.protect(faces[:0])
    with pytest.raises(RangeError):
        MinusFaceClient(tiny_generator, 0)
    with pytest.raises(FacelabTypeError):
        MinusFaceClient(torch.nn.Identity())
    with pytest.raises(FacelabTypeError):
        MinusFaceClient(tiny_generator, seed=-1)
