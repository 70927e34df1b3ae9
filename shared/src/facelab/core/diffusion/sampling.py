"""DDIM sampling with per-sample context choice and classifier-free guidance at every step.

``IdentitySampler(denoiser, autoencoder)`` draws images for a batch of unit ID vectors with
diffusers' ``DDIMScheduler`` (T = 1000 linear betas 1e-4 .. 0.02, 50 steps, eta 0,
``timestep_spacing="leading"``: 980, 960, ..., 0; ``clip_sample=False``).

Each step runs the *branches* a :class:`Guidance` asks for (classifier-free guidance: an
unconditional branch with the empty context and a conditional one) as **one batched forward**
(rows ``[branch 0; branch 1; ...]``, recorded in ``StepState.branch_slices``), then combines the
branch predictions. Per sample and per step a hook may change:

* ``state.context_flag`` (B,) bool: whether the conditional branch uses the sample's ID context
  (False = the empty context), e.g. UIFace's switch from the empty to the ID context;
* ``state.guidance_scale`` (B,) float: the guidance scale of each sample;

and an :class:`~facelab.core.diffusion.attention.AttentionController` sees and may replace the
pre-softmax self/cross-attention logits of every layer in that batched forward.

Guidance forms: ``"reference"`` (UIFace / IDiff-Face) ``eps = (1 + s) eps_c - s eps_u``;
``"diffusers"`` ``eps = eps_u + w (eps_c - eps_u)`` (so ``w = 1 + s``). The previous-alpha
convention follows diffusers (``alpha_bar[t_prev]``); ``alpha_prev="reference"`` takes the
reference's ``alpha_bar[t_prev - 1]`` (one index off) to reproduce its released datasets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from diffusers import DDIMScheduler
from torch import nn

from facelab.core.diffusion.attention import AttentionController, set_attention_controller
from facelab.core.errors import (
    FacelabTypeError,
    RangeError,
    ShapeError,
    UnknownNameError,
)
from facelab.core.train.data import mix_seed

GUIDANCE_FORMS = ("reference", "diffusers")
MAX_GUIDANCE = 50.0


def make_scheduler(
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    alpha_prev: Literal["diffusers", "reference"] = "diffusers",
    clip_sample: bool = False,
) -> DDIMScheduler:
    """The reference's DDPM schedule as a diffusers ``DDIMScheduler``. ``clip_sample`` clips
    each step's predicted x0 to [-1, 1] (off in the reference, which samples latents; worth
    turning on for pixel-space generators: see the core README's toy preset)."""
    kwargs = dict(
        num_train_timesteps=num_train_timesteps,
        beta_start=beta_start,
        beta_end=beta_end,
        beta_schedule="linear",
        clip_sample=bool(clip_sample),
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )
    if alpha_prev == "diffusers":
        return DDIMScheduler(**kwargs)
    if alpha_prev == "reference":
        return ReferenceDDIMScheduler(**kwargs)
    raise UnknownNameError(f"alpha_prev: expected 'diffusers' or 'reference', got {alpha_prev!r}")


class ReferenceDDIMScheduler(DDIMScheduler):
    """DDIM with the reference's previous alpha ``alpha_bar[t_prev - 1]`` (1 at the last step);
    eta = 0 only (the reference's released datasets use eta 0)."""

    def step(self, model_output, timestep, sample, eta: float = 0.0, generator=None, **kwargs):
        if eta != 0:
            raise RangeError(f"alpha_prev='reference': only eta = 0 is supported, got {eta}")
        t = int(timestep)
        prev = t - self.config.num_train_timesteps // self.num_inference_steps
        ac = self.alphas_cumprod
        a_t = ac[t]
        a_prev = ac[prev - 1] if prev - 1 >= 0 else torch.tensor(1.0)
        if prev < 0:
            a_prev = torch.tensor(1.0)
        a_t, a_prev = a_t.to(sample.device, sample.dtype), a_prev.to(sample.device, sample.dtype)
        x0 = (sample - (1 - a_t).sqrt() * model_output) / a_t.sqrt()
        if self.config.clip_sample:
            r = float(self.config.clip_sample_range)
            x0 = x0.clamp(-r, r)
        prev_sample = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * model_output
        from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)


# --------------------------------------------------------------------------------------------
# step state, branches, guidance


@dataclass
class Branch:
    """One pass of the batched forward: ``condition_flag`` (B,) bool (False = the empty
    context), optional branch-specific ``extra_context`` tokens (B, N, C) and pixel-aligned
    ``extra_input`` maps (B, C_in, H, W) for a denoiser built with ``extra_input_channels``
    (a branch without maps gets zeros when another branch of the step has them)."""

    condition_flag: torch.Tensor
    extra_context: torch.Tensor | None = None
    extra_input: torch.Tensor | None = None


@dataclass
class StepState:
    """What hooks, guidance and attention controllers see at each step (mutable)."""

    index: int
    timestep: int
    num_steps: int
    latents: torch.Tensor
    contexts: torch.Tensor | None
    context_flag: torch.Tensor
    guidance_scale: torch.Tensor  # (B,) on the CPU (decisions need no device sync)
    extra_context: torch.Tensor | None = None
    extra_input: torch.Tensor | None = None
    branch_slices: dict[str, slice] = field(default_factory=dict)
    branch_eps: dict[str, torch.Tensor] = field(default_factory=dict)
    eps: torch.Tensor | None = None
    scratch: dict[str, Any] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return int(self.latents.shape[0])


class Guidance(Protocol):
    def branches(self, state: StepState) -> dict[str, Branch]: ...

    def combine(self, eps: Mapping[str, torch.Tensor], state: StepState) -> torch.Tensor: ...


class ClassifierFreeGuidance:
    """Classifier-free guidance with per-sample scales ``state.guidance_scale``.

    Branches ``"uncond"`` (empty context) and ``"cond"`` (ID context where
    ``state.context_flag``); the unconditional branch is skipped when every scale is 0 in the
    reference form (1 in diffusers' form) unless ``always_uncond`` (e.g. to share its attention
    maps). ``form``: ``"reference"`` (1 + s) e_c - s e_u or ``"diffusers"`` e_u + w (e_c - e_u).
    """

    def __init__(self, form: str = "reference", always_uncond: bool = False) -> None:
        if form not in GUIDANCE_FORMS:
            raise UnknownNameError(
                f"guidance form: expected one of {list(GUIDANCE_FORMS)}, got {form!r}"
            )
        self.form = form
        self.always_uncond = bool(always_uncond)

    def _weight(self, state: StepState) -> torch.Tensor:
        """``s`` of the reference form for every sample (CPU)."""
        return state.guidance_scale if self.form == "reference" else state.guidance_scale - 1.0

    def branches(self, state: StepState) -> dict[str, Branch]:
        b = state.batch
        out: dict[str, Branch] = {}
        if self.always_uncond or bool(self._weight(state).any()):
            out["uncond"] = Branch(torch.zeros(b, dtype=torch.bool, device=state.latents.device))
        out["cond"] = Branch(state.context_flag, state.extra_context, state.extra_input)
        return out

    def combine(self, eps: Mapping[str, torch.Tensor], state: StepState) -> torch.Tensor:
        cond = eps["cond"]
        if "uncond" not in eps:
            return cond
        s = self._weight(state).to(cond.device, cond.dtype).view(-1, *([1] * (cond.dim() - 1)))
        return cond + s * (cond - eps["uncond"])


@dataclass
class SampleOutput:
    images: torch.Tensor | None
    latents: torch.Tensor
    context_flag: torch.Tensor
    scratch: dict[str, Any]


def noise_from_seeds(
    seeds: Sequence[int], shape: Sequence[int], device=None, dtype=None
) -> torch.Tensor:
    """Initial noise, one CPU generator per sample: sample ``i`` depends only on ``seeds[i]``
    (whatever the batch it is drawn in)."""
    out = torch.empty(len(seeds), *shape)
    for i, s in enumerate(seeds):
        g = torch.Generator().manual_seed(int(s) % 2**63)
        out[i] = torch.randn(*shape, generator=g)
    return out.to(device=device, dtype=dtype)


def image_seed(seed: int, identity: int, image: int) -> int:
    """The noise seed of image ``image`` of identity ``identity`` in a run with ``seed``."""
    return mix_seed(seed, identity, image)


def check_contexts(
    contexts: torch.Tensor, width: int, name: str = "contexts", tol: float = 1e-3
) -> torch.Tensor:
    """Unit ID vectors (B, width), finite, norm 1 within ``tol``; float32 on return."""
    from facelab.core.errors import NonFiniteError, ZeroVectorError

    if not isinstance(contexts, torch.Tensor) or not contexts.is_floating_point():
        raise FacelabTypeError(
            f"{name}: expected a float tensor of unit ID vectors, got {type(contexts).__name__}"
        )
    if contexts.dim() != 2 or contexts.shape[1] != width:
        raise ShapeError(
            f"{name}: expected ID vectors of shape (N, {width}), got {tuple(contexts.shape)}"
        )
    if contexts.shape[0] == 0:
        raise ShapeError(f"{name}: expected at least one ID vector, got none")
    norms = contexts.float().norm(dim=1)
    lo, hi = torch.aminmax(norms)
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise NonFiniteError(f"{name}: expected finite ID vectors, got NaN/Inf")
    if lo < 1e-6:
        raise ZeroVectorError(f"{name}: expected unit ID vectors, got a zero vector")
    if abs(lo - 1) > tol or abs(hi - 1) > tol:
        raise RangeError(
            f"{name}: expected unit (L2-normalized) ID vectors, got norms in [{lo:.4g}, {hi:.4g}]"
        )
    return contexts.float()


class IdentitySampler:
    """DDIM sampler of an ID-conditioned denoiser (see the module docstring).

    Args:
        denoiser: ``ConditionalUNet`` or ``UNet2DConditionDenoiser`` (anything with the call
            signature ``(x, t, context, condition_flag, extra_context)``).
        autoencoder: first stage (``PixelAutoencoder`` when None).
        image_size: side of the generated images before any resize (the autoencoder maps it to
            the latent size).
        num_steps: DDIM steps (1 .. T); eta: DDIM eta in [0, 1].
        guidance_scale: default per-sample scale; ``guidance_form`` its form.
        alpha_prev: "diffusers" or "reference" (see the module docstring).
        clip_sample: clip each step's predicted x0 to [-1, 1] (default off, as the reference,
            which samples VQ latents; pixel-space generators sample much better with it on).
    """

    def __init__(
        self,
        denoiser: nn.Module,
        autoencoder: nn.Module | None = None,
        *,
        image_size: int = 32,
        num_steps: int = 50,
        eta: float = 0.0,
        guidance_scale: float = 1.0,
        guidance_form: str = "reference",
        alpha_prev: str = "diffusers",
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        clip_sample: bool = False,
    ) -> None:
        from facelab.core.diffusion.autoencoder import PixelAutoencoder

        if not isinstance(denoiser, nn.Module):
            raise FacelabTypeError(
                f"denoiser: expected an nn.Module, got {type(denoiser).__name__}"
            )
        if (
            isinstance(num_steps, bool)
            or not isinstance(num_steps, int)
            or not 1 <= num_steps <= num_train_timesteps
        ):
            raise RangeError(
                f"num_steps: expected an int in [1, {num_train_timesteps}], got {num_steps!r}"
            )
        if not 0.0 <= float(eta) <= 1.0:
            raise RangeError(f"eta: expected a number in [0, 1], got {eta}")
        self.denoiser = denoiser
        self.autoencoder = autoencoder if autoencoder is not None else PixelAutoencoder()
        self.image_size = int(image_size)
        self.latent_shape = self.autoencoder.latent_shape(self.image_size)
        self.num_steps = num_steps
        self.eta = float(eta)
        self.guidance_form = guidance_form
        self.guidance_scale = check_guidance(guidance_scale, guidance_form)
        self.alpha_prev = alpha_prev
        if not isinstance(clip_sample, bool):
            raise FacelabTypeError(f"clip_sample: expected a bool, got {clip_sample!r}")
        self.scheduler = make_scheduler(
            num_train_timesteps,
            beta_start,
            beta_end,
            alpha_prev,  # type: ignore[arg-type]
            clip_sample=clip_sample,
        )

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    def settings(self) -> dict[str, Any]:
        """Sampler settings for manifests."""
        return {
            "scheduler": type(self.scheduler).__name__,
            "num_steps": self.num_steps,
            "eta": self.eta,
            "guidance_scale": self.guidance_scale,
            "guidance_form": self.guidance_form,
            "alpha_prev": self.alpha_prev,
            "clip_sample": bool(self.scheduler.config.clip_sample),
            "timestep_spacing": "leading",
            "num_train_timesteps": int(self.scheduler.config.num_train_timesteps),
            "beta_start": float(self.scheduler.config.beta_start),
            "beta_end": float(self.scheduler.config.beta_end),
            "image_size": self.image_size,
            "latent_shape": list(self.latent_shape),
            "autoencoder": self.autoencoder.describe(),
        }

    @torch.no_grad()
    def sample(
        self,
        contexts: torch.Tensor | None,
        *,
        batch_size: int | None = None,
        noise: torch.Tensor | None = None,
        seeds: Sequence[int] | None = None,
        guidance: Guidance | None = None,
        guidance_scale: float | torch.Tensor | None = None,
        context_flag: torch.Tensor | None = None,
        extra_context: torch.Tensor | None = None,
        extra_input: torch.Tensor | None = None,
        callbacks: Sequence[Any] = (),
        controller: AttentionController | None = None,
        output: Literal["images", "latents"] = "images",
        check: bool = True,
    ) -> SampleOutput:
        """Sample one image per context row (``contexts`` None: ``batch_size`` unconditional).

        ``noise`` (B, C, h, w) or ``seeds`` (one per sample) fix the initial noise (default:
        the global RNG). ``callbacks``: objects with ``on_step_begin(state)`` and/or
        ``on_step_end(state)``. ``controller``: attention controller installed for this call.
        ``extra_context`` / ``extra_input``: the conditional branch's extra tokens /
        pixel-aligned maps (the default guidance's unconditional branch gets no maps: zeros).
        Returns images in [-1, 1] (decoded, clamped) and the final latents.
        """
        device, dtype = self.device, self.dtype
        width = getattr(self.denoiser, "context_width", None)
        if contexts is not None:
            if check and width is not None:
                contexts = check_contexts(contexts, width)
            b = contexts.shape[0]
            contexts = contexts.to(device, dtype)
        elif batch_size is None:
            raise RangeError("sample: give contexts or batch_size")
        else:
            b = int(batch_size)
        if noise is None:
            if seeds is not None:
                if len(seeds) != b:
                    raise ShapeError(f"seeds: expected {b} seeds, got {len(seeds)}")
                noise = noise_from_seeds(seeds, self.latent_shape)
            else:
                noise = torch.randn(b, *self.latent_shape)
        if tuple(noise.shape) != (b, *self.latent_shape):
            raise ShapeError(
                f"noise: expected shape {(b, *self.latent_shape)}, got {tuple(noise.shape)}"
            )
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        scales = _per_sample(scale, b, self.guidance_form)
        if context_flag is None:
            flag = torch.full((b,), contexts is not None, dtype=torch.bool, device=device)
        else:
            if context_flag.shape != (b,) or context_flag.dtype != torch.bool:
                raise ShapeError(
                    f"context_flag: expected a ({b},) bool tensor, got {tuple(context_flag.shape)}"
                )
            flag = context_flag.to(device).clone()
        guide = guidance if guidance is not None else ClassifierFreeGuidance(self.guidance_form)
        sched = self.scheduler
        sched.set_timesteps(self.num_steps)
        timesteps = [int(t) for t in sched.timesteps]
        x = noise.to(device, dtype)
        state = StepState(
            index=0,
            timestep=timesteps[0],
            num_steps=len(timesteps),
            latents=x,
            contexts=contexts,
            context_flag=flag,
            guidance_scale=scales,
            extra_context=None if extra_context is None else extra_context.to(device, dtype),
            extra_input=None if extra_input is None else extra_input.to(device, dtype),
        )
        begins = [c.on_step_begin for c in callbacks if hasattr(c, "on_step_begin")]
        ends = [c.on_step_end for c in callbacks if hasattr(c, "on_step_end")]
        t_cache: dict[tuple[int, int], torch.Tensor] = {}
        if controller is not None:
            set_attention_controller(self.denoiser, controller)
        try:
            for i, t in enumerate(timesteps):
                state.index, state.timestep, state.latents = i, t, x
                for fn in begins:
                    fn(state)
                branches = guide.branches(state)
                eps = self._forward(x, t, state, branches, controller, t_cache)
                state.branch_eps = eps
                state.eps = guide.combine(eps, state)
                for fn in ends:
                    fn(state)
                x = sched.step(state.eps, t, x, eta=self.eta).prev_sample
        finally:
            if controller is not None:
                set_attention_controller(self.denoiser, None)
        state.latents = x
        images = None
        if output == "images":
            images = self.autoencoder.decode(x).clamp_(-1.0, 1.0)
        return SampleOutput(images, x, state.context_flag, state.scratch)

    def _forward(self, x, t, state, branches, controller, t_cache) -> dict[str, torch.Tensor]:
        names = list(branches)
        n, b = len(names), x.shape[0]
        state.branch_slices = {name: slice(k * b, (k + 1) * b) for k, name in enumerate(names)}
        key = (t, n * b)
        tt = t_cache.get(key)
        if tt is None:
            tt = t_cache[key] = torch.full((n * b,), t, dtype=torch.long, device=x.device)
        xx = x if n == 1 else torch.cat([x] * n)
        ctx = state.contexts
        if ctx is not None and n > 1:
            ctx = torch.cat([ctx] * n)
        flags = (
            torch.cat([branches[k].condition_flag for k in names])
            if n > 1
            else branches[names[0]].condition_flag
        )
        extras = [branches[k].extra_context for k in names]
        if any(e is not None for e in extras):
            if any(e is None for e in extras):
                raise ShapeError("extra_context: give it for every branch or for none")
            extra = torch.cat(extras)  # type: ignore[arg-type]
        else:
            extra = None
        kwargs = {}
        maps = [branches[k].extra_input for k in names]
        given = [m for m in maps if m is not None]
        if given:
            kwargs["extra_input"] = torch.cat(
                [m if m is not None else torch.zeros_like(given[0]) for m in maps]
            )
        if controller is not None:
            controller.begin_forward(state)
        if ctx is None:
            out = self.denoiser(xx, tt, None, None, extra, **kwargs)
        else:
            out = self.denoiser(xx, tt, ctx, flags, extra, **kwargs)
        return {k: out[state.branch_slices[k]] for k in names}


def check_guidance(scale: float, form: str) -> float:
    if form not in GUIDANCE_FORMS:
        raise UnknownNameError(
            f"guidance form: expected one of {list(GUIDANCE_FORMS)}, got {form!r}"
        )
    lo = 0.0 if form == "reference" else 1.0
    s = float(scale)
    if not (math.isfinite(s) and lo <= s <= MAX_GUIDANCE):
        raise RangeError(
            f"guidance_scale: expected a number in [{lo}, {MAX_GUIDANCE}] for the {form!r} form, got {scale}"
        )
    return s


def _per_sample(scale: float | torch.Tensor, b: int, form: str) -> torch.Tensor:
    if isinstance(scale, torch.Tensor):
        s = scale.detach().to("cpu", torch.float32).reshape(-1)
        if s.numel() == 1:
            s = s.expand(b).clone()
        if s.shape != (b,):
            raise ShapeError(
                f"guidance_scale: expected a scalar or ({b},) scales, got {tuple(scale.shape)}"
            )
        lo, hi = (float(v) for v in torch.aminmax(s))
        check_guidance(lo, form)
        check_guidance(hi, form)
        return s
    return torch.full((b,), check_guidance(scale, form))
