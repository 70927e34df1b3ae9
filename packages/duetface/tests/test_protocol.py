import json

import pytest
import torch

from facelab.core.errors import (
    FacelabTypeError,
    FormatError,
    KeyMismatchError,
    NonFiniteError,
    RangeError,
    ShapeError,
)
from facelab.core.freq import DUETFACE_CLIENT, FrequencyCodec, channel_indices
from facelab.duetface import (
    PAYLOAD_VERSION,
    ClientModel,
    DuetFaceClient,
    DuetFacePipeline,
    DuetFaceServer,
    ServerPayload,
    load_client,
    load_pipeline,
    load_server,
    payload_bytes_per_image,
    save_bundle,
)


@pytest.fixture
def parties(make_models):
    client, server = make_models()
    with torch.no_grad():
        for blk in server.blocks:
            blk.weight.fill_(0.5)
    return DuetFaceClient(client, server.mask_generator()), DuetFaceServer(server), server


@pytest.fixture
def images(make_faces):
    return make_faces(2, 2)[0]


def _header(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n])


def _rewrite_header(data: bytes, header: dict) -> bytes:
    old = int.from_bytes(data[:8], "little")
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + data[8 + old :]


def test_payload_holds_exactly_the_server_channels_and_masks(parties, images):
    client = parties[0]
    payload = client.prepare(images)
    coeffs = FrequencyCodec("reference").encode(images)
    server_idx = [i for i in range(192) if i not in channel_indices(DUETFACE_CLIENT)]
    torch.testing.assert_close(payload.high_freq, coeffs[:, server_idx], rtol=0, atol=0)
    assert payload.high_freq.shape == (4, 162, 32, 32)
    assert [tuple(m.shape) for m in payload.masks] == [(4, 1, s, s) for s in (16, 8, 4, 2)]
    tensors = payload._tensors()
    assert sorted(tensors) == ["high_freq", "mask_0", "mask_1", "mask_2", "mask_3"]
    # none of the 30 client channels equals any payload channel
    low = coeffs[:, channel_indices(DUETFACE_CLIENT)].flatten(2)  # (B, 30, HW)
    same = (low.unsqueeze(2) == payload.high_freq.flatten(2).unsqueeze(1)).all(-1)
    assert not same.any()
    data = payload.to_bytes()
    assert len(data) - payload.nbytes < 1024  # nothing but a small header beside the tensors
    meta = _header(data)["__metadata__"]
    assert json.loads(meta["positions"]) == [p for p in range(64) if p not in DUETFACE_CLIENT]


def test_bytes_round_trip_and_float16(parties, images):
    client, srv, _ = parties
    payload = client.prepare(images)
    back = ServerPayload.from_bytes(payload.to_bytes())
    assert torch.equal(back.high_freq, payload.high_freq)
    assert all(torch.equal(a, b) for a, b in zip(back.masks, payload.masks))
    assert back.positions == payload.positions and back.image_size == (32, 32)
    e1 = srv.embed(payload)
    torch.testing.assert_close(srv.embed(payload.to_bytes()), e1, rtol=0, atol=0)
    assert payload.bytes_per_image == payload_bytes_per_image(
        32, [(16, 16), (8, 8), (4, 4), (2, 2)]
    )
    assert payload.bytes_per_image == 4 * (162 * 32 * 32 + 256 + 64 + 16 + 4)
    assert (
        payload_bytes_per_image(112, [(56, 56), (28, 28), (14, 14), (7, 7)]) == 8_128_512 + 16_660
    )
    half = DuetFaceClient(client.client, client.masks, payload_dtype=torch.float16).prepare(images)
    assert half.high_freq.dtype == torch.float16 and 2 * half.nbytes == payload.nbytes
    h = srv.embed(ServerPayload.from_bytes(half.to_bytes()))
    cos = torch.nn.functional.cosine_similarity(h, e1)
    assert cos.min() > 0.999  # float16 keeps the coefficients (|c| <= 1024) to ~3 digits


def test_pipeline_and_bundle(tmp_path, parties, images):
    client, srv, server = parties
    pipe = DuetFacePipeline(client, srv)
    low, high = client.split(images)
    with torch.no_grad():
        masks = client.masks(client.client.feature_maps(low), client.roi(images))
        direct = server(high, masks)
    torch.testing.assert_close(pipe(images), direct)
    torch.testing.assert_close(DuetFacePipeline(client, srv, through_bytes=True)(images), direct)
    save_bundle(tmp_path / "b", client.client, server)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "client",
        "client_masks",
        "duetface.json",
        "server",
    ]
    torch.testing.assert_close(load_pipeline(tmp_path / "b")(images), direct)
    torch.testing.assert_close(
        load_server(tmp_path / "b").embed(load_client(tmp_path / "b").prepare(images)), direct
    )
    with pytest.raises(FileNotFoundError):
        load_client(tmp_path)


def test_tampered_payloads_are_rejected(parties, images):
    client, srv, _ = parties
    data = client.prepare(images).to_bytes()
    flipped = bytearray(data)
    flipped[-100] ^= 0x01  # one bit of the last mask
    with pytest.raises(FormatError, match="SHA-256"):
        ServerPayload.from_bytes(bytes(flipped))
    with pytest.raises(FormatError, match="SHA-256"):
        srv.embed(bytes(flipped))
    with pytest.raises(FormatError):
        ServerPayload.from_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(FormatError):
        ServerPayload.from_bytes(b"\x00" * 4)
    with pytest.raises(FormatError):
        ServerPayload.from_bytes(b"not a payload at all, just some bytes")
    head = _header(data)
    for key, value, match in (
        ("version", "2", "version"),
        ("format", "facelab.partialface.Payload", "format"),
        ("num_masks", "3", "expected tensors"),
        ("positions", "[1,2", "corrupted header"),
    ):
        h = json.loads(json.dumps(head))
        h["__metadata__"][key] = value
        with pytest.raises(FormatError, match=match):
            ServerPayload.from_bytes(_rewrite_header(data, h))
    h = json.loads(json.dumps(head))
    del h["__metadata__"]["sha256"]
    with pytest.raises(FormatError, match="sha256"):
        ServerPayload.from_bytes(_rewrite_header(data, h))


def test_mismatched_payloads_are_rejected(parties, images, make_models, make_faces):
    client, srv, server = parties
    payload = client.prepare(images)
    # another image size
    c48, s48 = make_models(size=48)
    p48 = DuetFaceClient(c48, s48.mask_generator()).prepare(make_faces(1, 2, size=48)[0])
    with pytest.raises(KeyMismatchError, match="48x48"):
        srv.embed(p48)
    # another channel split (same channel count)
    other = ClientModel(
        image_size=32, width=0.25, embedding_size=32, positions=(0, 1, 2, 3, 4, 5, 8, 9, 16, 17)
    )
    p_other = DuetFaceClient(other, server.mask_generator()).prepare(images)
    with pytest.raises(KeyMismatchError, match="DCT positions"):
        srv.embed(p_other)
    # no masks (a plain-server client) for a server with interactive blocks
    no_masks = DuetFaceClient(client.client, None).prepare(images)
    with pytest.raises(KeyMismatchError, match="masks"):
        srv.embed(no_masks)
    # masks of the wrong stage sizes
    swapped = ServerPayload(payload.high_freq, payload.masks[::-1], payload.positions, (32, 32))
    with pytest.raises(KeyMismatchError, match="stages"):
        srv.embed(swapped)
    with pytest.raises(FacelabTypeError):
        srv.embed("payload")


def test_invalid_payload_contents():
    pos = tuple(p for p in range(64) if p not in DUETFACE_CLIENT)
    x = torch.zeros(2, 162, 32, 32)
    masks = tuple(torch.rand(2, 1, s, s) for s in (16, 8, 4, 2))
    ServerPayload(x, masks, pos, (32, 32))  # valid
    bad_x = x.clone()
    bad_x[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        ServerPayload(bad_x, masks, pos, (32, 32))
    with pytest.raises(RangeError):
        ServerPayload(x, (masks[0] + 2, *masks[1:]), pos, (32, 32))
    with pytest.raises(FacelabTypeError):
        ServerPayload(x.double(), masks, pos, (32, 32))
    with pytest.raises(FacelabTypeError):
        ServerPayload(x, tuple(m.half() for m in masks), pos, (32, 32))  # mixed dtypes
    with pytest.raises(ShapeError):
        ServerPayload(x[:, :30], masks, pos, (32, 32))
    with pytest.raises(ShapeError):
        ServerPayload(x, (masks[0][:1], *masks[1:]), pos, (32, 32))
    with pytest.raises(ShapeError):
        ServerPayload(x[:0], (), pos, (32, 32))
    with pytest.raises(FormatError):
        ServerPayload(x, masks, pos, (32, 32), version=PAYLOAD_VERSION + 1)


def test_bad_images_and_parties(parties, make_models):
    client, _, _ = parties
    with pytest.raises(RangeError):
        client.prepare(torch.full((1, 3, 32, 32), 1.5))
    with pytest.raises(ShapeError):
        client.prepare(torch.rand(1, 3, 48, 48))
    with pytest.raises(ShapeError):
        client.prepare(torch.rand(3, 32, 32))
    with pytest.raises(FacelabTypeError):
        client.prepare(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(NonFiniteError):
        client.prepare(torch.full((1, 3, 32, 32), float("nan")))
    c, s = make_models()
    c_wide = ClientModel(image_size=32, width=0.5, embedding_size=32)
    with pytest.raises(KeyMismatchError):
        DuetFaceClient(c_wide, s.mask_generator())
    with pytest.raises(FacelabTypeError):
        DuetFaceClient(c, s.mask_generator(), payload_dtype=torch.bfloat16)
    with pytest.raises(FacelabTypeError):
        DuetFaceServer(c)
