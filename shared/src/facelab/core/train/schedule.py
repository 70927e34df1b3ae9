"""Learning-rate schedule, parameter groups and the optimizer of the shared trainer.

The schedule is a pure function of the optimizer step (see ``TrainConfig``), so resuming only
needs the step counter; the trainer writes ``lr_scale * lr * factor(step)`` into every
parameter group before each update.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from facelab.core.errors import FacelabTypeError, KeyMismatchError, RangeError
from facelab.core.train.config import TrainConfig

ParamGroupsHook = Callable[[Mapping[str, nn.Module]], Sequence[Mapping[str, Any]]]

_NORM_TYPES = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


class LRSchedule:
    """Multiplicative learning-rate factor of optimizer step ``s`` (0-based), warmup included.

    All lengths are in optimizer steps; ``TrainConfig`` documents the formula.
    """

    def __init__(
        self,
        kind: str,
        total_steps: int,
        warmup_steps: int = 0,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        min_ratio: float = 0.0,
        restart_period: int = 10_000,
        restart_mult: int = 2,
    ) -> None:
        self.kind = kind
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.milestones = tuple(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.min_ratio = float(min_ratio)
        self.restart_period = int(restart_period)
        self.restart_mult = int(restart_mult)

    def __call__(self, step: int) -> float:
        s = int(step)
        warm = (s + 1) / self.warmup_steps if s < self.warmup_steps else 1.0
        if self.kind == "step":
            main = self.gamma ** sum(1 for m in self.milestones if s >= m)
        elif self.kind == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1)
            p = min(max((s - self.warmup_steps) / span, 0.0), 1.0)
            main = self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))
        elif self.kind == "cosine_restarts":
            c, period = max(s - self.warmup_steps, 0), self.restart_period
            if self.restart_mult == 1:
                c %= period
            else:
                m = self.restart_mult
                n = int(math.log(c / period * (m - 1) + 1, m))
                c -= period * (m**n - 1) // (m - 1)
                period *= m**n
                if c >= period:  # float round-off at a cycle boundary
                    c, period = c - period, period * m
                elif c < 0:
                    period //= m
                    c += period
            main = self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (
                1.0 + math.cos(math.pi * c / period)
            )
        else:
            main = 1.0
        return warm * main

    def __repr__(self) -> str:
        return (
            f"LRSchedule(kind={self.kind!r}, total_steps={self.total_steps}, "
            f"warmup_steps={self.warmup_steps}, milestones={self.milestones}, gamma={self.gamma}, "
            f"min_ratio={self.min_ratio})"
        )


def _to_steps(value: float, unit: str, steps_per_epoch: int) -> int:
    return round(value * steps_per_epoch) if unit == "epoch" else int(value)


def build_schedule(cfg: TrainConfig, steps_per_epoch: int, total_steps: int) -> LRSchedule:
    """Convert the config's epoch/step quantities to steps and check they fit in the run."""
    warmup = _to_steps(cfg.warmup, cfg.warmup_unit, steps_per_epoch)
    if cfg.warmup > 0 and warmup == 0:
        raise RangeError(
            f"warmup: {cfg.warmup} {cfg.warmup_unit}(s) rounds to 0 steps "
            f"({steps_per_epoch} steps per epoch); use warmup_unit='step'"
        )
    if warmup >= total_steps:
        raise RangeError(
            f"warmup: expected fewer than the run's {total_steps} steps, got {warmup} steps "
            f"({cfg.warmup} {cfg.warmup_unit}(s), {steps_per_epoch} steps per epoch)"
        )
    milestones = [_to_steps(m, cfg.milestones_unit, steps_per_epoch) for m in cfg.milestones]
    for given, m in zip(cfg.milestones, milestones):
        if not 0 < m < total_steps:
            raise RangeError(
                f"milestones: {given} {cfg.milestones_unit}(s) = step {m} is outside the run "
                f"(expected 0 < step < {total_steps}; {steps_per_epoch} steps per epoch); "
                f"all milestones: {cfg.milestones!r}"
            )
    if any(b <= a for a, b in itertools.pairwise(milestones)):
        raise RangeError(
            f"milestones: {cfg.milestones!r} {cfg.milestones_unit}s give steps {milestones}, "
            "which are not strictly increasing"
        )
    return LRSchedule(
        cfg.scheduler,
        total_steps,
        warmup_steps=warmup,
        milestones=milestones,
        gamma=cfg.gamma,
        min_ratio=cfg.min_lr / cfg.lr,
        restart_period=cfg.restart_period,
        restart_mult=cfg.restart_mult,
    )


def _param_names(modules: Mapping[str, nn.Module]) -> dict[int, str]:
    names: dict[int, str] = {}
    for mname, module in modules.items():
        for pname, p in module.named_parameters():
            names.setdefault(id(p), f"{mname}.{pname}")
    return names


def _no_decay_ids(modules: Iterable[nn.Module]) -> set[int]:
    """Parameters of normalization layers and every parameter named ``*bias``."""
    ids: set[int] = set()
    for module in modules:
        for sub in module.modules():
            is_norm = isinstance(sub, _NORM_TYPES)
            for pname, p in sub.named_parameters(recurse=False):
                if is_norm or pname == "bias":
                    ids.add(id(p))
    return ids


def build_param_groups(
    modules: Mapping[str, nn.Module],
    trainable: Sequence[str],
    cfg: TrainConfig,
    hook: ParamGroupsHook | None = None,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups with an ``lr_scale`` each.

    ``hook(modules)`` returns groups ``{"params": iterable, "lr_scale": float, "weight_decay":
    float (optional)}`` for the parameters that need their own settings; every other trainable
    parameter goes to a default group (scale 1). A parameter named twice, or one that is not
    trainable (frozen module, ``requires_grad=False``), is an error. With
    ``cfg.no_decay_bn_bias`` every group is split so norm-layer and bias parameters get no
    weight decay.
    """
    names = _param_names(modules)
    trainable_params: dict[int, nn.Parameter] = {}
    for name in trainable:
        for p in modules[name].parameters():
            if p.requires_grad:
                trainable_params.setdefault(id(p), p)

    requested: list[tuple[list[nn.Parameter], float, float | None]] = []
    seen: set[int] = set()
    if hook is not None:
        groups = hook(modules)
        if isinstance(groups, Mapping) or not isinstance(groups, Sequence):
            raise FacelabTypeError(
                f"param_groups hook: expected a list of dicts, got {type(groups).__name__}"
            )
        for gi, group in enumerate(groups):
            if not isinstance(group, Mapping) or "params" not in group:
                raise FacelabTypeError(
                    f"param_groups hook: group {gi} must be a dict with a 'params' key, got {group!r}"
                )
            unknown = set(group) - {"params", "lr_scale", "weight_decay"}
            if unknown:
                raise KeyMismatchError(
                    f"param_groups hook: group {gi} has unknown keys {sorted(unknown)}; "
                    "allowed: params, lr_scale, weight_decay"
                )
            scale = group.get("lr_scale", 1.0)
            if isinstance(scale, bool) or not isinstance(scale, int | float):
                raise FacelabTypeError(
                    f"param_groups hook: group {gi} lr_scale must be a number, got {scale!r}"
                )
            if not (math.isfinite(scale) and scale > 0):
                raise RangeError(
                    f"param_groups hook: group {gi} lr_scale must be finite and > 0, got {scale}"
                )
            wd = group.get("weight_decay")
            if wd is not None and (isinstance(wd, bool) or not isinstance(wd, int | float)):
                raise FacelabTypeError(
                    f"param_groups hook: group {gi} weight_decay must be a number, got {wd!r}"
                )
            if wd is not None and not (math.isfinite(wd) and wd >= 0):
                raise RangeError(
                    f"param_groups hook: group {gi} weight_decay must be finite and >= 0, got {wd}"
                )
            params = list(group["params"])
            for p in params:
                if not isinstance(p, torch.Tensor):
                    raise FacelabTypeError(
                        f"param_groups hook: group {gi} holds a {type(p).__name__}, expected parameters"
                    )
                if id(p) not in trainable_params:
                    raise KeyMismatchError(
                        f"param_groups hook: group {gi} holds parameter "
                        f"{names.get(id(p), tuple(p.shape))!r}, which is not trainable "
                        "(not in a trained module, in a frozen module, or requires_grad=False)"
                    )
                if id(p) in seen:
                    raise KeyMismatchError(
                        f"param_groups hook: parameter {names.get(id(p), tuple(p.shape))!r} "
                        "appears in more than one group"
                    )
                seen.add(id(p))
            requested.append((params, float(scale), wd))

    rest = [p for i, p in trainable_params.items() if i not in seen]
    if rest:
        requested.insert(0, (rest, 1.0, None))
    if not requested:
        raise RangeError(
            "trainer: no trainable parameters (every module frozen or requires_grad=False)"
        )

    no_decay = _no_decay_ids(modules[n] for n in trainable) if cfg.no_decay_bn_bias else set()
    out: list[dict[str, Any]] = []
    for params, scale, wd in requested:
        wd = cfg.weight_decay if wd is None else float(wd)
        decay = [p for p in params if id(p) not in no_decay]
        plain = [p for p in params if id(p) in no_decay]
        for ps, w in ((decay, wd), (plain, 0.0)):
            if ps:
                out.append(
                    {"params": ps, "lr": cfg.lr * scale, "lr_scale": scale, "weight_decay": w}
                )
    return out


def build_optimizer(
    cfg: TrainConfig, groups: list[dict[str, Any]], device: torch.device | str | None = None
) -> torch.optim.Optimizer:
    """SGD or AdamW over ``groups``; fused kernels when ``cfg.fused_optimizer`` says so (None:
    on CUDA only, ``device`` being where the parameters will live)."""
    fused = cfg.fused_optimizer
    if fused is None:
        fused = torch.device(device if device is not None else "cpu").type == "cuda"
    kw: dict[str, Any] = {"fused": True} if fused else {}
    try:
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(
                groups,
                lr=cfg.lr,
                momentum=cfg.momentum,
                weight_decay=cfg.weight_decay,
                nesterov=cfg.nesterov,
                **kw,
            )
        return torch.optim.AdamW(
            groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay, **kw
        )
    except RuntimeError as exc:  # torch refuses fused kernels for this device or dtype
        if not fused:
            raise
        raise RangeError(
            f"fused_optimizer: this torch build has no fused {cfg.optimizer} for these "
            f"parameters ({exc}); set fused_optimizer to False"
        ) from exc
