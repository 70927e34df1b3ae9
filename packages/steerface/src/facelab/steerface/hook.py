"""``SteerTransform``: SteerFace as the base's conditioning hook.

``facelab.core.diffusion``'s training step calls ``transform(context, timesteps)`` on the batch's
unit ID vectors before the denoiser and adds the returned loss, so the same object trains with
the reference-compatible ``ConditionalUNet``, diffusers' ``UNet2DConditionModel`` (through
``UNet2DConditionDenoiser``) and any recipe that takes a ``ContextTransform`` (UIFace's) without
SteerFace importing that recipe. Sampling sees the unperturbed embeddings
(``apply_at_sampling = False``): the perturbation is a training-time regularizer.
"""

from __future__ import annotations

import math

import torch

from facelab.core.diffusion.hooks import ContextOutput, ContextTransform
from facelab.steerface.steer import steer
from facelab.steerface.strength import (
    SteerConfig,
    StrengthHead,
    sample_uniform_theta,
    strength_regularizer,
)


class SteerTransform(ContextTransform):
    """Steer every ID vector of a training batch by theta toward a random orthogonal direction.

    ``mode`` (from :class:`SteerConfig`): "adaptive" uses a :class:`StrengthHead` and adds
    ``reg_weight * strength_regularizer(theta)`` to the loss; "fixed" and "uniform" are the
    ablations; "off" passes the vectors through (the baseline in the same code path). Logs:
    ``theta_mean_deg``, ``theta_std_deg`` (and ``strength_reg`` for the adaptive head).
    """

    apply_at_sampling = False

    def __init__(self, config: SteerConfig | None = None, dim: int = 512) -> None:
        super().__init__()
        self.config = config or SteerConfig()
        c = self.config
        self.dim = int(dim)
        self.head: StrengthHead | None = None
        if c.mode == "adaptive":
            self.head = StrengthHead(
                dim,
                hidden=c.head_hidden,
                theta_max=math.radians(c.theta_max),
                init_theta=min(
                    max(math.radians(c.theta_mean), 1e-3), math.radians(c.theta_max) * 0.999
                ),
                use_timestep=c.use_timestep,
                timestep_features=c.timestep_features,
                num_train_timesteps=c.num_train_timesteps,
            )

    def strengths(self, context: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor | None:
        """theta (B,) in radians for this batch (None in mode "off")."""
        c = self.config
        b = context.shape[0]
        if c.mode == "off":
            return None
        if c.mode == "fixed":
            return torch.full((b,), math.radians(c.theta_mean), device=context.device)
        if c.mode == "uniform":
            return sample_uniform_theta(
                b, math.radians(c.theta_mean), math.radians(c.theta_std), device=context.device
            )
        return self.head(context, timesteps)

    def forward(self, context: torch.Tensor, timesteps: torch.Tensor) -> ContextOutput:
        c = self.config
        theta = self.strengths(context, timesteps)
        if theta is None:
            return ContextOutput(context)
        steered = steer(context, theta)
        th = theta.detach()
        logs = {
            "theta_mean_deg": torch.rad2deg(th.mean()),
            "theta_std_deg": torch.rad2deg(th.std(unbiased=False)),
        }
        loss = None
        if self.head is not None and c.reg_weight > 0:
            reg = strength_regularizer(theta, math.radians(c.theta_mean), math.radians(c.theta_std))
            logs["strength_reg"] = reg.detach()
            loss = c.reg_weight * reg
        return ContextOutput(steered, loss=loss, logs=logs)


__all__ = ["SteerTransform"]
