"""``TrainConfig``: every knob of the shared training loop, as plain values.

The defaults are the insightface arcface_torch recipe (SGD lr 0.1, momentum 0.9, weight decay
5e-4, step decay x0.1); a method's own config dataclass fills the fields it changes. All checks
that need only the values themselves run in ``__post_init__`` so a bad flag fails at parse time;
checks that need the data size (milestones within the run, warmup shorter than the run) run when
the ``Trainer`` knows the number of steps per epoch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from facelab.core.errors import FacelabTypeError, RangeError, UnknownNameError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("step", "cosine", "constant", "cosine_restarts")
UNITS = ("epoch", "step")
MIXED_PRECISION = ("no", "fp16", "bf16")
TRACKERS = ("tensorboard",)


@dataclass
class TrainConfig:
    """Configuration of ``Trainer``.

    Length: ``epochs`` passes over the data, or exactly ``max_steps`` optimizer steps when set
    (then ``epochs`` is ignored). One optimizer step consumes ``grad_accum`` batches of
    ``batch_size`` samples on each of the ``world_size`` processes; an epoch is
    ``len(dataset) // (batch_size * world_size * grad_accum)`` steps (the remainder is dropped).

    Learning rate at optimizer step ``s`` (0-based) for a parameter group with ``lr_scale`` c::

        lr = c * lr_base * warm(s) * main(s)
        warm(s) = (s + 1) / W  for s < W, else 1                    (W = warmup in steps)
        step:     main(s) = gamma ** #{milestones m <= s}
        cosine:   main(s) = r + (1 - r) * (1 + cos(pi * p)) / 2,  r = min_lr / lr,
                  p = clip((s - W) / (T - W), 0, 1)                  (T = total steps)
        constant: main(s) = 1
        cosine_restarts: main(s) = r + (1 - r) * (1 + cos(pi * c / P)) / 2 with the cycle
                  position c and length P of step s - W in cycles of restart_period,
                  restart_period * restart_mult, ... (torch's CosineAnnealingWarmRestarts)

    ``milestones`` and ``warmup`` are counted in ``milestones_unit`` / ``warmup_unit``
    ("epoch" values may be fractional and are rounded to the nearest step).
    """

    output_dir: str = "runs/train"
    # length and batch
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 128
    grad_accum: int = 1
    # optimizer
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 5e-4
    no_decay_bn_bias: bool = False
    # learning-rate schedule
    scheduler: Literal["step", "cosine", "constant", "cosine_restarts"] = "step"
    milestones: tuple[float, ...] = ()
    milestones_unit: Literal["epoch", "step"] = "epoch"
    gamma: float = 0.1
    warmup: float = 0.0
    warmup_unit: Literal["epoch", "step"] = "epoch"
    min_lr: float = 0.0
    restart_period: int = 10_000
    restart_mult: int = 2
    # numerics
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    grad_clip: float | None = None
    ema_decay: float | None = None
    seed: int = 0
    # data loading
    shuffle: bool = True
    num_workers: int = 0
    # checkpoints
    checkpoint_every: int | None = None
    keep_last: int | None = 3
    save_on_exit: bool = True
    # logging and evaluation
    log_every: int = 50
    eval_every: int | None = None
    eval_unit: Literal["epoch", "step"] = "step"
    tracker: Literal["tensorboard"] | None = None
    project_name: str = "facelab"
    progress: bool = True
    ddp_find_unused_parameters: bool = False
    # speed: these change how the same arithmetic runs, not what is computed
    #: store 4-D weights (and so convolution activations) channels-last (NHWC): tensor cores
    #: and cuDNN's fastest convolutions want it; on CPU it rarely helps
    channels_last: bool = False
    #: one fused kernel for the optimizer update; None = fused on CUDA, for-each elsewhere
    fused_optimizer: bool | None = None
    #: ``nn.Module.compile()`` every trained module in place (torch.compile; state-dict keys
    #: stay as they are, so checkpoints and save_pretrained are unchanged)
    compile: bool = False
    #: torch.compile backend for ``compile`` ("inductor" generates kernels; "aot_eager" only
    #: traces, a quick check that a model compiles)
    compile_backend: str = "inductor"

    def __post_init__(self) -> None:
        self.milestones = tuple(self.milestones)
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        self.output_dir = str(self.output_dir)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("milestones_unit", self.milestones_unit, UNITS)
        _choice("warmup_unit", self.warmup_unit, UNITS)
        _choice("eval_unit", self.eval_unit, UNITS)
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        if self.tracker is not None:
            _choice("tracker", self.tracker, TRACKERS)

        _int_at_least("epochs", self.epochs, 1)
        _int_at_least("batch_size", self.batch_size, 1)
        _int_at_least("grad_accum", self.grad_accum, 1)
        _int_at_least("num_workers", self.num_workers, 0)
        _int_at_least("log_every", self.log_every, 1)
        _int_at_least("seed", self.seed, 0)
        _int_at_least("restart_period", self.restart_period, 1)
        _int_at_least("restart_mult", self.restart_mult, 1)
        for name in ("max_steps", "checkpoint_every", "keep_last", "eval_every"):
            if getattr(self, name) is not None:
                _int_at_least(name, getattr(self, name), 1)

        _number("lr", self.lr, lo=0.0, lo_open=True)
        _number("weight_decay", self.weight_decay, lo=0.0)
        _number("momentum", self.momentum, lo=0.0, hi=1.0, hi_open=True)
        _number("eps", self.eps, lo=0.0, lo_open=True)
        if len(self.betas) != 2:
            raise RangeError(f"betas: expected two values (beta1, beta2), got {self.betas!r}")
        for i, b in enumerate(self.betas):
            _number(f"betas[{i}]", b, lo=0.0, hi=1.0, hi_open=True)
        _number("gamma", self.gamma, lo=0.0, hi=1.0, lo_open=True)
        _number("warmup", self.warmup, lo=0.0)
        _number("min_lr", self.min_lr, lo=0.0, hi=self.lr)
        if self.grad_clip is not None:
            _number("grad_clip", self.grad_clip, lo=0.0, lo_open=True)
        if self.ema_decay is not None:
            _number("ema_decay", self.ema_decay, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise RangeError("nesterov: needs optimizer='sgd' with momentum > 0")

        for i, m in enumerate(self.milestones):
            _number(f"milestones[{i}]", m, lo=0.0, lo_open=True)
        if any(b <= a for a, b in zip(self.milestones, self.milestones[1:])):
            raise RangeError(
                f"milestones: expected strictly increasing values, got {self.milestones!r}"
            )
        if self.milestones and self.scheduler != "step":
            raise RangeError(
                f"milestones: only used by scheduler='step', got scheduler={self.scheduler!r} "
                f"with milestones {self.milestones!r}"
            )
        if self.milestones_unit == "step" and any(m != int(m) for m in self.milestones):
            raise RangeError(
                f"milestones: expected whole numbers with milestones_unit='step', got {self.milestones!r}"
            )
        if self.warmup_unit == "step" and self.warmup != int(self.warmup):
            raise RangeError(
                f"warmup: expected a whole number with warmup_unit='step', got {self.warmup!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy (tuples become lists)."""
        return asdict(self)


def stage_config(stage: TrainConfig, root: str | Path, name: str) -> TrainConfig:
    """A multi-stage recipe's stage with its checkpoint folder resolved: an empty
    ``output_dir`` becomes ``root/name``; one set explicitly is kept.

    Recipes keep the stage folders empty in their presets and resolve them at train time, so
    that ``--output-dir`` given on top of a preset moves every stage (a folder filled in when the
    preset is built would become the command line's default and stay behind)."""
    if stage.output_dir:
        return stage
    return replace(stage, output_dir=str(Path(root) / name))


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise UnknownNameError(f"{name}: expected one of {list(allowed)}, got {value!r}")


def _int_at_least(name: str, value: object, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FacelabTypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if value < lo:
        raise RangeError(f"{name}: expected an int >= {lo}, got {value}")


def _number(
    name: str,
    value: object,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FacelabTypeError(f"{name}: expected a number, got {type(value).__name__} {value!r}")
    v = float(value)
    bad = not math.isfinite(v)
    if lo is not None:
        bad = bad or v < lo or (lo_open and v == lo)
    if hi is not None:
        bad = bad or v > hi or (hi_open and v == hi)
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open or hi is None else "]"
        span = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise RangeError(f"{name}: expected a finite number in {span}, got {value!r}")
