"""Procedural iris textures: the part of a generated ocular image that carries identity.

Each (subject, eye) gets one texture ``T(s, theta)`` on a polar grid of the iris's own tissue
coordinates: ``s`` in [0, 1] from the pupillary margin to the limbus (rows), ``theta`` in
[0, 2 pi) (columns, periodic). It is the sum of

* radial furrows and fibres: band-limited noise whose angular frequencies (``FIBRE_BAND``
  cycles per turn) far exceed its radial ones, so structures run radially;
* crypts: dark lacunae (elongated Gaussian pits) scattered over the ciliary zone;
* the collarette: a wavy ridge at ``s ~ 0.3`` that separates a pupillary zone of different
  brightness and finer pattern from the ciliary zone;
* fine isotropic band-limited noise (stroma);
* a dark pupillary ruff and a darker limbal ring (radial profile).

Textures are zero-mean with unit standard deviation; the renderer scales them by a subject's
contrast. Angular content stays below ``MAX_CYCLES`` cycles per turn so that the inner iris (a
circumference of about 80 pixels at the default image size) does not alias. Each texture comes
from its own ``torch.Generator`` seeded by ``(seed, subject, eye)``: a subject looks the same
in any dataset that contains it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from facelab.immeriris import _rng

TEXTURE_ROWS = 32  # radial samples (s)
TEXTURE_COLS = 256  # angular samples (theta)
PAD_COLS = 2  # circular padding for bilinear lookups across theta = 0
MAX_CYCLES = 44
FIBRE_BAND = (6.0, 40.0)  # cycles per turn
_STREAM_TEXTURE = 11


def _band_noise(
    g: torch.Generator, rows: int, cols: int, amp_fn, radial_period: int
) -> torch.Tensor:
    """Real noise (rows, cols), periodic in cols, with spectral amplitude ``amp_fn(kr, kt)``.

    Rows are generated on a ``radial_period``-long periodic domain and cropped, so the radial
    direction is not periodic in the result."""
    kt = torch.arange(cols // 2 + 1, dtype=torch.float32)
    kr = torch.fft.fftfreq(radial_period, d=1.0 / radial_period).abs().float()
    amp = amp_fn(kr[:, None], kt[None, :])
    amp[:, kt > MAX_CYCLES] = 0.0
    amp[0, 0] = 0.0
    spec = torch.complex(
        torch.randn(radial_period, cols // 2 + 1, generator=g),
        torch.randn(radial_period, cols // 2 + 1, generator=g),
    )
    field = torch.fft.irfft2(spec * amp, s=(radial_period, cols))
    field = field[:rows]
    return (field - field.mean()) / field.std().clamp_min(1e-8)


def _one_texture(g: torch.Generator) -> torch.Tensor:
    rows, cols = TEXTURE_ROWS, TEXTURE_COLS
    s = torch.linspace(0.0, 1.0, rows).view(-1, 1)
    theta = torch.arange(cols, dtype=torch.float32).view(1, -1) * (2 * math.pi / cols)
    u = torch.rand(16, generator=g)

    lo, hi = FIBRE_BAND

    def fibres(kr, kt):  # angular band-pass, radially smooth
        ang = torch.exp(-0.5 * (torch.log((kt + 1.0) / math.sqrt(lo * hi)) / 0.55) ** 2)
        rad = torch.exp(-0.5 * (kr / 2.2) ** 2)
        return ang * rad

    def stroma(kr, kt):  # isotropic-ish, finer
        k = torch.sqrt((kr * 6.0) ** 2 + kt**2)
        return torch.exp(-0.5 * ((k - 26.0) / 9.0) ** 2)

    fib = _band_noise(g, rows, cols, fibres, 2 * rows)
    fine = _band_noise(g, rows, cols, stroma, 2 * rows)

    # collarette: a wavy ridge; the pupillary zone inside it differs in brightness
    wav = _band_noise(g, 1, cols, lambda kr, kt: torch.exp(-0.5 * ((kt - 5.0) / 2.5) ** 2), 2)
    s_c = 0.26 + 0.1 * u[0] + 0.035 * wav
    ridge = torch.exp(-0.5 * ((s - s_c) / 0.035) ** 2)
    inner = torch.sigmoid((s_c - s) / 0.02)

    # crypts: dark elongated pits in the ciliary zone
    n_crypts = 6 + int(12 * u[1])
    cs = 0.4 + 0.5 * torch.rand(n_crypts, 1, 1, generator=g)
    ct = 2 * math.pi * torch.rand(n_crypts, 1, 1, generator=g)
    w_s = 0.04 + 0.06 * torch.rand(n_crypts, 1, 1, generator=g)
    w_t = 0.03 + 0.07 * torch.rand(n_crypts, 1, 1, generator=g)
    depth = 0.6 + 0.8 * torch.rand(n_crypts, 1, 1, generator=g)
    dt = torch.remainder(theta.unsqueeze(0) - ct + math.pi, 2 * math.pi) - math.pi
    crypts = (depth * torch.exp(-0.5 * (((s - cs) / w_s) ** 2 + (dt / w_t) ** 2))).sum(0)

    zone_gain = 0.5 + 0.6 * float(u[2])
    tex = (
        (1.0 - 0.5 * inner) * fib
        + (0.45 + 0.5 * inner * zone_gain) * fine
        + (0.9 + 0.6 * u[3]) * ridge
        - (0.8 + 0.6 * u[4]) * crypts
        + (0.6 * u[5] - 0.3) * inner
    )
    # pupillary ruff and limbal ring (dark), the same kind for everybody
    tex = tex - 1.4 * torch.exp(-s / 0.04) - 1.2 * torch.exp((s - 1.0) / 0.06)
    return (tex - tex.mean()) / tex.std().clamp_min(1e-8)


def make_textures(seed: int, subjects: np.ndarray, eyes: np.ndarray) -> torch.Tensor:
    """Textures (K, 1, TEXTURE_ROWS, TEXTURE_COLS + 2 * PAD_COLS) of (subject, eye) pairs,
    padded circularly along theta for lookups with ``grid_sample``."""
    seeds = _rng.seed_of(seed, _STREAM_TEXTURE, subjects, eyes)
    out = torch.empty(len(seeds), 1, TEXTURE_ROWS, TEXTURE_COLS + 2 * PAD_COLS)
    g = torch.Generator()
    for k, sd in enumerate(seeds.tolist()):
        g.manual_seed(sd)
        t = _one_texture(g)
        out[k, 0] = torch.cat([t[:, -PAD_COLS:], t, t[:, :PAD_COLS]], dim=1)
    return out
