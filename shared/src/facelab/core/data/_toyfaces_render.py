"""The toyfaces renderer: identity + nuisance parameters -> photograph-like RGB images, batched.

Everything is computed for a whole batch at once on (B, H, W) coordinate grids; the only Python
loops are over face parts. Shapes are soft: a part's alpha is a smoothstep of an approximate
signed distance, so boundaries are anti-aliased at any size. Optical blur is rendered
analytically (a blurred soft edge is a softer edge, a blurred texture a weaker one), and sensor
noise is added last, so it stays white.

Two resolutions. The geometry (background, hair, face, parts, shading) is composed on a grid of
half the output size (for outputs of 96 px and more) into a 5-channel canvas: shaded RGB plus the
local amplitudes of skin and hair texture. The canvas is upsampled (bilinear) to the output size
and the textures are applied there, from band-limited noise banks (a mid-frequency field for
skin pores and blotches, a streaky field for hair, white noise for the sensor) that are
generated once per size and read per image at a hashed offset: a copy, no arithmetic. Facial
parts are drawn only inside windows that bound them for the whole batch.

Geometry is in template units (pixels of the 112x112 ArcFace crop) relative to ``FACE_ORIGIN``.
The face frame is the head's own frame before the in-plane similarity (roll, scale, shift);
out-of-plane pose (yaw, pitch) moves each part by ``depth * sin(angle)``, so the nose moves more
than the eyes and the outline less, as on a photograph of a turning head.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from facelab.core.data._toyfaces_params import FACE_ORIGIN, light_vector

TEMPLATE = 112.0
EDGE = 0.4  # logistic scale of a part boundary, template px
HAIR_EDGE = 1.0  # hair boundaries are fuzzier
LOGISTIC_STD = math.pi / math.sqrt(3.0)  # std of a logistic edge profile per unit of scale
BANK_ROWS_PER_SIZE = 24  # each 2-D texture field is (24 * size) x size, periodic
WHITE_LENGTH = 1 << 20
PIXEL_SIGMA = 0.3  # std of a pixel's footprint (output px): keeps textures free of aliasing
GEOMETRY_PIXEL_SIGMA = 0.3  # the same on the geometry grid
HALF_RES_FROM = 96  # outputs at least this large compose their geometry at half resolution
CANVAS = 5  # R, G, B, skin texture amplitude, hair texture amplitude
FULL_RES_CHUNK = 16  # images per full-resolution pass

# depth of each part in front of the head's yaw/pitch axis (template px)
Z_FACE, Z_EYE, Z_BROW, Z_NOSE, Z_MOUTH, Z_EAR = 6.0, 20.0, 22.0, 32.0, 24.0, -12.0

_SCLERA = (0.80, 0.77, 0.74)
_MOUTH_GAP = (0.16, 0.05, 0.05)
_TEETH = (0.82, 0.79, 0.72)
_PUPIL = (0.04, 0.04, 0.04)
_FRAME_RGB = ((0.05, 0.05, 0.05), (0.25, 0.14, 0.07), (0.55, 0.56, 0.58), (0.62, 0.50, 0.20))
_MASK_RGB = ((0.78, 0.86, 0.92), (0.55, 0.72, 0.86), (0.92, 0.92, 0.92), (0.10, 0.10, 0.11))
BACKGROUND_DEFOCUS = 1.0  # Gaussian std of the background's defocus, template px
HAIR_TEXTURE = 0.35  # relative amplitude of hair strands
SKIN_TEXTURE_WAVELENGTH = 3.0  # template px, for the blur transfer of the textures


# --------------------------------------------------------------------------------------------
# texture banks


def _fft_field(rng: np.random.Generator, rows: int, cols: int, amplitude) -> np.ndarray:
    """A periodic Gaussian field with the given amplitude spectrum, zero mean, std 1."""
    white = rng.standard_normal((rows, cols))
    fy = np.fft.fftfreq(rows)[:, None]
    fx = np.fft.rfftfreq(cols)[None, :]
    # the pixel footprint (a std of 0.3 output px) keeps fine textures free of aliasing
    footprint = np.exp(-2.0 * (np.pi * PIXEL_SIGMA) ** 2 * (fy**2 + fx**2))
    field = np.fft.irfft2(np.fft.rfft2(white) * amplitude(fy, fx) * footprint, s=(rows, cols))
    field -= field.mean()
    return (field / field.std()).astype(np.float32)


@lru_cache(maxsize=8)
def texture_banks(size: int) -> dict[str, torch.Tensor]:
    """Noise fields for one image size (cached; deterministic and the same for every seed).

    Frequencies are set in cycles per template pixel, so a 56 px dataset is statistically a
    downscaled 112 px one.
    """
    rng = np.random.default_rng(0x70F4CE5)
    rows = BANK_ROWS_PER_SIZE * size
    k = size / TEMPLATE  # f_template = f_output * k

    def lognormal(f, wavelength, width):
        return np.exp(-0.5 * (np.log(np.maximum(f, 1e-9) * wavelength) / width) ** 2)

    def pink(fy, fx):  # 1/f amplitude, flat below 1/80 cycles per template px
        return 1.0 / np.maximum(np.hypot(fy, fx) * k, 1.0 / 80.0)

    def background(fy, fx):  # 1/f, softened by a mild defocus (the face is in focus)
        f = np.hypot(fy, fx) * k
        return pink(fy, fx) * np.exp(-2.0 * (np.pi * BACKGROUND_DEFOCUS * f) ** 2)

    def skin(fy, fx):  # pores (about 3 px) and blotches (about 14 px)
        f = np.hypot(fy, fx) * k
        return lognormal(f, 3.0, 0.5) + 0.8 * lognormal(f, 14.0, 0.6)

    def hair(fy, fx):  # strands: fine across, long along
        ax, ay = np.abs(fx) * k, np.abs(fy) * k
        strands = lognormal(ax, 3.0, 0.55) * np.exp(-0.5 * (ay * 12.0) ** 2)
        return strands + 0.02 * pink(fy, fx)

    banks: dict[str, torch.Tensor] = {}
    for name, amp in (("pink", background), ("pink2", background), ("skin", skin), ("hair", hair)):
        field = _fft_field(rng, rows, size, amp)
        ext = np.concatenate([field, field[:size]], 0)  # so every row-shifted window fits
        banks[name] = torch.from_numpy(np.ascontiguousarray(ext.reshape(-1)))
    white = rng.standard_normal(WHITE_LENGTH + 3 * size * size).astype(np.float32)
    banks["white"] = torch.from_numpy(white)
    return banks


def _field_windows(banks, name: str, offsets: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 1, H, W) windows of a periodic 2-D field, starting at row ``offsets % rows``."""
    windows = banks[name].unfold(0, size * size, size)  # (rows + 1, H*W), row-shifted views
    return windows.index_select(0, offsets % (BANK_ROWS_PER_SIZE * size)).view(-1, 1, size, size)


def _white_windows(banks, offsets: torch.Tensor, size: int) -> torch.Tensor:
    windows = banks["white"].unfold(0, 3 * size * size, 1)
    return windows.index_select(0, offsets % WHITE_LENGTH).view(-1, 3, size, size)


# --------------------------------------------------------------------------------------------
# helpers


def _c(v: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) and (B, 3) -> (B, 3, 1, 1): per-image constants for (B, C, h, w)."""
    return v.view(v.shape[0], -1, 1, 1)


def _b(v: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1): per-image constants for (B, h, w) maps."""
    return v.view(-1, 1, 1)


def _soft(d: torch.Tensor, softness) -> torch.Tensor:
    """Alpha of the region ``d > 0`` for an approximate signed distance ``d`` (template px).

    A cubic smoothstep over ``6 * softness`` (the slope at the boundary of a logistic with scale
    ``softness``): as smooth as a sigmoid for the eye and the spectrum, exactly 0/1 away from
    the edge, and several times cheaper. ``softness``: a float or per image (B, 1, 1).
    """
    t = (d * (1.0 / (6.0 * softness))).add_(0.5).clamp_(0.0, 1.0)
    return t.square() * (3.0 - 2.0 * t)


def _ellipse(u: torch.Tensor, v: torch.Tensor, a, b) -> torch.Tensor:
    """Signed distance (template px, positive inside) to the ellipse with half axes (a, b).

    First-order estimate ``(1 - f) / |grad f|`` with ``f = (u/a)^2 + (v/b)^2``, close to the
    true distance near the boundary even for thin ellipses (a closed mouth, a blinking eye), so
    soft edges have the same width all around. Far away the linearization underestimates
    the distance, so it is capped by the distance to the bounding box (never smaller outside,
    never larger inside): the soft edge ends within the box grown by its reach.
    """
    ua, vb = u / a, v / b
    f = ua.square() + vb.square()
    grad = (ua / a).square_().add_((vb / b).square_()).sqrt_().mul_(2.0).add_(1e-4)
    box = torch.minimum(a - u.abs(), b - v.abs())
    return torch.minimum((1.0 - f).div_(grad), box)


def _ellipse_round(u: torch.Tensor, v: torch.Tensor, a, b, scale) -> torch.Tensor:
    """Cheaper distance for near-round ellipses: ``(1 - r) * scale``, r the normalized radius."""
    r = ((u / a).square_() + (v / b).square_()).add_(1e-6).sqrt_()
    return (1.0 - r).mul_(scale)


def _bump(q: torch.Tensor) -> torch.Tensor:
    """A Gaussian-like bump ``(1 - q/4)^4`` for ``q >= 0`` (about exp(-q) near 0), exactly 0
    for ``q >= 4``: compact support, so a part drawn in any window that holds its support
    renders the same pixels (and it is cheaper than exp)."""
    return (1.0 - 0.25 * q).clamp_(min=0.0).square_().square_()


def _wave(t: torch.Tensor) -> torch.Tensor:
    """A smooth periodic wave in [-1, 1] with period 1 (a cheap, exact-arithmetic sine)."""
    f = t - torch.floor(t)  # [0, 1)
    return (f * (1.0 - f)).square_().mul_(32.0).sub_(1.0)  # -1 at 0, 1 at 1/2, flat at both


def geometry_size(size: int) -> int:
    """Side of the grid the geometry is composed on."""
    return size // 2 if size >= HALF_RES_FROM else size


@lru_cache(maxsize=8)
def _upsample_matrix(n: int) -> torch.Tensor:
    """(2n x n) bilinear x2 interpolation (align_corners=False, edges replicated), float32."""
    src = ((torch.arange(2 * n, dtype=torch.float64) + 0.5) / 2 - 0.5).clamp(0, n - 1)
    i0 = src.floor().long().clamp(max=n - 2)
    frac = src - i0
    rows = torch.arange(2 * n)
    u = torch.zeros(2 * n, n, dtype=torch.float64)
    u[rows, i0] = 1 - frac
    u[rows, i0 + 1] += frac
    return u.float()


def _upsample2(x: torch.Tensor) -> torch.Tensor:
    """(B, C, n, n) -> (B, C, 2n, 2n) bilinear, as two matmuls (faster than interpolate on CPU)."""
    b, c, h, w = x.shape
    uh, uw = _upsample_matrix(h), _upsample_matrix(w)
    y = (x.reshape(-1, w) @ uw.T).view(b * c, h, 2 * w)
    return (uh @ y).view(b, c, 2 * h, 2 * w)


class _Frame:
    """Face-frame coordinates of all output pixels, and windows that bound parts for a batch."""

    def __init__(self, size: int, imp: dict[str, torch.Tensor], margin: float) -> None:
        self.size = size
        self.margin = margin
        self.k = size / TEMPLATE
        g = (torch.arange(size, dtype=torch.float32) + 0.5) / self.k - 0.5
        self.gx, self.gy = g - FACE_ORIGIN[0], g - FACE_ORIGIN[1]
        roll = imp["roll"] * (math.pi / 180)
        self.cos, self.sin, self.s = torch.cos(roll), torch.sin(roll), imp["scale"]
        self.tx, self.ty = imp["tx"], imp["ty"]
        dx = self.gx[None, :] - self.tx[:, None]  # (B, W)
        dy = self.gy[None, :] - self.ty[:, None]  # (B, H)
        a, b = _b(self.cos / self.s), _b(self.sin / self.s)
        dx, dy = dx[:, None, :], dy[:, :, None]
        self.X = a * dx + b * dy  # (B, H, W)
        self.Y = a * dy - b * dx

    def window(self, x0, x1, y0, y1, sel: torch.Tensor | None = None):
        """(rows, cols) slices of the output that contain the face-frame boxes
        [x0, x1] x [y0, y1] of every image (of the images ``sel``), widened by the reach of
        the softest edge; None when off-image.

        Callers pass boxes that hold the whole support of what they draw (all shapes and bumps
        have compact support), so a pixel does not depend on the window, i.e. on which other
        images share the batch.
        """
        margin = self.margin
        xs = torch.stack([x0, x1, x0, x1], 1)
        ys = torch.stack([y0, y0, y1, y1], 1)
        s, sin, cos, tx, ty = self.s, self.sin, self.cos, self.tx, self.ty
        if sel is not None:
            s, sin, cos, tx, ty = s[sel], sin[sel], cos[sel], tx[sel], ty[sel]
        s, sin, cos = s[:, None], sin[:, None], cos[:, None]
        ox = s * (cos * xs - sin * ys) + tx[:, None] + FACE_ORIGIN[0]
        oy = s * (sin * xs + cos * ys) + ty[:, None] + FACE_ORIGIN[1]
        bounds = torch.stack([ox.min(), ox.max(), oy.min(), oy.max()]).tolist()
        c0, c1, r0, r1 = (self._pixel(v, m) for v, m in zip(bounds, (-margin, margin) * 2))
        if r1 <= r0 or c1 <= c0:
            return None
        return slice(r0, r1), slice(c0, c1)

    def _pixel(self, t: float, margin: float) -> int:
        """Template coordinate -> slice bound (first pixel for a lower, one past for an upper)."""
        p = (t + margin + 0.5) * self.k - 0.5
        return min(self.size, max(0, math.floor(p) + (1 if margin > 0 else 0)))


# --------------------------------------------------------------------------------------------
# the renderer


def render_batch(
    idp: dict[str, torch.Tensor], imp: dict[str, torch.Tensor], size: int
) -> torch.Tensor:
    """Render B images as float32 (B, 3, size, size) in [0, 1] (before 8-bit quantization).

    ``idp``: identity parameters gathered per image; ``imp``: image parameters (both from
    ``_toyfaces_params``).
    """
    canvas = compose_canvas(idp, imp, geometry_size(size))
    banks = texture_banks(size)
    off = imp["texture_offsets"]
    # textures: multiplicative, weakened by the optics blur at their wavelength
    weak = _c(torch.exp(-2.0 * (math.pi * imp["blur_sigma"] / SKIN_TEXTURE_WAVELENGTH) ** 2))
    noise_sigma = _c(imp["noise_sigma"])
    out = torch.empty(canvas.shape[0], 3, size, size)
    # full resolution in small pieces: these maps are large, keep them in cache
    for s in range(0, canvas.shape[0], FULL_RES_CHUNK):
        sl = slice(s, s + FULL_RES_CHUNK)
        c = canvas[sl]
        while c.shape[-1] < size:
            c = _upsample2(c)
        skin = _field_windows(banks, "skin", off[sl, 3], size).mul_(c[:, 3:4])
        hair = _field_windows(banks, "hair", off[sl, 2], size).mul_(c[:, 4:5])
        texture = skin.add_(hair).mul_(weak[sl]).add_(1.0)
        img = torch.mul(c[:, :3], texture, out=out[sl])
        img.addcmul_(_white_windows(banks, off[sl, 4], size), noise_sigma[sl])
    return out.clamp_(0.0, 1.0)


def compose_canvas(
    idp: dict[str, torch.Tensor], imp: dict[str, torch.Tensor], n: int
) -> torch.Tensor:
    """The (B, 5, n, n) canvas: shaded RGB and the skin / hair texture amplitudes.

    Every layer lerps the canvas towards its "material" (colour and texture amplitudes) with
    its alpha; shading layers multiply the colour.
    """
    banks = texture_banks(n)
    B = imp["yaw"].shape[0]
    # edge softness per image: part softness, optics blur and the pixel footprint add up as
    # variances (template px^2)
    blur_var = imp["blur_sigma"].square() + (GEOMETRY_PIXEL_SIGMA / (n / TEMPLATE)) ** 2

    def edge(softness: float, sel: torch.Tensor | None = None) -> torch.Tensor:
        bv = blur_var if sel is None else blur_var[sel]
        return _b(torch.sqrt((softness * LOGISTIC_STD) ** 2 + bv) / LOGISTIC_STD)

    # a smoothstep edge reaches 3 softness units: windows grow by that for the softest edge
    reach = 3.0 * float(edge(HAIR_EDGE).max()) + 1.0
    fr = _Frame(n, imp, reach)
    X, Y = fr.X, fr.Y
    off = imp["texture_offsets"]
    yaw, pitch = imp["yaw"] * (math.pi / 180), imp["pitch"] * (math.pi / 180)
    sy, sp, cyaw = torch.sin(yaw), torch.sin(pitch), torch.cos(yaw)
    zeros = torch.zeros(B)

    def pose(x: torch.Tensor, y: torch.Tensor, z: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Face-frame position of the point (x, y) at depth z after yaw and pitch."""
        return x * cyaw + z * sy, y - z * sp

    # the camera: exposure and white balance multiply every colour
    cam = (
        torch.stack(
            [1 + imp["color_temperature"], 1 + imp["tint"], 1 - imp["color_temperature"]], 1
        )
        * imp["exposure"][:, None]
    )
    skin_amp = idp["roughness"]
    # strands show as relative brightness changes; on light hair they would be glaring
    hair = idp["hair_rgb"]
    hair_lum = 0.299 * hair[:, 0] + 0.587 * hair[:, 1] + 0.114 * hair[:, 2]
    hair_amp = HAIR_TEXTURE * (1.2 - hair_lum).clamp(0.4, 1.0)

    def material(rgb, skin_a=zeros, hair_a=zeros, sel: torch.Tensor | None = None):
        """(B, 5, 1, 1): colour (B, 3) or (3,) under the camera, and texture amplitudes."""
        c = cam if sel is None else cam[sel]
        rgb = torch.as_tensor(rgb, dtype=torch.float32).expand(c.shape[0], 3) * c
        if sel is not None:
            skin_a = skin_a[sel] if skin_a.dim() else skin_a
            hair_a = hair_a[sel] if hair_a.dim() else hair_a
        amps = torch.stack([skin_a.expand(c.shape[0]), hair_a.expand(c.shape[0])], 1)
        return torch.cat([rgb, amps], 1).view(-1, CANVAS, 1, 1)

    skin_rgb, hair_rgb = idp["skin_rgb"], idp["hair_rgb"]
    light = light_vector(imp["light_azimuth"], imp["light_elevation"])

    # ---------------- background: 1/f luminance and chroma texture on a muted colour
    pink = _field_windows(banks, "pink", off[:, 0], n)
    pink2 = _field_windows(banks, "pink2", off[:, 1], n)
    contrast = _c(imp["bg_contrast"])
    canvas = torch.zeros(B, CANVAS, n, n)
    rgb = canvas[:, :3]
    torch.mul((pink * contrast).add_(1.0), _c(imp["bg_rgb"] * cam), out=rgb)
    rgb.addcmul_(pink2, contrast * 0.3 * _c(torch.tensor([0.5, -0.1, -0.4]) * cam))

    # ---------------- head geometry: face ellipse with a tapered jaw
    wf = idp["face_w"] * (0.88 + 0.12 * cyaw)
    hf = idp["face_h"]
    fcx, fcy = pose(zeros, idp["face_cy"], Z_FACE)
    u_f = X - _b(fcx)
    v_f = Y - _b(fcy)
    # below the eye line the half width follows 1 - taper t + jaw t (1 - t), t = (v / hf)^2:
    # the taper narrows the chin, the jaw term squares or rounds the lower face
    t = (v_f * _b(1.0 / hf)).clamp_(min=0.0).square_()
    jaw = _b(1.2 * (idp["jaw_width"] - 0.55))
    width = (t * (jaw - _b(idp["chin_taper"]))).sub_(t.square() * jaw).add_(1.0).mul_(_b(wf))
    face_a = _soft(_ellipse_round(u_f, v_f, width, _b(hf), _b(torch.sqrt(wf * hf))), edge(EDGE))

    # ---------------- hair mass behind the head (medium and long hair also down the sides)
    vol = idp["hair_volume"] + imp["volume_shift"]
    hairline = idp["hairline"] + imp["hairline_shift"]
    hcx = fcx * 0.7 + imp["hair_shift"]
    u_h = X - _b(hcx)
    crown = _ellipse_round(u_h, v_f + 2.0, _b(wf + vol), _b(hf + vol), _b(torch.sqrt(wf * hf)))
    crown = torch.minimum(crown, _b(fcy + 5.0) - Y)  # short hair ends at the temples
    sides = torch.minimum(_b(wf + vol) - u_h.abs(), _b(fcy + idp["hair_length"]) - Y)
    sides = torch.minimum(sides, Y - _b(fcy - hf * 0.3))  # below the crown: no square corners
    hair_back = _soft(torch.maximum(crown, sides), edge(HAIR_EDGE))
    hair_mat = material(hair_rgb, hair_a=hair_amp)
    canvas.lerp_(hair_mat, hair_back.unsqueeze(1))

    # ---------------- neck and clothes at the bottom
    win = fr.window(fcx - 60, fcx + 60, fcy + 0.5 * hf, fcy + hf + 60)
    if win is not None:
        rs, cs = win
        Xw, Yw = X[:, rs, cs], Y[:, rs, cs]
        neck = torch.minimum(_b(wf * 0.62) - (Xw - _b(fcx * 0.5)).abs(), Yw - _b(fcy + 0.5 * hf))
        cloth = Yw - _b(fcy + hf * 0.75) - 0.4 * (Xw - _b(fcx * 0.4)).abs()
        band = canvas[:, :, rs, cs]
        band.lerp_(material(skin_rgb * 0.7, skin_amp), _soft(neck, edge(EDGE)).unsqueeze(1))
        band.lerp_(material(imp["cloth_rgb"]), _soft(cloth, edge(0.8)).unsqueeze(1))

    # ---------------- ears (behind the face outline, in front of the hair mass)
    ear_y = fcy + idp["eye_y"] + 8.0
    ear_h = idp["ear_size"]
    ear_mat = material(skin_rgb * 0.85, skin_amp)
    for side in (-1.0, 1.0):
        ex, ey = pose(idp["face_w"] * side * 0.97, ear_y, Z_EAR)
        # turning towards image right (sy > 0) shows the left ear and hides the right one
        ew = 4.0 * (1.0 - 0.8 * side * sy).clamp(min=0.2)
        win = fr.window(ex - ew - 2, ex + ew + 2, ey - ear_h - 2, ey + ear_h + 2)
        if win is None:
            continue
        rs, cs = win
        ear = _ellipse(X[:, rs, cs] - _b(ex), Y[:, rs, cs] - _b(ey), _b(ew), _b(ear_h))
        canvas[:, :, rs, cs].lerp_(ear_mat, _soft(ear, edge(EDGE)).unsqueeze(1))

    # ---------------- face skin
    canvas.lerp_(material(skin_rgb, skin_amp), face_a.unsqueeze(1))

    # ---------------- eyes: socket shading, opening, iris, pupil, lid line; brows
    eye_cx, eye_cy = [], []
    sclera, pupil = material(_SCLERA), material(_PUPIL)
    iris_mat = material(idp["iris_rgb"])
    brow_mat = material(hair_rgb * 0.7 + skin_rgb * 0.12, hair_a=hair_amp * 0.5)
    for side in (-1.0, 1.0):
        ex, ey = pose(idp["eye_dx"] * side, fcy + idp["eye_y"], Z_EYE)
        eye_cx.append(ex)
        eye_cy.append(ey)
        # the far eye is foreshortened: its surface faces 0.45 rad outwards, turning with yaw
        we = idp["eye_w"] * (torch.cos(yaw + side * 0.45) / math.cos(0.45)).clamp(min=0.2)
        he = idp["eye_h"] * imp["eye_openness"]
        bx, by = pose(idp["eye_dx"] * side + side * 1.2, fcy + idp["eye_y"], Z_BROW)
        by = by - idp["brow_dy"] - imp["brow_raise"]
        blen = idp["brow_len"]
        # the box holds the socket shading (2.3 eye widths), the brow (1.25 lengths, arched,
        # sloped) and the tilt of the eye
        tilt = idp["eye_tilt"].abs() * 2.3 * we
        brow_up = idp["brow_arch"].abs() + idp["brow_slope"].abs() * 1.3 * blen + idp["brow_thick"]
        win = fr.window(
            torch.minimum(ex - we * 2.3, bx - 1.25 * blen) - 1,
            torch.maximum(ex + we * 2.3, bx + 1.25 * blen) + 1,
            by - brow_up - 1,
            ey + idp["eye_h"] * 3.0 + tilt + 1,
        )
        if win is None:
            continue
        rs, cs = win
        Xw, Yw = X[:, rs, cs], Y[:, rs, cs]
        band = canvas[:, :, rs, cs]
        u = Xw - _b(ex)
        v = Yw - _b(ey) + _b(idp["eye_tilt"] * side) * u
        heh = _b(idp["eye_h"])
        # socket shading: a bump over the ellipse of radii (2.2 we, 3.5 he) above the eye
        sock = (u / _b(we * 2.2)).square_().add_(((v + heh) / (heh * 3.5)).square_())
        darken = 1.0 - 0.2 * (1.0 - sock).clamp_(min=0.0).square_()
        r = ((u / _b(we)).square_() + (v / _b(he)).square_()).add_(1e-6).sqrt_()
        eye_a = _soft(_ellipse(u, v, _b(we), _b(he)), edge(0.35))
        ri = _b(idp["iris_size"] * idp["eye_w"] * 0.75)
        ui = u - _b(imp["gaze_x"] * idp["eye_w"])
        vi = v - _b(imp["gaze_y"] * idp["eye_h"])
        rd = (ui.square() + vi.square()).add_(1e-6).sqrt_()
        iris_a = _soft(ri - rd, edge(0.35)).mul_(eye_a)
        pupil_a = _soft(0.42 * ri - rd, edge(0.3)).mul_(eye_a)
        lid_w = edge(0.8)  # the lash line: a thin dark band, widened by the blur
        lid = _bump(((r - 1.0) * _b(he) / lid_w).square_())
        lid.mul_(_soft(-v, 0.3)).mul_(_soft(_b(we) - u.abs(), edge(0.35)))  # upper lid only
        darken.sub_(0.7 * lid)
        band.lerp_(sclera, eye_a.unsqueeze(1))
        band.lerp_(iris_mat, iris_a.unsqueeze(1))
        band.lerp_(pupil, pupil_a.unsqueeze(1))
        band[:, :3].mul_(darken.unsqueeze(1))
        # brow: an arched band, thicker at the inner end, fading at the outer end
        ub = Xw - _b(bx)
        q = ub * (side / _b(blen))  # -1 inner .. +1 outer
        vb = Yw - _b(by) + _b(idp["brow_arch"]) * (1.0 - q * q) + _b(idp["brow_slope"] * side) * ub
        thick = _b(idp["brow_thick"] * 0.5) * (1.0 - 0.35 * q)
        brow_a = _soft(thick - vb.abs(), edge(0.5)) * _soft(1.0 - q.abs(), 0.08)  # |q| < 1.24
        band.lerp_(brow_mat, brow_a.mul_(_b(idp["brow_dark"])).unsqueeze(1))
    eye_mx = (eye_cx[0] + eye_cx[1]) * 0.5
    eye_my = (eye_cy[0] + eye_cy[1]) * 0.5

    # ---------------- nose: ridge highlight, shadow on the side away from the light, nostrils
    tip_x, tip_y = pose(zeros, fcy + idp["nose_y"], Z_NOSE)
    nw = idp["nose_w"]
    win = fr.window(
        torch.minimum(tip_x, eye_mx) - 2.6 * nw - 2,
        torch.maximum(tip_x, eye_mx) + 2.6 * nw + 2,
        eye_my - 1,
        tip_y + 9,
    )
    if win is not None:
        rs, cs = win
        Xw, Yw = X[:, rs, cs], Y[:, rs, cs]
        frac = ((Yw - _b(eye_my)) / _b(tip_y - eye_my)).clamp_(0.0, 1.0)
        ur = Xw - _b(eye_mx) - frac * _b(tip_x - eye_mx)  # the ridge leans with depth
        lside = torch.sign(light[:, 0] + 1e-6)
        along = frac * (1.0 - frac) * 4.0  # 0 at the eye line and at the tip
        hl = _bump(0.5 * (ur / 1.6).square()) * along * _b(idp["nose_bridge"])
        shadow = _bump(0.5 * ((ur + _b(lside * nw * 0.7)) / 2.2).square_()) * along
        ut, vt = Xw - _b(tip_x), Yw - _b(tip_y)
        tip = _bump((ut.square() + (vt + 1.0).square_()) / 18.0)
        under = _bump(0.5 * ((ut / _b(nw * 0.9)).square() + ((vt - 3.5) / 1.6).square()))
        nostril = _ellipse(ut.abs() - _b(nw * 0.48), vt - 1.8, _b(nw * 0.28), 1.1)
        gain = 1.0 + 0.12 * hl + 0.08 * tip - 0.15 * shadow - 0.22 * under
        gain.sub_(0.55 * _soft(nostril, edge(0.4)))
        canvas[:, :3, rs, cs].mul_(gain.unsqueeze(1))

    # ---------------- beard (an identity attribute of some), under the lips
    sel = torch.nonzero(idp["beard"] > 0).flatten()
    if sel.numel():
        top = (fcy + idp["nose_y"] + 3.0)[sel]
        win = fr.window(fcx[sel] - 60, fcx[sel] + 60, top - 4, (fcy + hf)[sel] + 2, sel)
        if win is not None:
            rs, cs = win
            a = _soft(Y[sel][:, rs, cs] - _b(top), edge(1.2, sel)) * face_a[sel][:, rs, cs]
            sub = canvas[sel][:, :, rs, cs]
            sub.lerp_(hair_mat[sel], a.mul_(_b(idp["beard"][sel])).unsqueeze(1))
            canvas[sel, :, rs, cs] = sub

    # ---------------- mouth: lips, the gap (open mouth), teeth; cheeks
    mx, my = pose(zeros, fcy + idp["mouth_y"], Z_MOUTH)
    smile = imp["smile"]
    mw = idp["mouth_w"] * (1.0 + 0.12 * smile) * (0.9 + 0.1 * cyaw)
    gap = imp["mouth_open"] * 3.2
    lh = idp["lip_h"]
    win = fr.window(mx - mw - 2, mx + mw + 2, my - gap - 2 * lh - 4, my + gap + 2 * lh + 3)
    if win is not None:
        rs, cs = win
        um, vm = X[:, rs, cs] - _b(mx), Y[:, rs, cs] - _b(my)
        qn = um / _b(mw)
        vs = vm + _b(smile * 3.0) * qn.square() - _b(smile * 0.8)  # corners rise
        band = canvas[:, :, rs, cs]
        lips = _soft(_ellipse(um, vs - _b(0.3 * lh), _b(mw), _b(gap + lh * 1.1)), edge(0.45))
        band.lerp_(material(idp["lip_rgb"], skin_amp * 0.5), lips.unsqueeze(1))
        gap_a = _soft(_ellipse(um, vs, _b(mw * 0.94), _b(gap.clamp(min=0.45))), edge(0.35))
        band.lerp_(material(_MOUTH_GAP), gap_a.unsqueeze(1) * 0.85)
        show = _b((gap * smile * 2).clamp(max=1.0))
        teeth = gap_a * _soft(-(vs + _b(gap * 0.15)), edge(0.45)) * show
        band.lerp_(material(_TEETH), teeth.unsqueeze(1))
    blush = _c(idp["blush"]) * _c(torch.tensor([0.6, -0.5, -0.3]) * cam)
    for side in (-1.0, 1.0):
        cx, cy = pose(side * (idp["mouth_w"] + 8.0), (my + eye_my) * 0.5, Z_MOUTH)
        win = fr.window(cx - 16, cx + 16, cy - 16, cy + 16)
        if win is None:
            continue
        rs, cs = win
        gb = _bump(((X[:, rs, cs] - _b(cx)).square() + (Y[:, rs, cs] - _b(cy)).square()) / 60.0)
        canvas[:, :3, rs, cs].addcmul_(gb.unsqueeze(1), blush)

    # ---------------- hair in front: fringe above the hairline, side curtains
    bottom = fcy + torch.maximum(idp["hair_length"], torch.full_like(fcy, 3.0))
    win = fr.window(fcx - 60, fcx + 60, fcy - hf - vol.clamp(min=0) - 4, bottom)
    if win is not None:
        rs, cs = win
        Xw, Yw = X[:, rs, cs], Y[:, rs, cs]
        ux = Xw - _b(hcx)
        qx = (ux - _b(idp["hair_part"])) / _b(wf)
        line = _b(fcy + hairline) + 6.0 * qx.square() + 40.0 * (qx.abs() - 0.7).clamp_(min=0.0)
        line = torch.minimum(line, _b(fcy))  # the fringe ends at the eye line at the latest
        fringe = _soft(line - Yw, edge(HAIR_EDGE))
        curtain = torch.minimum(ux.abs() - _b(wf * 0.84), _b(fcy + idp["hair_length"]) - Yw)
        back = hair_back[:, rs, cs]
        a = torch.maximum(
            fringe.mul_(torch.maximum(face_a[:, rs, cs], back)),
            _soft(curtain, edge(HAIR_EDGE)).mul_(back),
        )
        canvas[:, :, rs, cs].lerp_(hair_mat, a.unsqueeze(1))

    # ---------------- occluders on a few images: glasses, sunglasses, mask, hand
    occ = imp["occlusion_type"]
    amount_all = imp["occlusion_amount"]
    for kind in (1, 2, 3, 4):
        sel = torch.nonzero(occ == kind).flatten()
        if sel.numel() == 0:
            continue
        amount = amount_all[sel]
        ci = (imp["occ_color"][sel] * 4).long().clamp(max=3)
        if kind in (1, 2):  # rings around the eyes, a bridge, temples to the face outline
            ew = idp["eye_w"][sel]
            ex0, ex1 = eye_cx[0][sel], eye_cx[1][sel]
            ey_lo = torch.minimum(eye_cy[0], eye_cy[1])[sel] + 1.0 - 1.3 * ew - 2.0
            ey_hi = torch.maximum(eye_cy[0], eye_cy[1])[sel] + 1.0 + 1.3 * ew + 2.0
            x_lo = torch.minimum(ex0 - 1.8 * ew, (fcx - wf)[sel]) - 1.0
            x_hi = torch.maximum(ex1 + 1.8 * ew, (fcx + wf)[sel]) + 1.0
            win = fr.window(x_lo, x_hi, ey_lo, ey_hi, sel)
        elif kind == 3:  # a mask from below the nose to the chin
            top = (fcy + idp["nose_y"])[sel] - 2.0 - 3.0 * amount
            half_w = (wf * 1.04)[sel] + 1.0
            win = fr.window(
                fcx[sel] - half_w, fcx[sel] + half_w, top - 1.0, (fcy + hf * 1.02)[sel] + 1, sel
            )
        else:  # a hand (a rotated ellipse) at the chin or cheek
            sd = imp["occ_side"][sel]
            cx = sd * (wf[sel] * 0.55 + 6.0)
            cy = (fcy + idp["mouth_y"])[sel] + 10.0
            reach = 8.0 + 10.0 * amount + 1.0  # the long half axis bounds the rotated ellipse
            win = fr.window(cx - reach, cx + reach, cy - reach, cy + reach, sel)
        if win is None:
            continue
        rs, cs = win
        Xs, Ys = X[:, rs, cs][sel], Y[:, rs, cs][sel]
        sub = canvas[:, :, rs, cs][sel]
        if kind in (1, 2):
            rx, ry = _b(ew * 1.8), _b(ew * 1.3)
            lens = frame = None
            for ex, ey in zip(eye_cx, eye_cy):
                inside = _ellipse(Xs - _b(ex[sel]), Ys - _b(ey[sel] + 1.0), rx, ry)
                ring = _soft(_b(0.55 + 0.4 * amount) - inside.abs(), edge(0.3, sel))
                glass = _soft(inside, edge(0.35, sel))
                frame = ring if frame is None else torch.maximum(frame, ring)
                lens = glass if lens is None else torch.maximum(lens, glass)
            half = _b((ex1 - ex0) * 0.5)
            du = (Xs - _b(eye_mx[sel])).abs()
            dv = Ys - _b(eye_my[sel])
            e1, e2 = edge(0.3, sel), edge(0.35, sel)
            bridge = _soft(0.6 - (dv + 1.0).abs(), e1) * _soft(half - du, e2)
            temple = _soft(0.6 - (dv + 1.5).abs(), e1) * _soft(du - half - _b(ew * 1.7), e2)
            temple.mul_(face_a[:, rs, cs][sel])
            frame = torch.maximum(torch.maximum(frame, bridge), temple)
            tint = (0.05, 0.05, 0.06) if kind == 2 else (0.9, 0.9, 0.9)
            sub.lerp_(material(tint, sel=sel), (lens * (0.88 if kind == 2 else 0.07)).unsqueeze(1))
            sub.lerp_(material(torch.tensor(_FRAME_RGB)[ci], sel=sel), frame.unsqueeze(1))
        elif kind == 3:
            uf, vf = u_f[:, rs, cs][sel], v_f[:, rs, cs][sel]
            rim = Ys - _b(top) - 2.5 * (uf / _b(wf[sel])).square()
            scale = _b(torch.sqrt(wf * hf)[sel])
            wmap = width[:, rs, cs][sel] * 1.04
            inside = _ellipse_round(uf, vf, wmap, _b(hf[sel] * 1.02), scale)
            a = _soft(torch.minimum(rim, inside), edge(0.6, sel))
            cloth = material(torch.tensor(_MASK_RGB)[ci], torch.tensor(0.04), sel=sel)
            sub.lerp_(cloth, a.unsqueeze(1))
            sub[:, :3].mul_((1.0 + 0.06 * a * _wave(Ys * 0.19)).unsqueeze(1))  # pleats
        else:
            du, dv = Xs - _b(cx), Ys - _b(cy)
            ca, sa = _b(torch.cos(sd * 0.6)), _b(torch.sin(sd * 0.6))
            hu, hv = ca * du + sa * dv, ca * dv - sa * du
            hand = _ellipse(hu, hv, _b(8.0 + 10.0 * amount), _b(5.0 + 6.0 * amount))
            a = _soft(hand, edge(0.6, sel))
            hand_rgb = skin_rgb[sel] * torch.tensor([1.04, 0.97, 0.95])
            sub.lerp_(material(hand_rgb, skin_amp, sel=sel), a.unsqueeze(1))
            fingers = 1.0 - 0.1 * a * (1.0 + _wave(hv * 0.15)) * 0.5
            sub[:, :3].mul_(fingers.unsqueeze(1))
        canvas[sel, :, rs, cs] = sub

    # ---------------- lighting: Lambert shading of the head and a gradient over the scene
    head_a = torch.maximum(face_a, hair_back).mul_(0.9).add_(0.1)
    nx = (u_f - _b(sy * idp["face_w"] * 0.35)).mul_(_b(1.0 / (wf + 0.5 * vol)))
    ny = v_f * _b(1.0 / (hf + 0.5 * vol))
    nz = (1.0 - nx.square() - ny.square()).clamp_(min=1e-4).sqrt_()  # sqrt(0) is slow on CPU
    lam = nx.mul_(_b(light[:, 0])).add_(ny.mul_(_b(light[:, 1]))).add_(nz.mul_(_b(light[:, 2])))
    strength = _b(imp["light_strength"])
    shade = lam.clamp_(min=0.0).mul_(1.25 * strength).sub_(strength)  # shade - 1
    shade.mul_(head_a).add_(1.0)
    grad = (_b(light[:, 0]) * fr.gx.view(1, 1, -1)) + (_b(light[:, 1]) * fr.gy.view(1, -1, 1))
    shade.mul_(grad.mul_(_b(imp["gradient"]) / (TEMPLATE / 2)).add_(1.0))
    canvas[:, :3].mul_(shade.unsqueeze(1))
    return canvas
