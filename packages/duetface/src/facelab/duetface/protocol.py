"""What crosses the trust boundary: ``DuetFaceClient.prepare(images) -> ServerPayload`` and
``DuetFaceServer.embed(payload) -> embeddings``.

The client holds the images, the 30 low-frequency channels, the client model and the interface
convs (:class:`~facelab.duetface.model.MaskGenerator`). It sends only

* ``high_freq``: the 162 server channels ``(B, 162, H, W)`` (reference-mode DCT), and
* ``masks``: the four feature masks ``(B, 1, h_i, w_i)`` in [0, 1], one per server stage,

never the client channels nor the client features. ``to_bytes`` / ``from_bytes`` serialize a
payload with safetensors; the header records the format, its version, the codec mode, the
server's channel positions, the image size and a SHA-256 of the tensor data, and
``from_bytes`` validates all of it (and dtypes, shapes, finiteness, mask range) before anything
reaches a model. ``DuetFaceServer.embed`` then checks that the payload fits its own network
(channel layout, image size, number and sizes of masks).

Payload size: ``162 * H * W`` values plus the masks; at 112 px in float32 that is 8,128,512 +
16,660 bytes per image (``payload_dtype=torch.float16`` halves it).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from facelab.core.errors import (
    FacelabTypeError,
    FormatError,
    KeyMismatchError,
    ShapeError,
    expect_finite,
    expect_range,
    expect_rank,
    expect_tensor,
)
from facelab.core.freq import COEFFS_PER_COLOR, FrequencyCodec, split_channels
from facelab.duetface.model import ClientModel, MaskGenerator, ServerModel
from facelab.duetface.roi import DEFAULT_ROI_MARGIN, RoiBuilder, RoiMode

PAYLOAD_FORMAT = "facelab.duetface.ServerPayload"
PAYLOAD_VERSION = 1
PAYLOAD_DTYPES = (torch.float32, torch.float16)
CODEC_MODE = "reference"
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16"}
_META_KEYS = {"format", "version", "codec", "positions", "image_size", "num_masks", "sha256"}


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(json.dumps(list(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass(frozen=True)
class ServerPayload:
    """The server's view of a batch: high-frequency channels and the four feature masks.

    ``positions``: per-colour DCT positions the ``high_freq`` channels hold (colour-major, the
    54 not kept by the client); ``image_size``: (H, W) of the aligned faces.
    Construction validates everything (see :meth:`validate`).
    """

    high_freq: torch.Tensor
    masks: tuple[torch.Tensor, ...]
    positions: tuple[int, ...]
    image_size: tuple[int, int]
    version: int = PAYLOAD_VERSION
    codec: str = CODEC_MODE

    def __post_init__(self) -> None:
        object.__setattr__(self, "masks", tuple(self.masks))
        object.__setattr__(self, "positions", tuple(int(p) for p in self.positions))
        object.__setattr__(self, "image_size", tuple(int(s) for s in self.image_size))
        self.validate()

    # ---- checks
    def validate(self) -> None:
        """Format version, codec, dtypes, shapes, finiteness and mask range; raises on any."""
        if self.version != PAYLOAD_VERSION:
            raise FormatError(
                f"ServerPayload: unsupported version {self.version!r} (this facelab-duetface "
                f"reads version {PAYLOAD_VERSION})"
            )
        if self.codec != CODEC_MODE:
            raise FormatError(f"ServerPayload: expected codec {CODEC_MODE!r}, got {self.codec!r}")
        pos = self.positions
        if not pos or any(not 0 <= p < COEFFS_PER_COLOR for p in pos) or len(set(pos)) != len(pos):
            raise FormatError(f"ServerPayload: invalid channel positions {list(pos)}")
        x = expect_tensor(self.high_freq, "payload high_freq", floating=True)
        if x.dtype not in PAYLOAD_DTYPES:
            raise FacelabTypeError(f"payload high_freq: expected float32 or float16, got {x.dtype}")
        expect_rank(x, 4, "payload high_freq", "B, C, H, W")
        h, w = self.image_size
        if tuple(x.shape[1:]) != (3 * len(pos), h, w):
            raise ShapeError(
                f"payload high_freq: expected (B, {3 * len(pos)}, {h}, {w}) for {len(pos)} "
                f"positions x 3 colours at {h}x{w}, got {tuple(x.shape)}"
            )
        if x.shape[0] == 0:
            raise ShapeError("payload high_freq: expected a non-empty batch, got 0 images")
        expect_finite(x, "payload high_freq")
        for i, m in enumerate(self.masks):
            name = f"payload masks[{i}]"
            expect_tensor(m, name, floating=True)
            if m.dtype != x.dtype:
                raise FacelabTypeError(
                    f"{name}: expected dtype {x.dtype} like high_freq, got {m.dtype}"
                )
            if m.dim() != 4 or m.shape[0] != x.shape[0] or m.shape[1] != 1:
                raise ShapeError(f"{name}: expected ({x.shape[0]}, 1, h, w), got {tuple(m.shape)}")
            expect_finite(m, name)
            expect_range(m, 0.0, 1.0, name, tol=1e-3)

    # ---- info
    @property
    def batch_size(self) -> int:
        return int(self.high_freq.shape[0])

    @property
    def nbytes(self) -> int:
        """Tensor bytes of the whole batch (the serialized size adds a small header)."""
        return sum(t.numel() * t.element_size() for t in (self.high_freq, *self.masks))

    @property
    def bytes_per_image(self) -> int:
        return self.nbytes // self.batch_size

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> ServerPayload:
        return ServerPayload(
            self.high_freq.to(device=device, dtype=dtype),
            tuple(m.to(device=device, dtype=dtype) for m in self.masks),
            self.positions,
            self.image_size,
        )

    # ---- bytes
    def _tensors(self) -> dict[str, torch.Tensor]:
        out = {"high_freq": self.high_freq.detach().cpu().contiguous()}
        for i, m in enumerate(self.masks):
            out[f"mask_{i}"] = m.detach().cpu().contiguous()
        return out

    def to_bytes(self) -> bytes:
        """safetensors bytes with the header described in the module docstring."""
        tensors = self._tensors()
        meta = {
            "format": PAYLOAD_FORMAT,
            "version": str(self.version),
            "codec": self.codec,
            "positions": json.dumps(list(self.positions)),
            "image_size": json.dumps(list(self.image_size)),
            "num_masks": str(len(self.masks)),
            "sha256": _digest(tensors),
        }
        return st_save(tensors, metadata=meta)

    @classmethod
    def from_bytes(cls, data: bytes) -> ServerPayload:
        """Parse and validate bytes written by :meth:`to_bytes`; anything else raises
        :class:`~facelab.core.errors.FormatError` (or a shape/type error naming the field)."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise FacelabTypeError(
                f"ServerPayload.from_bytes: expected bytes, got {type(data).__name__}"
            )
        data = bytes(data)
        meta = _read_metadata(data)
        missing = sorted(_META_KEYS - set(meta))
        if meta.get("format") != PAYLOAD_FORMAT:
            raise FormatError(
                f"ServerPayload.from_bytes: not a DuetFace payload (format {meta.get('format')!r}, "
                f"expected {PAYLOAD_FORMAT!r})"
            )
        if meta.get("version") != str(PAYLOAD_VERSION):
            raise FormatError(
                f"ServerPayload.from_bytes: unsupported payload version {meta.get('version')!r} "
                f"(this facelab-duetface reads {PAYLOAD_VERSION})"
            )
        if missing:
            raise FormatError(f"ServerPayload.from_bytes: header lacks {missing}")
        try:
            tensors = st_load(data)
        except (SafetensorError, RuntimeError, ValueError) as e:
            raise FormatError(
                f"ServerPayload.from_bytes: corrupted safetensors data ({e})"
            ) from None
        try:
            positions = json.loads(meta["positions"])
            image_size = json.loads(meta["image_size"])
            num_masks = int(meta["num_masks"])
            if not (isinstance(positions, list) and all(isinstance(p, int) for p in positions)):
                raise ValueError("positions must be a list of ints")
            if not (isinstance(image_size, list) and len(image_size) == 2):
                raise ValueError("image_size must be [H, W]")
        except (ValueError, TypeError) as e:
            raise FormatError(f"ServerPayload.from_bytes: corrupted header ({e})") from None
        want = {"high_freq", *(f"mask_{i}" for i in range(num_masks))}
        if set(tensors) != want:
            raise FormatError(
                f"ServerPayload.from_bytes: expected tensors {sorted(want)}, got {sorted(tensors)}"
            )
        if _digest(tensors) != meta["sha256"]:
            raise FormatError(
                "ServerPayload.from_bytes: SHA-256 of the tensor data does not match the header: "
                "the payload was modified or corrupted in transit"
            )
        return cls(
            tensors["high_freq"],
            tuple(tensors[f"mask_{i}"] for i in range(num_masks)),
            tuple(positions),
            tuple(image_size),  # type: ignore[arg-type]
        )


def _read_metadata(data: bytes) -> dict[str, str]:
    """The safetensors header's ``__metadata__`` (parsed without loading tensors)."""
    if len(data) < 8:
        raise FormatError(
            f"ServerPayload.from_bytes: {len(data)} bytes is too short for safetensors"
        )
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise FormatError(
            f"ServerPayload.from_bytes: header length {n} does not fit {len(data)} bytes (truncated?)"
        )
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"ServerPayload.from_bytes: unreadable header ({e})") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise FormatError("ServerPayload.from_bytes: the header has no metadata")
    return {str(k): str(v) for k, v in meta.items()}


# --------------------------------------------------------------------------------------------
# the two parties


def _check_images(images: object, size: int) -> torch.Tensor:
    x = expect_tensor(images, "images", floating=True)
    expect_rank(x, 4, "images", "B, 3, H, W")
    if tuple(x.shape[1:]) != (3, size, size):
        raise ShapeError(
            f"images: expected (B, 3, {size}, {size}) aligned faces, got {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ShapeError("images: expected at least one image, got an empty batch")
    expect_finite(x, "images")
    expect_range(x, -1.0, 1.0, "images")
    return x


class DuetFaceClient(nn.Module):
    """The client: images -> :class:`ServerPayload` (its 30 channels never leave it).

    Args:
        client: the stage-A client model (frozen).
        masks: the interface convs (``ServerModel.mask_generator()`` after stage B); ``None``
            for a plain server (payload without masks).
        roi: ``"template"``, ``"mtcnn"`` or ``"none"`` (:mod:`facelab.duetface.roi`).
        roi_margin: hull dilation as a fraction of the image width.
        payload_dtype: ``torch.float32`` (default) or ``torch.float16`` (half the bytes).
        detector: an MTCNN ``FaceDetector`` to reuse for ``roi="mtcnn"``.
    """

    def __init__(
        self,
        client: ClientModel,
        masks: MaskGenerator | None,
        *,
        roi: RoiMode = "template",
        roi_margin: float = DEFAULT_ROI_MARGIN,
        payload_dtype: torch.dtype = torch.float32,
        detector: Any = None,
    ) -> None:
        super().__init__()
        if not isinstance(client, ClientModel):
            raise FacelabTypeError(f"client: expected a ClientModel, got {type(client).__name__}")
        if masks is not None and not isinstance(masks, MaskGenerator):
            raise FacelabTypeError(
                f"masks: expected a MaskGenerator or None, got {type(masks).__name__}"
            )
        if payload_dtype not in PAYLOAD_DTYPES:
            raise FacelabTypeError(
                f"payload_dtype: expected float32 or float16, got {payload_dtype}"
            )
        if masks is not None:
            have = tuple(c for c, _, _ in client.stage_shapes)
            if have != masks.client_channels:
                raise KeyMismatchError(
                    f"masks: the interface convs expect client maps with {masks.client_channels} "
                    f"channels, this client model makes {have}"
                )
        self.client = client.eval().requires_grad_(False)
        self.masks = None if masks is None else masks.eval().requires_grad_(False)
        self.roi = RoiBuilder(roi, roi_margin, detector=detector)
        self.payload_dtype = payload_dtype
        self.codec = FrequencyCodec(CODEC_MODE, check=False)

    @property
    def image_size(self) -> int:
        return self.client.image_size

    @property
    def server_positions(self) -> tuple[int, ...]:
        from facelab.core.freq import complement_positions

        return complement_positions(self.client.positions)

    def split(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(client channels, server channels) of the images' reference-mode DCT."""
        x = _check_images(images, self.image_size)
        return split_channels(self.codec.encode(x), self.client.positions)

    @torch.no_grad()
    def prepare(self, images: torch.Tensor, landmarks: torch.Tensor | None = None) -> ServerPayload:
        """Encode, split, run the client model, build the ROI-refined masks.

        ``images``: aligned faces ``(B, 3, H, W)`` in [-1, 1]; ``landmarks``: optional
        ``(B, K, 2)`` pixel (x, y) points for the ROI (else ``roi`` decides).
        """
        was_training = self.training
        self.eval()
        try:
            device = next(self.client.parameters()).device
            x = images.to(device) if isinstance(images, torch.Tensor) else images
            low, high = self.split(x)
            masks: tuple[torch.Tensor, ...] = ()
            if self.masks is not None:
                maps = self.client.feature_maps(low)
                roi = self.roi(x, landmarks)
                masks = tuple(m.to(self.payload_dtype) for m in self.masks(maps, roi))
        finally:
            self.train(was_training)
        return ServerPayload(
            high.to(self.payload_dtype),
            masks,
            self.server_positions,
            (self.image_size, self.image_size),
        )

    def forward(self, images: torch.Tensor) -> ServerPayload:  # type: ignore[override]
        return self.prepare(images)


class DuetFaceServer(nn.Module):
    """The server: :class:`ServerPayload` (or its bytes) -> embeddings ``(B, E)``."""

    def __init__(self, server: ServerModel) -> None:
        super().__init__()
        if not isinstance(server, ServerModel):
            raise FacelabTypeError(f"server: expected a ServerModel, got {type(server).__name__}")
        self.server = server.eval().requires_grad_(False)

    def check(self, payload: ServerPayload) -> None:
        """The payload fits this server: channel layout, image size, masks per stage."""
        if not isinstance(payload, ServerPayload):
            raise FacelabTypeError(
                f"payload: expected a ServerPayload, got {type(payload).__name__}"
            )
        s = self.server
        if payload.positions != s.positions:
            raise KeyMismatchError(
                f"payload: its channels hold DCT positions {list(payload.positions)}, this server "
                f"was trained on {list(s.positions)}"
            )
        if payload.image_size != (s.image_size, s.image_size):
            raise KeyMismatchError(
                f"payload: made for {payload.image_size[0]}x{payload.image_size[1]} faces, this "
                f"server takes {s.image_size}x{s.image_size}"
            )
        sizes = tuple(tuple(m.shape[-2:]) for m in payload.masks)
        if sizes != s.mask_sizes:
            raise KeyMismatchError(
                f"payload: masks of sizes {list(sizes)} do not match this server's stages "
                f"{list(s.mask_sizes)}"
            )

    @torch.no_grad()
    def embed(self, payload: ServerPayload | bytes) -> torch.Tensor:
        """Embeddings (float32, on the server's device) of a validated payload."""
        if isinstance(payload, bytes | bytearray | memoryview):
            payload = ServerPayload.from_bytes(bytes(payload))
        self.check(payload)
        p = next(self.server.parameters())
        x = payload.high_freq.to(p.device, p.dtype)
        masks = [m.to(p.device, p.dtype) for m in payload.masks]
        was_training = self.server.training
        self.server.eval()
        try:
            return self.server(x, masks if masks else None).float()
        finally:
            self.server.train(was_training)

    def forward(self, payload: ServerPayload) -> torch.Tensor:  # type: ignore[override]
        return self.embed(payload)


class DuetFacePipeline(nn.Module):
    """Images -> embeddings through the full protocol (client, optional bytes, server): the
    ``nn.Module`` that verification (``facelab.core.recipe.evaluate_sets``) runs."""

    def __init__(
        self, client: DuetFaceClient, server: DuetFaceServer, *, through_bytes: bool = False
    ) -> None:
        super().__init__()
        self.client = client
        self.server = server
        self.through_bytes = through_bytes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        payload = self.client.prepare(images)
        if self.through_bytes:
            return self.server.embed(payload.to_bytes())
        return self.server.embed(payload)


# --------------------------------------------------------------------------------------------
# the saved bundle


BUNDLE_FILE = "duetface.json"
BUNDLE_FORMAT = "facelab.duetface.bundle"
BUNDLE_VERSION = 1


def save_bundle(
    directory: str | os.PathLike,
    client: ClientModel,
    server: ServerModel,
    *,
    roi: RoiMode = "template",
    roi_margin: float = DEFAULT_ROI_MARGIN,
) -> Path:
    """Write ``client/`` (ClientModel), ``client_masks/`` (MaskGenerator, absent for a plain
    server), ``server/`` (ServerModel) and ``duetface.json`` (ROI settings) to ``directory``."""
    from facelab.core.recipe import write_json

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    client.save_pretrained(out / "client")
    server.save_pretrained(out / "server")
    if server.interactive:
        server.mask_generator().save_pretrained(out / "client_masks")
    write_json(
        out / BUNDLE_FILE,
        {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "roi": roi,
            "roi_margin": roi_margin,
            "interactive": server.interactive,
        },
    )
    return out


def read_bundle(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / BUNDLE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a DuetFace bundle (missing {BUNDLE_FILE})")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != BUNDLE_FORMAT:
        raise FormatError(f"{path}: expected format {BUNDLE_FORMAT!r}")
    if doc.get("version") != BUNDLE_VERSION:
        raise FormatError(f"{path}: unsupported bundle version {doc.get('version')!r}")
    return doc


def load_client(
    directory: str | os.PathLike,
    *,
    roi: RoiMode | None = None,
    payload_dtype: torch.dtype = torch.float32,
    map_location: str | torch.device = "cpu",
) -> DuetFaceClient:
    """The client side of a saved bundle (``roi`` overrides the saved ROI mode)."""
    doc = read_bundle(directory)
    d = Path(directory)
    client = ClientModel.from_pretrained(d / "client", map_location=map_location)
    masks = (
        MaskGenerator.from_pretrained(d / "client_masks", map_location=map_location)
        if doc.get("interactive", True)
        else None
    )
    return DuetFaceClient(
        client,
        masks,
        roi=roi or doc["roi"],
        roi_margin=float(doc["roi_margin"]),
        payload_dtype=payload_dtype,
    )


def load_server(
    directory: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> DuetFaceServer:
    """The server side of a saved bundle (it never reads the client's files)."""
    read_bundle(directory)
    return DuetFaceServer(
        ServerModel.from_pretrained(Path(directory) / "server", map_location=map_location)
    )


def load_pipeline(directory: str | os.PathLike, **client_options: Any) -> DuetFacePipeline:
    map_location = client_options.get("map_location", "cpu")
    return DuetFacePipeline(
        load_client(directory, **client_options), load_server(directory, map_location=map_location)
    )


def payload_bytes_per_image(
    image_size: int,
    mask_sizes: Sequence[tuple[int, int]],
    server_channels: int = 162,
    dtype: torch.dtype = torch.float32,
) -> int:
    """Tensor bytes one image's payload takes (without the safetensors header)."""
    per = torch.empty((), dtype=dtype).element_size()
    return per * (server_channels * image_size * image_size + sum(h * w for h, w in mask_sizes))
