"""A vectorized triangle rasterizer in plain torch (CPU and GPU): z-buffer, barycentrics.

``rasterize(screen, faces, (H, W))`` takes screen-space vertices (pixel x, pixel y, depth; see
``geometry``) of a batch of meshes that share one face list and returns, per pixel, the index of
the nearest covering triangle, its (perspective-correct) barycentric coordinates and the depth.

How it stays vectorized: every triangle's pixel bounding box is enumerated at once
(``repeat_interleave`` over the box sizes gives one *candidate* per (triangle, pixel) pair, for
the whole batch), the edge functions of all candidates are evaluated in one pass, and the
z-buffer is two ``scatter_reduce(amin)`` calls over the covering candidates: the nearest depth
per pixel, then the lowest triangle index among the candidates at that depth (so ties resolve
as a per-pixel loop over triangles in index order would). No Python loop runs per triangle or
per pixel; large batches are cut into chunks of at most ``max_candidates`` candidates.

Coverage rule: a pixel centre is inside when all three edge functions are >= 0 (pixels on a
shared edge belong to both triangles; the z-buffer keeps one). Front faces are the faces whose
vertices run counter-clockwise in model space seen from the camera (clockwise on the screen,
whose y axis points down); ``cull_backfaces`` drops the others.

``perspective=True``: depth is interpolated as 1/z (affine in screen space) and the
barycentrics are corrected to the surface (``b_i ~ w_i / z_i``); otherwise (weak perspective,
orthographic) screen-space barycentrics are exact.

:func:`rasterize_per_triangle` is the straightforward reference (a Python loop over triangles,
each filling its bounding box), used to check and to time this one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from facelab.core.errors import FacelabTypeError, FormatError, RangeError, ShapeError

#: candidates (triangle, pixel) evaluated together; bounds the memory of one pass (~60 B each)
MAX_CANDIDATES = 1 << 22


@dataclass
class Fragments:
    """Per-pixel rasterization result for a batch of B images of H x W pixels.

    ``face_index`` (B, H, W) int64: the covering face (index into ``faces``), -1 for
    background; ``bary`` (B, H, W, 3): barycentric coordinates of the pixel centre in that face
    (0 on background); ``depth`` (B, H, W): depth of the surface (``inf`` on background).
    """

    face_index: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        return self.face_index >= 0


def check_mesh(faces: torch.Tensor, num_vertices: int, name: str = "faces") -> torch.Tensor:
    """Faces (F, 3) of an integer dtype with every index in [0, num_vertices)."""
    if not isinstance(faces, torch.Tensor):
        raise FacelabTypeError(f"{name}: expected an integer tensor (F, 3), got {type(faces)}")
    if faces.is_floating_point() or faces.dtype == torch.bool:
        raise FormatError(f"{name}: expected integer vertex indices, got {faces.dtype}")
    if faces.dim() != 2 or faces.shape[1] != 3 or faces.shape[0] == 0:
        raise ShapeError(f"{name}: expected (F, 3) triangles with F >= 1, got {tuple(faces.shape)}")
    lo, hi = int(faces.min()), int(faces.max())
    if lo < 0 or hi >= num_vertices:
        raise RangeError(
            f"{name}: vertex indices must lie in [0, {num_vertices}), got [{lo}, {hi}]"
        )
    return faces.long()


def _check(screen: torch.Tensor, faces: torch.Tensor, image_size) -> tuple[int, int]:
    if not isinstance(screen, torch.Tensor) or not screen.is_floating_point():
        raise FacelabTypeError("screen: expected a float tensor (B, V, 3)")
    if screen.dim() != 3 or screen.shape[-1] != 3:
        raise ShapeError(f"screen: expected (B, V, 3) = (x, y, depth), got {tuple(screen.shape)}")
    check_mesh(faces, screen.shape[1])
    h, w = (int(image_size), int(image_size)) if isinstance(image_size, int) else image_size
    if h < 1 or w < 1:
        raise RangeError(f"image_size: expected positive sizes, got {(h, w)}")
    if not bool(torch.isfinite(screen).all()):
        from facelab.core.errors import NonFiniteError

        raise NonFiniteError("screen: expected finite vertex positions, got NaN/Inf")
    return int(h), int(w)


def _edge(ax, ay, bx, by, px, py):
    """Edge function of the directed edge a -> b at p (twice the signed area of a, b, p)."""
    return (bx - ax) * (py - ay) - (by - ay) * (px - ax)


def rasterize(
    screen: torch.Tensor,
    faces: torch.Tensor,
    image_size: int | tuple[int, int],
    *,
    perspective: bool = False,
    cull_backfaces: bool = True,
    max_candidates: int = MAX_CANDIDATES,
) -> Fragments:
    """Rasterize B meshes (screen vertices (B, V, 3), shared faces (F, 3)) into H x W pixels.

    See the module docstring for the conventions. Vectorized over the batch, the triangles
    and the pixels.
    """
    h, w = _check(screen, faces, image_size)
    faces = faces.long().to(screen.device)
    b, _, _ = screen.shape
    nf = faces.shape[0]
    device, dtype = screen.device, screen.dtype
    tri = screen[:, faces].reshape(b * nf, 3, 3)  # (T, corner, xyz), T = B*F
    x0, y0, z0 = tri[:, 0].unbind(-1)
    x1, y1, z1 = tri[:, 1].unbind(-1)
    x2, y2, z2 = tri[:, 2].unbind(-1)
    area = _edge(x0, y0, x1, y1, x2, y2)
    keep = area < 0 if cull_backfaces else area != 0
    if perspective:
        keep &= (z0 > 0) & (z1 > 0) & (z2 > 0)
    # pixel (i, j) has its centre at (j + 0.5, i + 0.5): columns ceil(min - 0.5) .. floor(max - 0.5)
    xmin = torch.ceil(torch.minimum(torch.minimum(x0, x1), x2) - 0.5).clamp(min=0)
    xmax = torch.floor(torch.maximum(torch.maximum(x0, x1), x2) - 0.5).clamp(max=w - 1)
    ymin = torch.ceil(torch.minimum(torch.minimum(y0, y1), y2) - 0.5).clamp(min=0)
    ymax = torch.floor(torch.maximum(torch.maximum(y0, y1), y2) - 0.5).clamp(max=h - 1)
    bw = (xmax - xmin + 1).clamp(min=0).long()
    bh = (ymax - ymin + 1).clamp(min=0).long()
    count = torch.where(keep, bw * bh, torch.zeros_like(bw))
    live = torch.nonzero(count).squeeze(1)  # triangles with at least one candidate pixel
    count = count[live]
    ends = torch.cumsum(count, 0)

    keys, depths, faces_hit, bary_hit = [], [], [], []
    start_tri = 0
    total_tris = live.numel()
    while start_tri < total_tris:
        # the next run of triangles whose candidates fit into one pass
        base = int(ends[start_tri - 1]) if start_tri else 0
        stop_tri = int(torch.searchsorted(ends, base + max_candidates, right=True))
        stop_tri = max(stop_tri, start_tri + 1)
        sel = live[start_tri:stop_tri]
        cnt = count[start_tri:stop_tri]
        start_tri = stop_tri
        n = int(cnt.sum())
        local = torch.repeat_interleave(
            torch.arange(sel.numel(), device=device), cnt, output_size=n
        )
        first = torch.cumsum(cnt, 0) - cnt
        offset = torch.arange(n, device=device) - first[local]
        t = sel[local]
        width = bw[t]
        px = xmin[t] + (offset % width).to(dtype)
        py = ymin[t] + torch.div(offset, width, rounding_mode="floor").to(dtype)
        cx, cy = px + 0.5, py + 0.5
        ax, ay, bx, by, qx, qy = x0[t], y0[t], x1[t], y1[t], x2[t], y2[t]
        inv = 1.0 / area[t]
        w0 = _edge(bx, by, qx, qy, cx, cy) * inv
        w1 = _edge(qx, qy, ax, ay, cx, cy) * inv
        w2 = _edge(ax, ay, bx, by, cx, cy) * inv
        inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        idx = torch.nonzero(inside).squeeze(1)
        t, w0, w1, w2 = t[idx], w0[idx], w1[idx], w2[idx]
        px, py = px[idx].long(), py[idx].long()
        img = torch.div(t, nf, rounding_mode="floor")
        if perspective:
            a0, a1, a2 = w0 / z0[t], w1 / z1[t], w2 / z2[t]
            z = 1.0 / (a0 + a1 + a2)
            bary = torch.stack([a0 * z, a1 * z, a2 * z], 1)
        else:
            z = w0 * z0[t] + w1 * z1[t] + w2 * z2[t]
            bary = torch.stack([w0, w1, w2], 1)
        keys.append((img * h + py) * w + px)
        depths.append(z)
        faces_hit.append(t - img * nf)
        bary_hit.append(bary)

    npix = b * h * w
    face_index = torch.full((npix,), -1, dtype=torch.long, device=device)
    bary_out = torch.zeros(npix, 3, dtype=dtype, device=device)
    depth_out = torch.full((npix,), float("inf"), dtype=dtype, device=device)
    if keys:
        key = torch.cat(keys)
        z = torch.cat(depths)
        f = torch.cat(faces_hit)
        depth_out.scatter_reduce_(0, key, z, reduce="amin", include_self=True)
        nearest = z == depth_out[key]
        first_face = torch.full((npix,), nf, dtype=torch.long, device=device)
        first_face.scatter_reduce_(0, key[nearest], f[nearest], reduce="amin", include_self=True)
        win = nearest & (f == first_face[key])
        face_index[key[win]] = f[win]
        bary_out[key[win]] = torch.cat(bary_hit)[win]
    return Fragments(face_index.view(b, h, w), bary_out.view(b, h, w, 3), depth_out.view(b, h, w))


def interpolate(
    fragments: Fragments, attributes: torch.Tensor, faces: torch.Tensor
) -> torch.Tensor:
    """Per-vertex attributes (B, V, C) or (V, C) -> per-pixel (B, H, W, C), barycentric
    interpolation in each pixel's face; 0 on background."""
    fi = fragments.face_index
    b = fi.shape[0]
    if attributes.dim() == 2:
        attributes = attributes.unsqueeze(0).expand(b, -1, -1)
    if attributes.dim() != 3 or attributes.shape[0] != b:
        raise ShapeError(
            f"attributes: expected (B={b}, V, C) or (V, C), got {tuple(attributes.shape)}"
        )
    nv, c = attributes.shape[1], attributes.shape[2]
    faces = faces.long().to(fi.device)
    corner = faces[fi.clamp(min=0)]  # (B, H, W, 3) vertex ids
    flat = corner + (torch.arange(b, device=fi.device) * nv).view(b, 1, 1, 1)
    vals = attributes.reshape(b * nv, c)[flat]  # (B, H, W, 3, C)
    out = (fragments.bary.to(vals.dtype).unsqueeze(-1) * vals).sum(-2)
    return out * fragments.mask.unsqueeze(-1).to(out.dtype)


def rasterize_per_triangle(
    screen: torch.Tensor,
    faces: torch.Tensor,
    image_size: int | tuple[int, int],
    *,
    perspective: bool = False,
    cull_backfaces: bool = True,
) -> Fragments:
    """The straightforward reference: for every image and every triangle (Python loops), fill
    its pixel bounding box with a depth test against the z-buffer (strictly nearer wins, so the
    lower triangle index keeps ties, as :func:`rasterize` does). Same conventions and output."""
    h, w = _check(screen, faces, image_size)
    faces = faces.long()
    b = screen.shape[0]
    dtype = screen.dtype
    face_index = torch.full((b, h, w), -1, dtype=torch.long)
    bary = torch.zeros(b, h, w, 3, dtype=dtype)
    depth = torch.full((b, h, w), float("inf"), dtype=dtype)
    for i in range(b):
        tri_all = screen[i].cpu()[faces]
        for f in range(faces.shape[0]):
            (ax, ay, az), (bx, by, bz), (qx, qy, qz) = tri_all[f].tolist()
            area = _edge(ax, ay, bx, by, qx, qy)
            if (cull_backfaces and not area < 0) or area == 0:
                continue
            if perspective and not (az > 0 and bz > 0 and qz > 0):
                continue
            x_lo = max(int(torch.ceil(torch.tensor(min(ax, bx, qx) - 0.5))), 0)
            x_hi = min(int(torch.floor(torch.tensor(max(ax, bx, qx) - 0.5))), w - 1)
            y_lo = max(int(torch.ceil(torch.tensor(min(ay, by, qy) - 0.5))), 0)
            y_hi = min(int(torch.floor(torch.tensor(max(ay, by, qy) - 0.5))), h - 1)
            if x_hi < x_lo or y_hi < y_lo:
                continue
            cy, cx = torch.meshgrid(
                torch.arange(y_lo, y_hi + 1, dtype=dtype) + 0.5,
                torch.arange(x_lo, x_hi + 1, dtype=dtype) + 0.5,
                indexing="ij",
            )
            inv = 1.0 / torch.tensor(area, dtype=dtype)
            w0 = _edge(bx, by, qx, qy, cx, cy) * inv
            w1 = _edge(qx, qy, ax, ay, cx, cy) * inv
            w2 = _edge(ax, ay, bx, by, cx, cy) * inv
            inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
            if perspective:
                a0, a1, a2 = w0 / az, w1 / bz, w2 / qz
                z = 1.0 / (a0 + a1 + a2)
                bc = torch.stack([a0 * z, a1 * z, a2 * z], -1)
            else:
                z = w0 * az + w1 * bz + w2 * qz
                bc = torch.stack([w0, w1, w2], -1)
            zb = depth[i, y_lo : y_hi + 1, x_lo : x_hi + 1]
            better = inside & (z < zb)
            zb[better] = z[better]
            face_index[i, y_lo : y_hi + 1, x_lo : x_hi + 1][better] = f
            bary[i, y_lo : y_hi + 1, x_lo : x_hi + 1][better] = bc[better]
    return Fragments(face_index, bary, depth)


__all__ = [
    "MAX_CANDIDATES",
    "Fragments",
    "check_mesh",
    "interpolate",
    "rasterize",
    "rasterize_per_triangle",
]
