"""Fragment vectors: small parts of a model update that ARIBA examines one by one.

ARIBA's observation is that a backdoor changes the magnitude and orientation of an update in
small portions of the model, "e.g. the filters of CNN layers". A fragment is one such portion:

* ``"filter"`` (default): one vector per output unit: a convolution filter
  (``weight[o]``, all input channels and taps), a linear layer's output row (``weight[o]``); a
  1-D tensor (a bias, a norm layer's scale) is one fragment; a scalar is a fragment of length 1;
* ``"tensor"``: one fragment per tensor;
* ``"chunk"``: the flattened tensor cut into consecutive pieces of ``chunk_size`` values (the
  last one zero-padded, which changes neither norms nor dot products).

Only floating-point tensors are fragments; integer and boolean buffers (``num_batches_tracked``)
are ignored. ``stack_fragments`` validates a round's updates (same keys, same shapes, one dtype
kind per key) and returns, per tensor name, one ``(clients, fragments, length)`` tensor: every
later step of the detector is a few tensor operations on such a group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from facelab.ariba._checks import checks_deferred
from facelab.core.errors import FacelabTypeError, KeyMismatchError, RangeError, ShapeError

GRANULARITIES = ("filter", "tensor", "chunk")


@dataclass(frozen=True)
class FragmentConfig:
    """How updates are cut into fragments (see the module docstring)."""

    granularity: Literal["filter", "tensor", "chunk"] = "filter"
    chunk_size: int = 64

    def __post_init__(self) -> None:
        if not checks_deferred():
            self.validate()

    def validate(self) -> None:
        """Raise a FacelabError on a bad value (see ``_checks``)."""
        if self.granularity not in GRANULARITIES:
            raise RangeError(
                f"granularity: expected one of {GRANULARITIES}, got {self.granularity!r}"
            )
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise RangeError(f"chunk_size: expected an integer >= 1, got {self.chunk_size!r}")


def as_tensor(value: Any, where: str) -> torch.Tensor:
    """A tensor view of an update entry (torch tensors as they are, numpy arrays shared)."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise FacelabTypeError(
        f"{where}: expected a torch.Tensor or numpy array, got {type(value).__name__}"
    )


def is_floating(t: torch.Tensor) -> bool:
    return t.is_floating_point()


def fragment_matrix(t: torch.Tensor, config: FragmentConfig = FragmentConfig()) -> torch.Tensor:
    """One tensor cut into fragments: ``(num_fragments, length)`` (a view where possible)."""
    if config.granularity == "tensor" or t.dim() == 0:
        return t.reshape(1, -1)
    if config.granularity == "filter":
        return t.reshape(t.shape[0], -1) if t.dim() >= 2 else t.reshape(1, -1)
    flat = t.reshape(-1)
    pad = (-flat.numel()) % config.chunk_size
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.reshape(-1, config.chunk_size)


def fragments(
    update: Mapping[str, Any], config: FragmentConfig = FragmentConfig()
) -> dict[str, torch.Tensor]:
    """The fragments of one update: tensor name -> ``(num_fragments, length)``; floating-point
    tensors only (integer buffers are ignored)."""
    if not isinstance(update, Mapping):
        raise FacelabTypeError(
            f"update: expected a mapping from names to tensors, got {type(update).__name__}"
        )
    out: dict[str, torch.Tensor] = {}
    for name, value in update.items():
        t = as_tensor(value, f"update[{name!r}]")
        if is_floating(t):
            out[name] = fragment_matrix(t, config)
    return out


def _check_round(updates: Sequence[Mapping[str, Any]]) -> list[str]:
    """Same keys and shapes everywhere; returns the floating-point tensor names in order."""
    if isinstance(updates, Mapping) or not isinstance(updates, Sequence):
        raise FacelabTypeError(
            f"updates: expected a sequence of mappings (one per client), got {type(updates).__name__}"
        )
    if len(updates) == 0:
        raise RangeError("updates: expected at least one client update, got none")
    for i, u in enumerate(updates):
        if not isinstance(u, Mapping):
            raise FacelabTypeError(
                f"updates[{i}]: expected a mapping from names to tensors, got {type(u).__name__}"
            )
    ref = updates[0]
    if len(ref) == 0:
        raise RangeError("updates[0]: expected at least one tensor, got an empty mapping")
    keys = list(ref.keys())
    key_set = set(keys)
    ref_t = {k: as_tensor(ref[k], f"updates[0][{k!r}]") for k in keys}
    for i, u in enumerate(updates[1:], start=1):
        if set(u.keys()) != key_set:
            missing = sorted(key_set - set(u.keys()))
            extra = sorted(set(u.keys()) - key_set)
            raise KeyMismatchError(
                f"updates[{i}]: expected the keys of updates[0]; missing {missing}, "
                f"unexpected {extra}"
            )
        for k in keys:
            t = as_tensor(u[k], f"updates[{i}][{k!r}]")
            if t.shape != ref_t[k].shape:
                raise ShapeError(
                    f"updates[{i}][{k!r}]: expected shape {tuple(ref_t[k].shape)} as in "
                    f"updates[0], got {tuple(t.shape)}"
                )
            if is_floating(t) != is_floating(ref_t[k]):
                raise FacelabTypeError(
                    f"updates[{i}][{k!r}]: expected a {'floating' if is_floating(ref_t[k]) else 'non-floating'} "
                    f"tensor as in updates[0], got dtype {t.dtype}"
                )
    names = [k for k in keys if is_floating(ref_t[k])]
    if not names:
        raise RangeError("updates: expected at least one floating-point tensor, got none")
    return names


def stack_fragments(
    updates: Sequence[Mapping[str, Any]],
    config: FragmentConfig = FragmentConfig(),
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """A round's updates as fragment groups: tensor name -> ``(clients, fragments, length)``
    (float32 at least, on ``device`` or the first update's device). Raises on mismatched keys,
    shapes or dtype kinds, naming the client and the key."""
    names = _check_round(updates)
    groups: dict[str, torch.Tensor] = {}
    for name in names:
        ts = [as_tensor(u[name], name) for u in updates]
        dev = device if device is not None else ts[0].device
        dtype = torch.promote_types(ts[0].dtype, torch.float32)
        stacked = torch.stack([t.to(device=dev, dtype=dtype) for t in ts])  # (C, *shape)
        c = stacked.shape[0]
        if config.granularity == "chunk":
            flat = stacked.reshape(c, -1)
            pad = (-flat.shape[1]) % config.chunk_size
            if pad:
                flat = torch.nn.functional.pad(flat, (0, pad))
            groups[name] = flat.reshape(c, -1, config.chunk_size)
        else:
            one = fragment_matrix(ts[0], config)
            groups[name] = stacked.reshape(c, one.shape[0], one.shape[1])
    return groups
