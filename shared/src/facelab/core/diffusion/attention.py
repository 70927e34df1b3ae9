"""Attention processors that expose, record and replace pre-softmax attention logits.

Both denoisers of the base route every attention layer through a *processor* (diffusers'
``set_attn_processor`` pattern). By default the layers use fused scaled-dot-product attention
(no maps). Installing an :class:`AttentionController` switches them to processors that compute
``logits = q k^T / sqrt(head_channels)`` explicitly, hand the logits of every layer to the
controller (which may record them and return a replacement), then apply the softmax (in float32)
and attend. The same controller works on the reference ``ConditionalUNet`` and on diffusers'
``UNet2DConditionModel``; layers are named by the module path of the attention block and the
``kind`` ("self" or "cross").

Logits are always ``(B, heads, Lq, Lk)`` with ``B`` the batch of the forward call: the sampler
runs its guidance branches as one batched forward (``[uncond rows; cond rows]``, see
``StepState.branch_slices``), so a controller can copy or blend maps between the branches of the
same sample, per sample and per layer, inside that one call.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from facelab.core.errors import FacelabTypeError, ShapeError, UnknownNameError

Kind = Literal["self", "cross"]
KINDS: tuple[str, ...] = ("self", "cross")


@dataclass(frozen=True)
class AttentionSite:
    """Where a logits tensor comes from: ``layer`` (module path of the attention block, e.g.
    ``"down.4.attn"`` or ``"down_blocks.0.attentions.0.transformer_blocks.0"``) and ``kind``."""

    layer: str
    kind: str

    @property
    def name(self) -> str:
        return f"{self.layer}.{self.kind}"


class AttentionController:
    """Sees the pre-softmax logits ``(B, heads, Lq, Lk)`` of every attention layer and returns
    the logits to use (the same tensor, a modified copy, or a replacement of the same shape).

    Subclass and override :meth:`logits`. ``begin_forward`` is called by the sampler before each
    denoiser call with the step state (or by the user; optional). The base class passes logits
    through unchanged, so ``AttentionController()`` measures the cost of the explicit path.
    """

    def begin_forward(self, state: object | None = None) -> None:
        """Called before a denoiser forward (the sampler passes its ``StepState``)."""

    def logits(self, site: AttentionSite, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def __call__(self, site: AttentionSite, logits: torch.Tensor) -> torch.Tensor:
        out = self.logits(site, logits)
        if out is None:
            return logits
        if out.shape != logits.shape:
            raise ShapeError(
                f"attention controller at {site.name}: expected logits of shape "
                f"{tuple(logits.shape)}, got {tuple(out.shape)}"
            )
        return out


class AttentionRecorder(AttentionController):
    """Records the logits of chosen layers and kinds during each forward.

    ``records[site.name]`` holds the latest logits (detached; moved to ``device`` when given).
    ``kinds`` selects "self" and/or "cross"; ``layers`` restricts to some layer names (all when
    None). Call :meth:`clear` (or ``begin_forward``) between forwards to drop old maps.
    """

    def __init__(
        self,
        kinds: Iterable[str] = KINDS,
        layers: Iterable[str] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.kinds = frozenset(kinds)
        unknown = sorted(self.kinds - set(KINDS))
        if unknown:
            raise UnknownNameError(f"kinds: expected a subset of {list(KINDS)}, got {unknown}")
        self.layers = None if layers is None else frozenset(layers)
        self.device = device
        self.records: dict[str, torch.Tensor] = {}

    def clear(self) -> None:
        self.records = {}

    def begin_forward(self, state: object | None = None) -> None:
        self.clear()

    def wants(self, site: AttentionSite) -> bool:
        return site.kind in self.kinds and (self.layers is None or site.layer in self.layers)

    def logits(self, site: AttentionSite, logits: torch.Tensor) -> torch.Tensor:
        if self.wants(site):
            rec = logits.detach()
            self.records[site.name] = rec if self.device is None else rec.to(self.device)
        return logits


def query_hw(length: int) -> tuple[int, int]:
    """Height and width of a square query map of ``length`` positions (the denoisers run on
    square latents)."""
    side = math.isqrt(length)
    if side * side != length:
        raise ShapeError(f"attention map: expected a square query map, got {length} positions")
    return side, side


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    site: AttentionSite,
    controller: AttentionController | None,
) -> torch.Tensor:
    """Multi-head attention on ``(B, heads, L, C)`` tensors.

    Without a controller: fused ``scaled_dot_product_attention``. With one: explicit float32
    logits ``q k^T / sqrt(C)``, the controller, a float32 softmax over keys, then ``p v``.
    """
    if controller is None:
        return F.scaled_dot_product_attention(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = torch.matmul(q.float(), k.float().transpose(-1, -2)).mul_(scale)
    logits = controller(site, logits)
    probs = torch.softmax(logits, dim=-1).to(v.dtype)
    return torch.matmul(probs, v)


# --------------------------------------------------------------------------------------------
# diffusers' Attention (UNet2DConditionModel)


class LogitsAttnProcessor:
    """A diffusers attention processor that hands the logits to a controller.

    Covers the attention layers of ``UNet2DConditionModel``'s transformer blocks (3-D hidden
    states, no group norm / spatial norm); other configurations are refused.
    """

    def __init__(self, layer: str, kind: str, controller: AttentionController) -> None:
        self.site = AttentionSite(layer, kind)
        self.controller = controller

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: object,
        **kwargs: object,
    ) -> torch.Tensor:
        if attention_mask is not None or getattr(attn, "spatial_norm", None) is not None:
            raise FacelabTypeError(
                f"{self.site.name}: the logits processor supports unmasked attention without "
                "spatial norm only"
            )
        if hidden_states.dim() != 3 or getattr(attn, "group_norm", None) is not None:
            raise FacelabTypeError(
                f"{self.site.name}: expected 3-D hidden states without group norm (transformer "
                f"block attention), got shape {tuple(hidden_states.shape)}"
            )
        residual = hidden_states
        b = hidden_states.shape[0]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        h = attn.heads
        q, k, v = (t.view(b, -1, h, t.shape[-1] // h).transpose(1, 2) for t in (q, k, v))
        out = attend(q, k, v, self.site, self.controller)
        out = out.transpose(1, 2).reshape(b, -1, h * out.shape[-1]).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _diffusers_sites(model: nn.Module) -> dict[str, tuple[str, str]]:
    """processor key -> (layer, kind) for a diffusers model (attn1 = self, attn2 = cross)."""
    out: dict[str, tuple[str, str]] = {}
    for key in model.attn_processors:  # type: ignore[attr-defined]
        path = key.removesuffix(".processor")
        layer, _, leaf = path.rpartition(".")
        kind = {"attn1": "self", "attn2": "cross"}.get(leaf, leaf)
        out[key] = (layer, kind)
    return out


def attention_sites(model: nn.Module) -> list[AttentionSite]:
    """Every attention site of a denoiser (reference ``ConditionalUNet``, our
    ``UNet2DConditionDenoiser`` or a bare ``UNet2DConditionModel``), in forward order."""
    own = getattr(model, "attention_sites", None)
    if callable(own):
        return own()
    if hasattr(model, "attn_processors"):
        return [AttentionSite(layer, kind) for layer, kind in _diffusers_sites(model).values()]
    raise FacelabTypeError(f"{type(model).__name__}: not a denoiser with attention layers")


def set_attention_controller(model: nn.Module, controller: AttentionController | None) -> None:
    """Route every attention layer of ``model`` through ``controller`` (None: back to the fused
    default processors)."""
    if controller is not None and not isinstance(controller, AttentionController):
        raise FacelabTypeError(
            f"controller: expected an AttentionController, got {type(controller).__name__}"
        )
    own = getattr(model, "set_attention_controller", None)
    if callable(own):
        own(controller)
        return
    if not hasattr(model, "set_attn_processor"):
        raise FacelabTypeError(f"{type(model).__name__}: not a denoiser with attention layers")
    if controller is None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        model.set_attn_processor(AttnProcessor2_0())  # type: ignore[attr-defined]
        return
    procs = {
        key: LogitsAttnProcessor(layer, kind, controller)
        for key, (layer, kind) in _diffusers_sites(model).items()
    }
    model.set_attn_processor(procs)  # type: ignore[attr-defined]


@contextmanager
def attention_controller(
    model: nn.Module, controller: AttentionController | None
) -> Iterator[AttentionController | None]:
    """``with attention_controller(unet, recorder): unet(x, t, ctx)`` then restore the default."""
    set_attention_controller(model, controller)
    try:
        yield controller
    finally:
        set_attention_controller(model, None)
