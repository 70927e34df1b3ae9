"""Toyfaces with subject-specific styles, their exact 3DMM parameters, and a style regressor.

toyfaces (``facelab.core.data.ToyFaces``) draws pose and expression independently for every
image. Real people differ in *habitual* style (one tends to smile, one holds the head turned),
and MorphFace's prior models exactly that: per-subject means plus intra-subject variation.
:class:`StyledToyFaces` renders toyfaces whose style parameters are

    value(identity k, image j) = mean_k + within_kj,   mean_k ~ N(mu, between^2),
                                                         within_kj ~ N(0, within^2)

for yaw, pitch, smile, mouth opening and brow raise (``ToyStyleConfig``; roll, lighting, eye
openness, occluders and the rest stay toyfaces' own per-image draws). Every draw is a pure
function of ``(seed, absolute identity[, image])`` (numpy generators keyed by those numbers), so
an identity looks alike in every dataset that holds it, as in toyfaces.

Core's ``ToyFaces`` has no hook for per-identity image parameters, so this subclass overwrites
entries of its (private) ``_imp`` table after construction; the README says so and asks core
for a public hook.

Mapping toyfaces -> the procedural 3DMM (:func:`toy_style_params`; exact, no fitting):

| 3DMM | toyfaces |
|---|---|
| pose (yaw, pitch, roll) rad | (yaw, pitch, -roll) deg x pi / 180 (toyfaces' roll turns clockwise on screen) |
| camera s | 58 / 56 x scale (the face half height is 58 px of the 112 px crop) |
| camera tx, ty | where toyfaces puts the face centre (10.3 px above the face origin (56, 62), after its roll, scale and shift), in NDC / s |
| shape k | (identity parameter - toyfaces mean) / toyfaces std, for face_w, face_h, chin_taper, jaw_width, eye_dx, nose_w, nose_y, mouth_w, mouth_y, brow_dy |
| expression | smile, mouth_open, 1 - eye_openness, brow_raise (toyfaces units) |
| light | ``directional_light(light_vector(azimuth, elevation), 1.25 strength, 1 - strength)`` scaled by exposure, y flipped to the 3DMM's y-up axis |
| albedo | skin lightness (0.5 - skin_tone) / 0.29, redness 0, lip redness 0 |

The style regressor (:func:`train_style_regressor`) is a small CNN trained on real styled
toyfaces to read yaw, pitch, smile, mouth opening and brow raise back from images; it measures
whether generated images follow the requested parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from facelab.core.data.toyfaces import ToyFaces
from facelab.morphface.params import StyleParams
from facelab.morphface.shading import directional_light

#: the per-identity style attributes (toyfaces image-parameter names)
STYLED = ("yaw", "pitch", "smile", "mouth_open", "brow_raise")
#: what the regressor reads (and the style-control claim measures)
REGRESSED = STYLED
_STREAM_MEAN = 0x5717E
_STREAM_IMAGE = 0x5717F

# toyfaces identity parameters behind the procedural 3DMM's shape modes: (name, mean, std)
_SHAPE_SOURCE = (
    ("face_w", 39.0, 2.6),
    ("face_h", 58.0, 2.6),
    ("chin_taper", 0.42, 0.10),
    ("jaw_width", 0.55, 0.12),
    ("eye_dx", 17.6, 1.4),
    ("nose_w", 6.5, 0.9),
    ("nose_y", 20.3, 1.8),
    ("mouth_w", 14.6, 1.5),
    ("mouth_y", 40.6, 1.8),
    ("brow_dy", 8.0, 1.2),
)
_FACE_CENTRE_PX = 10.3  # the face ellipse centre sits this far above the face origin
_HALF = 56.0  # half the 112 px template
_FACE_HALF_HEIGHT = 58.0


@dataclass
class ToyStyleConfig:
    """Population mean, between-subject std and within-subject std of each styled attribute.

    Units: degrees (yaw, pitch), toyfaces' (smile in [0, 1] through a logistic, mouth opening
    >= 0 through a ReLU, brow raise in template pixels). ``smile`` and ``mouth_open`` are
    modelled on the logit / pre-ReLU scale.
    """

    yaw: tuple[float, float, float] = (0.0, 14.0, 6.0)
    pitch: tuple[float, float, float] = (0.0, 6.0, 3.0)
    smile: tuple[float, float, float] = (-0.8, 1.4, 0.6)
    mouth_open: tuple[float, float, float] = (-0.2, 0.45, 0.2)
    brow_raise: tuple[float, float, float] = (0.0, 1.2, 0.5)


#: styled toyfaces whose *expression* varies mostly within a subject and more strongly (the
#: ``toy-expression`` preset): smile with its between / within standard deviations swapped in
#: size against the defaults; mouth opening and brow raise mostly within a subject and about
#: three times the defaults' total spread (a wider open mouth and brow movement); pose as in the
#: defaults. At the defaults' size an expression change barely changes a 32 px toy image (one
#: standard deviation of smile: 0.01 RMS, of yaw: 0.12; README), and no toy generator learned to
#: follow it.
EXPRESSIVE_STYLE = ToyStyleConfig(
    smile=(-0.8, 0.8, 1.4), mouth_open=(0.3, 0.3, 1.0), brow_raise=(0.0, 1.0, 3.0)
)


def _standard_normals(seed: int, stream: int, identity: int, rows: int, cols: int) -> np.ndarray:
    g = np.random.default_rng([int(seed), stream, int(identity)])
    return g.standard_normal((rows, cols))


def styled_values(
    seed: int, identities: np.ndarray, images_per_identity: int, cfg: ToyStyleConfig
) -> dict[str, torch.Tensor]:
    """Per-image values of the styled attributes, (N * M,) each, identity-major."""
    k = len(STYLED)
    means, within = [], []
    for ident in identities:
        means.append(_standard_normals(seed, _STREAM_MEAN, ident, 1, k)[0])
        within.append(_standard_normals(seed, _STREAM_IMAGE, ident, images_per_identity, k))
    z_mean = np.repeat(np.stack(means), images_per_identity, 0)  # (N*M, k)
    z_img = np.concatenate(within, 0)
    out = {}
    for c, name in enumerate(STYLED):
        mu, between, wstd = getattr(cfg, name)
        raw = mu + between * z_mean[:, c] + wstd * z_img[:, c]
        if name == "smile":
            raw = 1.0 / (1.0 + np.exp(-raw))
        elif name == "mouth_open":
            raw = np.maximum(raw, 0.0)
        elif name in ("yaw", "pitch"):
            raw = np.clip(raw, -60.0, 60.0)
        out[name] = torch.from_numpy(raw).float()
    return out


class StyledToyFaces(ToyFaces):
    """ToyFaces whose yaw, pitch, smile, mouth opening and brow raise have per-identity means
    (see the module docstring). Same arguments as ``ToyFaces`` plus ``style``."""

    def __init__(
        self,
        num_identities: int,
        images_per_identity: int,
        size: int = 112,
        seed: int = 0,
        identity_offset: int = 0,
        difficulty: float | str = "default",
        style: ToyStyleConfig | None = None,
    ) -> None:
        super().__init__(
            num_identities,
            images_per_identity,
            size=size,
            seed=seed,
            identity_offset=identity_offset,
            difficulty=difficulty,
        )
        self.style = style or ToyStyleConfig()
        ids = np.arange(identity_offset, identity_offset + num_identities, dtype=np.int64)
        values = styled_values(seed, ids, images_per_identity, self.style)
        # core ToyFaces has no public hook for image parameters (see the module docstring)
        for name, v in values.items():
            self._imp[name] = v

    def style_params(self, indices=None) -> StyleParams:
        """Exact procedural-3DMM parameters of samples ``indices`` (all when None)."""
        return toy_style_params(self, indices)

    def regression_targets(self, indices=None) -> torch.Tensor:
        """(B, 5) yaw, pitch (degrees), smile, mouth opening, brow raise of the samples."""
        idx = torch.arange(len(self)) if indices is None else self._indices(indices)
        return torch.stack([self._imp[n][idx] for n in REGRESSED], 1)


def toy_style_params(toy: ToyFaces, indices=None) -> StyleParams:
    """The procedural 3DMM's parameters of toyfaces samples (the mapping in the module
    docstring). Works on plain ``ToyFaces`` too."""
    from facelab.core.data._toyfaces_params import FACE_ORIGIN, light_vector

    idx = torch.arange(len(toy)) if indices is None else toy._indices(indices)
    lab = toy.labels[idx]
    idp = {k: v[lab] for k, v in toy._idp.items()}
    imp = {k: v[idx] for k, v in toy._imp.items()}
    b = idx.numel()
    deg = math.pi / 180.0
    pose = torch.stack([imp["yaw"] * deg, imp["pitch"] * deg, -imp["roll"] * deg], 1)
    # toyfaces maps a face-frame point P to the pixel FACE_ORIGIN + scale R(roll) P + (tx, ty)
    # (y down); the 3DMM origin is the face centre P = (0, -10.3)
    roll = imp["roll"] * deg
    s_toy = imp["scale"]
    cx = s_toy * torch.sin(roll) * _FACE_CENTRE_PX + imp["tx"]
    cy = (FACE_ORIGIN[1] - _HALF) - s_toy * torch.cos(roll) * _FACE_CENTRE_PX + imp["ty"]
    s = (_FACE_HALF_HEIGHT / _HALF) * s_toy
    camera = torch.stack([s, cx / _HALF / s, -cy / _HALF / s], 1)
    shape = torch.stack([(idp[n] - mu) / sd for n, mu, sd in _SHAPE_SOURCE], 1)
    expression = torch.stack(
        [imp["smile"], imp["mouth_open"], 1.0 - imp["eye_openness"], imp["brow_raise"]], 1
    )
    lv = light_vector(imp["light_azimuth"], imp["light_elevation"])  # x right, y down, z out
    direction = torch.stack([lv[:, 0], -lv[:, 1], lv[:, 2]], 1)
    strength = imp["light_strength"]
    light = directional_light(direction, 1.25 * strength, 1.0 - strength)
    light = light * imp["exposure"].view(b, 1, 1)
    albedo = torch.stack([(0.5 - idp["skin_tone"]) / 0.29, torch.zeros(b), torch.zeros(b)], 1)
    return StyleParams(
        shape=shape.float(),
        expression=expression.float(),
        pose=pose.float(),
        camera=camera.float(),
        light=light.reshape(b, 27).float(),
        albedo=albedo.float(),
    )


# --------------------------------------------------------------------------------------------
# style regressor


class StyleRegressor(nn.Module):
    """A small CNN: image (B, 3, S, S) in [-1, 1] -> standardized regressed attributes."""

    def __init__(self, size: int, outputs: int = len(REGRESSED), width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in, s = 3, size
        for c in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(4, c), nn.SiLU()]
            c_in, s = c, (s + 1) // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c_in * s * s, 64), nn.SiLU(), nn.Linear(64, outputs)
        )
        self.register_buffer("mean", torch.zeros(outputs))
        self.register_buffer("std", torch.ones(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attributes in their own units (degrees, toyfaces units)."""
        return self.head(self.features(x)) * self.std + self.mean


def train_style_regressor(
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
) -> StyleRegressor:
    """Fit :class:`StyleRegressor` on real images and their attributes (MSE on standardized
    targets, AdamW, cosine schedule); returns it in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = StyleRegressor(images.shape[-1], targets.shape[1])
        model.mean.copy_(targets.mean(0))
        model.std.copy_(targets.std(0).clamp(min=1e-6))
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=steps, pct_start=0.1
        )
        g = torch.Generator().manual_seed(seed)
        n = images.shape[0]
        model.train()
        for _ in range(steps):
            idx = torch.randint(0, n, (batch_size,), generator=g)
            pred = model.head(model.features(images[idx]))
            loss = ((pred - (targets[idx] - model.mean) / model.std) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def style_agreement(
    regressor: StyleRegressor, images: torch.Tensor, requested: torch.Tensor, batch: int = 256
) -> dict[str, float]:
    """Pearson correlation and mean absolute error between the requested attributes (B, 5) and
    the ones the regressor reads from ``images``, per attribute."""
    pred = torch.cat([regressor(images[i : i + batch]) for i in range(0, images.shape[0], batch)])
    out: dict[str, float] = {}
    for k, name in enumerate(REGRESSED):
        a, b = requested[:, k].double(), pred[:, k].double()
        a0, b0 = a - a.mean(), b - b.mean()
        denom = (a0.norm() * b0.norm()).clamp(min=1e-12)
        out[f"{name}_corr"] = float((a0 * b0).sum() / denom)
        out[f"{name}_mae"] = float((a - b).abs().mean())
    return out


__all__ = [
    "EXPRESSIVE_STYLE",
    "REGRESSED",
    "STYLED",
    "StyleRegressor",
    "StyledToyFaces",
    "ToyStyleConfig",
    "style_agreement",
    "styled_values",
    "toy_style_params",
    "train_style_regressor",
]
