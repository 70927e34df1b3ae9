"""Random parameters of toyfaces: a counter-based hash RNG and the identity / image samplers.

Every random number is a pure function of ``(seed, stream, identity, image, parameter index)``
(splitmix64 finalizer chained over the key, vectorized in numpy ``uint64`` arithmetic, which wraps
modulo 2^64). So identity ``k`` looks the same in every dataset that contains it, whatever the
number of identities or images, and image ``j`` of an identity does not depend on how many images
the dataset holds. Parameters are addressed by their position in the name lists below: append new
parameters at the end so existing datasets do not change.

All geometry is in "template units": pixels of the 112x112 ArcFace crop, measured from the face
frame origin ``FACE_ORIGIN`` (the renderer scales to the requested size).
"""

from __future__ import annotations

import math

import numpy as np
import torch

# --------------------------------------------------------------------------------------------
# counter-based hash RNG

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_C_IDENTITY = np.uint64(0xD6E8FEB86659FD93)
_C_IMAGE = np.uint64(0xA0761D6478BD642F)
_STREAM_IDENTITY = 1
_STREAM_IMAGE = 2
_STREAM_OFFSETS = 3


def _mix(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer (a bijection on uint64 with good avalanche)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _keys(seed: int, stream: int, identity: np.ndarray, image: np.ndarray | None) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = _mix(np.full(identity.shape, seed, dtype=np.uint64) * _GOLDEN + np.uint64(stream))
        h = _mix(h ^ (identity.astype(np.uint64) * _C_IDENTITY))
        if image is not None:
            h = _mix(h ^ ((image.astype(np.uint64) + np.uint64(1)) * _C_IMAGE))
    return h


def hash_bits(
    seed: int, stream: int, identity: np.ndarray, image: np.ndarray | None, num: int
) -> np.ndarray:
    """(len, num) uint64 hashes of (seed, stream, identity[, image], column)."""
    h = _keys(seed, stream, identity, image)[:, None]
    cols = np.arange(1, num + 1, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        return _mix(h + cols * _GOLDEN)


def hash_uniform(
    seed: int, stream: int, identity: np.ndarray, image: np.ndarray | None, num: int
) -> np.ndarray:
    """(len, num) float64 uniforms in (0, 1), never exactly 0 or 1."""
    bits = hash_bits(seed, stream, identity, image, num) >> np.uint64(11)  # 53 bits
    return (bits.astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


def _normal(u: np.ndarray, clip: float = 2.5) -> np.ndarray:
    """Standard normal from uniforms (inverse CDF), clipped to +-clip (no freak faces)."""
    z = torch.special.ndtri(torch.from_numpy(u)).numpy()
    return np.clip(z, -clip, clip)


# --------------------------------------------------------------------------------------------
# identity parameters

#: where the face frame origin sits in the 112x112 template (roughly the nose bridge).
FACE_ORIGIN = (56.0, 62.0)

SKIN_TONE_GROUPS = 6
HAIR_STYLES = ("short", "medium", "long", "bald")
HAIR_COLORS = ("black", "dark_brown", "brown", "auburn", "blond", "grey")
IRIS_COLORS = ("dark_brown", "brown", "hazel", "green", "blue", "grey")

# colour palettes (RGB in [0, 1])
_SKIN_LIGHT = np.array([0.96, 0.80, 0.70])
_SKIN_MID = np.array([0.78, 0.56, 0.42])
_SKIN_DARK = np.array([0.36, 0.23, 0.16])
_HAIR_RGB = np.array(
    [
        [0.06, 0.05, 0.05],
        [0.20, 0.13, 0.08],
        [0.38, 0.25, 0.14],
        [0.50, 0.22, 0.10],
        [0.80, 0.66, 0.42],
        [0.62, 0.60, 0.58],
    ]
)
_HAIR_P = np.array([0.30, 0.25, 0.17, 0.08, 0.12, 0.08])
_IRIS_RGB = np.array(
    [
        [0.16, 0.09, 0.05],
        [0.32, 0.19, 0.09],
        [0.42, 0.34, 0.16],
        [0.30, 0.42, 0.25],
        [0.30, 0.45, 0.62],
        [0.45, 0.50, 0.52],
    ]
)
_IRIS_P = np.array([0.35, 0.25, 0.12, 0.08, 0.12, 0.08])

IDENTITY_PARAM_NAMES = (
    "skin_group",
    "skin_within",
    "skin_red",
    "skin_yellow",
    "face_w",
    "face_h",
    "chin_taper",
    "face_cy",
    "eye_dx",
    "eye_y",
    "eye_w",
    "eye_h",
    "eye_tilt",
    "iris_color",
    "iris_size",
    "brow_dy",
    "brow_thick",
    "brow_arch",
    "brow_slope",
    "brow_len",
    "brow_dark",
    "nose_y",
    "nose_w",
    "nose_bridge",
    "mouth_y",
    "mouth_w",
    "lip_h",
    "lip_red",
    "ear_size",
    "hair_color",
    "hair_jitter",
    "hair_style",
    "hair_volume",
    "hairline",
    "hair_part",
    "beard_draw",
    "beard_amount",
    "blush",
    "roughness",
    "jaw_width",
)


def _categorical(u: np.ndarray, probs: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.cumsum(probs) / probs.sum(), u).clip(0, len(probs) - 1)


def _skin_rgb(tone: np.ndarray) -> np.ndarray:
    """Piecewise-linear skin palette from light (0) over medium (0.5) to dark (1)."""
    t = tone[:, None]
    lo = _SKIN_LIGHT + (_SKIN_MID - _SKIN_LIGHT) * np.clip(t * 2, 0, 1)
    return lo + (_SKIN_DARK - _SKIN_MID) * np.clip(t * 2 - 1, 0, 1)


def sample_identity_params(seed: int, identities: np.ndarray) -> dict[str, torch.Tensor]:
    """Parameters of the given absolute identity numbers (float32 tensors, one row each)."""
    u = hash_uniform(seed, _STREAM_IDENTITY, identities, None, len(IDENTITY_PARAM_NAMES))
    c = {name: u[:, i] for i, name in enumerate(IDENTITY_PARAM_NAMES)}
    n = {name: _normal(v) for name, v in c.items()}
    p: dict[str, np.ndarray] = {}

    group = np.minimum((c["skin_group"] * SKIN_TONE_GROUPS).astype(np.int64), SKIN_TONE_GROUPS - 1)
    tone = (group + 0.15 + 0.7 * c["skin_within"]) / SKIN_TONE_GROUPS
    skin = _skin_rgb(tone)
    skin[:, 0] *= 1 + 0.05 * n["skin_red"]
    skin[:, 2] *= 1 - 0.06 * n["skin_yellow"]
    p["skin_group"], p["skin_tone"], p["skin_rgb"] = group, tone, np.clip(skin, 0.05, 0.98)

    p["face_w"] = 39.0 + 2.6 * n["face_w"]  # half width at the cheekbones
    p["face_h"] = 58.0 + 2.6 * n["face_h"]  # half height: eyes halfway between crown and chin
    p["chin_taper"] = 0.42 + 0.10 * n["chin_taper"]
    p["jaw_width"] = 0.55 + 0.12 * n["jaw_width"]  # > 0.55 square, < 0.55 round lower face
    p["face_cy"] = -10.3 + 1.0 * n["face_cy"]  # ellipse centre: at the eye line

    p["eye_dx"] = 17.6 + 1.4 * n["eye_dx"]
    p["eye_y"] = 0.0 + 1.4 * n["eye_y"]  # part positions: relative to the face centre
    p["eye_w"] = 7.0 + 0.7 * n["eye_w"]
    p["eye_h"] = 3.3 + 0.4 * n["eye_h"]
    p["eye_tilt"] = 0.08 * n["eye_tilt"]
    iris = _categorical(c["iris_color"], _IRIS_P)
    p["iris_color"], p["iris_rgb"] = iris, _IRIS_RGB[iris]
    p["iris_size"] = 0.58 + 0.05 * n["iris_size"]

    p["brow_dy"] = 8.0 + 1.2 * n["brow_dy"]
    p["brow_thick"] = 2.7 + 0.5 * n["brow_thick"]
    p["brow_arch"] = 1.6 + 0.8 * n["brow_arch"]
    p["brow_slope"] = 0.10 * n["brow_slope"]
    p["brow_len"] = 8.5 + 1.1 * n["brow_len"]
    p["brow_dark"] = 0.6 + 0.35 * c["brow_dark"]

    p["nose_y"] = 20.3 + 1.8 * n["nose_y"]
    p["nose_w"] = 6.5 + 0.9 * n["nose_w"]
    p["nose_bridge"] = 0.5 + 0.5 * c["nose_bridge"]

    p["mouth_y"] = 40.6 + 1.8 * n["mouth_y"]
    p["mouth_w"] = 14.6 + 1.5 * n["mouth_w"]
    p["lip_h"] = 3.0 + 0.5 * n["lip_h"]
    lip = skin * np.array([0.92, 0.62, 0.62])
    lip[:, 0] += 0.10 * c["lip_red"]
    p["lip_rgb"] = np.clip(lip, 0.03, 0.95)

    p["ear_size"] = 8.5 + 1.0 * n["ear_size"]

    hcol = _categorical(c["hair_color"], _HAIR_P)
    hair = _HAIR_RGB[hcol] * (1 + 0.15 * n["hair_jitter"])[:, None]
    p["hair_color"], p["hair_rgb"] = hcol, np.clip(hair, 0.02, 0.95)
    style = _categorical(c["hair_style"], np.array([0.40, 0.22, 0.28, 0.10]))
    p["hair_style"] = style
    # bald: the hair mass shrinks behind the face and the hairline leaves the image
    p["hair_volume"] = np.where(style == 3, -4.0, 2.0 + 6.0 * c["hair_volume"])
    p["hairline"] = np.where(style == 3, -90.0, -36.0 + 4.0 * n["hairline"])
    p["hair_part"] = 12.0 * n["hair_part"]
    p["hair_length"] = np.select([style == 2, style == 1], [75.0, 32.0], -200.0)
    beard = (c["beard_draw"] < 0.15) & (style != 2)
    p["beard"] = np.where(beard, 0.45 + 0.5 * c["beard_amount"], 0.0)
    p["blush"] = 0.08 * c["blush"]
    p["roughness"] = 0.035 + 0.045 * c["roughness"]
    return {k: torch.as_tensor(np.asarray(v)).float() for k, v in p.items()}


# --------------------------------------------------------------------------------------------
# image (nuisance) parameters

OCCLUSION_TYPES = ("none", "glasses", "sunglasses", "mask", "hand")
_OCC_P = np.array([0.0, 0.45, 0.15, 0.25, 0.15])  # given that there is an occluder

IMAGE_PARAM_NAMES = (
    "yaw",
    "pitch",
    "roll",
    "scale",
    "tx",
    "ty",
    "smile",
    "open_draw",
    "open_amount",
    "eye_open",
    "blink",
    "brow_raise",
    "gaze_x",
    "gaze_y",
    "light_azimuth",
    "light_elevation",
    "light_strength",
    "exposure",
    "color_temp",
    "gradient",
    "blur",
    "noise",
    "occ_draw",
    "occ_type",
    "occ_amount",
    "occ_color",
    "occ_side",
    "bg_r",
    "bg_g",
    "bg_b",
    "bg_contrast",
    "cloth_r",
    "cloth_g",
    "cloth_b",
    "hair_shift",
    "tint",
    "hairline_shift",
    "volume_shift",
)
NUM_TEXTURE_OFFSETS = 8


def sample_image_params(
    seed: int, identities: np.ndarray, images: np.ndarray, difficulty: float
) -> dict[str, torch.Tensor]:
    """Nuisance parameters of image ``images[i]`` of absolute identity ``identities[i]``.

    ``difficulty`` scales every nuisance amplitude (0: none, 1: default); the random draws
    themselves do not depend on it, so two difficulties give the same images "in spirit".
    """
    d = float(difficulty)
    u = hash_uniform(seed, _STREAM_IMAGE, identities, images, len(IMAGE_PARAM_NAMES))
    c = {name: u[:, i] for i, name in enumerate(IMAGE_PARAM_NAMES)}
    n = {name: _normal(v) for name, v in c.items()}
    p: dict[str, np.ndarray] = {}
    p["yaw"] = np.clip(18.0 * d * n["yaw"], -60, 60)  # degrees
    p["pitch"] = np.clip(9.0 * d * n["pitch"], -40, 40)
    p["roll"] = np.clip(6.0 * d * n["roll"], -30, 30)
    p["scale"] = np.exp(0.04 * d * n["scale"])
    p["tx"] = 1.5 * d * n["tx"]
    p["ty"] = 1.5 * d * n["ty"]
    p["smile"] = np.clip(d * c["smile"] ** 1.5, 0, 1)
    p["mouth_open"] = (
        np.where(c["open_draw"] < min(0.3 * d, 0.6), np.clip(d, 0, 1.5), 0.0) * c["open_amount"]
    )
    blink = c["blink"] < 0.04 * d
    p["eye_openness"] = np.where(
        blink, 0.12, np.clip(1.0 - 0.3 * d * c["eye_open"] ** 2, 0.15, 1.0)
    )
    p["brow_raise"] = 1.0 * d * n["brow_raise"]
    p["gaze_x"] = 0.18 * d * n["gaze_x"]
    p["gaze_y"] = 0.10 * d * n["gaze_y"]
    p["light_azimuth"] = 40.0 * min(d, 2.0) * n["light_azimuth"]  # degrees, 0 = frontal
    p["light_elevation"] = 20.0 + 15.0 * min(d, 2.0) * n["light_elevation"]
    p["light_strength"] = np.clip(0.2 + 0.4 * d * c["light_strength"], 0.0, 0.9)
    p["exposure"] = np.exp(0.22 * d * n["exposure"])
    p["color_temperature"] = 0.07 * d * n["color_temp"]
    p["tint"] = 0.03 * d * n["tint"]
    p["gradient"] = 0.12 * d * c["gradient"]
    p["blur_sigma"] = 0.4 + 0.35 * d * c["blur"]  # template pixels
    p["noise_sigma"] = 0.008 + 0.018 * d * c["noise"]  # on the [0, 1] scale
    has_occ = c["occ_draw"] < min(0.22 * d, 0.8)
    p["occlusion_type"] = np.where(has_occ, _categorical(c["occ_type"], _OCC_P[1:]) + 1, 0)
    p["occlusion_amount"] = np.where(has_occ, 0.5 + 0.5 * c["occ_amount"], 0.0)
    p["occ_color"] = c["occ_color"]
    p["occ_side"] = np.where(c["occ_side"] < 0.5, -1.0, 1.0)
    # muted backgrounds: a luminance plus a moderate colour cast
    lum = 0.15 + 0.7 * c["bg_r"]
    cast = np.stack([c["bg_g"] - 0.5, c["bg_b"] - 0.5, 0.5 - c["bg_g"]], 1) * 0.35
    p["bg_rgb"] = np.clip(lum[:, None] + cast, 0.05, 0.95)
    p["bg_contrast"] = 0.08 + 0.17 * c["bg_contrast"]
    cloth_lum = 0.1 + 0.7 * c["cloth_r"]
    cloth_cast = np.stack([c["cloth_g"] - 0.5, c["cloth_b"] - 0.5, 0.5 - c["cloth_g"]], 1) * 0.4
    p["cloth_rgb"] = np.clip(cloth_lum[:, None] + cloth_cast, 0.03, 0.95)
    # the same person's hair differs between photos
    p["hair_shift"] = 2.0 * d * n["hair_shift"]
    p["hairline_shift"] = 2.5 * d * n["hairline_shift"]
    p["volume_shift"] = 1.5 * d * n["volume_shift"]
    out = {k: torch.as_tensor(np.asarray(v)).float() for k, v in p.items()}
    out["occlusion_type"] = out["occlusion_type"].long()
    # integer offsets into the texture banks (background, skin, hair, noise ...)
    bits = hash_bits(seed, _STREAM_OFFSETS, identities, images, NUM_TEXTURE_OFFSETS)
    out["texture_offsets"] = torch.from_numpy((bits >> np.uint64(33)).astype(np.int64))
    return out


def light_vector(azimuth_deg: torch.Tensor, elevation_deg: torch.Tensor) -> torch.Tensor:
    """(B, 3) unit light directions (x right, y down, z towards the camera)."""
    az, el = azimuth_deg * (math.pi / 180), elevation_deg * (math.pi / 180)
    return torch.stack(
        [torch.sin(az) * torch.cos(el), -torch.sin(el), torch.cos(az) * torch.cos(el)], 1
    )
