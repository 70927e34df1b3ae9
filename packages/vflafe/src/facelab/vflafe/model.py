"""The VFL model: K passive parties (bottom models) and one active party (top model).

What crosses the trust boundary, per training step and passive party k:

* forward: ``z_k = privatize(pre_k(bottom_k(x_k)))``, the released embedding (the only thing
  computed from party k's features that leaves it);
* backward: ``g_k = dL/dz_k`` computed by the active party from the released ``z`` alone, then
  (optionally) clipped and noised by the active party to protect its labels; party k
  back-propagates ``g_k`` into its own bottom model.

Three variants share this code (``PrivacyConfig.mode``): ``"none"`` (no-DP VFL: ``z = h``),
``"plain"`` (clip + noise on the bottom output) and ``"afe"`` (adaptive feature embeddings, our
design, see README): before the clip a per-row LayerNorm with trainable per-dimension gain and
bias and a projection onto the clip sphere, so the clip discards nothing and every row uses the
whole budget; after the noise, on the active side, a noise-aware rescaling by the known noise
level, a trainable per-dimension affine map and a small residual denoiser (post-processing: the
guarantee is untouched).

Nothing on the passive side uses batch statistics (no BatchNorm): with them one sample's
released row would depend on the other samples' features and the per-row sensitivity would not
hold.

In one process the exchange is an autograd function (``Exchange``) that is the identity forward
and applies the gradient protection backward, so the core ``Trainer`` trains all parties with one
``loss.backward()``; ``PassiveParty.release`` / ``ActiveParty.step`` run the same maths as
explicit messages (the Flower app) and are tested to give the same updates.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from facelab.core.errors import RangeError, UnknownNameError
from facelab.vflafe.privatize import check_privacy_parameters, privatize

__all__ = [
    "MODES",
    "ActiveParty",
    "AdaptiveEmbedding",
    "Exchange",
    "GradientChannel",
    "ModelConfig",
    "NoiseAwareAdjust",
    "NoiseSource",
    "PassiveParty",
    "PrivacyConfig",
    "Transcript",
    "VFLModel",
    "build_model",
]

Mode = Literal["none", "plain", "afe"]
MODES = ("none", "plain", "afe")


@dataclass
class PrivacyConfig:
    """What each party does at the boundary.

    ``mode``: ``"none"`` (no DP), ``"plain"`` (clip + noise), ``"afe"`` (adaptive feature
    embeddings around the same clip + noise). ``clip_norm`` C and ``noise_multiplier`` sigma:
    every released row is clipped to norm C and gets N(0, (sigma C)^2) noise per coordinate.
    ``inference_noise_multiplier``: sigma of the release at inference (None: the training
    sigma); a test sample is released once, so the same epsilon allows less noise than for a
    training sample released once per epoch.
    ``grad_clip_norm`` / ``grad_noise_multiplier``: label protection, the same mechanism on the
    gradients the active party returns (off when ``grad_noise_multiplier`` is 0 and
    ``grad_clip_norm`` is None). ``noise_seed``: None draws the passive parties' noise seeds
    from the OS CSPRNG (a deployment); an int makes runs repeatable (experiments only: whoever
    knows the seed can replay the noise).
    """

    mode: Mode = "afe"
    clip_norm: float = 1.0
    noise_multiplier: float = 0.0
    inference_noise_multiplier: float | None = None
    grad_clip_norm: float | None = None
    grad_noise_multiplier: float = 0.0
    noise_seed: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UnknownNameError(f"mode: expected one of {list(MODES)}, got {self.mode!r}")
        check_privacy_parameters(self.clip_norm, self.noise_multiplier)
        if self.inference_noise_multiplier is not None:
            check_privacy_parameters(self.clip_norm, self.inference_noise_multiplier)
        if self.mode == "none" and (self.noise_multiplier != 0 or self.inference_noise_multiplier):
            raise RangeError(
                f"noise_multiplier: mode 'none' releases raw embeddings, got noise_multiplier "
                f"{self.noise_multiplier} (use mode 'plain' or 'afe')"
            )
        if self.grad_clip_norm is not None or self.grad_noise_multiplier != 0:
            check_privacy_parameters(
                1.0 if self.grad_clip_norm is None else self.grad_clip_norm,
                self.grad_noise_multiplier,
            )
            if self.grad_noise_multiplier > 0 and self.grad_clip_norm is None:
                raise RangeError(
                    "grad_noise_multiplier: needs grad_clip_norm (the noise std is "
                    "grad_noise_multiplier * grad_clip_norm), got grad_clip_norm None"
                )

    @property
    def protects_gradients(self) -> bool:
        return self.grad_clip_norm is not None


@dataclass
class ModelConfig:
    """Widths. ``embed_dim``: size of each party's released embedding; ``bottom_hidden``: the
    bottom MLP's hidden width (tabular parties); ``conv_width``: the bottom CNN's first width
    (image parties); ``top_hidden``: the top MLP's hidden width; ``denoiser_hidden``: AFE's
    active-side residual denoiser width (0: none); ``layer_norm``: AFE normalizes each row with
    LayerNorm before its trainable affine map (off by default: measured slightly worse, it
    spreads each row's energy over all coordinates)."""

    embed_dim: int = 16
    bottom_hidden: int = 64
    conv_width: int = 16
    top_hidden: int = 64
    denoiser_hidden: int = 32
    layer_norm: bool = False

    def __post_init__(self) -> None:
        for name in ("embed_dim", "bottom_hidden", "conv_width", "top_hidden", "denoiser_hidden"):
            v = getattr(self, name)
            if (
                isinstance(v, bool)
                or not isinstance(v, int)
                or v < (0 if name == "denoiser_hidden" else 1)
            ):
                raise RangeError(f"ModelConfig.{name}: expected a positive int, got {v!r}")


class NoiseSource:
    """A party's private noise generator (one per device), checkpointable.

    Seeded from ``secrets.randbits`` unless a seed is given."""

    def __init__(self, seed: int | None = None) -> None:
        self.seed = secrets.randbits(63) if seed is None else int(seed)
        self._gens: dict[str, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._gens:
            self._gens[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._gens[key]

    def state_dict(self) -> dict:
        return {"seed": self.seed, "states": {k: g.get_state() for k, g in self._gens.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self._gens = {}
        for key, s in state["states"].items():
            g = torch.Generator(device=key)
            g.set_state(s)
            self._gens[key] = g


def bottom_model(feature_shape: tuple[int, ...], cfg: ModelConfig) -> nn.Module:
    """An MLP for a feature vector ``(F,)``, a small CNN (GroupNorm, no batch statistics) for an
    image band ``(C, H, W)``."""
    if len(feature_shape) == 1:
        return nn.Sequential(
            nn.Linear(feature_shape[0], cfg.bottom_hidden),
            nn.ReLU(),
            nn.Linear(cfg.bottom_hidden, cfg.embed_dim),
        )
    if len(feature_shape) == 3:
        w = cfg.conv_width
        return nn.Sequential(
            nn.Conv2d(feature_shape[0], w, 3, stride=2, padding=1),
            nn.GroupNorm(4 if w % 4 == 0 else 1, w),
            nn.GELU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.GroupNorm(4 if w % 4 == 0 else 1, 2 * w),
            nn.GELU(),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * w, cfg.embed_dim),
        )
    raise RangeError(f"feature_shape: expected (F,) or (C, H, W), got {feature_shape}")


class AdaptiveEmbedding(nn.Module):
    """AFE before the clip (passive side): a trainable per-dimension gain and bias (the scale
    and distribution; optionally after a per-row LayerNorm), then every row scaled to norm
    ``radius`` (the clip norm), so clipping discards nothing and every release uses the whole
    sensitivity budget. No batch statistics: each row depends on its own sample only."""

    def __init__(self, dim: int, radius: float, layer_norm: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim) if layer_norm else _Affine(dim)
        self.radius = float(radius)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        v = self.norm(h)
        return v * (self.radius / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(1e-6))


class _Affine(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.weight + self.bias


class NoiseAwareAdjust(nn.Module):
    """AFE after the noise (active side, post-processing): divide by the known RMS per
    coordinate of a training release, ``C * sqrt(1 / D + sigma^2)`` (a row of norm C over D
    coordinates plus noise of std sigma C; one fixed constant, so the signal keeps its scale when
    the inference release is less noisy), then a trainable per-dimension affine map and a
    residual two-layer denoiser whose last layer starts at zero (training starts from the
    identity)."""

    def __init__(self, dim: int, clip_norm: float, noise_multiplier: float, hidden: int) -> None:
        super().__init__()
        rms = clip_norm * math.sqrt(1.0 / dim + noise_multiplier**2)
        # derived from the config, not learned: not part of the state dict
        self.register_buffer("inv_rms", torch.tensor(1.0 / rms), persistent=False)
        self.gain = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.denoise = None
        if hidden > 0:
            self.denoise = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
            nn.init.zeros_(self.denoise[2].weight)
            nn.init.zeros_(self.denoise[2].bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        a = z * self.inv_rms * self.gain + self.bias
        return a if self.denoise is None else a + self.denoise(a)


class PassiveParty(nn.Module):
    """Bottom model (+ AFE's pre-clip adjustment) and the privatizer of one passive party."""

    def __init__(
        self,
        feature_shape: tuple[int, ...],
        model: ModelConfig,
        privacy: PrivacyConfig,
        noise_seed: int | None,
    ) -> None:
        super().__init__()
        self.feature_shape = tuple(feature_shape)
        self.bottom = bottom_model(self.feature_shape, model)
        self.pre = (
            AdaptiveEmbedding(model.embed_dim, privacy.clip_norm, model.layer_norm)
            if privacy.mode == "afe"
            else nn.Identity()
        )
        self.mode = privacy.mode
        self.clip_norm = privacy.clip_norm
        self.noise_multiplier = privacy.noise_multiplier
        self.inference_noise_multiplier = (
            privacy.noise_multiplier
            if privacy.inference_noise_multiplier is None
            else privacy.inference_noise_multiplier
        )
        self.noise = NoiseSource(noise_seed)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The private, un-noised embedding (never leaves the party)."""
        return self.pre(self.bottom(x))

    def release(self, x: torch.Tensor) -> torch.Tensor:
        """The released embedding (differentiable w.r.t. this party's parameters); in eval mode
        with the inference noise multiplier."""
        h = self.embed(x)
        if self.mode == "none":
            return h
        return privatize(
            h,
            clip_norm=self.clip_norm,
            noise_multiplier=self.noise_multiplier
            if self.training
            else self.inference_noise_multiplier,
            generator=self.noise.generator(h.device),
        )


class GradientChannel:
    """The active party's side of the backward exchange with one passive party: optional label
    protection (per-row clip + Gaussian noise of the returned gradient) from the active party's
    own noise source."""

    def __init__(self, privacy: PrivacyConfig, noise_seed: int | None) -> None:
        self.clip_norm = privacy.grad_clip_norm
        self.noise_multiplier = privacy.grad_noise_multiplier
        self.noise = NoiseSource(noise_seed)

    def protect(self, grad: torch.Tensor) -> torch.Tensor:
        if self.clip_norm is None:
            return grad
        return privatize(
            grad,
            clip_norm=self.clip_norm,
            noise_multiplier=self.noise_multiplier,
            generator=self.noise.generator(grad.device),
        )


@dataclass
class Transcript:
    """Everything that crossed the boundary while recording: per step, the sample ids, the
    released embeddings (what the active party saw) and the returned gradients (what each
    passive party saw). ``ids()``, ``released(k)``, ``gradients(k)`` concatenate the steps."""

    steps: list[dict] = field(default_factory=list)
    recording: bool = False

    def add(self, ids: torch.Tensor, released: list[torch.Tensor]) -> dict:
        entry = {
            "ids": ids.detach().cpu(),
            "released": [z.detach().cpu() for z in released],
            "gradients": [None] * len(released),
        }
        self.steps.append(entry)
        return entry

    def ids(self) -> torch.Tensor:
        return torch.cat([s["ids"] for s in self.steps])

    def released(self, k: int) -> torch.Tensor:
        return torch.cat([s["released"][k] for s in self.steps])

    def gradients(self, k: int) -> torch.Tensor:
        return torch.cat([s["gradients"][k] for s in self.steps])


class Exchange(torch.autograd.Function):
    """The boundary inside one autograd graph: identity forward (the active party computes
    only from the released tensor); backward, the active party's gradient for the released
    tensor goes through its gradient channel (label protection) and is what the passive party
    back-propagates (and what the transcript records)."""

    @staticmethod
    def forward(ctx, released, channel, slot, k):  # type: ignore[override]
        ctx.channel, ctx.slot, ctx.k = channel, slot, k
        return released.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        sent = ctx.channel.protect(grad)
        if ctx.slot is not None:
            ctx.slot["gradients"][ctx.k] = sent.detach().cpu()
        return sent, None, None, None


class ActiveParty(nn.Module):
    """Label owner: AFE's post-noise adjustment per party (or the identity) and the top model."""

    def __init__(
        self, parties: int, num_classes: int, model: ModelConfig, privacy: PrivacyConfig
    ) -> None:
        super().__init__()
        d = model.embed_dim
        if privacy.mode == "afe":
            self.adjust = nn.ModuleList(
                NoiseAwareAdjust(
                    d, privacy.clip_norm, privacy.noise_multiplier, model.denoiser_hidden
                )
                for _ in range(parties)
            )
        else:
            self.adjust = nn.ModuleList(nn.Identity() for _ in range(parties))
        self.top = nn.Sequential(
            nn.Linear(parties * d, model.top_hidden),
            nn.ReLU(),
            nn.Linear(model.top_hidden, num_classes),
        )

    def forward(self, released: list[torch.Tensor]) -> torch.Tensor:
        return self.top(torch.cat([a(z) for a, z in zip(self.adjust, released)], dim=-1))


class VFLModel(nn.Module):
    """All parties in one process (simulation): ``forward(xs, ids)`` releases every party's
    embedding, passes it through the ``Exchange`` and returns the active party's logits."""

    def __init__(
        self,
        feature_shapes: list[tuple[int, ...]],
        num_classes: int,
        model: ModelConfig | None = None,
        privacy: PrivacyConfig | None = None,
    ) -> None:
        super().__init__()
        model = model or ModelConfig()
        privacy = privacy or PrivacyConfig()
        self.model_config, self.privacy = model, privacy
        seeds = _party_seeds(privacy.noise_seed, 2 * len(feature_shapes))
        self.passive = nn.ModuleList(
            PassiveParty(s, model, privacy, seeds[k]) for k, s in enumerate(feature_shapes)
        )
        self.active = ActiveParty(len(feature_shapes), num_classes, model, privacy)
        self.channels = [
            GradientChannel(privacy, seeds[len(feature_shapes) + k])
            for k in range(len(feature_shapes))
        ]
        self.transcript = Transcript()

    def noise_sources(self) -> list[NoiseSource]:
        return [p.noise for p in self.passive] + [c.noise for c in self.channels]

    def forward(self, xs: list[torch.Tensor], ids: torch.Tensor | None = None) -> torch.Tensor:
        released = [p.release(x) for p, x in zip(self.passive, xs)]
        slot = None
        if self.transcript.recording and ids is not None:
            slot = self.transcript.add(ids, released)
        if torch.is_grad_enabled():
            released = [
                Exchange.apply(z, c, slot, k)
                for k, (z, c) in enumerate(zip(released, self.channels))
            ]
        return self.active(released)


def _party_seeds(seed: int | None, n: int) -> list[int | None]:
    if seed is None:
        return [None] * n
    from facelab.core.train.data import mix_seed

    return [mix_seed(int(seed), k, 0x7F) for k in range(n)]


def build_model(
    feature_shapes: list[tuple[int, ...]],
    num_classes: int,
    model: ModelConfig | None = None,
    privacy: PrivacyConfig | None = None,
) -> VFLModel:
    return VFLModel(feature_shapes, num_classes, model, privacy)
