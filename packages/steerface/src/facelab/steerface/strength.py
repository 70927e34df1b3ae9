"""Perturbation strengths: the adaptive head, its batch-statistics regularizer, and the ablations.

Our design (the paper's abstract says only "learns perturbation strengths with both sample-wise
preference and favorable overall statistics"):

* :class:`StrengthHead` maps each ID embedding (and, optionally, the diffusion timestep) to an
  angle ``theta = theta_max * sigmoid(MLP(e, t))`` in (0, theta_max). It trains jointly with the
  generator on the generator's own loss: left alone it would shrink every angle to 0 (a
  perturbation only makes denoising harder); what it *can* learn is where perturbing costs
  least, i.e. a per-sample preference.
* :func:`strength_regularizer` keeps the batch statistics where we want them: the squared
  distance of the batch mean and standard deviation of theta from their targets (radians^2).
  With it the head redistributes a fixed budget of perturbation across samples instead of
  removing it.
* Ablations: ``fixed`` (every sample gets the target mean) and ``uniform`` (theta drawn uniformly
  with the target mean and standard deviation, independent of the sample).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from facelab.core.errors import FacelabTypeError, RangeError, ShapeError, UnknownNameError

MODES = ("adaptive", "fixed", "uniform", "off")

_DEFER = contextvars.ContextVar("steerface_checks_deferred", default=False)


@contextlib.contextmanager
def deferred_checks() -> Iterator[None]:
    """Build :class:`SteerConfig` objects without checking them (the CLI: tyro builds them while
    it parses and would wrap a failed check in its multi-line box); call ``validate()`` after."""
    token = _DEFER.set(True)
    try:
        yield
    finally:
        _DEFER.reset(token)


@dataclass
class SteerConfig:
    """SteerFace's regularizer (all angles in degrees; every default is ours, see the README).

    ``mode``: "adaptive" (the learned head), "fixed" (theta = ``theta_mean``), "uniform"
    (theta ~ U with mean ``theta_mean`` and standard deviation ``theta_std``), "off" (no
    perturbation: the unperturbed baseline through the same code path).
    """

    mode: str = "adaptive"
    """adaptive | fixed | uniform | off"""
    theta_mean: float = 30.0
    """target batch mean of theta (degrees)"""
    theta_std: float = 10.0
    """target batch standard deviation of theta (degrees); the uniform ablation's spread"""
    theta_max: float = 90.0
    """the head's largest angle (degrees): theta = theta_max * sigmoid(.)"""
    reg_weight: float = 10.0
    """weight of the batch-statistics regularizer (its unit: radians^2)"""
    head_hidden: int = 64
    """hidden width of the strength head's MLP"""
    use_timestep: bool = True
    """feed the diffusion timestep (sinusoidal features) to the head"""
    timestep_features: int = 16
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        if not _DEFER.get():
            self.validate()

    def validate(self) -> None:
        """Raise a ``FacelabError`` naming the first bad field."""
        if self.mode not in MODES:
            raise UnknownNameError(f"steer.mode: expected one of {MODES}, got {self.mode!r}")
        for name in ("theta_mean", "theta_std", "theta_max", "reg_weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise RangeError(f"steer.{name}: expected a finite number, got {v!r}")
        if not 0.0 < self.theta_max <= 180.0:
            raise RangeError(f"steer.theta_max: expected (0, 180] degrees, got {self.theta_max}")
        if not 0.0 <= self.theta_mean <= self.theta_max:
            raise RangeError(
                f"steer.theta_mean: expected [0, theta_max = {self.theta_max}] degrees, got "
                f"{self.theta_mean}"
            )
        if self.theta_std < 0.0:
            raise RangeError(f"steer.theta_std: expected >= 0 degrees, got {self.theta_std}")
        lo = self.theta_mean - math.sqrt(3.0) * self.theta_std
        hi = self.theta_mean + math.sqrt(3.0) * self.theta_std
        if self.mode == "uniform" and (lo < 0.0 or hi > self.theta_max):
            raise RangeError(
                f"steer: the uniform ablation draws from [{lo:.3g}, {hi:.3g}] degrees (mean "
                f"+- sqrt(3) std), which leaves [0, theta_max = {self.theta_max}]"
            )
        if self.reg_weight < 0.0:
            raise RangeError(f"steer.reg_weight: expected >= 0, got {self.reg_weight}")
        if self.head_hidden < 1 or self.timestep_features < 2 or self.timestep_features % 2:
            raise RangeError(
                "steer: expected head_hidden >= 1 and an even timestep_features >= 2, got "
                f"{self.head_hidden} and {self.timestep_features}"
            )
        if self.num_train_timesteps < 1:
            raise RangeError(
                f"steer.num_train_timesteps: expected >= 1, got {self.num_train_timesteps}"
            )


def timestep_features(t: torch.Tensor, num: int, num_train_timesteps: int) -> torch.Tensor:
    """(B, num) sinusoidal features of t / T at geometric frequencies 1 .. 1000 (ours)."""
    x = t.float().unsqueeze(1) / float(num_train_timesteps)
    freqs = torch.logspace(0.0, 3.0, num // 2, device=t.device) * math.pi
    ang = x * freqs
    return torch.cat([torch.sin(ang), torch.cos(ang)], 1)


class StrengthHead(nn.Module):
    """theta_i = theta_max * sigmoid(MLP([e_i, features(t_i)])) in radians.

    The last layer starts at zero with a bias that puts every theta at ``init_theta`` (radians),
    so training starts at the fixed-theta ablation and the regularizer grows the spread.
    """

    def __init__(
        self,
        dim: int = 512,
        hidden: int = 64,
        theta_max: float = math.pi / 2,
        init_theta: float = math.pi / 6,
        use_timestep: bool = True,
        timestep_features: int = 16,
        num_train_timesteps: int = 1000,
    ) -> None:
        super().__init__()
        if dim < 2 or hidden < 1:
            raise RangeError(
                f"StrengthHead: expected dim >= 2 and hidden >= 1, got {dim}, {hidden}"
            )
        if not 0.0 < init_theta < theta_max <= math.pi:
            raise RangeError(
                f"StrengthHead: expected 0 < init_theta < theta_max <= pi, got {init_theta}, "
                f"{theta_max}"
            )
        self.dim = dim
        self.theta_max = float(theta_max)
        self.use_timestep = bool(use_timestep)
        self.n_time = int(timestep_features) if use_timestep else 0
        self.num_train_timesteps = int(num_train_timesteps)
        self.net = nn.Sequential(
            nn.Linear(dim + self.n_time, hidden), nn.SiLU(), nn.Linear(hidden, 1)
        )
        nn.init.zeros_(self.net[2].weight)
        p = init_theta / theta_max
        nn.init.constant_(self.net[2].bias, math.log(p / (1.0 - p)))

    def forward(self, embeddings: torch.Tensor, timesteps: torch.Tensor | None = None):
        if embeddings.dim() != 2 or embeddings.shape[1] != self.dim:
            raise ShapeError(
                f"StrengthHead: expected embeddings (B, {self.dim}), got {tuple(embeddings.shape)}"
            )
        x = embeddings.to(self.net[0].weight.dtype)
        if self.use_timestep:
            if timesteps is None or timesteps.shape != (embeddings.shape[0],):
                got = None if timesteps is None else tuple(timesteps.shape)
                raise ShapeError(
                    f"StrengthHead: expected timesteps of shape ({embeddings.shape[0]},), got {got}"
                )
            f = timestep_features(timesteps, self.n_time, self.num_train_timesteps)
            x = torch.cat([x, f.to(x.dtype)], 1)
        return self.theta_max * torch.sigmoid(self.net(x).squeeze(1))


def strength_regularizer(
    theta: torch.Tensor, target_mean: float, target_std: float
) -> torch.Tensor:
    """``(mean(theta) - target_mean)^2 + (std(theta) - target_std)^2`` over the batch
    (radians; population std). A batch of one has no spread: only its mean term counts."""
    if not isinstance(theta, torch.Tensor) or not theta.is_floating_point():
        raise FacelabTypeError("strength_regularizer: expected a float tensor of angles")
    if theta.dim() != 1 or theta.numel() == 0:
        raise ShapeError(f"strength_regularizer: expected (B,) angles, got {tuple(theta.shape)}")
    th = theta.float()
    mean = th.mean()
    loss = (mean - target_mean) ** 2
    if th.numel() > 1:
        # sqrt of the mean squared deviation with a floor: the gradient at zero spread is finite
        std = ((th - mean) ** 2).mean().clamp_min(1e-12).sqrt()
        loss = loss + (std - target_std) ** 2
    return loss


def sample_uniform_theta(
    n: int, mean: float, std: float, device=None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(n,) angles uniform on [mean - sqrt(3) std, mean + sqrt(3) std] (radians)."""
    half = math.sqrt(3.0) * std
    u = torch.rand(n, device=device, generator=generator)
    return (mean - half) + 2.0 * half * u


__all__ = [
    "MODES",
    "SteerConfig",
    "StrengthHead",
    "deferred_checks",
    "sample_uniform_theta",
    "strength_regularizer",
    "timestep_features",
]
