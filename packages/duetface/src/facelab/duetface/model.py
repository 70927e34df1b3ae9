"""DuetFace's networks: the client model, the server model and the interactive blocks.

Data flow for a batch of aligned faces ``x`` (B, 3, H, W) in [-1, 1]::

    coeffs = FrequencyCodec("reference").encode(x)           # (B, 192, H, W)
    x_client, x_server = split_channels(coeffs, positions)  # 30 and 162 channels
    maps = client.feature_maps(x_client)                     # 4 client stage maps
    masks = mask_generator(maps, roi)                        # 4 masks (B, 1, h_i, w_i), client side
    emb = server(x_server, masks)                            # (B, 512), server side

* :class:`ClientModel`: MobileFaceNet with a 30-channel stem (3x3, stride 2); its four stage
  maps (64@H/4, 128@H/8, 128@H/16, 512@H/16) are returned explicitly by
  :meth:`ClientModel.feature_maps` / :meth:`ClientModel.features` (no hooks, no global state).
* :class:`ServerModel`: an insightface IResNet (IR-18 by default) with a stride-1 162-channel
  stem, dropout 0.4 before the embedding layer, and one :class:`InteractiveBlock` after each of
  its 4 stages (= after the last unit of each stage, as in the reference).
* :class:`InteractiveBlock`: a registered 1x1 *interface* conv (client channels -> server
  channels) that turns a client map into a mask, and a learnable scalar ``w`` (initialised to 0)
  with which the mask is overlaid: ``F' = F + w * F * M``.
* :class:`MaskGenerator`: the client-side half of the four blocks (their interface convs), what a
  client deployment holds besides the client model. ``ServerModel.mask_generator()`` copies it
  out after training.

The mask of a block, for a server stage map ``F`` (C, h, w) and the client map ``G`` of the same
depth: ``M = mean_c(conv1x1(upsample(G, (h, w))))``, min-max normalised per sample to [0, 1],
multiplied by the ROI resized to (h, w) (area average), min-max normalised again. Bilinear
upsampling is linear with weights summing to one and the channel mean of a 1x1 conv is the 1x1
conv with the mean filter, so we compute the same value as ``upsample(conv_mean(G))``: one
channel is upsampled instead of C.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from facelab.core.backbones import IResNet, MobileFaceNet
from facelab.core.backbones.iresnet import IRESNET_LAYERS
from facelab.core.errors import (
    FacelabTypeError,
    RangeError,
    ShapeError,
    expect_tensor,
)
from facelab.core.freq import DUETFACE_CLIENT, NUM_CHANNELS, complement_positions
from facelab.core.hub import PretrainedMixin, register_model

#: per-sample min-max normalisation: a constant map becomes 0, not NaN (the reference divides by
#: max - min unguarded)
MINMAX_EPS = 1e-6
NUM_STAGES = 4


def minmax_normalize(x: torch.Tensor, eps: float = MINMAX_EPS) -> torch.Tensor:
    """Per-sample ``(x - min) / (max - min)`` over all non-batch dims, vectorized."""
    dims = tuple(range(1, x.dim()))
    lo = x.amin(dim=dims, keepdim=True)
    hi = x.amax(dim=dims, keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(eps)


def resize_roi(roi: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """ROI ``(B, 1, H, W)`` -> ``(B, 1, h, w)`` by area averaging (fractional coverage)."""
    if tuple(roi.shape[-2:]) == tuple(size):
        return roi
    return F.adaptive_avg_pool2d(roi, size)


def _check_positions(positions: Sequence[int]) -> tuple[int, ...]:
    pos = tuple(int(p) for p in positions)
    complement_positions(pos)  # range and uniqueness checks
    if not pos:
        raise RangeError("client_positions: expected at least one coefficient position")
    return pos


def _int_tuple(values: Sequence[int], n: int, name: str) -> tuple[int, ...]:
    if isinstance(values, str | bytes) or len(values) != n:
        raise ShapeError(f"{name}: expected {n} integers, got {values!r}")
    out = tuple(int(v) for v in values)
    if any(v < 1 for v in out):
        raise RangeError(f"{name}: expected positive integers, got {values!r}")
    return out


def interactive_mask(
    client_map: torch.Tensor,
    interface: nn.Conv2d,
    roi: torch.Tensor | None,
    size: tuple[int, int],
) -> torch.Tensor:
    """The mask ``(B, 1, h, w)`` in [0, 1] of one interactive block (see the module docstring)."""
    weight = interface.weight.mean(dim=0, keepdim=True)  # channel mean of a 1x1 conv
    bias = None if interface.bias is None else interface.bias.mean().reshape(1)
    m = F.conv2d(client_map, weight, bias)
    if tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
    m = minmax_normalize(m)
    if roi is not None:
        m = minmax_normalize(m * resize_roi(roi.to(m.dtype), size))
    return m


class InteractiveBlock(nn.Module):
    """Client map -> mask (``mask``), and the overlay ``F + w * F * M`` (``overlay``).

    ``interface`` is a registered ``Conv2d(client_channels, server_channels, 1)`` trained with the
    server in stage B (the reference re-creates it inside ``forward``, so it never trains);
    ``weight`` is the scalar ``w``, 0 at initialisation, so training starts from the plain server.
    """

    def __init__(self, client_channels: int, server_channels: int) -> None:
        super().__init__()
        self.client_channels = int(client_channels)
        self.server_channels = int(server_channels)
        self.interface = nn.Conv2d(self.client_channels, self.server_channels, kernel_size=1)
        self.weight = nn.Parameter(torch.zeros(()))

    def mask(
        self, client_map: torch.Tensor, roi: torch.Tensor | None, size: tuple[int, int]
    ) -> torch.Tensor:
        return interactive_mask(client_map, self.interface, roi, size)

    def overlay(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return features + self.weight * features * mask

    def forward(
        self, features: torch.Tensor, client_map: torch.Tensor, roi: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.overlay(features, self.mask(client_map, roi, tuple(features.shape[-2:])))

    def extra_repr(self) -> str:
        return f"client_channels={self.client_channels}, server_channels={self.server_channels}"


# --------------------------------------------------------------------------------------------
# client


@register_model(key="facelab.duetface.ClientModel")
class ClientModel(nn.Module, PretrainedMixin):
    """MobileFaceNet on the client's low-frequency DCT channels (30 = 10 positions x 3 colours).

    Args:
        image_size: side of the aligned face; the reference-mode DCT keeps it (112 -> 112).
        embedding_size: size of the embedding stage A trains with ArcFace (512).
        width: MobileFaceNet channel multiplier (1.0; small values for tests).
        positions: per-colour coefficient positions the client keeps (``DUETFACE_CLIENT``).
    """

    def __init__(
        self,
        *,
        image_size: int = 112,
        embedding_size: int = 512,
        width: float = 1.0,
        positions: Sequence[int] = DUETFACE_CLIENT,
    ) -> None:
        super().__init__()
        self.positions = _check_positions(positions)
        self.image_size = int(image_size)
        self.backbone = MobileFaceNet(
            in_channels=3 * len(self.positions),
            stem_stride=2,
            input_size=self.image_size,
            embedding_size=embedding_size,
            width=width,
        )

    @property
    def config(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "embedding_size": self.backbone.embedding_size,
            "width": self.backbone.width,
            "positions": list(self.positions),
        }

    @property
    def in_channels(self) -> int:
        return self.backbone.in_channels

    @property
    def embedding_size(self) -> int:
        return self.backbone.embedding_size

    @property
    def stage_shapes(self) -> tuple[tuple[int, int, int], ...]:
        """(C, h, w) of the four client maps handed to the interactive blocks."""
        return self.backbone.stage_shapes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings of the client channels ``(B, 30, H, W)`` (stage A's recognizer)."""
        return self.backbone(x)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(embedding, [4 stage maps])``."""
        return self.backbone(x, return_stages=True)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four stage maps only (the head is not run)."""
        return self.backbone.forward_features(x)


# --------------------------------------------------------------------------------------------
# server


@register_model(key="facelab.duetface.ServerModel")
class ServerModel(nn.Module, PretrainedMixin):
    """IResNet on the server's 162 channels with an interactive block after each stage.

    Args:
        depth: IResNet depth (18 as in the paper's default; 50 for IR-50).
        image_size: side of the aligned face (the reference-mode DCT keeps it).
        embedding_size: output embedding size (512).
        base_width: channels of the first stage (64; small values for tests).
        dropout: dropout before the embedding layer (0.4, TFace's IR output layer).
        client_positions: per-colour positions kept by the client; the server gets the rest.
        client_channels: channels of the four client maps (MobileFaceNet: 64, 128, 128, 512).
        interactive: with ``False`` there are no blocks: the plain server network (the
            "server without mask" ablation).
    """

    def __init__(
        self,
        *,
        depth: int = 18,
        image_size: int = 112,
        embedding_size: int = 512,
        base_width: int = 64,
        dropout: float = 0.4,
        client_positions: Sequence[int] = DUETFACE_CLIENT,
        client_channels: Sequence[int] = (64, 128, 128, 512),
        interactive: bool = True,
    ) -> None:
        super().__init__()
        if depth not in IRESNET_LAYERS:
            raise RangeError(f"depth: expected one of {sorted(IRESNET_LAYERS)}, got {depth!r}")
        if not isinstance(interactive, bool):
            raise FacelabTypeError(f"interactive: expected a bool, got {interactive!r}")
        self.client_positions = _check_positions(client_positions)
        self.positions = complement_positions(self.client_positions)
        self.image_size = int(image_size)
        self.client_channels = _int_tuple(client_channels, NUM_STAGES, "client_channels")
        self.interactive = interactive
        self.backbone = IResNet(
            depth,
            in_channels=3 * len(self.positions),
            stem_stride=1,
            input_size=self.image_size,
            embedding_size=embedding_size,
            dropout=dropout,
            base_width=base_width,
        )
        self.blocks = nn.ModuleList(
            [
                InteractiveBlock(cc, c)
                for cc, (c, _, _) in zip(self.client_channels, self.backbone.stage_shapes)
            ]
            if interactive
            else []
        )

    @property
    def config(self) -> dict[str, Any]:
        b = self.backbone
        return {
            "depth": b.depth,
            "image_size": self.image_size,
            "embedding_size": b.embedding_size,
            "base_width": b.base_width,
            "dropout": b.dropout_p,
            "client_positions": list(self.client_positions),
            "client_channels": list(self.client_channels),
            "interactive": self.interactive,
        }

    @property
    def in_channels(self) -> int:
        return self.backbone.in_channels

    @property
    def embedding_size(self) -> int:
        return self.backbone.embedding_size

    @property
    def mask_sizes(self) -> tuple[tuple[int, int], ...]:
        """(h, w) of the masks this server needs, one per interactive block (none if plain)."""
        if not self.interactive:
            return ()
        return tuple((h, w) for _, h, w in self.backbone.stage_shapes)

    def check_masks(self, masks: Sequence[torch.Tensor] | None, batch: int) -> None:
        """Masks must be exactly the ``(B, 1, h_i, w_i)`` maps of this server's stages."""
        want = self.mask_sizes
        got = () if masks is None else tuple(masks)
        if len(got) != len(want):
            raise ShapeError(
                f"masks: this server has {len(want)} interactive blocks and needs {len(want)} "
                f"masks, got {len(got)}"
            )
        for i, (m, (h, w)) in enumerate(zip(got, want)):
            expect_tensor(m, f"masks[{i}]", floating=True)
            if tuple(m.shape) != (batch, 1, h, w):
                raise ShapeError(
                    f"masks[{i}]: expected shape ({batch}, 1, {h}, {w}) for server stage {i + 1}, "
                    f"got {tuple(m.shape)}"
                )

    def make_masks(
        self, client_maps: Sequence[torch.Tensor], roi: torch.Tensor | None
    ) -> list[torch.Tensor]:
        """The four masks from the client maps (differentiable in the interface convs; used in
        stage-B training, where the interface convs train with the server)."""
        return masks_from_maps(self.blocks, self.mask_sizes, client_maps, roi)

    def forward(
        self,
        x: torch.Tensor,
        masks: Sequence[torch.Tensor] | None = None,
        *,
        client_maps: Sequence[torch.Tensor] | None = None,
        roi: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embeddings ``(B, E)`` of the server channels ``(B, 162, H, W)`` and the masks.

        Training passes ``client_maps`` (and ``roi``) instead of ``masks``: the masks are then
        made inside this forward, so the interface convs train (also under DDP).
        """
        b = self.backbone
        b.check_input(x)
        if client_maps is not None:
            if masks is not None:
                raise FacelabTypeError("pass either masks or client_maps, not both")
            masks = self.make_masks(client_maps, roi)
        self.check_masks(masks, x.shape[0])
        h = b.forward_stem(x)
        for i, stage in enumerate(b.stages):
            h = stage(h)
            if self.interactive:
                h = self.blocks[i].overlay(h, masks[i])  # type: ignore[index]
        return b.forward_head(h)

    def mask_generator(self) -> MaskGenerator:
        """A copy of the blocks' interface convs: the client-side half of the model."""
        if not self.interactive:
            raise RangeError("mask_generator: this server has no interactive blocks")
        gen = MaskGenerator(
            client_channels=self.client_channels,
            server_channels=[blk.server_channels for blk in self.blocks],
            mask_sizes=[list(s) for s in self.mask_sizes],
        )
        for dst, blk in zip(gen.interfaces, self.blocks):
            dst.load_state_dict(blk.interface.state_dict())
        return gen.to(next(self.parameters()).device)


def masks_from_maps(
    interfaces: Sequence[InteractiveBlock] | Sequence[nn.Conv2d],
    sizes: Sequence[tuple[int, int]],
    client_maps: Sequence[torch.Tensor],
    roi: torch.Tensor | None,
) -> list[torch.Tensor]:
    if len(client_maps) != len(sizes):
        raise ShapeError(
            f"client_maps: expected {len(sizes)} client stage maps, got {len(client_maps)}"
        )
    out = []
    for blk, g, size in zip(interfaces, client_maps, sizes):
        conv = blk.interface if isinstance(blk, InteractiveBlock) else blk
        if g.dim() != 4 or g.shape[1] != conv.in_channels:
            raise ShapeError(
                f"client map: expected (B, {conv.in_channels}, h, w), got {tuple(g.shape)}"
            )
        out.append(interactive_mask(g, conv, roi, tuple(size)))
    return out


@register_model(key="facelab.duetface.MaskGenerator")
class MaskGenerator(nn.Module, PretrainedMixin):
    """The client-side half of the interactive blocks: client maps + ROI -> the 4 masks."""

    def __init__(
        self,
        *,
        client_channels: Sequence[int],
        server_channels: Sequence[int],
        mask_sizes: Sequence[Sequence[int]],
    ) -> None:
        super().__init__()
        n = len(client_channels)
        self.client_channels = _int_tuple(client_channels, n, "client_channels")
        self.server_channels = _int_tuple(server_channels, n, "server_channels")
        if len(mask_sizes) != n:
            raise ShapeError(f"mask_sizes: expected {n} (h, w) pairs, got {mask_sizes!r}")
        self.mask_sizes = tuple(_int_tuple(s, 2, "mask_sizes[i]") for s in mask_sizes)
        self.interfaces = nn.ModuleList(
            nn.Conv2d(c, s, kernel_size=1)
            for c, s in zip(self.client_channels, self.server_channels)
        )

    @property
    def config(self) -> dict[str, Any]:
        return {
            "client_channels": list(self.client_channels),
            "server_channels": list(self.server_channels),
            "mask_sizes": [list(s) for s in self.mask_sizes],
        }

    def forward(
        self, client_maps: Sequence[torch.Tensor], roi: torch.Tensor | None
    ) -> list[torch.Tensor]:
        return masks_from_maps(list(self.interfaces), self.mask_sizes, client_maps, roi)


def server_channel_count(client_positions: Sequence[int] = DUETFACE_CLIENT) -> int:
    """Channels the server receives: 192 - 3 * len(client_positions) (162 by default)."""
    return NUM_CHANNELS - 3 * len(_check_positions(client_positions))
