"""Guidance with separate identity and style scales, and context blending (our reading).

The generator is trained with each condition dropped on its own, so at every step it can
predict the noise under (ID, style), (no ID, style) and (no ID, no style). The guided
prediction, per sample (the base's "reference" form generalized to two conditions, as in
compositional / InstructPix2Pix-style guidance)::

    eps = e(id, sty) + w_id(t) [e(id, sty) - e(0, sty)] + w_sty(t) [e(0, sty) - e(0, 0)]

``w_id = w_sty = 0`` is the plain conditional prediction; ``e(0, sty) - e(0, 0)`` pushes towards
the requested style, ``e(id, sty) - e(0, sty)`` towards the identity *given* the style.

Context blending (MorphFace's "context blending strategy to enhance the generator's
responsiveness to identity and style conditions"; the paper's exact rule is not public, this
is ours): the two conditions act at different noise levels of the trajectory - pose, shape
and expression set the coarse layout early (large t), identity lives in the details settled
late (small t). So the two guidance weights are blended along the trajectory::

    r = 2 t / T - 1 in [-1, 1]      (r = 1 at the first, noisiest step)
    w_sty(t) = s_sty (1 + blend * r),     w_id(t) = s_id (1 - blend * r)

``blend = 0`` is constant weights; ``blend = 1`` moves the weight linearly from style to
identity (each scale's mean over a uniform trajectory stays s). Branches that a step does not
need (all weights of that term zero) are skipped; all needed branches run as one batched
forward of the base sampler.

With pixel-aligned renderings (``style_maps``, a denoiser built with ``extra_input_channels``)
the maps go with the style tokens: the ``(id, sty)`` and ``(0, sty)`` branches get them, the
``(0, 0)`` branch zero maps (a dropped style in training), so the style term acts through both.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from facelab.core.diffusion.sampling import Branch, StepState
from facelab.core.errors import RangeError, ShapeError

MAX_SCALE = 50.0


def _scales(value: float | torch.Tensor, b: int, name: str) -> torch.Tensor:
    s = torch.as_tensor(value, dtype=torch.float32).detach().cpu().reshape(-1)
    if s.numel() == 1:
        s = s.expand(b).clone()
    if s.shape != (b,):
        raise ShapeError(f"{name}: expected a number or ({b},) values, got {tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()) or float(s.min()) < 0 or float(s.max()) > MAX_SCALE:
        raise RangeError(f"{name}: expected values in [0, {MAX_SCALE}], got {s.tolist()[:4]}...")
    return s


class MorphFaceGuidance:
    """``branches()/combine()`` guidance for the base ``IdentitySampler`` (see the module
    docstring). ``style_tokens`` / ``null_tokens`` (B, N, C) are the sample's style and the
    null-style tokens; ``style_maps`` (B, C_in, H, W) the sample's renderings for a denoiser
    with pixel-aligned input (None: no maps); ``id_scale``, ``style_scale`` floats or (B,)
    tensors; ``blend`` in [0, 1]."""

    def __init__(
        self,
        style_tokens: torch.Tensor,
        null_tokens: torch.Tensor,
        *,
        style_maps: torch.Tensor | None = None,
        id_scale: float | torch.Tensor = 1.0,
        style_scale: float | torch.Tensor = 1.0,
        blend: float = 0.0,
        num_train_timesteps: int = 1000,
    ) -> None:
        if style_tokens.shape != null_tokens.shape or style_tokens.dim() != 3:
            raise ShapeError(
                f"style / null tokens: expected two (B, N, C) tensors of one shape, got "
                f"{tuple(style_tokens.shape)} and {tuple(null_tokens.shape)}"
            )
        if not 0.0 <= float(blend) <= 1.0:
            raise RangeError(f"blend: expected a value in [0, 1], got {blend}")
        b = style_tokens.shape[0]
        if style_maps is not None and (style_maps.dim() != 4 or style_maps.shape[0] != b):
            raise ShapeError(
                f"style maps: expected ({b}, C, H, W) renderings, got {tuple(style_maps.shape)}"
            )
        self.style, self.null, self.maps = style_tokens, null_tokens, style_maps
        self.id_scale = _scales(id_scale, b, "id_scale")
        self.style_scale = _scales(style_scale, b, "style_scale")
        self.blend = float(blend)
        self.T = int(num_train_timesteps)

    def weights(self, timestep: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(w_id, w_sty) per sample at ``timestep`` (CPU)."""
        r = 2.0 * float(timestep) / self.T - 1.0
        return self.id_scale * (1.0 - self.blend * r), self.style_scale * (1.0 + self.blend * r)

    def branches(self, state: StepState) -> dict[str, Branch]:
        w_id, w_sty = self.weights(state.timestep)
        b = state.batch
        off = torch.zeros(b, dtype=torch.bool, device=state.latents.device)
        out = {"full": Branch(state.context_flag, self.style, self.maps)}
        if bool(w_id.any()) or bool(w_sty.any()):
            out["style"] = Branch(off, self.style, self.maps)
        if bool(w_sty.any()):
            out["uncond"] = Branch(off, self.null)
        return out

    def combine(self, eps: Mapping[str, torch.Tensor], state: StepState) -> torch.Tensor:
        w_id, w_sty = self.weights(state.timestep)
        full = eps["full"]
        shape = (-1, *([1] * (full.dim() - 1)))
        out = full
        if "style" in eps:
            out = out + w_id.to(full.device, full.dtype).view(shape) * (full - eps["style"])
        if "uncond" in eps:
            out = out + w_sty.to(full.device, full.dtype).view(shape) * (
                eps["style"] - eps["uncond"]
            )
        return out


__all__ = ["MorphFaceGuidance"]
