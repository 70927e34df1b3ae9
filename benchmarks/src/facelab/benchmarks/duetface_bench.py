"""DuetFace speed: ROI masks and interactive-block masks against reference-style loops.

The references are written like the TFace DuetFace task: the ROI of each image is the convex hull
of its landmarks filled with ``scipy.spatial.Delaunay.find_simplex`` over all pixels, one image
at a time; a block mask upsamples the client map with ``nn.Upsample``, applies a 1x1 conv to all
server channels, takes the channel mean and min-max normalises each sample in a Python loop with
``.item()`` (the conv is created once here, the reference even re-creates it every call). Both
sides run in this process on the same data; rows report images per second and the ratio.
A last row reports the client's share of the compute (FLOPs, no reference).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facelab.benchmarks.timing import measure
from facelab.benchmarks.timing import speed_row as _row

SIZE = 112


def reference_roi(landmarks: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Per image: scipy convex hull of the points, Delaunay point-in-hull over the pixel grid."""
    from scipy.spatial import ConvexHull, Delaunay

    y, x = np.mgrid[0:size, 0:size]
    grid = np.stack([x.ravel(), y.ravel()], axis=1)
    out = np.zeros((landmarks.shape[0], size, size), dtype=np.float32)
    for i in range(landmarks.shape[0]):
        hull = ConvexHull(landmarks[i])
        tri = Delaunay(landmarks[i, hull.vertices])
        out[i] = (tri.find_simplex(grid) >= 0).reshape(size, size)
    return out


def reference_block_mask(
    client_map: torch.Tensor, conv: nn.Conv2d, roi: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Upsample all client channels, conv to all server channels, mean, per-sample loops."""
    x = conv(nn.Upsample(size=size, mode="bilinear")(client_map)).mean(1, keepdim=True)

    def minmax(m: torch.Tensor) -> torch.Tensor:
        lo = torch.stack([torch.full(size, m[i].min().item()) for i in range(m.shape[0])])
        hi = torch.stack([torch.full(size, m[i].max().item()) for i in range(m.shape[0])])
        return (m - lo.unsqueeze(1)) / (hi - lo).unsqueeze(1)

    r = F.interpolate(
        roi, scale_factor=size[0] / roi.shape[-1], mode="bilinear", align_corners=True
    )
    return minmax(minmax(x) * r)


def run_duetface_bench(small: bool = False) -> list[dict[str, Any]]:
    # imported here: the module must import (the suite lists it) even where facelab-duetface
    # is not installed; the suite then reports the row as "not built"
    from facelab.duetface import (
        ClientModel,
        DuetFaceClient,
        DuetFaceServer,
        ServerModel,
        compute_split,
        hull_masks,
    )

    g = torch.Generator().manual_seed(0)
    n = 8 if small else 64
    repeat = 2 if small else 5
    rows = []
    for k in (5, 98):
        pts = torch.rand(n, k, 2, generator=g) * 60 + 26
        pts_np = pts.numpy().astype(np.float64)
        t_ours = measure(lambda pts=pts: hull_masks(pts, SIZE), repeat)
        t_ref = measure(lambda p=pts_np: reference_roi(p), max(1, repeat // 2))
        rows.append(
            _row(
                f"ROI masks, {n} faces x {k} landmarks, 112x112",
                "hull_masks (batched half-planes)",
                "scipy ConvexHull + Delaunay per image",
                n / t_ours,
                n / t_ref,
                "images/s",
            )
        )

    client = ClientModel(image_size=SIZE).eval()
    server = ServerModel(image_size=SIZE).eval()
    gen = server.mask_generator().eval()
    x = torch.randn(n, 30, SIZE, SIZE, generator=g)
    with torch.no_grad():
        maps = client.feature_maps(x)
    roi = hull_masks(torch.rand(1, 5, 2, generator=g) * 60 + 26, SIZE).expand(n, 1, SIZE, SIZE)
    sizes = gen.mask_sizes

    def ref_masks():
        return [
            reference_block_mask(m, conv, roi, s) for m, conv, s in zip(maps, gen.interfaces, sizes)
        ]

    with torch.no_grad():
        t_ours = measure(lambda: gen(maps, roi), repeat)
        t_ref = measure(ref_masks, repeat)
    rows.append(
        _row(
            f"interactive masks (4 stages), {n} faces at 112 px",
            "MaskGenerator (mean filter, 1 channel upsampled)",
            "Upsample C channels + conv + mean + per-sample .item() min-max",
            n / t_ours,
            n / t_ref,
            "images/s",
        )
    )
    images = torch.rand(2, 3, SIZE, SIZE, generator=g) * 2 - 1
    split = compute_split(DuetFaceClient(client, gen), DuetFaceServer(server), images)
    rows.append(
        {
            "benchmark": "client share of compute (MobileFaceNet vs IR-18, 112 px)",
            "ours": f"client {split['client_flops'] / 1e9:.2f} GFLOP/image",
            "reference": f"server {split['server_flops'] / 1e9:.2f} GFLOP/image",
            "ours/s": float("nan"),
            "reference/s": float("nan"),
            "speedup": float("nan"),
            "note": f"client/server FLOPs = {split['client_over_server']:.3f}; payload "
            "8,145,172 B/image float32 (4,072,586 B float16)",
        }
    )
    return rows
