"""Backdoor attacks as client behaviours, and the local training every client runs.

* ``badnets`` (Gu et al. 2017): a share ``poison_fraction`` of every local batch gets the pixel
  trigger and the target label; the client trains as usual.
* ``model_replacement`` (Bagdasaryan et al. 2020): BadNets training, then the update is boosted
  by ``boost`` (default: clients per round / attackers, i.e. ``n / eta`` with a global rate of 1)
  so that averaging leaves the poisoned model in place.
* ``dba`` (Xie et al. 2020, distributed backdoor): the trigger is cut into four bars; attacker
  ``k`` poisons with bar ``k mod 4`` only; the full trigger is tested.
* ``constrain_scale`` (Bagdasaryan et al. 2020, constrain-and-scale): the poisoned model is
  trained with ``alpha * L_class + (1 - alpha) * |w - w_global|^2`` and then scaled to the norm
  of a benign update (ours: the attacker trains a clean update on its own data from the same
  global model and uses its norm as the bound, times ``norm_slack``). Whole-update norm
  defences see nothing unusual.

Local training runs on ``facelab.core.train.Trainer`` (SGD, ``local_epochs`` passes).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from facelab.ariba._checks import checks_deferred
from facelab.ariba.data import Trigger
from facelab.core.errors import RangeError
from facelab.core.train import TrainConfig, Trainer

ATTACKS = ("none", "badnets", "model_replacement", "dba", "constrain_scale")


@dataclass(frozen=True)
class AttackConfig:
    """Who attacks and how (defaults: the usual settings of the attack papers, scaled down)."""

    kind: Literal["none", "badnets", "model_replacement", "dba", "constrain_scale"] = "none"
    num_attackers: int = 2
    target_label: int = 0
    poison_fraction: float = 0.5
    boost: float | None = None
    alpha: float = 0.7
    norm_slack: float = 1.0

    def __post_init__(self) -> None:
        if not checks_deferred():
            self.validate()

    def validate(self) -> None:
        """Raise a FacelabError on a bad value (see ``_checks``)."""
        if self.kind not in ATTACKS:
            raise RangeError(f"attack.kind: expected one of {ATTACKS}, got {self.kind!r}")
        if self.num_attackers < 0:
            raise RangeError(f"attack.num_attackers: expected >= 0, got {self.num_attackers}")
        if not (0.0 < self.poison_fraction <= 1.0):
            raise RangeError(
                f"attack.poison_fraction: expected a value in (0, 1], got {self.poison_fraction}"
            )
        if self.boost is not None and not self.boost > 0:
            raise RangeError(f"attack.boost: expected > 0, got {self.boost}")
        if not (0.0 < self.alpha <= 1.0):
            raise RangeError(f"attack.alpha: expected a value in (0, 1], got {self.alpha}")
        if not self.norm_slack > 0:
            raise RangeError(f"attack.norm_slack: expected > 0, got {self.norm_slack}")

    @property
    def active(self) -> bool:
        return self.kind != "none" and self.num_attackers > 0

    def is_attacker(self, partition_id: int) -> bool:
        """Attackers are partitions ``0 .. num_attackers - 1`` (the split is random)."""
        return self.active and partition_id < self.num_attackers

    def trigger_for(self, partition_id: int) -> Trigger:
        """The trigger an attacker stamps (DBA: its own bar)."""
        if self.kind == "dba":
            return Trigger((partition_id % Trigger.NUM_PARTS,))
        return Trigger()


@dataclass(frozen=True)
class LocalConfig:
    """Local training of every client (SGD on the core trainer)."""

    local_epochs: int = 2
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.9

    def __post_init__(self) -> None:
        if not checks_deferred():
            self.validate()

    def validate(self) -> None:
        """Raise a FacelabError on a bad value (see ``_checks``)."""
        if self.local_epochs < 1 or self.batch_size < 1:
            raise RangeError(
                "local: expected local_epochs >= 1 and batch_size >= 1, got "
                f"{self.local_epochs} and {self.batch_size}"
            )
        if not self.lr > 0:
            raise RangeError(f"local.lr: expected > 0, got {self.lr}")


def _train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    local: LocalConfig,
    seed: int,
    poison: tuple[Trigger, int, float, float] | None = None,
    anchor: dict[str, torch.Tensor] | None = None,
    alpha: float = 1.0,
) -> float:
    """Train ``model`` in place on ``(x, y)``; returns the last logged loss.
    ``poison = (trigger, target, fraction, value)`` stamps the trigger on that share of every
    batch; ``anchor`` adds ``(1 - alpha) |w - anchor|^2`` to ``alpha * CE``."""
    n = x.shape[0]
    batch = min(local.batch_size, n)
    steps = local.local_epochs * math.ceil(n / batch)
    cfg = TrainConfig(
        output_dir=str(Path(tempfile.gettempdir()) / "facelab-ariba-local"),
        max_steps=steps,
        batch_size=batch,
        lr=local.lr,
        momentum=local.momentum,
        weight_decay=0.0,
        scheduler="constant",
        seed=seed,
        save_on_exit=False,
        progress=False,
        log_every=steps,
    )
    params = dict(model.named_parameters())

    def loss_fn(b, modules, ctx):
        xb, yb = b
        if poison is not None:
            trigger, target, fraction, value = poison
            k = max(1, round(fraction * xb.shape[0]))
            xb = torch.cat([trigger.apply(xb[:k], value), xb[k:]])
            yb = torch.cat([torch.full_like(yb[:k], target), yb[k:]])
        loss = F.cross_entropy(modules["model"](xb), yb)
        if anchor is not None:
            dist = sum(((params[k] - anchor[k]) ** 2).sum() for k in anchor)
            loss = alpha * loss + (1.0 - alpha) * dist
        return loss

    trainer = Trainer(cfg, {"model": model}, loss_fn, TensorDataset(x, y))
    result = trainer.fit()
    return float(result.losses.get("loss", float("nan")))


def client_update(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    partition_id: int,
    attack: AttackConfig,
    local: LocalConfig,
    seed: int,
    value: float,
    clients_per_round: int,
) -> tuple[dict[str, torch.Tensor], float, bool]:
    """One client's round: trains ``model`` (holding the global weights) as its behaviour says
    and returns ``(new state dict, train loss, is_attacker)``."""
    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    attacker = attack.is_attacker(partition_id)
    if not attacker:
        loss = _train(model, x, y, local, seed)
        return model.state_dict(), loss, False

    poison = (attack.trigger_for(partition_id), attack.target_label, attack.poison_fraction, value)
    if attack.kind in ("badnets", "dba"):
        loss = _train(model, x, y, local, seed, poison)
        return model.state_dict(), loss, True

    if attack.kind == "model_replacement":
        loss = _train(model, x, y, local, seed, poison)
        boost = attack.boost or clients_per_round / max(1, attack.num_attackers)
        state = model.state_dict()
        out = {
            k: (g + boost * (state[k] - g)) if g.is_floating_point() else state[k]
            for k, g in global_state.items()
        }
        return out, loss, True

    # constrain-and-scale: a clean update from the same start gives the norm bound
    assert attack.kind == "constrain_scale"
    clean = _clone(model)
    _train(clean, x, y, local, seed)
    bound = attack.norm_slack * _delta_norm(clean.state_dict(), global_state)
    anchor = {k: global_state[k] for k, _ in model.named_parameters()}
    loss = _train(model, x, y, replace(local), seed, poison, anchor=anchor, alpha=attack.alpha)
    state = model.state_dict()
    norm = _delta_norm(state, global_state)
    scale = bound / norm if norm > 0 else 1.0
    out = {
        k: (g + scale * (state[k] - g)) if g.is_floating_point() else state[k]
        for k, g in global_state.items()
    }
    return out, loss, True


def _clone(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def _delta_norm(state: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    sq = sum(
        float(((state[k] - ref[k]).double() ** 2).sum()) for k in ref if ref[k].is_floating_point()
    )
    return math.sqrt(sq)
