"""The UIFace sampler: two stages, a per-sample adaptive switch, attention injection.

Every step is one batched forward of the core ``IdentitySampler`` (rows ``[uncond; cond]``):

* **stage 1** (``t >= step_th``): every sample starts on the learned empty context
  (``context_flag`` False); no guidance (the step uses the conditional pass, which is the empty
  context until the sample switches). With injection the conditional rows take the
  unconditional rows' self-attention logits. With the adaptive switch the aggregated
  cross-attention map of the conditional rows is compared with the previous step's; a sample
  whose map moved by less than ``mse_th`` (mean absolute difference) switches to its identity
  context from the next step on, for good.
* **stage 2** (``t < step_th``): every sample on its identity context, classifier-free guidance
  ``(1 + s) eps_c - s eps_u`` (s = 1.0); with injection the conditional rows take the
  unconditional rows' self-attention logits and their cross-attention logits are rescaled
  toward the unconditional rows' statistics.

The ablations are options of the same sampler (:data:`VARIANTS`): ``single-stage`` (identity
context and guidance at every step), ``empty-context`` (the empty context at every step, no
identity), ``two-stage-fixed`` (everybody switches at ``step_th``), ``two-stage-adaptive`` (+ the
adaptive switch) and ``uiface`` (+ attention injection, the paper's method).

Each sample's switch is recorded: ``switch_step`` (index of the first DDIM step that uses its
identity context), ``switch_timestep`` and ``adaptive`` (switched in stage 1 by the map rule, not
by reaching ``step_th``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from facelab.core.diffusion.sampling import Branch, IdentitySampler, StepState
from facelab.core.errors import FacelabTypeError, RangeError, UnknownNameError
from facelab.uiface.attention import MAP_SIZE, UIFaceController, map_distance

Mode = Literal["two-stage", "single-stage", "empty-context"]
MODES: tuple[str, ...] = ("two-stage", "single-stage", "empty-context")


@dataclass
class UIFaceSamplingConfig:
    """UIFace's sampling settings (defaults: the paper's released sampling config).

    Attributes:
        mode: "two-stage" (UIFace), "single-stage" (identity context and guidance at every step,
            the baseline) or "empty-context" (the empty context at every step).
        adaptive: per-sample switch in stage 1 when the cross-attention map settles (False:
            everybody switches at ``step_th``).
        injection: attention injection from the unconditional pass.
        step_th: stage boundary in timesteps: stage 1 while ``t >= step_th`` (reference sampling
            config 500; the function default in the reference code is 400). In (0, T).
        mse_th: switch threshold on the mean absolute difference of consecutive aggregated maps
            (reference 0.006). >= 0.
        guidance_scale: stage-2 classifier-free guidance ``s`` in the reference form
            ``(1 + s) eps_c - s eps_u`` (reference 1.0 = 2.0 in diffusers' form).
        injection_weight: the blend weight of the unconditional pass's cross-attention
            statistics (reference 0.5).
        map_size: side of the aggregated cross-attention map (reference 32).
    """

    mode: Mode = "two-stage"
    adaptive: bool = True
    injection: bool = True
    step_th: int = 500
    mse_th: float = 0.006
    guidance_scale: float = 1.0
    injection_weight: float = 0.5
    map_size: int = MAP_SIZE

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UnknownNameError(f"mode: expected one of {list(MODES)}, got {self.mode!r}")
        for name in ("adaptive", "injection"):
            if not isinstance(getattr(self, name), bool):
                raise FacelabTypeError(
                    f"{name}: expected a bool, got {type(getattr(self, name)).__name__}"
                )
        if isinstance(self.step_th, bool) or not isinstance(self.step_th, int):
            raise FacelabTypeError(f"step_th: expected an int timestep, got {self.step_th!r}")
        mse = float(self.mse_th)
        if not math.isfinite(mse) or mse < 0:
            raise RangeError(f"mse_th: expected a finite number >= 0, got {self.mse_th}")
        s = float(self.guidance_scale)
        if not math.isfinite(s) or s < 0:
            raise RangeError(
                f"guidance_scale: expected a finite s >= 0 (reference form), got {self.guidance_scale}"
            )
        w = float(self.injection_weight)
        if not 0.0 <= w <= 1.0:
            raise RangeError(f"injection_weight: expected a number in [0, 1], got {w}")
        if isinstance(self.map_size, bool) or int(self.map_size) < 1:
            raise RangeError(f"map_size: expected a positive int, got {self.map_size}")

    def check_timesteps(self, num_train_timesteps: int) -> None:
        """``step_th`` must lie strictly inside (0, T)."""
        if not 0 < self.step_th < num_train_timesteps:
            raise RangeError(
                f"step_th: expected a timestep in (0, {num_train_timesteps}) exclusive, "
                f"got {self.step_th}"
            )

    @property
    def needs_controller(self) -> bool:
        return (self.mode == "two-stage" and (self.adaptive or self.injection)) or (
            self.mode == "single-stage" and self.injection
        )


#: the ablation ladder of the issue / paper, each an override of :class:`UIFaceSamplingConfig`
VARIANTS: dict[str, dict[str, Any]] = {
    "single-stage": {"mode": "single-stage", "adaptive": False, "injection": False},
    "empty-context": {"mode": "empty-context", "adaptive": False, "injection": False},
    "two-stage-fixed": {"mode": "two-stage", "adaptive": False, "injection": False},
    "two-stage-adaptive": {"mode": "two-stage", "adaptive": True, "injection": False},
    "uiface": {"mode": "two-stage", "adaptive": True, "injection": True},
}


#: toy calibration (README, tests/test_claims.py): on tiny pixel-space toy models (8 px, 20 DDIM
#: steps) the map distances of stage 1 run 0.009 (5 %) / 0.024 (median) / 0.071 (95 %), so the
#: paper's 0.006 never switches early and 0.02 switches ~95 % of the samples; at 0.01 41-59 % of
#: the samples switch by the map rule (5 models), mean switch step 7.8-8.8 of the 10 stage-1 steps
TOY_MSE_TH = 0.01
TOY_STEP_TH = 500


def sampling_presets() -> dict[str, UIFaceSamplingConfig]:
    """``paper``: the released sampling config (step_th 500, mse_th 0.006, s = 1.0);
    ``toy``: the thresholds calibrated on the toy generator (``uiface_presets()["toy"]``)."""
    return {
        "paper": UIFaceSamplingConfig(),
        "toy": UIFaceSamplingConfig(step_th=TOY_STEP_TH, mse_th=TOY_MSE_TH),
    }


def variant(name: str, base: UIFaceSamplingConfig | None = None) -> UIFaceSamplingConfig:
    """The sampling config of an ablation row (:data:`VARIANTS`), thresholds from ``base``."""
    if name not in VARIANTS:
        raise UnknownNameError(f"variant: expected one of {list(VARIANTS)}, got {name!r}")
    return dataclasses.replace(base or UIFaceSamplingConfig(), **VARIANTS[name])


# --------------------------------------------------------------------------------------------
# per-step pieces: the stage callback and the guidance


class _StagePlan:
    """Callback of the core sampler: sets each step's stage, context flags, guidance scales and
    the attention plan; applies the adaptive switch after the step's forward."""

    def __init__(
        self, cfg: UIFaceSamplingConfig, controller: UIFaceController | None, timesteps: list[int]
    ) -> None:
        self.cfg = cfg
        self.controller = controller
        self.timesteps = timesteps
        self.prev_map: torch.Tensor | None = None
        self.switch_step: torch.Tensor | None = None
        self.adaptive: torch.Tensor | None = None
        self.distances: list[torch.Tensor] = []

    def stage(self, t: int) -> int:
        if self.cfg.mode == "single-stage":
            return 2
        if self.cfg.mode == "empty-context":
            return 1
        return 1 if t >= self.cfg.step_th else 2

    def on_step_begin(self, state: StepState) -> None:
        cfg = self.cfg
        if self.switch_step is None:
            b, dev = state.batch, state.context_flag.device
            self.switch_step = torch.full((b,), -1, dtype=torch.long, device=dev)
            self.adaptive = torch.zeros(b, dtype=torch.bool, device=dev)
        stage = self.stage(state.timestep)
        if stage == 2:
            # everybody on the identity context from here on (the flag only goes False -> True)
            newly = ~state.context_flag
            self.switch_step.masked_fill_(newly, state.index)
            state.context_flag.fill_(True)
            state.guidance_scale.fill_(cfg.guidance_scale)
        else:
            state.guidance_scale.fill_(0.0)
        two_passes = (stage == 2 and cfg.guidance_scale > 0) or (stage == 1 and cfg.injection)
        state.scratch["uiface"] = {
            "stage": stage,
            "uncond": two_passes,
            "share_self": cfg.injection and two_passes,
            "inject_cross": cfg.injection and stage == 2,
            "record": stage == 1 and cfg.mode == "two-stage" and cfg.adaptive,
        }

    def on_step_end(self, state: StepState) -> None:
        plan = state.scratch["uiface"]
        if not plan["record"] or self.controller is None:
            return
        current = self.controller.take_map()
        if current is None:
            return
        if self.prev_map is not None:
            d = map_distance(self.prev_map, current)
            self.distances.append(d)
            newly = (d < self.cfg.mse_th) & ~state.context_flag
            nxt = state.index + 1
            # a switch decided at the last stage-1 step changes nothing (stage 2 switches
            # everybody there): it is recorded as the stage boundary, not as adaptive
            if nxt < len(self.timesteps) and self.stage(self.timesteps[nxt]) == 1:
                self.switch_step.masked_fill_(newly, state.index + 1)
                self.adaptive |= newly
                state.context_flag |= newly
        self.prev_map = current


class _UIFaceGuidance:
    """Branches per the step's plan; classifier-free guidance in the reference form."""

    def branches(self, state: StepState) -> dict[str, Branch]:
        plan = state.scratch["uiface"]
        out: dict[str, Branch] = {}
        if plan["uncond"]:
            out["uncond"] = Branch(
                torch.zeros(state.batch, dtype=torch.bool, device=state.latents.device),
                state.extra_context,
            )
        out["cond"] = Branch(state.context_flag, state.extra_context)
        return out

    def combine(self, eps: Mapping[str, torch.Tensor], state: StepState) -> torch.Tensor:
        cond = eps["cond"]
        if "uncond" not in eps or state.scratch["uiface"]["stage"] == 1:
            return cond
        s = state.guidance_scale.to(cond.device, cond.dtype).view(-1, *([1] * (cond.dim() - 1)))
        return cond + s * (cond - eps["uncond"])


# --------------------------------------------------------------------------------------------
# the sampler


@dataclass
class UIFaceOutput:
    """Images in [-1, 1] (None with ``output="latents"``), final latents and, per sample, the
    switch record. ``distances``: (steps with a comparison, B) map distances of stage 1."""

    images: torch.Tensor | None
    latents: torch.Tensor
    switch_step: torch.Tensor
    switch_timestep: torch.Tensor
    adaptive: torch.Tensor
    distances: torch.Tensor
    timesteps: list[int] = field(default_factory=list)

    def records(self) -> list[dict[str, Any]]:
        """One dict per sample (what the dataset writer stores in ``meta.json``)."""
        steps = self.switch_step.tolist()
        ts = self.switch_timestep.tolist()
        ad = self.adaptive.tolist()
        return [
            {"switch_step": s, "switch_timestep": t, "adaptive_switch": a}
            for s, t, a in zip(steps, ts, ad, strict=True)
        ]


class UIFaceSampler:
    """UIFace sampling on top of a core ``IdentitySampler`` (any denoiser of the base trained
    with a learnable empty context).

    ``UIFaceSampler(IdentitySampler(unet, autoencoder, num_steps=50), UIFaceSamplingConfig())``;
    ``.sample(contexts, seeds=...)`` -> :class:`UIFaceOutput`; ``.sample_fn`` plugs into
    ``facelab.core.diffusion.generate_dataset``.
    """

    def __init__(self, base: IdentitySampler, config: UIFaceSamplingConfig | None = None) -> None:
        if not isinstance(base, IdentitySampler):
            raise FacelabTypeError(
                f"base: expected a facelab.core.diffusion.IdentitySampler, got {type(base).__name__}"
            )
        self.base = base
        self.config = config or UIFaceSamplingConfig()
        self.config.check_timesteps(int(base.scheduler.config.num_train_timesteps))
        check_empty_context(base.denoiser)

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.base.denoiser

    def settings(self) -> dict[str, Any]:
        """The UIFace settings (for manifests and reports)."""
        return {"method": "uiface", **dataclasses.asdict(self.config)}

    def timesteps(self) -> list[int]:
        sched = self.base.scheduler
        sched.set_timesteps(self.base.num_steps)
        return [int(t) for t in sched.timesteps]

    @torch.no_grad()
    def sample(
        self,
        contexts: torch.Tensor,
        *,
        seeds: Sequence[int] | None = None,
        noise: torch.Tensor | None = None,
        extra_context: torch.Tensor | None = None,
        output: Literal["images", "latents"] = "images",
        check: bool = True,
    ) -> UIFaceOutput:
        """One image per context row (unit ID vectors ``(B, D)``); ``seeds`` or ``noise`` fix the
        initial noise (as in ``IdentitySampler.sample``)."""
        cfg = self.config
        if contexts is None:
            raise FacelabTypeError("contexts: UIFace needs ID vectors (B, D), got None")
        timesteps = self.timesteps()
        controller = (
            UIFaceController(cfg.map_size, cfg.injection_weight) if cfg.needs_controller else None
        )
        plan = _StagePlan(cfg, controller, timesteps)
        b = contexts.shape[0]
        start_on_id = cfg.mode == "single-stage"
        flag = torch.full((b,), start_on_id, dtype=torch.bool)
        out = self.base.sample(
            contexts,
            seeds=seeds,
            noise=noise,
            guidance=_UIFaceGuidance(),
            guidance_scale=cfg.guidance_scale,
            context_flag=flag,
            extra_context=extra_context,
            callbacks=[plan],
            controller=controller,
            output=output,
            check=check,
        )
        switch_step = plan.switch_step.cpu()
        if start_on_id:
            switch_step = torch.zeros(b, dtype=torch.long)
        ts = torch.tensor([*timesteps, -1], dtype=torch.long)
        switch_t = ts[switch_step.clamp(min=-1)]  # -1 -> index -1 -> timestep -1 (never)
        distances = (
            torch.stack([d.float().cpu() for d in plan.distances])
            if plan.distances
            else torch.zeros(0, b)
        )
        return UIFaceOutput(
            images=out.images,
            latents=out.latents,
            switch_step=switch_step,
            switch_timestep=switch_t,
            adaptive=plan.adaptive.cpu(),
            distances=distances,
            timesteps=timesteps,
        )

    def sample_fn(self, sampler: IdentitySampler, contexts: torch.Tensor, seeds: list[int]):
        """``generate_dataset``'s ``sample_fn``: images and one switch record per image."""
        out = self.sample(contexts, seeds=seeds, check=False)
        return out.images, out.records()


def check_empty_context(denoiser: torch.nn.Module) -> None:
    """UIFace starts from the learned empty context: refuse denoisers without one (e.g. an
    IDiff-Face model, ``learn_empty_context=False``, never trained on the empty context)."""
    cfg = getattr(denoiser, "config", None)
    learn = getattr(cfg, "learn_empty_context", True) if cfg is not None else True
    uncond = getattr(cfg, "unconditioned_probability", 0.2) if cfg is not None else 0.2
    if not learn or not uncond > 0:
        raise RangeError(
            "denoiser: UIFace samples stage 1 from a learned empty context; expected a model "
            "trained with learn_empty_context=True and unconditioned_probability > 0, got "
            f"learn_empty_context={learn}, unconditioned_probability={uncond}"
        )


__all__ = [
    "MODES",
    "VARIANTS",
    "UIFaceOutput",
    "UIFaceSampler",
    "UIFaceSamplingConfig",
    "check_empty_context",
    "sampling_presets",
    "variant",
]
