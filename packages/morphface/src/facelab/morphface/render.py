"""3DMM style parameters -> the renderings MorphFace conditions on.

For a batch of :class:`~facelab.morphface.params.StyleParams`, the renderer builds the meshes
(``MorphableModel.vertices``), poses and projects them (``geometry.project``), rasterizes them
(``raster.rasterize``) and writes per pixel

* ``normals``: unit surface normals in model-view space (the rotated model axes: x image right,
  y up, z towards the camera), interpolated from vertex normals and renormalized;
* ``albedo``: the interpolated per-vertex albedo in [0, 1];
* ``shading``: Lambertian SH irradiance of the pixel normal under the image's light (27
  coefficients, ``shading.shade``);
* ``shaded``: ``albedo * shading`` (the Lambertian rendering);
* ``mask``: 1 where the head covers the pixel centre;
* ``offsets`` (only with ``expression_offsets`` = g > 0; ours, not the paper's): the
  displacement the expression adds to the surface (``MorphableModel.expression_offsets``),
  rotated by the head pose into model-view axes, divided by ``MorphableModel.expression_scale``
  and multiplied by g (g = 4, the setting the README measures, puts a typical within-subject
  smile change near 0.6 at the mouth corners).

``maps(params)`` stacks normals, albedo and the Lambertian rendering into the (B, 9, H, W)
conditioning input of the style encoder, in [-1, 1] with 0 on background (albedo and rendering
as ``2 v - 1`` inside the mask), plus the three offset channels when enabled (``channels``: 9 or
12). ``supersample`` k renders at k times the size and averages k x k blocks (anti-aliased
edges).

Why offset channels: a within-subject change of expression moves a few vertices by a fraction of
a pixel at the toy preset's 32 px, so the normals / albedo / rendering barely change (a typical
within-subject smile change alters the 9 maps by 0.003 RMS, a typical yaw change by 0.07); the
offset channels carry the expression's magnitude directly where it acts. On the toy data they
made a requested smile move the generated mouth the requested way more often than not, but only
slightly (README), so both presets leave them off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from facelab.core.errors import RangeError, ShapeError
from facelab.morphface.geometry import euler_to_matrix, project, vertex_normals
from facelab.morphface.morphable import MorphableModel
from facelab.morphface.params import StyleParams
from facelab.morphface.raster import interpolate, rasterize
from facelab.morphface.shading import shade

MAP_CHANNELS = 9
#: channels ``expression_offsets`` > 0 adds to the maps
OFFSET_CHANNELS = 3


def map_channels(expression_offsets: float) -> int:
    """Channels of the style maps: 9, or 12 with expression offsets (gain > 0)."""
    return MAP_CHANNELS + (OFFSET_CHANNELS if expression_offsets > 0 else 0)


@dataclass
class Rendering:
    normals: torch.Tensor  # (B, 3, H, W)
    albedo: torch.Tensor  # (B, 3, H, W)
    shading: torch.Tensor  # (B, 3, H, W)
    shaded: torch.Tensor  # (B, 3, H, W)
    mask: torch.Tensor  # (B, 1, H, W) float
    offsets: torch.Tensor | None = None  # (B, 3, H, W) with expression_offsets


class StyleRenderer:
    """Render style parameters with a 3DMM (see the module docstring)."""

    def __init__(
        self,
        model: MorphableModel,
        image_size: int = 32,
        *,
        perspective_distance: float | None = None,
        supersample: int = 1,
        expression_offsets: float = 0.0,
    ) -> None:
        if image_size < 4:
            raise RangeError(f"image_size: expected at least 4, got {image_size}")
        if supersample < 1:
            raise RangeError(f"supersample: expected an int >= 1, got {supersample}")
        self.model = model
        self.image_size = int(image_size)
        self.perspective_distance = perspective_distance
        self.supersample = int(supersample)
        if not (math.isfinite(expression_offsets) and expression_offsets >= 0):
            raise RangeError(
                f"expression_offsets: expected a gain >= 0 (0 = off), got {expression_offsets}"
            )
        self.expression_offsets = float(expression_offsets)
        # the offsets' factor, computed once (not in every training step's render)
        self._offset_factor = (
            self.expression_offsets / model.expression_scale if self.expression_offsets else 0.0
        )

    @property
    def channels(self) -> int:
        """Channels of :meth:`maps`: 9, or 12 with the expression offsets."""
        return map_channels(self.expression_offsets)

    def to(self, device) -> StyleRenderer:
        self.model = self.model.to(device)
        return self

    def _check(self, params: StyleParams) -> None:
        m = self.model
        for name, want in (
            ("shape", m.num_shape),
            ("expression", m.num_expression),
            ("albedo", m.num_albedo),
        ):
            got = getattr(params, name).shape[1]
            if got != want:
                raise ShapeError(
                    f"style {name}: the 3DMM {m.name or ''} has {want} {name} coefficients, "
                    f"got {got}"
                )

    def render(self, params: StyleParams) -> Rendering:
        self._check(params)
        m = self.model
        dev = m.mean_shape.device
        params = params.to(dev, torch.float32)
        size = self.image_size * self.supersample
        verts = m.vertices(params.shape, params.expression)
        screen, rotated = project(
            verts, params.pose, params.camera, (size, size), self.perspective_distance
        )
        frags = rasterize(screen, m.faces, size, perspective=self.perspective_distance is not None)
        normals = vertex_normals(rotated, m.faces)
        albedo = m.albedo(params.albedo if m.num_albedo else None, batch=len(params))
        attrs = [normals, albedo]
        if self.expression_offsets > 0:
            rot = euler_to_matrix(params.pose)
            offsets = m.expression_offsets(params.expression) @ rot.transpose(1, 2)
            attrs.append(offsets * self._offset_factor)
        pix = interpolate(frags, torch.cat(attrs, -1), m.faces)  # (B, H, W, 6 or 9)
        mask = frags.mask.unsqueeze(-1).float()
        n = F.normalize(pix[..., :3], dim=-1, eps=1e-12) * mask
        a = pix[..., 3:6]
        s = shade(n, params.light) * mask
        out = [n, a, s, a * s, mask]
        if self.expression_offsets > 0:
            out.append(pix[..., 6:9] * mask)
        out = [t.permute(0, 3, 1, 2) for t in out]
        if self.supersample > 1:
            out = [F.avg_pool2d(t, self.supersample) for t in out]
        return Rendering(*out)

    def maps(self, params: StyleParams) -> torch.Tensor:
        """(B, ``channels``, H, W): normals, 2 * albedo - 1, 2 * rendering - 1 (0 on
        background), then the expression offsets when enabled."""
        r = self.render(params)
        m = r.mask
        maps = [r.normals, (2 * r.albedo - m), (2 * r.shaded.clamp(0, 1) - m)]
        if r.offsets is not None:
            maps.append(r.offsets)
        return torch.cat(maps, 1)


__all__ = ["MAP_CHANNELS", "OFFSET_CHANNELS", "Rendering", "StyleRenderer", "map_channels"]
