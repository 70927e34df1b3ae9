"""Iris codes: the Gabor filter bank, probe grid, fragile-bit masking and encoder, with
open-iris's default configuration (``pipeline.yaml``), vectorized over a batch of strips.

* **Filters** (open-iris ``GaborFilter``): kernel ``(phi, rho)`` sizes (41, 21) and (17, 21);
  ``sigma_phi`` 7 and 2, ``sigma_rho`` 6.13 and 5.86, ``lambda_phi`` 28 and 8, orientation 90
  degrees (the carrier runs along the angle), DC correction, unit Frobenius norm of the real and
  of the imaginary part, fixed-point values (``round(2^15 k)``). A kernel has ``rho`` rows and
  ``phi`` columns. DC correction (as open-iris): each row's real part loses its mean by
  subtracting that mean times the row's envelope exponent over the exponent's mean.
* **Probe grid** (open-iris ``RegularProbeSchema``, 16 x 256): rows at
  ``rho = linspace(0, 1 - 0.0625, 16)``, columns at ``phi = k / 256`` ("periodic-left"),
  rounded to strip pixels: on a 128 x 512 strip, every 8th row from 0 and every 2nd column.
* **Responses** (open-iris ``ConvFilterBank``): the kernel is correlated with the strip at each
  probe point, the strip wrapping around in angle; rows of the kernel that fall outside the strip
  are dropped and the sum is divided by the rows used times the kernel's columns, then the real
  and imaginary parts by the kernel's real and imaginary norms. (open-iris takes the kernel's
  *central* rows when it truncates at the strip's edge; we keep the kept rows aligned with the
  strip rows they multiply.) A response's mask value, for the real and the imaginary part apart
  (``maskisduplicated: False``), is the share of ``|kernel part|`` that falls on valid pixels.
* **Fragile bits** (open-iris ``FragileBitRefinement``, polar, ``value_threshold = [0.0001,
  0.275, 0.0873]``): a bit is kept where ``1e-4 <= |z| <= 0.275``, and, for the real bit,
  ``|sin(arg z)| <= cos(0.0873)`` (the response is not within 5 degrees of the imaginary axis,
  where the real sign is unstable), for the imaginary bit ``|cos(arg z)| <= cos(0.0873)``.
* **Encoder** (open-iris ``IrisEncoder``): bits ``Re z > 0`` and ``Im z > 0``; mask bits where
  the mask value is ``>= 0.93`` and the bit is not fragile.

A template is ``codes, masks`` (N, 16, 256, 4) bool: channels (filter 1 real, filter 1
imaginary, filter 2 real, filter 2 imaginary). Strip gray levels are 0..255 as in open-iris,
which the fragile-bit thresholds assume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from facelab.core.errors import FacelabTypeError, RangeError, ShapeError, describe


@dataclass(frozen=True)
class GaborFilter:
    """One complex Gabor filter (open-iris parameters and defaults)."""

    kernel_size: tuple[int, int] = (41, 21)  # (phi, rho): columns, rows
    sigma_phi: float = 7.0
    sigma_rho: float = 6.13
    theta_degrees: float = 90.0
    lambda_phi: float = 28.0
    dc_correction: bool = True
    to_fixpoints: bool = True

    def __post_init__(self) -> None:
        kp, kr = self.kernel_size
        if kp % 2 == 0 or kr % 2 == 0 or not (3 < kp < 99 and 3 < kr < 99):
            raise RangeError(f"kernel_size: expected odd sizes in (3, 99), got {self.kernel_size}")
        if self.sigma_phi >= kp or self.sigma_rho >= kr or self.lambda_phi >= kp:
            raise RangeError(
                "GaborFilter: expected sigma_phi and lambda_phi < kernel_size[0] and "
                f"sigma_rho < kernel_size[1], got {self}"
            )

    def kernel(self) -> torch.Tensor:
        """Complex128 kernel (rho rows, phi columns), before the norm division."""
        kp, kr = self.kernel_size
        x = torch.arange(-(kr // 2), kr // 2 + 1, dtype=torch.float64).view(-1, 1)  # rho
        y = torch.arange(-(kp // 2), kp // 2 + 1, dtype=torch.float64).view(1, -1)  # phi
        t = math.radians(self.theta_degrees)
        rotx = x * math.cos(t) + y * math.sin(t)
        roty = -x * math.sin(t) + y * math.cos(t)
        envelope = -(rotx**2 / self.sigma_phi**2 + roty**2 / self.sigma_rho**2) / 2
        carrier = 2 * math.pi / self.lambda_phi * rotx
        k = torch.exp(torch.complex(envelope, carrier)) / (
            2 * math.pi * self.sigma_phi * self.sigma_rho
        )
        if self.dc_correction:
            g_mean = k.real.mean(-1, keepdim=True)
            corr = envelope.mean(-1, keepdim=True)
            k = k - (g_mean / corr) * envelope
        re, im = k.real.clone(), k.imag.clone()
        for part in (re, im):
            norm = torch.linalg.norm(part)
            if norm > 0:
                part /= norm
        if self.to_fixpoints:
            re, im = torch.round(re * 2**15), torch.round(im * 2**15)
        return torch.complex(re, im)


def _default_filters() -> tuple[GaborFilter, ...]:
    return (
        GaborFilter((41, 21), 7.0, 6.13, 90.0, 28.0),
        GaborFilter((17, 21), 2.0, 5.86, 90.0, 8.0),
    )


@dataclass(frozen=True)
class IrisCodeConfig:
    """The filter bank, probe grid, fragile-bit rule and encoder threshold (open-iris defaults)."""

    filters: tuple[GaborFilter, ...] = field(default_factory=_default_filters)
    probe_rows: int = 16
    probe_cols: int = 256
    boundary_rho: tuple[float, float] = (0.0, 0.0625)
    fragile_threshold: tuple[float, float, float] = (0.0001, 0.275, 0.08726646259971647)
    mask_threshold: float = 0.93

    @property
    def channels(self) -> int:
        return 2 * len(self.filters)


@dataclass
class IrisTemplate:
    """Iris codes and masks, both (N, rows, cols, 2 * filters) bool."""

    codes: torch.Tensor
    masks: torch.Tensor

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def __getitem__(self, idx) -> IrisTemplate:
        return IrisTemplate(self.codes[idx], self.masks[idx])


def probe_positions(cfg: IrisCodeConfig, rows: int, cols: int) -> tuple[list[int], list[int]]:
    """Strip rows and columns of the probe grid (open-iris rounding)."""
    lo, hi = cfg.boundary_rho
    rho = torch.linspace(lo, 1 - hi, cfg.probe_rows, dtype=torch.float64)
    phi = torch.arange(cfg.probe_cols, dtype=torch.float64) / cfg.probe_cols
    r = [min(round(float(v) * rows), rows - 1) for v in rho]
    c = [min(round(float(v) * cols), cols - 1) for v in phi]
    return r, c


class IrisEncoder:
    """Strips -> iris templates, all at once. Build once and reuse (kernels are cached)."""

    def __init__(self, config: IrisCodeConfig | None = None) -> None:
        self.config = config or IrisCodeConfig()
        self._kernels = []
        for f in self.config.filters:
            k = f.kernel()
            norm = (torch.linalg.norm(k.real).item(), torch.linalg.norm(k.imag).item())
            self._kernels.append((k.real.float(), k.imag.float(), norm))

    @staticmethod
    def _probe_conv(
        t: torch.Tensor,
        w: torch.Tensor,
        pr: list[int],
        pc: list[int],
        steps: tuple[int, int] | None,
    ) -> torch.Tensor:
        """Correlate (N, 1, R, A) with kernels (K, 1, kr, kc) at the probe rows / columns: the
        strip wraps around in angle; kernel rows outside the strip meet zeros."""
        kr, kc = w.shape[-2:]
        t = F.pad(t, (kc // 2, kc // 2, 0, 0), mode="circular")
        t = F.pad(t, (0, 0, kr // 2, kr // 2))
        if steps is None:
            return F.conv2d(t, w)[:, :, pr][:, :, :, pc]
        y = F.conv2d(t[:, :, pr[0] :, pc[0] :], w, stride=steps)
        return y[:, :, : len(pr), : len(pc)]

    def responses(self, strip: torch.Tensor, mask: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """Per filter: complex responses (N, rows, cols) and mask values (real, imag) at the
        probe grid."""
        _, rows, cols = strip.shape
        pr, pc = probe_positions(self.config, rows, cols)
        step_r = pr[1] - pr[0] if len(pr) > 1 else 1
        step_c = pc[1] - pc[0] if len(pc) > 1 else 1
        regular = pr == list(range(pr[0], pr[0] + step_r * len(pr), step_r)) and pc == list(
            range(pc[0], pc[0] + step_c * len(pc), step_c)
        )
        steps = (step_r, step_c) if regular else None
        out = []
        x = strip.unsqueeze(1).float()
        m = mask.unsqueeze(1).float()
        ones = torch.ones(1, 1, rows, cols, dtype=x.dtype, device=x.device)
        for re, im, (norm_re, norm_im) in self._kernels:
            kr, kc = re.shape
            weight = torch.stack([re, im, re.abs(), im.abs()]).unsqueeze(1).to(x.device)
            resp = self._probe_conv(x, weight[:2], pr, pc, steps)  # (N, 2, R, C)
            valid_w = self._probe_conv(m, weight[2:], pr, pc, steps)  # |k| on valid pixels
            total_w = self._probe_conv(ones, weight[2:], pr, pc, steps)  # |k| inside the strip
            rows_used = self._probe_conv(
                ones, torch.ones(1, 1, kr, 1, device=x.device), pr, pc, steps
            )
            scale = 1.0 / (rows_used[:, 0] * kc)
            z = torch.complex(resp[:, 0] * scale / norm_re, resp[:, 1] * scale / norm_im)
            mvals = valid_w / total_w
            nonzero = z != 0
            out.append((z, mvals[:, 0] * nonzero, mvals[:, 1] * nonzero))
        return out

    def encode(self, strip: torch.Tensor, mask: torch.Tensor) -> IrisTemplate:
        """Strips (N, R, A) gray 0..255 and masks (N, R, A) bool -> codes and masks (N, 16,
        256, 4)."""
        if not isinstance(strip, torch.Tensor) or strip.dim() != 3:
            raise ShapeError(f"strip: expected (N, R, A) normalized irises, got {describe(strip)}")
        if (
            not isinstance(mask, torch.Tensor)
            or mask.shape != strip.shape
            or mask.dtype != torch.bool
        ):
            raise FacelabTypeError(
                f"mask: expected a bool tensor of shape {tuple(strip.shape)}, got {describe(mask)}"
            )
        lo, hi, ang = self.config.fragile_threshold
        cos_lim = abs(math.cos(ang))
        codes, masks = [], []
        for z, m_re, m_im in self.responses(strip, mask):
            r = z.abs()
            phi = torch.angle(z)
            keep_r = (r >= lo) & (r <= hi)
            keep_re = (
                keep_r & (torch.sin(phi).abs() <= cos_lim) & (m_re >= self.config.mask_threshold)
            )
            keep_im = (
                keep_r & (torch.cos(phi).abs() <= cos_lim) & (m_im >= self.config.mask_threshold)
            )
            codes += [z.real > 0, z.imag > 0]
            masks += [keep_re, keep_im]
        return IrisTemplate(torch.stack(codes, -1), torch.stack(masks, -1))
