"""The inference protocol: the server challenges, the client answers with a few channels.

::

    server = PartialFaceServer(model, plan)          # holds the plan (its secret) and model
    client = PartialFaceClient()                     # holds the images, never the plan
    challenge = server.challenge()                   # random subset + permutation (CSPRNG)
    payload = client.respond(images, challenge)      # only those 3 * s channels cross
    data = payload.to_bytes()                        # safetensors bytes on the wire
    emb = server.embed(Payload.from_bytes(data), challenge)

A :class:`Challenge` names the positions to send in the order to send them, plus a random
``nonce``; it does not reveal the rest of the plan. A :class:`Payload` carries the channels
(float32), the nonce and positions it answers, the image size and codec mode, and a SHA-256
digest of all of that, checked on arrival. The server accepts a payload only for a challenge
it issued and that is still open (challenges are single-use by default), only if the payload
answers exactly that challenge, and only if shape, dtype and values are valid.

Gallery and probe may come from different challenges: the model maps every subset to the same
embedding space, so embeddings of one person match across subsets.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from facelab.core.errors import (
    FacelabTypeError,
    FormatError,
    KeyMismatchError,
    NonFiniteError,
    RangeError,
    ShapeError,
)
from facelab.core.freq import COLORS, PARTIALFACE_PRUNED
from facelab.core.sphere import normalize
from facelab.partialface.model import PartialFaceModel, flip_sum_embedding
from facelab.partialface.plan import SubsetPlan
from facelab.partialface.spectrum import SubsetEncoder

PAYLOAD_FORMAT = "facelab.partialface.payload"
PAYLOAD_FORMAT_VERSION = 1
CHALLENGE_FORMAT = "facelab.partialface.challenge"
CHALLENGE_FORMAT_VERSION = 1
_NONCE_BYTES = 16
_CHANNELS_KEY = "channels"


def _check_nonce(nonce: object, name: str = "nonce") -> str:
    if not isinstance(nonce, str) or len(nonce) != 2 * _NONCE_BYTES:
        raise FormatError(f"{name}: expected {2 * _NONCE_BYTES} hex characters, got {nonce!r}")
    try:
        bytes.fromhex(nonce)
    except ValueError:
        raise FormatError(f"{name}: expected hex characters, got {nonce!r}") from None
    return nonce


@dataclass(frozen=True)
class Challenge:
    """What the server asks for: ``positions`` (DCT positions per colour, in the order to send
    them), identified by a random ``nonce``. ``subset``/``permutation`` index the server's plan
    (kept so the server can check the challenge against its plan); ``plan_id`` names the plan."""

    nonce: str
    subset: int
    permutation: int
    positions: tuple[int, ...]
    plan_id: str
    image_size: int
    codec_mode: str

    def __post_init__(self) -> None:
        _check_nonce(self.nonce)
        object.__setattr__(self, "positions", tuple(int(p) for p in self.positions))

    @property
    def num_channels(self) -> int:
        return len(COLORS) * len(self.positions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CHALLENGE_FORMAT,
            "format_version": CHALLENGE_FORMAT_VERSION,
            "nonce": self.nonce,
            "subset": self.subset,
            "permutation": self.permutation,
            "positions": list(self.positions),
            "plan_id": self.plan_id,
            "image_size": self.image_size,
            "codec_mode": self.codec_mode,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str | bytes) -> Challenge:
        try:
            doc = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FormatError(f"challenge: not valid JSON ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != CHALLENGE_FORMAT:
            raise FormatError(f"challenge: expected format {CHALLENGE_FORMAT!r}")
        if doc.get("format_version") != CHALLENGE_FORMAT_VERSION:
            raise FormatError(
                f"challenge: expected format_version {CHALLENGE_FORMAT_VERSION}, got "
                f"{doc.get('format_version')!r}"
            )
        try:
            return cls(
                nonce=doc["nonce"],
                subset=int(doc["subset"]),
                permutation=int(doc["permutation"]),
                positions=tuple(int(p) for p in doc["positions"]),
                plan_id=str(doc["plan_id"]),
                image_size=int(doc["image_size"]),
                codec_mode=str(doc["codec_mode"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"challenge: missing or malformed field ({e})") from None


def _digest(channels: torch.Tensor, meta: dict[str, str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(meta, sort_keys=True).encode())
    h.update(str(tuple(channels.shape)).encode())
    h.update(channels.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Payload:
    """What crosses from client to server: ``channels`` ``(B, 3s, H', W')`` float32 and what
    they answer. ``digest`` (SHA-256 over channels and fields) detects corruption and edits in
    transit; it is not a signature (the client computes it)."""

    channels: torch.Tensor
    nonce: str
    positions: tuple[int, ...]
    image_size: int
    codec_mode: str
    digest: str

    @classmethod
    def create(
        cls, channels: torch.Tensor, challenge: Challenge, image_size: int, codec_mode: str
    ) -> Payload:
        channels = channels.detach().to("cpu", torch.float32).contiguous()
        fields = _fields(challenge.nonce, challenge.positions, image_size, codec_mode)
        return cls(
            channels,
            challenge.nonce,
            tuple(challenge.positions),
            image_size,
            codec_mode,
            _digest(channels, fields),
        )

    @property
    def num_images(self) -> int:
        return int(self.channels.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of channel data (4 per value)."""
        return self.channels.numel() * self.channels.element_size()

    def fields(self) -> dict[str, str]:
        return _fields(self.nonce, self.positions, self.image_size, self.codec_mode)

    def verify(self) -> None:
        """Check format, shape, dtype, finiteness and the digest; raise a facelab error."""
        x = self.channels
        if not isinstance(x, torch.Tensor):
            raise FacelabTypeError(f"payload channels: expected a tensor, got {type(x).__name__}")
        if x.dtype != torch.float32:
            raise FacelabTypeError(f"payload channels: expected float32, got {x.dtype}")
        want_c = len(COLORS) * len(self.positions)
        if x.dim() != 4 or x.shape[1] != want_c or x.shape[0] < 1:
            raise ShapeError(
                f"payload channels: expected (B >= 1, {want_c}, H', W') for "
                f"{len(self.positions)} positions, got shape {tuple(x.shape)}"
            )
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteError("payload channels: expected finite values, got NaN/Inf")
        if _digest(x, self.fields()) != self.digest:
            raise FormatError(
                "payload: the digest does not match its content (corrupted or modified in transit)"
            )

    def to_bytes(self) -> bytes:
        """safetensors bytes: the channels plus the fields and digest as metadata."""
        metadata = {
            "format": PAYLOAD_FORMAT,
            "format_version": str(PAYLOAD_FORMAT_VERSION),
            **self.fields(),
            "digest": self.digest,
        }
        return st_save({_CHANNELS_KEY: self.channels.contiguous()}, metadata=metadata)

    @classmethod
    def from_bytes(cls, data: bytes) -> Payload:
        """Parse and validate bytes from :meth:`to_bytes` (untrusted input)."""
        if not isinstance(data, bytes | bytearray):
            raise FacelabTypeError(f"payload: expected bytes, got {type(data).__name__}")
        data = bytes(data)
        try:
            tensors = st_load(data)
            n = int.from_bytes(data[:8], "little")
            header = json.loads(data[8 : 8 + n])
        except (SafetensorError, ValueError, RuntimeError, UnicodeDecodeError) as e:
            raise FormatError(f"payload: not a readable safetensors payload ({e})") from None
        meta = header.get("__metadata__") or {} if isinstance(header, dict) else {}
        if meta.get("format") != PAYLOAD_FORMAT:
            raise FormatError(
                f"payload: expected format {PAYLOAD_FORMAT!r}, got {meta.get('format')!r}"
            )
        if meta.get("format_version") != str(PAYLOAD_FORMAT_VERSION):
            raise FormatError(
                f"payload: expected format_version {PAYLOAD_FORMAT_VERSION}, got "
                f"{meta.get('format_version')!r}"
            )
        if set(tensors) != {_CHANNELS_KEY}:
            raise FormatError(
                f"payload: expected one tensor {_CHANNELS_KEY!r}, got {sorted(tensors)}"
            )
        try:
            payload = cls(
                channels=tensors[_CHANNELS_KEY],
                nonce=_check_nonce(meta["nonce"], "payload nonce"),
                positions=tuple(int(p) for p in json.loads(meta["positions"])),
                image_size=int(meta["image_size"]),
                codec_mode=str(meta["codec_mode"]),
                digest=str(meta["digest"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"payload: missing or malformed metadata ({e})") from None
        payload.verify()
        return payload


def _fields(nonce: str, positions: tuple[int, ...], image_size: int, codec_mode: str) -> dict:
    return {
        "nonce": nonce,
        "positions": json.dumps([int(p) for p in positions]),
        "image_size": str(int(image_size)),
        "codec_mode": str(codec_mode),
    }


class PartialFaceClient:
    """Computes the DCT of its images and sends only the challenged channels.

    The client needs no plan: the challenge lists the positions. It refuses challenges that
    ask for pruned (low, human-perceivable) frequencies or for more than one subset's worth.
    """

    def __init__(self, max_positions: int = 9) -> None:
        self.max_positions = int(max_positions)

    def respond(self, images: torch.Tensor, challenge: Challenge) -> Payload:
        """``images`` ``(B, 3, H, W)`` in [-1, 1] -> the payload answering ``challenge``."""
        if not isinstance(challenge, Challenge):
            raise FacelabTypeError(
                f"challenge: expected a Challenge, got {type(challenge).__name__}"
            )
        pos = challenge.positions
        low = sorted(set(pos) & set(PARTIALFACE_PRUNED))
        if low:
            raise RangeError(
                f"challenge: asks for pruned low-frequency positions {low}; a PartialFace client "
                "never sends those"
            )
        if len(pos) > self.max_positions or len(set(pos)) != len(pos):
            raise RangeError(
                f"challenge: expected at most {self.max_positions} distinct positions, got {len(pos)}"
            )
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ShapeError(
                f"images: expected a (B, 3, H, W) tensor, got {getattr(images, 'shape', type(images))}"
            )
        if tuple(images.shape[-2:]) != (challenge.image_size, challenge.image_size):
            raise ShapeError(
                f"images: the server expects {challenge.image_size}x{challenge.image_size} "
                f"faces, got {tuple(images.shape[-2:])}"
            )
        encoder = SubsetEncoder(mode=challenge.codec_mode)  # type: ignore[arg-type]
        with torch.no_grad():
            channels = encoder.encode(images.float(), pos)
        return Payload.create(channels, challenge, challenge.image_size, challenge.codec_mode)


class PartialFaceServer:
    """Holds the model and the plan; issues challenges and embeds payloads.

    Args:
        model: a trained :class:`PartialFaceModel` (its ``plan_id`` must match ``plan``).
        plan: the :class:`SubsetPlan` the model was trained with.
        seed: ``None`` (default): challenges from the OS CSPRNG (``secrets``); an int: a
            seeded generator (reproducible experiments only).
        single_use: a challenge is consumed by the first payload embedded against it.
        flip: add the embedding of the mirrored face, computed from the payload alone.
        batch_size: images per forward pass.
    """

    def __init__(
        self,
        model: PartialFaceModel,
        plan: SubsetPlan,
        *,
        seed: int | None = None,
        single_use: bool = True,
        flip: bool = True,
        batch_size: int = 256,
    ) -> None:
        if not isinstance(model, PartialFaceModel):
            raise FacelabTypeError(
                f"model: expected a PartialFaceModel, got {type(model).__name__}"
            )
        if not isinstance(plan, SubsetPlan):
            raise FacelabTypeError(f"plan: expected a SubsetPlan, got {type(plan).__name__}")
        model.check_plan(plan.plan_id)
        if plan.subset_size != model.subset_size:
            raise KeyMismatchError(
                f"plan: subsets of {plan.subset_size} positions, the model takes "
                f"{model.subset_size}"
            )
        self.model = model.eval()
        self.plan = plan
        self.single_use = single_use
        self.flip = flip
        self.batch_size = int(batch_size)
        self._rng = np.random.default_rng([seed, 0xC4A1]) if seed is not None else None
        self._open: dict[str, Challenge] = {}

    def __repr__(self) -> str:
        return (
            f"PartialFaceServer(plan_id={self.plan.plan_id!r}, open_challenges={len(self._open)})"
        )

    def _randbelow(self, n: int) -> int:
        return int(self._rng.integers(n)) if self._rng is not None else secrets.randbelow(n)

    def _nonce(self) -> str:
        if self._rng is not None:
            return bytes(self._rng.integers(0, 256, _NONCE_BYTES, dtype=np.uint8)).hex()
        return secrets.token_hex(_NONCE_BYTES)

    def challenge(self, subset: int | None = None, permutation: int | None = None) -> Challenge:
        """A new challenge; subset and permutation drawn uniformly unless given."""
        plan = self.plan
        s = self._randbelow(plan.num_subsets) if subset is None else subset
        p = self._randbelow(plan.num_permutations) if permutation is None else permutation
        ch = Challenge(
            nonce=self._nonce(),
            subset=s,
            permutation=p,
            positions=plan.positions(s, p),
            plan_id=plan.plan_id,
            image_size=self.model.image_size,
            codec_mode=self.model.codec_mode,
        )
        self._open[ch.nonce] = ch
        return ch

    def revoke(self, challenge: Challenge) -> None:
        self._open.pop(challenge.nonce, None)

    def check(self, payload: Payload, challenge: Challenge) -> None:
        """Raise unless ``payload`` validly answers the open ``challenge`` of this server."""
        if not isinstance(payload, Payload):
            raise FacelabTypeError(f"payload: expected a Payload, got {type(payload).__name__}")
        if not isinstance(challenge, Challenge):
            raise FacelabTypeError(
                f"challenge: expected a Challenge, got {type(challenge).__name__}"
            )
        issued = self._open.get(challenge.nonce)
        if issued is None:
            raise KeyMismatchError(
                "challenge: not issued by this server or already used (challenges are single-use)"
            )
        if issued != challenge:
            raise KeyMismatchError("challenge: differs from the one this server issued")
        if challenge.plan_id != self.plan.plan_id:
            raise KeyMismatchError(
                f"challenge: made for plan {challenge.plan_id}, this server has {self.plan.plan_id}"
            )
        if payload.nonce != challenge.nonce:
            raise KeyMismatchError(
                "payload: answers another challenge (nonce differs from the challenge's)"
            )
        if payload.positions != challenge.positions:
            raise KeyMismatchError(
                f"payload: holds positions {list(payload.positions)}, the challenge asked for "
                f"{list(challenge.positions)}"
            )
        if (
            payload.image_size != self.model.image_size
            or payload.codec_mode != self.model.codec_mode
        ):
            raise KeyMismatchError(
                f"payload: made from {payload.image_size}px images in {payload.codec_mode!r} mode, "
                f"the model takes {self.model.image_size}px in {self.model.codec_mode!r} mode"
            )
        payload.verify()
        side = self.model.map_size
        if tuple(payload.channels.shape[-2:]) != (side, side):
            raise ShapeError(
                f"payload channels: expected {side}x{side} maps, got {tuple(payload.channels.shape)}"
            )

    @torch.no_grad()
    def embed(self, payload: Payload, challenge: Challenge) -> torch.Tensor:
        """L2-normalized embeddings ``(B, D)`` (float32, CPU) of the payload's images."""
        self.check(payload, challenge)
        if self.single_use:
            self._open.pop(challenge.nonce, None)
        model = self.model
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        outs = []
        try:
            for chunk in payload.channels.split(self.batch_size):
                x = chunk.to(device)
                f = flip_sum_embedding(model, x, challenge.positions) if self.flip else model(x)
                outs.append(f.float().cpu())
        finally:
            model.train(was_training)
        return normalize(torch.cat(outs))
