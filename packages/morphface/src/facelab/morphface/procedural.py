"""A small procedural 3DMM built by code: a head-like mesh with smooth shape and expression bases.

No real 3DMM can be downloaded here, so tests, toy runs and the demo use this one. The head is a
closed latitude-longitude mesh (``rings`` x ``segments`` quads split into triangles plus two
pole fans; 40 x 64 gives 2,562 vertices and 5,120 triangles) deformed by a *semantic* surface
function ``S(shape, expression)``: an ellipsoid with a narrowing jaw and chin, and smooth bumps
along the surface normal for the nose, eye sockets, brows, cheekbones, lips and chin.

The linear bases are the Jacobian of ``S`` at the neutral head (central differences), each
column scaled to one standard deviation of the matching toyfaces parameter, so a coefficient of
1 is "one toyfaces standard deviation" (the toy mapping in :mod:`facelab.morphface.toy` is then
a division by the spread):

* shape (``SHAPE_MODES``): face width, face height, chin taper, jaw width, eye spacing, nose
  width, nose height, mouth width, mouth height, brow height;
* expression (``EXPRESSION_MODES``): smile (corners up and out, cheeks raised), mouth open (the
  lower face drops), eye closure (the lids fill the sockets), brow raise; coefficient units are
  toyfaces' own (smile in [0, 1], mouth_open in [0, 1.5], closure = 1 - eye_openness, brow raise
  in template pixels);
* albedo (``ALBEDO_MODES``): skin lightness, redness, lip redness on a mid skin tone with darker
  brows and eyes and redder lips.

Model units: the head's half height is 1 (about 58 template pixels of the 112 px ArcFace crop,
so 1 template pixel ~ 0.0172 units).
"""

from __future__ import annotations

import math

import torch

from facelab.morphface.morphable import MorphableModel

SHAPE_MODES = (
    "face_width",
    "face_height",
    "chin_taper",
    "jaw_width",
    "eye_spacing",
    "nose_width",
    "nose_height",
    "mouth_width",
    "mouth_height",
    "brow_height",
)
EXPRESSION_MODES = ("smile", "mouth_open", "eye_closure", "brow_raise")
ALBEDO_MODES = ("skin_lightness", "skin_redness", "lip_redness")
LANDMARK_NAMES = (
    "right_eye",
    "left_eye",
    "nose_tip",
    "mouth_right",
    "mouth_left",
    "chin",
    "right_brow",
    "left_brow",
    "forehead",
)
#: one template pixel of the 112 px crop in model units (face half height 58 px = 1 unit)
TEMPLATE_PX = 1.0 / 58.0

# the neutral head's semantic parameters and one toyfaces standard deviation of each
_SHAPE_NEUTRAL = {
    "face_width": 39.0,
    "face_height": 58.0,
    "chin_taper": 0.42,
    "jaw_width": 0.55,
    "eye_spacing": 17.6,
    "nose_width": 6.5,
    "nose_height": 20.3,
    "mouth_width": 14.6,
    "mouth_height": 40.6,
    "brow_height": 8.0,
}
_SHAPE_STD = {
    "face_width": 2.6,
    "face_height": 2.6,
    "chin_taper": 0.10,
    "jaw_width": 0.12,
    "eye_spacing": 1.4,
    "nose_width": 0.9,
    "nose_height": 1.8,
    "mouth_width": 1.5,
    "mouth_height": 1.8,
    "brow_height": 1.2,
}
_FACE_CY = -10.3  # toyfaces: the face ellipse centre sits 10.3 px above the face origin
_DEPTH = 0.9  # head depth / half height


def _gauss(u, v, cu, cv, su, sv):
    return torch.exp(-0.5 * (((u - cu) / su) ** 2 + ((v - cv) / sv) ** 2))


def _grid(rings: int, segments: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit directions (V, 3) of the latitude-longitude mesh and its faces (F, 3)."""
    theta = torch.arange(1, rings + 1, dtype=torch.float64) * (math.pi / (rings + 1))
    phi = torch.arange(segments, dtype=torch.float64) * (2 * math.pi / segments) - math.pi
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    d = torch.stack([torch.sin(t) * torch.sin(p), torch.cos(t), torch.sin(t) * torch.cos(p)], -1)
    dirs = torch.cat(
        [
            torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64),
            d.reshape(-1, 3),
            torch.tensor([[0.0, -1.0, 0.0]], dtype=torch.float64),
        ]
    )
    top, bottom = 0, 1 + rings * segments

    def vid(r, s):
        return 1 + r * segments + (s % segments)

    faces = []
    for s in range(segments):
        faces.append((top, vid(0, s + 1), vid(0, s)))
        faces.append((bottom, vid(rings - 1, s), vid(rings - 1, s + 1)))
        for r in range(rings - 1):
            a, b = vid(r, s), vid(r, s + 1)
            c, e = vid(r + 1, s), vid(r + 1, s + 1)
            faces.append((a, b, c))
            faces.append((b, e, c))
    # counter-clockwise seen from outside (outward normals)
    return dirs, torch.tensor(faces, dtype=torch.long)[:, [0, 2, 1]]


def _surface(dirs: torch.Tensor, shape: dict, expr: dict) -> torch.Tensor:
    """The semantic head surface S(shape, expression) at the mesh directions (V, 3)."""
    px = TEMPLATE_PX
    dx, dy, dz = dirs.unbind(-1)
    half_w = shape["face_width"] / shape["face_height"]  # half width / half height
    hscale = shape["face_height"] / 58.0
    # ellipsoid centred on the face; the lower half narrows (chin taper) with a jaw term
    low = torch.clamp(-dy, min=0.0)
    # a fuller lower face (so the mouth sits on the front), square by the jaw width, narrowed
    # towards the chin by the taper
    fuller = 1.0 + (0.9 + 2.0 * (shape["jaw_width"] - 0.55)) * low**2
    x = half_w * dx * (fuller - shape["chin_taper"] * low**4)
    y = hscale * dy
    z = _DEPTH * dz
    # face coordinates for features, in template pixels from the face origin (y down in
    # toyfaces; here v is up): u = x / px, v = y / px + face-centre offset
    u = x / px
    v = y / px - _FACE_CY  # v = 0 at the toyfaces face origin, > 0 above it
    front = torch.clamp(dz * 2.5, 0.0, 1.0) ** 2  # features live on the front (dz > 0.4 fully)
    bump = torch.zeros_like(dz)
    eye_v = 0.0  # eyes at the face origin height (toyfaces eye_y = 0)
    ex = shape["eye_spacing"]
    for side in (-1.0, 1.0):
        bump = bump - 0.07 * _gauss(u, v, side * ex, eye_v, 7.0, 4.5)  # socket
        bump = bump + 0.035 * _gauss(u, v, side * ex, eye_v + shape["brow_height"], 9.0, 2.6)
        bump = bump + 0.03 * _gauss(u, v, side * 24.0, -12.0, 7.0, 6.0)  # cheekbone
    ny = shape["nose_height"]
    nw = shape["nose_width"]
    bump = bump + 0.20 * _gauss(u, v, 0.0, -ny * 0.55, nw * 0.9, ny * 0.55)  # bridge + nose
    bump = bump + 0.07 * _gauss(u, v, 0.0, -ny, nw, 3.5)  # tip
    my, mw = shape["mouth_height"], shape["mouth_width"]
    bump = bump + 0.035 * _gauss(u, v, 0.0, -my, mw, 3.0)  # lips
    bump = bump + 0.05 * _gauss(u, v, 0.0, -my - 14.0, 9.0, 6.0)  # chin
    # expressions
    smile, open_, closure, brow = (
        expr["smile"],
        expr["mouth_open"],
        expr["eye_closure"],
        expr["brow_raise"],
    )
    corner = _gauss(u.abs(), v, mw, -my, 4.0, 4.0)
    dyv = 3.0 * smile * corner  # corners rise 3 px
    dxv = 1.5 * smile * corner * torch.sign(u)
    bump = bump + 0.02 * smile * (
        _gauss(u, v, -22.0, -22.0, 7.0, 6.0) + _gauss(u, v, 22.0, -22.0, 7.0, 6.0)
    )
    below = torch.sigmoid((-my - v) / 2.0) * _gauss(u, v, 0.0, -my - 10.0, 20.0, 30.0)
    dyv = dyv - 6.0 * open_ * below  # the jaw drops 6 px per unit
    bump = bump - 0.02 * open_ * _gauss(u, v, 0.0, -my, mw * 0.8, 2.5)  # the lips part
    for side in (-1.0, 1.0):
        bump = bump + 0.06 * closure * _gauss(u, v, side * ex, eye_v, 6.0, 3.5)
        dyv = dyv + brow * _gauss(u, v, side * ex, eye_v + shape["brow_height"], 11.0, 5.0)
    pos = torch.stack([x + dxv * px * front, y + dyv * px * front, z], -1)
    return pos + (bump * front).unsqueeze(-1) * dirs


def _albedo(dirs: torch.Tensor, shape: dict, lightness: float, redness: float, lip: float):
    px = TEMPLATE_PX
    dx, dy, dz = dirs.unbind(-1)
    u = dx * (shape["face_width"] / shape["face_height"]) / px
    v = dy * (shape["face_height"] / 58.0) / px - _FACE_CY
    front = torch.clamp(dz * 2.5, 0.0, 1.0) ** 2
    skin = torch.tensor([0.78, 0.56, 0.42], dtype=torch.float64) * (1.0 + 0.25 * lightness)
    skin = skin + torch.tensor([0.05, -0.01, -0.02], dtype=torch.float64) * redness
    a = skin.expand(dirs.shape[0], 3).clone()
    ex = shape["eye_spacing"]
    dark = torch.zeros_like(dx)
    for side in (-1.0, 1.0):
        dark = dark + 0.55 * _gauss(u, v, side * ex, 0.0, 4.5, 2.2)
        dark = dark + 0.45 * _gauss(u, v, side * ex, shape["brow_height"], 7.5, 1.8)
    lips = _gauss(u, v, 0.0, -shape["mouth_height"], shape["mouth_width"] * 0.9, 2.4) * front
    a = a * (1.0 - (dark * front).clamp(max=0.8)).unsqueeze(-1)
    lip_rgb = torch.tensor([0.72, 0.34, 0.34], dtype=torch.float64)
    lip_rgb = lip_rgb + torch.tensor([0.08, -0.03, -0.03], dtype=torch.float64) * lip
    a = a * (1 - lips.unsqueeze(-1)) + lip_rgb * lips.unsqueeze(-1)
    return a


def procedural_3dmm(rings: int = 40, segments: int = 64) -> MorphableModel:
    """The procedural head 3DMM (see the module docstring); deterministic, float32."""
    dirs, faces = _grid(rings, segments)
    neutral_expr = dict.fromkeys(EXPRESSION_MODES, 0.0)
    mean = _surface(dirs, _SHAPE_NEUTRAL, neutral_expr)

    shape_cols = []
    for name in SHAPE_MODES:
        h = 0.05 * _SHAPE_STD[name]
        hi, lo = dict(_SHAPE_NEUTRAL), dict(_SHAPE_NEUTRAL)
        hi[name] += h
        lo[name] -= h
        d = (_surface(dirs, hi, neutral_expr) - _surface(dirs, lo, neutral_expr)) / (2 * h)
        shape_cols.append(d * _SHAPE_STD[name])
    expr_cols = []
    for name in EXPRESSION_MODES:
        # the expression terms are linear in their coefficients: one unit difference is exact
        e1 = dict(neutral_expr)
        e1[name] = 1.0
        expr_cols.append(_surface(dirs, _SHAPE_NEUTRAL, e1) - mean)
    base_albedo = _albedo(dirs, _SHAPE_NEUTRAL, 0.0, 0.0, 0.0)
    alb_cols = []
    for k in range(len(ALBEDO_MODES)):
        args = [0.0, 0.0, 0.0]
        args[k] = 1.0
        alb_cols.append(_albedo(dirs, _SHAPE_NEUTRAL, *args) - base_albedo)
    landmarks = _landmarks(mean)
    return MorphableModel(
        mean_shape=mean.float(),
        shape_basis=torch.stack(shape_cols, -1).float(),
        expression_basis=torch.stack(expr_cols, -1).float(),
        faces=faces,
        albedo_mean=base_albedo.float(),
        albedo_basis=torch.stack(alb_cols, -1).float(),
        landmarks=landmarks,
        name="procedural-head",
        meta={
            "shape_modes": ",".join(SHAPE_MODES),
            "expression_modes": ",".join(EXPRESSION_MODES),
            "albedo_modes": ",".join(ALBEDO_MODES),
            "landmarks": ",".join(LANDMARK_NAMES),
        },
    )


def _landmarks(mean: torch.Tensor) -> torch.Tensor:
    """Nearest front-facing vertex to each named point (template pixels -> model units)."""
    px = TEMPLATE_PX
    s = _SHAPE_NEUTRAL
    pts_px = [
        (-s["eye_spacing"], 0.0),
        (s["eye_spacing"], 0.0),
        (0.0, -s["nose_height"]),
        (-s["mouth_width"], -s["mouth_height"]),
        (s["mouth_width"], -s["mouth_height"]),
        (0.0, -s["mouth_height"] - 16.0),
        (-s["eye_spacing"], s["brow_height"]),
        (s["eye_spacing"], s["brow_height"]),
        (0.0, 30.0),
    ]
    front = mean[:, 2] > 0
    idx = torch.nonzero(front).squeeze(1)
    out = []
    for u, v in pts_px:
        target = torch.tensor([u * px, (v + _FACE_CY) * px], dtype=mean.dtype)
        d = (mean[idx, :2] - target).norm(dim=1)
        out.append(int(idx[d.argmin()]))
    return torch.tensor(out, dtype=torch.long)


__all__ = [
    "ALBEDO_MODES",
    "EXPRESSION_MODES",
    "LANDMARK_NAMES",
    "SHAPE_MODES",
    "TEMPLATE_PX",
    "procedural_3dmm",
]
