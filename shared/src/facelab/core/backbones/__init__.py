"""Face recognition backbones and their registry.

``get_backbone(name, **options)`` builds one of

* ``iresnet18/34/50/100/200`` (aliases ``r18`` ... ``r200``): insightface arcface_torch
  IResNets, state-dict compatible with its public checkpoints (see :func:`load_insightface`);
* ``ir_se50``: TFace's IR-SE-50;
* ``mobilefacenet``: TFace's MobileFaceNet (DuetFace's client with ``in_channels=30``).

Common options: ``in_channels``, ``stem_stride``, ``input_size``, ``embedding_size``; IResNet
and IR-SE also take ``dropout`` and ``base_width``, MobileFaceNet ``width``. All backbones share
the stem -> 4 stages -> head API of :class:`~facelab.core.backbones.base.Backbone`.
"""

from __future__ import annotations

import inspect
import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import torch

from facelab.core.backbones.base import Backbone
from facelab.core.backbones.iresnet import IRESNET_LAYERS, IBasicBlock, IResNet
from facelab.core.backbones.irse import IRSE
from facelab.core.backbones.mobilefacenet import MobileFaceNet
from facelab.core.errors import FacelabTypeError, FormatError, UnknownNameError

__all__ = [
    "BACKBONES",
    "IRSE",
    "Backbone",
    "IBasicBlock",
    "IResNet",
    "MobileFaceNet",
    "get_backbone",
    "infer_iresnet_depth",
    "list_backbones",
    "load_insightface",
]

#: registry name -> (class, fixed init kwargs)
BACKBONES: dict[str, tuple[type[Backbone], dict[str, Any]]] = {
    **{f"iresnet{d}": (IResNet, {"depth": d}) for d in IRESNET_LAYERS},
    **{f"r{d}": (IResNet, {"depth": d}) for d in IRESNET_LAYERS},
    "ir_se50": (IRSE, {"depth": 50}),
    "mobilefacenet": (MobileFaceNet, {}),
}


def list_backbones() -> list[str]:
    return list(BACKBONES)


def get_backbone(name: str, **options: Any) -> Backbone:
    """Build the backbone registered as ``name`` with ``options`` (see the module docstring)."""
    if name not in BACKBONES:
        raise UnknownNameError(f"unknown backbone {name!r}; valid names: {list_backbones()}")
    cls, fixed = BACKBONES[name]
    valid = [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise FacelabTypeError(
            f"get_backbone({name!r}): unknown option(s) {unknown}; valid options: {valid}"
        )
    return cls(**fixed, **options)


_LAYER_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")


def infer_iresnet_depth(state_dict: Mapping[str, Any]) -> int | None:
    """The IResNet depth whose blocks-per-stage match the ``layerS.i.*`` keys, else None."""
    blocks = _blocks_per_stage(state_dict)
    return next((d for d, layers in IRESNET_LAYERS.items() if layers == blocks), None)


def _blocks_per_stage(state_dict: Mapping[str, Any]) -> tuple[int, ...]:
    counts = [0, 0, 0, 0]
    for key in state_dict:
        m = _LAYER_KEY.match(key)
        if m:
            s = int(m.group(1)) - 1
            counts[s] = max(counts[s], int(m.group(2)) + 1)
    return tuple(counts)


def _describe_checkpoint(sd: Mapping[str, torch.Tensor]) -> str:
    parts = []
    depth = infer_iresnet_depth(sd)
    blocks = _blocks_per_stage(sd)
    if depth is not None:
        parts.append(f"the file looks like r{depth} (blocks per stage {list(blocks)})")
    elif any(blocks):
        parts.append(f"the file has blocks per stage {list(blocks)}, no known iresnet depth")
    else:
        parts.append("the file has no layerS.i.* keys: not an insightface iresnet")
    conv1, fc = sd.get("conv1.weight"), sd.get("fc.weight")
    if isinstance(conv1, torch.Tensor) and conv1.dim() == 4:
        parts.append(f"in_channels={conv1.shape[1]}, base_width={conv1.shape[0]}")
    if isinstance(fc, torch.Tensor) and fc.dim() == 2:
        parts.append(f"embedding_size={fc.shape[0]}, fc input {fc.shape[1]}")
    return "; ".join(parts)


def load_insightface(path: str | os.PathLike, name: str = "r50", **options: Any) -> IResNet:
    """Build ``get_backbone(name, **options)`` and load an insightface ``backbone.pth`` strictly.

    The file must be a plain state dict saved with ``torch.save`` (arcface_torch's format); it
    is read with ``weights_only=True`` (no arbitrary unpickling). A DDP ``module.`` prefix on
    every key is removed. Any missing, unexpected or mis-shaped key raises :class:`FormatError`
    naming them and the depth the file most likely holds. Returns the model in eval mode.
    """
    model = get_backbone(name, **options)
    if not isinstance(model, IResNet):
        raise UnknownNameError(f"load_insightface: {name!r} is not an iresnet (r18 ... r200)")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise FormatError(f"{path}: not a torch state-dict file loadable safely ({e})") from None
    if not isinstance(sd, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()
    ):
        raise FormatError(
            f"{path}: expected a plain state dict (str -> tensor), got {type(sd).__name__}"
        )
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}

    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(sd)
        if sd[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        lines = [f"{path} does not match {model.name} with config {model.config}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {missing[:8]}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {unexpected[:8]}")
        if shapes:
            lines.append(f"  shape mismatches ({len(shapes)}): {shapes[:5]}")
        lines.append(f"  {_describe_checkpoint(sd)}")
        raise FormatError("\n".join(lines))
    model.load_state_dict(sd, strict=True)
    return model.eval()
