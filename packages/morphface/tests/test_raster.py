"""The rasterizer against analytic results (sphere, plane) and a brute-force per-pixel loop."""

import math

import numpy as np
import pytest
import torch

from facelab.core.errors import FacelabError, NonFiniteError, RangeError, ShapeError
from facelab.morphface.geometry import project, vertex_normals
from facelab.morphface.raster import interpolate, rasterize, rasterize_per_triangle


def uv_sphere(rings=24, segments=48, radius=1.0):
    """A lat-long sphere (numpy, written here independently of the procedural head), faces
    counter-clockwise seen from outside."""
    verts = [(0.0, radius, 0.0)]
    for r in range(1, rings):
        th = math.pi * r / rings
        for s in range(segments):
            ph = 2 * math.pi * s / segments
            verts.append(
                (
                    radius * math.sin(th) * math.sin(ph),
                    radius * math.cos(th),
                    radius * math.sin(th) * math.cos(ph),
                )
            )
    verts.append((0.0, -radius, 0.0))
    v = np.array(verts)
    faces = []
    last = len(verts) - 1

    def vid(r, s):
        return 1 + (r - 1) * segments + s % segments

    for s in range(segments):
        faces.append((0, vid(1, s), vid(1, s + 1)))
        faces.append((last, vid(rings - 1, s + 1), vid(rings - 1, s)))
        for r in range(1, rings - 1):
            a, b, c, d = vid(r, s), vid(r, s + 1), vid(r + 1, s), vid(r + 1, s + 1)
            faces.append((a, c, b))
            faces.append((b, c, d))
    f = np.array(faces)
    # orient every face outwards (the test's own check, not the code under test)
    tri = v[f]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    flip = (n * tri.mean(1)).sum(1) < 0
    f[flip] = f[flip][:, [0, 2, 1]]
    return torch.tensor(v, dtype=torch.float32), torch.tensor(f)


def pixel_centres(h, w):
    yy, xx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    return xx, yy


def test_sphere_mask_depth_and_normals_match_analytic():
    size, radius = 48, 1.0
    v, f = uv_sphere(radius=radius)
    pose = torch.zeros(1, 3)
    cam = torch.tensor([[0.8, 0.0, 0.0]])  # ndc = 0.8 * xy: the disk radius is 0.8 * 24 px
    screen, rotated = project(v[None], pose, cam, (size, size))
    frags = rasterize(screen, f, size)
    xx, yy = pixel_centres(size, size)
    r_px = 0.8 * size / 2
    # model coordinates of every pixel centre
    mx = (xx - size / 2) / r_px
    my = (size / 2 - yy) / r_px
    rho = np.sqrt(mx**2 + my**2)
    mask = frags.mask[0].numpy()
    # well inside the silhouette every pixel is covered, well outside none (facets: the
    # polygonal rim lies within 1 - cos(pi / 48) of the circle)
    assert mask[rho < 0.97].all()
    assert not mask[rho > 1.0].any()
    inner = rho < 0.9
    mz = np.sqrt(np.clip(1 - rho**2, 0, None))
    depth = frags.depth[0].numpy()
    assert np.abs(depth[inner] - (-mz[inner])).max() < 0.02  # weak perspective: depth = -z
    assert np.isinf(depth[~mask]).all()
    # interpolated vertex normals vs the analytic normal (x, y, z) / r
    normals = vertex_normals(rotated, f)
    n = torch.nn.functional.normalize(interpolate(frags, normals, f)[0], dim=-1).numpy()
    want = np.stack([mx, my, mz], -1)
    cos = (n[inner] * want[inner]).sum(-1)
    assert cos.min() > 0.999


def test_plane_depth_exact_weak_and_perspective():
    # a tilted square z = a x + b y + c, two counter-clockwise triangles facing the camera
    a, b, c = 0.3, -0.2, 0.1
    xy = torch.tensor([[-0.9, -0.9], [0.9, -0.9], [0.9, 0.9], [-0.9, 0.9]], dtype=torch.float64)
    z = a * xy[:, 0] + b * xy[:, 1] + c
    v = torch.cat([xy, z[:, None]], 1).double()
    f = torch.tensor([[0, 1, 2], [0, 2, 3]])
    size, s = 32, 1.0
    xx, yy = pixel_centres(size, size)
    nx, ny = (xx - size / 2) / (size / 2), (size / 2 - yy) / (size / 2)
    for d in (None, 4.0):
        screen, _ = project(
            v[None],
            torch.zeros(1, 3).double(),
            torch.tensor([[s, 0.0, 0.0]]).double(),
            (size, size),
            d,
        )
        fr = rasterize(screen, f, size, perspective=d is not None)
        m = fr.mask[0].numpy()
        if d is None:
            want = -(a * nx / s + b * ny / s + c)
        else:
            g = (a * nx + b * ny) / (s * d)
            zs = (g * d + c) / (1 + g)
            want = d - zs
        got = fr.depth[0].numpy()
        assert m.sum() > 0.5 * size * size
        np.testing.assert_allclose(got[m], want[m], rtol=0, atol=1e-9)
        # barycentric interpolation of the vertex positions gives back the surface point
        pos = interpolate(fr, v[None], f)[0].numpy()
        if d is None:
            np.testing.assert_allclose(pos[m][:, 0], (nx / s)[m], atol=1e-9)
        else:
            np.testing.assert_allclose(pos[m][:, 2], zs[m], atol=1e-9)


def brute_force(screen, faces, h, w, cull=True):
    """Per pixel, per triangle (numpy, solving for barycentrics with a 2x2 solve)."""
    screen, faces = screen.double().numpy(), faces.numpy()
    b = screen.shape[0]
    fi = np.full((b, h, w), -1)
    bary = np.zeros((b, h, w, 3))
    depth = np.full((b, h, w), np.inf)
    for k in range(b):
        for i in range(h):
            for j in range(w):
                p = np.array([j + 0.5, i + 0.5])
                for t, (ia, ib, ic) in enumerate(faces):
                    A, B, C = screen[k, ia], screen[k, ib], screen[k, ic]
                    m = np.array([[B[0] - A[0], C[0] - A[0]], [B[1] - A[1], C[1] - A[1]]])
                    det = np.linalg.det(m)
                    if det == 0 or (cull and det > 0):  # y-down screen: front faces have det < 0
                        continue
                    l1, l2 = np.linalg.solve(m, p - A[:2])
                    l0 = 1 - l1 - l2
                    if min(l0, l1, l2) < -1e-12:
                        continue
                    zz = l0 * A[2] + l1 * B[2] + l2 * C[2]
                    if zz < depth[k, i, j]:
                        depth[k, i, j], fi[k, i, j] = zz, t
                        bary[k, i, j] = (l0, l1, l2)
    return fi, bary, depth


@pytest.mark.parametrize("cull", [True, False])
def test_random_tiny_meshes_match_brute_force(cull):
    g = torch.Generator().manual_seed(3)
    h, w, nv, nf = 11, 13, 12, 9
    screen = torch.rand(2, nv, 3, generator=g, dtype=torch.float64)
    screen[..., 0] = screen[..., 0] * 16 - 1.5  # some triangles leave the image
    screen[..., 1] = screen[..., 1] * 14 - 1.5
    faces = torch.randint(0, nv, (nf, 3), generator=g)
    faces = faces[
        (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    ]
    fi, bary, depth = brute_force(screen, faces, h, w, cull)
    for fr in (
        rasterize(screen, faces, (h, w), cull_backfaces=cull),
        rasterize(screen, faces, (h, w), cull_backfaces=cull, max_candidates=7),  # chunked
        rasterize_per_triangle(screen, faces, (h, w), cull_backfaces=cull),
    ):
        assert (fi >= 0).sum() > 20
        np.testing.assert_array_equal(fr.face_index.numpy(), fi)
        np.testing.assert_allclose(fr.bary.numpy(), bary, atol=1e-9)
        np.testing.assert_allclose(fr.depth.numpy(), depth, atol=1e-9)


def test_procedural_head_batch_matches_per_triangle_reference():
    from facelab.morphface.params import StyleParams
    from facelab.morphface.procedural import procedural_3dmm

    head = procedural_3dmm(rings=12, segments=20)  # 480 faces: the Python-loop reference is slow

    b = 2
    g = torch.Generator().manual_seed(0)
    pose = torch.tensor([[0.4, 0.1, -0.2], [-0.3, -0.15, 0.1]])
    params = StyleParams(
        shape=torch.randn(b, head.num_shape, generator=g),
        expression=torch.rand(b, head.num_expression, generator=g),
        pose=pose,
        camera=torch.tensor([[0.9, 0.0, 0.05], [0.8, 0.1, 0.0]]),
        light=torch.zeros(b, 27),
        albedo=torch.zeros(b, head.num_albedo),
    )
    verts = head.vertices(params.shape, params.expression)
    for d in (None, 5.0):
        screen, _ = project(verts, params.pose, params.camera, (24, 24), d)
        fast = rasterize(screen, head.faces, 24, perspective=d is not None)
        ref = rasterize_per_triangle(screen, head.faces, 24, perspective=d is not None)
        assert fast.mask.float().mean() > 0.3
        assert torch.equal(fast.face_index, ref.face_index)
        torch.testing.assert_close(fast.bary, ref.bary, atol=1e-5, rtol=0)
        # each image of the batch alone gives the same pixels
        one = rasterize(screen[1:], head.faces, 24, perspective=d is not None)
        assert torch.equal(one.face_index[0], fast.face_index[1])


def test_pixel_centre_rule():
    # a triangle covering x in [0, 4], y in [0, 4] below its diagonal: pixel centres (j+.5, i+.5)
    # with j >= i are inside (edge pixels included)
    screen = torch.tensor([[[0.0, 0.0, 1.0], [4.0, 4.0, 1.0], [4.0, 0.0, 1.0]]])
    f = torch.tensor([[0, 2, 1]])
    fr = rasterize(screen, f, 4, cull_backfaces=False)
    want = torch.tensor([[j >= i for j in range(4)] for i in range(4)])
    assert torch.equal(fr.mask[0], want)


def test_bad_inputs():
    v = torch.rand(1, 3, 3)
    with pytest.raises(ShapeError, match=r"\(B, V, 3\)"):
        rasterize(torch.rand(3, 3), torch.tensor([[0, 1, 2]]), 8)
    with pytest.raises(RangeError, match=r"\[0, 3\)"):
        rasterize(v, torch.tensor([[0, 1, 3]]), 8)
    with pytest.raises(FacelabError, match="integer"):
        rasterize(v, torch.tensor([[0.0, 1.0, 2.0]]), 8)
    with pytest.raises(NonFiniteError):
        rasterize(torch.full((1, 3, 3), float("nan")), torch.tensor([[0, 1, 2]]), 8)
    with pytest.raises(RangeError, match="positive"):
        rasterize(v, torch.tensor([[0, 1, 2]]), 0)
