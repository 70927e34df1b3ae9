"""Procedural near-infrared ocular images of off-axis eyes, as a headset camera sees them.

``OcularDataset`` holds ``num_subjects`` subjects; each has a left and a right eye and a grid of
*captures*: 9 gaze points (a 3x3 grid, ``gaze_angle_deg`` apart) x 11 display brightness levels
x ``repeats``. Both eyes of a capture share its gaze, brightness, head position and motion;
eyelids, lashes, reflections and sensor noise are drawn per eye. Sample ``i`` is
``(subject, capture, eye)`` with the eye fastest, so samples ``2j`` and ``2j + 1`` are the left
and right image of one capture (dual-eye protocols pair them).

What is rendered (all vectorized over a batch, one torch thread):

* **Iris** -- a planar disk ``iris_radius_mm`` wide with the subject-eye's texture
  (:mod:`facelab.immeriris.texture`), ``eyeball_to_iris_mm`` in front of the eyeball centre,
  turned by the gaze (yaw, pitch) and a small torsion, and seen through a pinhole camera: every
  pixel is mapped to the iris plane by a homography, so the iris is an ellipse with true
  perspective (not an affine squash). Pupil dilation moves the pupillary margin; the tissue
  stretches non-linearly (``s = rho + bend * rho * (1 - rho)`` with a subject-specific ``bend``
  that grows with dilation), which a linear rubber sheet does not undo.
* **Brightness levels** -- the headset display's brightness (11 levels): it sets the pupil
  (dark screen, large pupil) and, mildly, the exposure (+-0.65 stops at the extremes, with
  saturation of skin and sclera at the bright end).
* **Eyelids and eyelashes** -- parabolic lids through the eye corners, lowered by blinks and by
  downward gaze; lashes hang from the upper lid margin; a lid-margin shadow.
* **Specular reflections** -- a ring of LED glints on the cornea that moves half as much as the
  pupil with gaze, and occasional large glare.
* **Motion blur, defocus, sensor noise** -- a per-image line kernel, a Gaussian defocus, read
  and shot noise, 8-bit quantization and clipping.

Recorded per image (``render_truth``): the pupil and iris ellipses, the visible-iris mask, and
the six quality factors of ImmerIris: eyelid occlusion, eyelash occlusion (fractions of the iris
annulus), dilation (pupil / iris radius), gaze (degrees between the iris normal and the line to
the camera), specular reflection (fraction of the annulus) and motion blur (kernel length, px).

Determinism: every parameter is a hash of ``(seed, subject, capture, eye)``; a sample renders the
same in any batch and in any dataset that contains it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from facelab.core.errors import FacelabTypeError, RangeError, ShapeError
from facelab.immeriris import _rng
from facelab.immeriris.geometry import (
    circle_conic,
    conic_to_ellipse,
    ellipse_bbox,
    intrinsics_inverse,
    plane_homography,
    rotation,
)
from facelab.immeriris.texture import PAD_COLS, TEXTURE_COLS, make_textures

_CHECKS_DEFERRED = False


@contextmanager
def deferred_checks() -> Iterator[None]:
    """Construct configs without their range checks (a command-line parser that would turn a
    check's error into a multi-line usage box); call ``check()`` afterwards."""
    global _CHECKS_DEFERRED
    before, _CHECKS_DEFERRED = _CHECKS_DEFERRED, True
    try:
        yield
    finally:
        _CHECKS_DEFERRED = before


GAZE_POINTS = 9  # the 3x3 fixation grid, row-major from top-left; 4 is the centre
BRIGHTNESS_LEVELS = 11
CENTRE_GAZE = 4
EYES = ("left", "right")
QUALITY_FACTORS = ("eyelid", "eyelash", "dilation", "gaze", "specular", "blur")
MIN_SIZE = 48
RENDER_CHUNK = 32

_STREAM_SUBJECT, _STREAM_EYE, _STREAM_CAPTURE, _STREAM_IMAGE, _STREAM_SUBSET = 1, 2, 3, 4, 5
_BANK_SIZE = 512
_LASH_BANK = 8192


@dataclass
class OcularConfig:
    """How the procedural ocular images are made. Distances in mm, angles in degrees.

    The defaults place the iris about ``0.25 * size`` pixels wide in radius at the centre gaze
    with the camera on the eye's optical axis (``camera_*_deg = 0``), so that the centre gaze is
    frontal; headset cameras are mounted off-axis, which ``camera_yaw_deg`` /
    ``camera_pitch_deg`` add to every gaze point.
    """

    size: int = 128
    gaze_angle_deg: float = 20.0
    camera_yaw_deg: float = 0.0
    camera_pitch_deg: float = 0.0
    repeats: int = 2
    iris_radius_frac: float = 0.25
    eyeball_to_iris_mm: float = 10.5
    camera_to_eye_mm: float = 37.0
    iris_radius_mm: float = 6.0
    texture_contrast: float = 0.12
    # probabilities of the rare, strong nuisances (per capture or per eye)
    p_blink: float = 0.10
    p_heavy_lashes: float = 0.10
    p_dilation: float = 0.08
    p_glare: float = 0.08
    p_motion: float = 0.10

    def __post_init__(self) -> None:
        if not _CHECKS_DEFERRED:
            self.check()

    def check(self) -> None:
        """Raise :class:`RangeError` on an out-of-range field."""
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < MIN_SIZE:
            raise RangeError(f"size: expected an int >= {MIN_SIZE}, got {self.size!r}")
        if not isinstance(self.repeats, int) or self.repeats < 1:
            raise RangeError(f"repeats: expected an int >= 1, got {self.repeats!r}")
        if not 0.0 <= self.gaze_angle_deg <= 35.0:
            raise RangeError(
                f"gaze_angle_deg: expected a value in [0, 35], got {self.gaze_angle_deg}"
            )
        for name in ("camera_yaw_deg", "camera_pitch_deg"):
            if not -30.0 <= getattr(self, name) <= 30.0:
                raise RangeError(
                    f"{name}: expected a value in [-30, 30], got {getattr(self, name)}"
                )
        if not 0.1 <= self.iris_radius_frac <= 0.3:
            raise RangeError(
                f"iris_radius_frac: expected a value in [0.1, 0.3], got {self.iris_radius_frac}"
            )
        for name in ("p_blink", "p_heavy_lashes", "p_dilation", "p_glare", "p_motion"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise RangeError(f"{name}: expected a probability, got {getattr(self, name)}")
        if not 0.0 <= self.texture_contrast <= 1.0:
            raise RangeError(f"texture_contrast: expected [0, 1], got {self.texture_contrast}")

    @property
    def captures(self) -> int:
        """Captures per subject in the full grid: 9 gaze points x 11 levels x repeats."""
        return GAZE_POINTS * BRIGHTNESS_LEVELS * self.repeats

    @property
    def focal(self) -> float:
        """Focal length in pixels that gives the iris ``iris_radius_frac * size`` px at centre."""
        depth = self.camera_to_eye_mm - self.eyeball_to_iris_mm
        return self.iris_radius_frac * self.size * depth / self.iris_radius_mm

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class OcularBatch:
    """Images and everything the generator knows about them."""

    images: torch.Tensor  # (N, 1, S, S) float32 in [-1, 1] on the 8-bit grid
    pupil: torch.Tensor  # (N, 5) ellipse (cx, cy, a, b, phi) in pixels
    iris: torch.Tensor  # (N, 5)
    visible: torch.Tensor  # (N, S, S) bool: iris annulus not covered by lids, lashes, glints
    quality: dict[str, torch.Tensor]  # the six factors, each (N,)
    homography: torch.Tensor = field(repr=False)  # (N, 3, 3) pixel -> iris plane (mm)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread (rendering is many small element-wise ops, which extra
    threads slow down on a loaded CPU); restores the setting after."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _as_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise FacelabTypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    return int(value)


class OcularDataset(Dataset):
    """Procedural ocular images: ``num_subjects`` x captures x 2 eyes.

    Args:
        num_subjects: subjects in the dataset (global ids ``subject_offset + k``).
        config: :class:`OcularConfig` (image size, gaze grid, nuisance rates).
        seed: non-negative int; other seeds give other people and images.
        subject_offset: disjoint offset ranges give disjoint people (train / test splits).
        captures_per_subject: use this many captures of the full grid per subject (a fixed,
            seeded choice per subject) instead of all of them.

    ``dataset[i] -> (image (1, S, S) in [-1, 1], class)`` with class ``2 * k + eye`` (each eye
    is its own identity, as in iris recognition). ``render_truth(idx)`` gives the geometry and
    quality factors too.
    """

    def __init__(
        self,
        num_subjects: int,
        config: OcularConfig | None = None,
        seed: int = 0,
        subject_offset: int = 0,
        captures_per_subject: int | None = None,
    ) -> None:
        self.config = config if config is not None else OcularConfig()
        if not isinstance(self.config, OcularConfig):
            raise FacelabTypeError(f"config: expected an OcularConfig, got {type(config).__name__}")
        n = _as_int(num_subjects, "num_subjects")
        seed = _as_int(seed, "seed")
        offset = _as_int(subject_offset, "subject_offset")
        if n < 1:
            raise RangeError(f"num_subjects: expected a positive int, got {n}")
        if not 0 <= seed < 2**62:
            raise RangeError(f"seed: expected an int in [0, 2^62), got {seed}")
        if offset < 0:
            raise RangeError(f"subject_offset: expected a non-negative int, got {offset}")
        full = self.config.captures
        if captures_per_subject is None:
            per = full
        else:
            per = _as_int(captures_per_subject, "captures_per_subject")
            if not 1 <= per <= full:
                raise RangeError(
                    f"captures_per_subject: expected an int in [1, {full}] (9 gaze x 11 levels "
                    f"x {self.config.repeats} repeats), got {per}"
                )
        self.num_subjects, self.seed, self.subject_offset = n, seed, offset
        self.captures_per_subject = per
        subjects = np.arange(offset, offset + n, dtype=np.int64)
        if per == full:
            caps = np.broadcast_to(np.arange(full, dtype=np.int64), (n, full))
        else:  # a seeded subset per subject, in grid order
            keys = _rng.hash_keys(seed, _STREAM_SUBSET, subjects[:, None], np.arange(full)[None])
            caps = np.sort(np.argsort(keys, axis=1, kind="stable")[:, :per], axis=1)
        local = np.repeat(np.arange(n, dtype=np.int64), per * 2)
        self.subject = torch.from_numpy(subjects[local])  # global subject id per sample
        self.eye = torch.arange(2, dtype=torch.int64).repeat(n * per)  # 0 left, 1 right
        self.capture = torch.from_numpy(np.repeat(caps.reshape(-1), 2).astype(np.int64))
        r = self.config.repeats
        self.gaze_point = self.capture // (BRIGHTNESS_LEVELS * r)
        self.level = (self.capture // r) % BRIGHTNESS_LEVELS
        self.labels = torch.from_numpy(local) * 2 + self.eye
        self.num_classes = 2 * n
        self._textures: torch.Tensor | None = None
        self._params: dict[str, torch.Tensor] | None = None
        self._cache: torch.Tensor | None = None

    def __repr__(self) -> str:
        return (
            f"OcularDataset(num_subjects={self.num_subjects}, captures_per_subject="
            f"{self.captures_per_subject}, size={self.config.size}, seed={self.seed}, "
            f"subject_offset={self.subject_offset})"
        )

    def __len__(self) -> int:
        return int(self.labels.numel())

    # ------------------------------------------------------------------ indexing
    def indices(self, indices: object) -> torch.Tensor:
        """Validated int64 sample indices from a slice, a sequence or a 1-D integer tensor."""
        n = len(self)
        if isinstance(indices, slice):
            return torch.arange(n)[indices]
        if isinstance(indices, torch.Tensor):
            idx = indices
        else:
            try:
                idx = torch.as_tensor(np.asarray(indices))
            except (TypeError, ValueError, RuntimeError):
                raise FacelabTypeError(
                    f"indices: expected ints, a 1-D integer tensor or a slice, got "
                    f"{type(indices).__name__}"
                ) from None
        if idx.numel() == 0:
            return torch.zeros(0, dtype=torch.int64)
        if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
            raise FacelabTypeError(f"indices: expected integers, got dtype {idx.dtype}")
        if idx.dim() != 1:
            raise ShapeError(
                f"indices: expected a 1-D list of indices, got shape {tuple(idx.shape)}"
            )
        idx = idx.to(torch.int64)
        bad = (idx < -n) | (idx >= n)
        if bool(bad.any()):
            raise IndexError(
                f"indices: {int(bad.sum())} out of range for an OcularDataset of {n} images"
            )
        return idx % n

    # ------------------------------------------------------------------ parameters
    @property
    def textures(self) -> torch.Tensor:
        if self._textures is None:
            subj = np.repeat(
                np.arange(self.subject_offset, self.subject_offset + self.num_subjects), 2
            )
            eyes = np.tile(np.arange(2), self.num_subjects)
            self._textures = make_textures(self.seed, subj, eyes)
        return self._textures

    def params(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every random parameter of samples ``idx`` (float32 tensors, one row per sample)."""
        return sample_params(
            self.config,
            self.seed,
            self.subject[idx].numpy(),
            self.capture[idx].numpy(),
            self.eye[idx].numpy(),
        )

    def render(self, indices: object) -> torch.Tensor:
        """Images (B, 1, S, S) float32 in [-1, 1] on the 8-bit grid."""
        idx = self.indices(indices)
        if self._cache is not None:
            return self._cache[idx].float().div_(127.5).sub_(1.0)
        return self._render(idx, truth=False).images

    def render_truth(self, indices: object) -> OcularBatch:
        """Images with their ellipses, visible-iris masks and quality factors."""
        return self._render(self.indices(indices), truth=True)

    def _render(self, idx: torch.Tensor, truth: bool) -> OcularBatch:
        parts: list[OcularBatch] = []
        with one_thread():
            for start in range(0, max(idx.numel(), 1), RENDER_CHUNK):
                chunk = idx[start : start + RENDER_CHUNK]
                p = self.params(chunk)
                tex = self.textures[self.labels[chunk]]
                parts.append(render_batch(self.config, p, tex, truth=truth))
        if len(parts) == 1:
            return parts[0]
        return OcularBatch(
            images=torch.cat([b.images for b in parts]),
            pupil=torch.cat([b.pupil for b in parts]),
            iris=torch.cat([b.iris for b in parts]),
            visible=torch.cat([b.visible for b in parts]),
            quality={k: torch.cat([b.quality[k] for b in parts]) for k in parts[0].quality},
            homography=torch.cat([b.homography for b in parts]),
        )

    def materialize(self) -> torch.Tensor:
        """Render every image once and keep them as uint8 (N, 1, S, S); later ``render`` and
        ``__getitem__`` read the cache."""
        if self._cache is None:
            n, s = len(self), self.config.size
            out = torch.empty(n, 1, s, s, dtype=torch.uint8)
            for start in range(0, n, 4 * RENDER_CHUNK):
                sl = torch.arange(start, min(n, start + 4 * RENDER_CHUNK))
                img = self._render(sl, truth=False).images
                out[sl] = ((img + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
            self._cache = out
        return self._cache

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.indices([i])
        return self.render(idx)[0], self.labels[idx[0]].clone()

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        idx = self.indices(indices)
        images = self.render(idx)
        return list(zip(images.unbind(0), self.labels[idx].unbind(0)))

    def metadata(self) -> dict[str, torch.Tensor]:
        """Per-sample labels: class, subject (global id), eye, capture, gaze point, level."""
        return {
            "label": self.labels,
            "subject": self.subject,
            "eye": self.eye,
            "capture": self.capture,
            "gaze_point": self.gaze_point,
            "level": self.level,
        }


# ----------------------------------------------------------------------------------------------
# parameters


def _lerp(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return lo + (hi - lo) * u


def sample_params(
    cfg: OcularConfig, seed: int, subject: np.ndarray, capture: np.ndarray, eye: np.ndarray
) -> dict[str, torch.Tensor]:
    """Geometry, photometry and nuisance parameters of each (subject, capture, eye)."""
    s = cfg.size
    us = _rng.uniform(seed, _STREAM_SUBJECT, (subject,), 24)  # per subject
    ue = _rng.uniform(seed, _STREAM_EYE, (subject, eye), 24)  # per subject-eye
    uc = _rng.uniform(seed, _STREAM_CAPTURE, (subject, capture), 24)  # per capture (both eyes)
    ui = _rng.uniform(seed, _STREAM_IMAGE, (subject, capture, eye), 32)  # per image
    mirror = np.where(eye == 0, -1.0, 1.0)  # the left eye's layout is the right one mirrored

    r = cfg.repeats
    gaze_point = capture // (BRIGHTNESS_LEVELS * r)
    level = (capture // r) % BRIGHTNESS_LEVELS
    a = math.radians(cfg.gaze_angle_deg)
    gx = (gaze_point % 3 - 1).astype(np.float64)  # -1 left, 0, +1 right (image)
    gy = (gaze_point // 3 - 1).astype(np.float64)  # -1 up, 0, +1 down (image)
    jitter = math.radians(2.0)
    yaw = -gx * a + math.radians(cfg.camera_yaw_deg) + jitter * (2 * uc[:, 0] - 1)
    pitch = -gy * a + math.radians(cfg.camera_pitch_deg) + jitter * (2 * uc[:, 1] - 1)
    roll = math.radians(4.0) * (2 * ui[:, 0] - 1) + math.radians(2.0) * mirror * (ue[:, 0] - 0.5)

    # head / headset position: the eyeball centre near the optical axis
    eye_x = 1.0 * (2 * uc[:, 2] - 1)
    eye_y = 1.0 * (2 * uc[:, 3] - 1)
    eye_z = cfg.camera_to_eye_mm + 1.5 * (2 * uc[:, 4] - 1)
    iris_r = cfg.iris_radius_mm * _lerp(us[:, 0], 0.92, 1.08) * _lerp(ue[:, 1], 0.99, 1.01)

    # pupil: subject base, display brightness (dark screen -> large pupil), hippus, rare extremes
    base = _lerp(us[:, 1], 0.30, 0.44)
    light = 0.13 * (5.0 - level) / 5.0
    hippus = 0.035 * _rng.normal(uc[:, 5], 2.0) + 0.01 * _rng.normal(ui[:, 1], 2.0)
    extreme = uc[:, 6] < cfg.p_dilation
    spont = np.where(
        extreme, np.where(uc[:, 7] < 0.5, -1.0, 1.0) * _lerp(uc[:, 8], 0.14, 0.22), 0.0
    )
    ratio = np.clip(base + light + hippus + spont, 0.16, 0.76)
    # non-linear tissue stretch: s = rho + bend * rho * (1 - rho), bend grows with dilation
    bend = np.clip(2.5 * _lerp(ue[:, 2], 0.6, 1.6) * (ratio - 0.37), -0.8, 0.8)

    # photometry (scene reflectances at the nominal exposure)
    iris_mean = _lerp(us[:, 2], 0.30, 0.46) * _lerp(ue[:, 3], 0.97, 1.03)
    contrast = cfg.texture_contrast * _lerp(ue[:, 4], 0.85, 1.15)
    sclera = _lerp(us[:, 3], 0.66, 0.80)
    skin = _lerp(us[:, 4], 0.56, 0.74)
    pupil_level = _lerp(us[:, 5], 0.04, 0.08)
    exposure = 2.0 ** (0.13 * (level - 5.0) + 0.08 * (2 * uc[:, 9] - 1))

    # eyelids (pixels, relative to the image centre); the left eye is mirrored
    half_w = s * _lerp(us[:, 6], 0.40, 0.47)
    lid_y = s * _lerp(us[:, 7], 0.0, 0.05)
    apex_u = mirror * s * _lerp(ue[:, 5], -0.02, 0.06)
    h_up = s * _lerp(us[:, 8], 0.25, 0.31) * _lerp(ue[:, 6], 0.97, 1.03)
    h_lo = s * _lerp(us[:, 9], 0.21, 0.27)
    blink_cap = np.where(
        uc[:, 10] < cfg.p_blink, _lerp(uc[:, 11], 0.35, 0.8), _lerp(uc[:, 11], 0.0, 0.12)
    )
    blink = np.clip(blink_cap + 0.04 * (2 * ui[:, 2] - 1), 0.0, 0.9)

    # eyelashes
    heavy = ui[:, 3] < cfg.p_heavy_lashes
    lash_len = s * _lerp(ue[:, 7], 0.05, 0.09) * np.where(heavy, _lerp(ui[:, 4], 1.7, 2.4), 1.0)
    lash_density = _lerp(ue[:, 8], 0.35, 0.6) * np.where(heavy, 1.4, 1.0)
    lash_slant = mirror * _lerp(ue[:, 9], 0.1, 0.5)
    lash_offset = np.floor(ue[:, 10] * (_LASH_BANK - 2 * s))
    lash_dark = _lerp(ue[:, 11], 0.6, 0.85)

    # specular reflections: a ring of 6 LED glints, occasional large glare
    glint_r = _lerp(us[:, 10], 0.45, 0.6)  # ring radius / iris radius (px)
    glint_rot = 2 * math.pi * us[:, 11] + 0.15 * (2 * ui[:, 5] - 1)
    glint_sigma = _lerp(ui[:, 6], 0.7, 1.1) * s / 128
    glint_amp = _lerp(ui[:, 7], 0.9, 1.4)
    glare = ui[:, 8] < cfg.p_glare
    glare_sigma = np.where(glare, _lerp(ui[:, 9], 4.0, 8.0), 1.0) * s / 128
    glare_amp = np.where(glare, _lerp(ui[:, 10], 0.8, 1.3), 0.0)
    glare_dx = _lerp(ui[:, 11], -0.6, 0.6)  # in iris radii from the iris centre
    glare_dy = _lerp(ui[:, 12], -0.6, 0.6)

    # motion blur (head motion: shared by the eyes) and defocus
    motion = uc[:, 12] < cfg.p_motion
    blur_len = np.where(motion, _lerp(uc[:, 13], 3.0, 8.0), _lerp(uc[:, 13], 0.0, 1.2)) * s / 128
    blur_angle = math.pi * uc[:, 14]
    defocus = _lerp(ui[:, 13], 0.35, 0.65) * s / 128

    # where the shared random banks are read (noise, skin texture)
    noise_off = np.floor(ui[:, 14:16] * _BANK_SIZE)
    skin_off = np.floor(ue[:, 12:14] * _BANK_SIZE)

    cols = {
        "yaw": yaw, "pitch": pitch, "roll": roll, "eye_x": eye_x, "eye_y": eye_y, "eye_z": eye_z,
        "iris_r": iris_r, "ratio": ratio, "bend": bend, "iris_mean": iris_mean,
        "contrast": contrast, "sclera": sclera, "skin": skin, "pupil_level": pupil_level,
        "exposure": exposure, "half_w": half_w, "lid_y": lid_y, "apex_u": apex_u, "h_up": h_up,
        "h_lo": h_lo, "blink": blink, "lash_len": lash_len, "lash_density": lash_density,
        "lash_slant": lash_slant, "lash_offset": lash_offset, "lash_dark": lash_dark,
        "glint_r": glint_r, "glint_rot": glint_rot, "glint_sigma": glint_sigma,
        "glint_amp": glint_amp, "glare_sigma": glare_sigma, "glare_amp": glare_amp,
        "glare_dx": glare_dx, "glare_dy": glare_dy, "blur_len": blur_len,
        "blur_angle": blur_angle, "defocus": defocus, "mirror": mirror,
        "noise_oy": noise_off[:, 0], "noise_ox": noise_off[:, 1],
        "skin_oy": skin_off[:, 0], "skin_ox": skin_off[:, 1],
    }  # fmt: skip
    return {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in cols.items()}


# ----------------------------------------------------------------------------------------------
# shared random banks (fixed: they only supply texture to be read at per-image offsets)

_BANKS: dict[str, torch.Tensor] = {}


def _banks(size: int) -> dict[str, torch.Tensor]:
    """The banks, padded by ``size`` so that any window at an offset below ``_BANK_SIZE`` fits."""
    if _BANKS.get("size", torch.zeros(())).item() < size:
        _BANKS.clear()
    if not _BANKS:
        g = torch.Generator().manual_seed(0x1E15)
        _BANKS["noise"] = torch.randn(_BANK_SIZE, _BANK_SIZE, generator=g)
        # smooth skin / sclera variation: low-pass noise, unit std
        f = torch.fft.rfftfreq(_BANK_SIZE)
        fy = torch.fft.fftfreq(_BANK_SIZE).view(-1, 1)
        k = torch.sqrt(fy**2 + f.view(1, -1) ** 2)
        amp = 1.0 / (k + 1.0 / 64) * torch.exp(-((k / 0.08) ** 2))
        spec = torch.complex(
            torch.randn(_BANK_SIZE, f.numel(), generator=g),
            torch.randn(_BANK_SIZE, f.numel(), generator=g),
        )
        field_ = torch.fft.irfft2(spec * amp, s=(_BANK_SIZE, _BANK_SIZE))
        _BANKS["skin"] = (field_ - field_.mean()) / field_.std()
        # lashes: sparse thin strands along the lid margin (1-D)
        pos = torch.rand(_LASH_BANK // 3, generator=g) * _LASH_BANK
        strength = 0.5 + torch.rand(pos.numel(), generator=g)
        comb = torch.zeros(_LASH_BANK)
        idx = pos.long().clamp(0, _LASH_BANK - 1)
        comb.index_add_(0, idx, strength)
        kernel = torch.exp(-0.5 * (torch.arange(-3, 4, dtype=torch.float32) / 0.7) ** 2)
        comb = F.conv1d(comb.view(1, 1, -1), kernel.view(1, 1, -1), padding=3).view(-1)
        _BANKS["lash"] = (comb / torch.quantile(comb[comb > 0.05], 0.9)).clamp_(0.0, 1.0)
        pad = max(size, 128)
        for name in ("noise", "skin"):
            _BANKS[name] = F.pad(_BANKS[name][None, None], (0, pad, 0, pad), mode="circular")[0, 0]
        _BANKS["size"] = torch.tensor(pad)
    return _BANKS


# ----------------------------------------------------------------------------------------------
# rendering


def _soft(x: torch.Tensor) -> torch.Tensor:
    """A one-pixel-wide anti-aliased step: 0 below -0.5, 1 above +0.5."""
    return (x + 0.5).clamp_(0.0, 1.0)


def _motion_kernels(length: torch.Tensor, angle: torch.Tensor, k: int) -> torch.Tensor:
    """(N, 1, k, k) normalized line kernels (thin Gaussian around a centred segment)."""
    r = torch.arange(k, dtype=torch.float32) - (k - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    c, s = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    along = xx * c + yy * s
    across = -xx * s + yy * c
    half = (length / 2).view(-1, 1, 1)
    d_along = (along.abs() - half).clamp_min(0.0)
    ker = torch.exp(-0.5 * (d_along**2 + across**2) / 0.5**2)
    ker = ker / ker.sum(dim=(1, 2), keepdim=True)
    return ker.unsqueeze(1)


def _defocus(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable 3-tap Gaussian blur of (N, H, W) with sigmas (N,) <= ~0.7 px (the
    +-2 taps would weigh < 2e-2), edges replicated; shifted slices instead of a grouped
    convolution, which is several times slower on CPU for this size."""
    side = torch.exp(-0.5 / sigma.clamp_min(1e-3) ** 2)
    w1 = (side / (1.0 + 2.0 * side)).view(-1, 1, 1)
    w0 = 1.0 - 2.0 * w1
    for dim in (2, 1):
        n = x.shape[dim]
        y = x * w0
        y.narrow(dim, 1, n - 1).addcmul_(x.narrow(dim, 0, n - 1), w1)
        y.narrow(dim, 0, n - 1).addcmul_(x.narrow(dim, 1, n - 1), w1)
        y.narrow(dim, 0, 1).addcmul_(x.narrow(dim, 0, 1), w1)  # replicated edges
        y.narrow(dim, n - 1, 1).addcmul_(x.narrow(dim, n - 1, 1), w1)
        x = y
    return x


_GRIDS: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def _bank_windows(bank: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, s: int) -> torch.Tensor:
    """(N, S, S) windows of a square bank at per-image offsets (the bank is padded so that
    windows never wrap): plain slices, far cheaper than a gather."""
    oy_l, ox_l = oy.long().tolist(), ox.long().tolist()
    return torch.stack([bank[a : a + s, b : b + s] for a, b in zip(oy_l, ox_l)])


def _pixel_grid(s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres (S,) and homogeneous pixel coordinates (3, S*S), u fastest (cached)."""
    if s not in _GRIDS:
        coords = torch.arange(s, dtype=torch.float32) + 0.5
        pix = torch.stack([coords.repeat(s), coords.repeat_interleave(s), torch.ones(s * s)], 0)
        _GRIDS[s] = (coords, pix)
    return _GRIDS[s]


def render_batch(
    cfg: OcularConfig, p: dict[str, torch.Tensor], textures: torch.Tensor, truth: bool = True
) -> OcularBatch:
    """Render one batch from its parameters (see :func:`sample_params`) and textures
    (N, 1, TEXTURE_ROWS, TEXTURE_COLS + 2 PAD_COLS).

    Written for speed on one CPU thread: few full-size passes, most of them in place."""
    n, s = p["yaw"].shape[0], cfg.size
    banks = _banks(s)
    centre = s / 2.0
    focal = cfg.focal
    px_mm = (cfg.camera_to_eye_mm - cfg.eyeball_to_iris_mm) / focal  # mm per pixel on the iris

    def col(name: str) -> torch.Tensor:
        return p[name].view(-1, 1, 1)

    # --- iris plane and the pixel -> plane homography (float64 for the 3x3 algebra)
    rot = rotation(p["yaw"].double(), p["pitch"].double(), p["roll"].double())
    eyeball = torch.stack([p["eye_x"], p["eye_y"], p["eye_z"]], -1).double()
    normal = -rot[:, :, 2]
    iris_c = eyeball + cfg.eyeball_to_iris_mm * normal
    h = plane_homography(iris_c, rot, intrinsics_inverse(focal, centre, centre))
    # the iris layer is only computed in a window around each iris (about a third of the
    # image): its ellipse's bounding box, clamped into the image, one size per batch
    iris_e = conic_to_ellipse(circle_conic(h, p["iris_r"].double()))
    box = ellipse_bbox(iris_e)
    win = min(s, math.ceil(float((box[:, 2:] - box[:, :2]).max())) + 4)
    u0 = ((box[:, 0] + box[:, 2]) / 2 - win / 2).floor().clamp(0, s - win)
    v0 = ((box[:, 1] + box[:, 3]) / 2 - win / 2).floor().clamp(0, s - win)
    shift = torch.zeros(n, 3, 3, dtype=torch.float64)
    shift[:, 0, 0] = shift[:, 1, 1] = shift[:, 2, 2] = 1.0
    shift[:, 0, 2], shift[:, 1, 2] = u0, v0
    # plane coordinates in pixels of the iris plane, so that edges are one pixel soft
    h_px = h @ shift
    h_px[:, :2] /= px_mm
    coords, _ = _pixel_grid(s)
    _, pix = _pixel_grid(win)
    xyw = torch.matmul(h_px.float(), pix)  # (N, 3, win*win)
    w = xyw[:, 2]
    x = xyw[:, 0].div_(w).view(n, win, win)
    y = xyw[:, 1].div_(w).view(n, win, win)
    theta = torch.atan2(y, x)
    r = x.mul_(x).addcmul_(y, y).sqrt_()  # reuses x's memory

    iris_px = p["iris_r"] / px_mm
    pupil_px = iris_px * p["ratio"]
    a_iris = (iris_px.view(-1, 1, 1) + 0.5 - r).clamp_(0.0, 1.0)
    a_pupil = (pupil_px.view(-1, 1, 1) + 0.5 - r).clamp_(0.0, 1.0)
    # tissue coordinate: linear rho, bent by the subject's non-linear stretch under dilation
    inv_band = (1.0 / (iris_px - pupil_px)).view(-1, 1, 1)
    rho = r.sub_(pupil_px.view(-1, 1, 1)).mul_(inv_band).clamp_(0.0, 1.0)
    tissue = rho.addcmul_(rho * (1.0 - rho), col("bend"))  # rho + bend rho (1 - rho), monotone

    # --- texture lookup: theta -> columns (circular padding), tissue -> rows
    scale = (TEXTURE_COLS / (2 * math.pi)) * 2.0 / (TEXTURE_COLS + 2 * PAD_COLS - 1)
    gx = (
        theta.remainder_(2 * math.pi)
        .mul_(scale)
        .add_(2.0 * PAD_COLS / (TEXTURE_COLS + 2 * PAD_COLS - 1) - 1.0)
    )
    grid = torch.stack([gx, tissue.mul_(2.0).sub_(1.0)], -1)
    tex = F.grid_sample(textures, grid, mode="bilinear", padding_mode="border", align_corners=True)
    iris_val = tex[:, 0].mul_(col("contrast")).add_(1.0).mul_(col("iris_mean"))
    del grid, gx, tex

    # --- eyeball: sclera (shaded towards the corners), then iris and pupil in the windows
    du = (coords.view(1, -1) - centre - p["apex_u"].view(-1, 1)) / p["half_w"].view(-1, 1)  # (N, S)
    skin_tex = _bank_windows(banks["skin"], p["skin_oy"], p["skin_ox"], s)
    img = skin_tex.mul(0.03).sub_((0.3 * du * du).unsqueeze(1)).add_(1.0).mul_(col("sclera"))
    pupil_level = p["pupil_level"].tolist()
    for i, (a, b) in enumerate(zip(v0.long().tolist(), u0.long().tolist())):
        patch = img[i, a : a + win, b : b + win]
        eye = iris_val[i].sub_(patch).mul_(a_iris[i]).add_(patch)  # sclera + a (iris - sclera)
        patch.copy_(eye.sub_(pupil_level[i]).mul_(1.0 - a_pupil[i]).add_(pupil_level[i]))
    del iris_val

    # --- eyelids: parabolas through the corners, following the vertical gaze
    cam = torch.tensor(
        [[focal, 0.0, centre], [0.0, focal, centre], [0.0, 0.0, 1.0]], dtype=torch.float64
    )
    proj = (cam @ iris_c.unsqueeze(-1)).squeeze(-1)
    iris_u = (proj[:, 0] / proj[:, 2]).float()
    iris_v = (proj[:, 1] / proj[:, 2]).float()
    lid_c = centre + p["lid_y"]
    follow = 0.6 * (iris_v - centre)
    shape = 1.0 - du * du  # (N, S)
    y_up = (lid_c + follow).view(-1, 1) - (p["h_up"] * (1.0 - p["blink"])).view(-1, 1) * shape
    y_lo = (lid_c + 0.3 * follow).view(-1, 1) + p["h_lo"].view(-1, 1) * shape
    vcol = coords.view(1, -1, 1)
    below_up = vcol - y_up.unsqueeze(1)  # (N, S, S): depth below the upper lid margin (px)
    a_open = (
        (below_up + 0.5).clamp_(0.0, 1.0).mul_((y_lo.unsqueeze(1) + 0.5 - vcol).clamp_(0.0, 1.0))
    )
    shadow = below_up.clamp_min(0.0).mul_(-1.0 / (0.025 * s)).exp_().mul_(-0.35).add_(1.0)
    img.mul_(shadow)
    skin = skin_tex.mul_(0.05).add_(1.0).mul_(col("skin"))
    img.sub_(skin).mul_(a_open).add_(skin)
    del shadow, skin

    # --- eyelashes: strands hanging from the upper lid margin
    start = p["lash_offset"].long().tolist()
    comb = torch.stack([banks["lash"][o : o + s] for o in start]).mul_(
        1.6 * p["lash_density"].view(-1, 1)
    )
    comb.clamp_(0.0, 1.0)
    reach = below_up.div(col("lash_len")).neg_().add_(1.0).clamp_(0.0, 1.0)  # 1 at the margin
    reach.mul_(below_up > -0.15 * col("lash_len")).sqrt_()
    lash = reach.mul_(comb.unsqueeze(1))
    img.mul_(1.0 - col("lash_dark") * lash)

    # --- specular reflections: separable Gaussians summed by one batched matmul
    k_glint = 6
    ang = p["glint_rot"].view(-1, 1) + torch.arange(k_glint) * (2 * math.pi / k_glint)
    ring = (p["glint_r"] * iris_px).view(-1, 1)
    cg_u = (centre + 0.5 * (iris_u - centre)).view(-1, 1)
    cg_v = (centre + 0.5 * (iris_v - centre)).view(-1, 1)
    gu = torch.cat(
        [cg_u + ring * torch.cos(ang), (iris_u + p["glare_dx"] * iris_px).view(-1, 1)], 1
    )
    gv = torch.cat(
        [cg_v + 0.8 * ring * torch.sin(ang), (iris_v + p["glare_dy"] * iris_px).view(-1, 1)], 1
    )
    sig = torch.cat(
        [p["glint_sigma"].view(-1, 1).expand(-1, k_glint), p["glare_sigma"].view(-1, 1)], 1
    )
    amp = torch.cat([p["glint_amp"].view(-1, 1).expand(-1, k_glint), p["glare_amp"].view(-1, 1)], 1)
    ex = torch.exp(-0.5 * ((coords.view(1, 1, -1) - gu.unsqueeze(-1)) / sig.unsqueeze(-1)) ** 2)
    ey = torch.exp(-0.5 * ((coords.view(1, 1, -1) - gv.unsqueeze(-1)) / sig.unsqueeze(-1)) ** 2)
    spec = torch.bmm((ey * amp.unsqueeze(-1)).transpose(1, 2), ex)  # (N, S, S)
    img.add_(spec).mul_(col("exposure"))

    # --- optics and sensor
    img = _defocus(img, p["defocus"]).unsqueeze(1)
    moving = p["blur_len"] > 1.5
    if bool(moving.any()):
        sel = torch.nonzero(moving).flatten()
        k = 2 * math.ceil(float(p["blur_len"][sel].max()) / 2 + 1.5) + 1
        ker = _motion_kernels(p["blur_len"][sel], p["blur_angle"][sel], k)
        sub = img[sel].reshape(1, sel.numel(), s, s)
        sub = F.conv2d(F.pad(sub, (k // 2,) * 4, mode="replicate"), ker, groups=sel.numel())
        img[sel] = sub.reshape(sel.numel(), 1, s, s)
    noise = _bank_windows(banks["noise"], p["noise_oy"], p["noise_ox"], s).unsqueeze(1)
    sigma = img.clamp(0.0, 1.0).mul_(3.2e-4).add_((2.0 / 255) ** 2).sqrt_()
    img.addcmul_(sigma, noise).mul_(255.0).round_().clamp_(0.0, 255.0)
    images = img.div_(127.5).sub_(1.0)

    if not truth:
        empty = torch.zeros(0)
        return OcularBatch(images, empty, empty, torch.zeros(0, dtype=torch.bool), {}, empty)

    pupil_e = conic_to_ellipse(circle_conic(h, (p["iris_r"] * p["ratio"]).double())).float()
    annulus = torch.zeros(n, s, s)
    ring = a_iris.sub_(a_pupil).clamp_(0.0, 1.0)
    for i, (a, b) in enumerate(zip(v0.long().tolist(), u0.long().tolist())):
        annulus[i, a : a + win, b : b + win] = ring[i]
    area = annulus.sum(dim=(1, 2)).clamp_min(1.0)
    lash_on = lash > 0.3
    spec_on = spec > 0.3
    quality = {
        "eyelid": (annulus * (1.0 - a_open)).sum(dim=(1, 2)) / area,
        "eyelash": (annulus * a_open * lash_on).sum(dim=(1, 2)) / area,
        "dilation": p["ratio"].clone(),
        "gaze": _gaze_angle(normal, iris_c),
        "specular": (annulus * spec_on).sum(dim=(1, 2)) / area,
        "blur": p["blur_len"].clone(),
    }
    visible = (annulus > 0.5) & (a_open > 0.5) & ~lash_on & ~spec_on
    return OcularBatch(images, pupil_e, iris_e.float(), visible, quality, h.float())


def _gaze_angle(normal: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Degrees between the iris normal and the line from the iris centre to the camera."""
    to_cam = -centre / centre.norm(dim=-1, keepdim=True)
    cos = (normal * to_cam).sum(-1).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cos)).float()
