import dataclasses
import json
import secrets

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
from facelab.core.eval import embed
from facelab.core.freq import FrequencyCodec
from facelab.partialface.model import PartialFaceModel, SubsetView
from facelab.partialface.plan import SubsetPlan, reference_plan
from facelab.partialface.protocol import (
    Challenge,
    PartialFaceClient,
    PartialFaceServer,
    Payload,
)

SIZE = 32


@pytest.fixture(scope="module")
def images():
    from facelab.core.data.toyfaces import ToyFaces

    return ToyFaces(3, 2, size=SIZE, seed=4).render(slice(None))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    plan = reference_plan()
    m = PartialFaceModel(image_size=SIZE, embedding_size=16, base_width=8, plan_id=plan.plan_id)
    # a few BN statistics so eval mode is not degenerate
    m.train()
    with torch.no_grad():
        m(torch.randn(8, 27, SIZE, SIZE) * 10, torch.tensor(plan.positions(0)))
    return m.eval()


def test_payload_holds_exactly_the_challenged_channels(images, model):
    plan = reference_plan()
    server = PartialFaceServer(model, plan, seed=0)
    challenge = server.challenge(subset=3, permutation=2)
    assert challenge.positions == plan.positions(3, 2)
    payload = PartialFaceClient().respond(images, challenge)
    full = FrequencyCodec().encode(images.double())
    assert payload.channels.shape == (6, 27, SIZE, SIZE)
    assert payload.channels.dtype == torch.float32
    torch.testing.assert_close(
        payload.channels.double(), full[:, plan.channel_indices(3, 2)], rtol=1e-4, atol=2e-3
    )
    # over the wire: safetensors bytes, parsed back identically; nothing else is in them
    wire = payload.to_bytes()
    back = Payload.from_bytes(wire)
    assert torch.equal(back.channels, payload.channels) and back.nonce == challenge.nonce
    assert len(wire) - payload.nbytes < 1024  # channel data plus a small header
    assert payload.nbytes == 6 * 27 * SIZE * SIZE * 4


def test_server_embedding_equals_the_flip_test_through_images(images, model):
    plan = reference_plan()
    server = PartialFaceServer(model, plan)
    ch = server.challenge(subset=1, permutation=1)
    emb = server.embed(PartialFaceClient().respond(images, ch), ch)
    # independent path: RGB flip test of core embed on client encode + model
    want = embed(SubsetView(model, plan.positions(1, 1)), images, flip=True)
    torch.testing.assert_close(emb, want, rtol=1e-4, atol=1e-4)
    assert torch.allclose(emb.norm(dim=1), torch.ones(6))


def test_challenges_are_random_single_use_and_seedable(images, model, monkeypatch):
    plan = reference_plan()
    calls = []
    real = secrets.randbelow
    monkeypatch.setattr(secrets, "randbelow", lambda n: calls.append(n) or real(n))
    server = PartialFaceServer(model, plan)
    chs = [server.challenge() for _ in range(40)]
    assert calls[:2] == [6, 3]  # subset and permutation from the CSPRNG
    assert len({c.nonce for c in chs}) == 40
    assert len({c.subset for c in chs}) > 1
    a = [PartialFaceServer(model, plan, seed=5).challenge() for _ in range(2)]
    assert a[0] == a[1]  # seeded: reproducible
    ch = chs[0]
    payload = PartialFaceClient().respond(images, ch)
    server.embed(payload, ch)
    with pytest.raises(KeyMismatchError, match="already used"):
        server.embed(payload, ch)


def test_challenge_json_round_trip(model):
    ch = PartialFaceServer(model, reference_plan()).challenge()
    assert Challenge.from_json(ch.to_json()) == ch
    with pytest.raises(FormatError):
        Challenge.from_json("{}")
    with pytest.raises(FormatError):
        Challenge.from_json(json.dumps(ch.to_dict() | {"nonce": "zz"}))


def test_wrong_plan_is_rejected(model):
    with pytest.raises(KeyMismatchError, match="plan"):
        PartialFaceServer(model, SubsetPlan.generate(seed=1))
    other = PartialFaceServer(
        PartialFaceModel(image_size=SIZE, embedding_size=16, base_width=8, plan_id=None),
        SubsetPlan.generate(seed=1),
    )
    server = PartialFaceServer(model, reference_plan())
    foreign = other.challenge()
    with pytest.raises(KeyMismatchError, match="not issued"):
        server.check(PartialFaceClient().respond(torch.zeros(1, 3, SIZE, SIZE), foreign), foreign)


def test_mismatched_challenge_is_rejected(images, model):
    server = PartialFaceServer(model, reference_plan())
    client = PartialFaceClient()
    a, b = server.challenge(0, 0), server.challenge(1, 0)
    pa = client.respond(images, a)
    with pytest.raises(KeyMismatchError, match="nonce"):
        server.embed(pa, b)
    # same nonce but other positions (a client answering what it was not asked)
    forged = dataclasses.replace(a, positions=b.positions)
    pf = client.respond(images, forged)
    with pytest.raises(KeyMismatchError, match="differs"):
        server.embed(pf, forged)
    with pytest.raises(KeyMismatchError, match="positions"):
        server.embed(pf, a)
    # a challenge altered after issue (other subset index) is not the issued one
    with pytest.raises(KeyMismatchError):
        server.embed(pa, dataclasses.replace(a, subset=3))


def test_tampered_payloads_are_rejected(images, model):
    server = PartialFaceServer(model, reference_plan())
    ch = server.challenge()
    payload = PartialFaceClient().respond(images, ch)
    wire = bytearray(payload.to_bytes())
    # flip bits in the channel data (the end of the buffer)
    wire[-5] ^= 0x40
    with pytest.raises(FormatError, match="digest"):
        Payload.from_bytes(bytes(wire))
    with pytest.raises(FormatError):
        Payload.from_bytes(payload.to_bytes()[:100])
    with pytest.raises(FormatError):
        Payload.from_bytes(b"not a payload at all")
    with pytest.raises(FacelabTypeError):
        Payload.from_bytes("text")  # type: ignore[arg-type]
    # edited in memory: the digest no longer matches
    edited = dataclasses.replace(payload, channels=payload.channels * 1.01)
    with pytest.raises(FormatError, match="digest"):
        server.embed(edited, ch)
    nan = payload.channels.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        server.embed(dataclasses.replace(payload, channels=nan), ch)
    with pytest.raises(ShapeError):
        server.embed(dataclasses.replace(payload, channels=payload.channels[:, :26]), ch)
    with pytest.raises(FacelabTypeError):
        server.embed(dataclasses.replace(payload, channels=payload.channels.double()), ch)
    # the untouched payload still works
    assert server.embed(payload, ch).shape == (6, 16)


def test_client_refuses_bad_challenges_and_images(images, model):
    server = PartialFaceServer(model, reference_plan())
    ch = server.challenge()
    client = PartialFaceClient()
    with pytest.raises(RangeError, match="pruned"):
        client.respond(images, dataclasses.replace(ch, positions=(0, *ch.positions[1:])))
    with pytest.raises(RangeError, match="at most"):
        client.respond(images, dataclasses.replace(ch, positions=tuple(range(30, 40))))
    with pytest.raises(ShapeError, match="32x32"):
        client.respond(torch.zeros(2, 3, 40, 40), ch)
    with pytest.raises(RangeError):
        client.respond(images * 2, ch)
    with pytest.raises(FacelabTypeError):
        client.respond(images, ch.to_dict())  # type: ignore[arg-type]
