"""MorphFace speed: the vectorized rasterizer against a per-triangle loop, and the style path's
share of a training step.

* rasterize: the procedural head (2,562 vertices, 5,120 triangles) posed by styled toyfaces
  parameters, 112 x 112, on CPU (one thread) and, when CUDA is there, on the GPU; the reference
  is :func:`facelab.morphface.raster.rasterize_per_triangle` (a Python loop over triangles,
  each filling its bounding box with a z-test) on CPU. Images per second, CPU time of this
  process (GPU rows: wall time with synchronisation).
* render + encode: one training step of the toy recipe's networks (batch 16, 32 px) with the
  style path (render 32 px maps, style encoder, style tokens in cross-attention) against the
  ID-only step (same denoiser, no style tokens). The ratio below 1 is the style path's cost.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import torch

from facelab.benchmarks.timing import interleaved_cpu_times
from facelab.benchmarks.timing import speed_row as _row

_cpu_times = functools.partial(interleaved_cpu_times, warmup=1)
"""Median CPU seconds of each function, timed in turns (see ``interleaved_cpu_times``)."""


def _screens(batch: int, size: int = 112):
    from facelab.morphface.geometry import project
    from facelab.morphface.procedural import procedural_3dmm
    from facelab.morphface.toy import StyledToyFaces

    head = procedural_3dmm()
    toy = StyledToyFaces(max(1, batch // 2), 2, size=32, seed=0, difficulty="easy")
    p = toy.style_params(torch.arange(batch) % len(toy))
    verts = head.vertices(p.shape, p.expression)
    screen, _ = project(verts, p.pose, p.camera, (size, size))
    return head, screen


def raster_rows(small: bool) -> list[dict[str, Any]]:
    from facelab.morphface.raster import rasterize, rasterize_per_triangle

    batch = 8 if small else 32
    head, screen = _screens(batch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref_one = screen[:1]
        t_ours, t_ref = _cpu_times(
            [
                lambda: rasterize(screen, head.faces, 112),
                lambda: rasterize_per_triangle(ref_one, head.faces, 112),
            ],
            repeat=1 if small else 3,
        )
    finally:
        torch.set_num_threads(threads)
    note = f"{head.num_faces} triangles, 112x112, batch {batch}, CPU 1 thread, CPU time"
    rows = [
        _row(
            "morphface rasterize (CPU)",
            "vectorized",
            "per-triangle loop",
            batch / t_ours,
            1 / t_ref,
            note,
        )
    ]
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        big = screen.repeat(8 if small else 32, 1, 1).to(dev)
        faces = head.faces.to(dev)
        for _ in range(2):
            rasterize(big, faces, 112)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        reps = 5
        for _ in range(reps):
            rasterize(big, faces, 112)
        torch.cuda.synchronize()
        t_gpu = (time.perf_counter() - t0) / reps
        rows.append(
            _row(
                "morphface rasterize (GPU)",
                "vectorized, cuda",
                "per-triangle loop, CPU",
                big.shape[0] / t_gpu,
                1 / t_ref,
                f"batch {big.shape[0]}, {torch.cuda.get_device_name()} wall time",
            )
        )
    return rows


def style_step_rows(small: bool) -> list[dict[str, Any]]:
    import torch.nn.functional as F

    from facelab.core.diffusion.unet import ConditionalUNet
    from facelab.morphface.procedural import procedural_3dmm
    from facelab.morphface.render import StyleRenderer
    from facelab.morphface.toy import StyledToyFaces
    from facelab.morphface.train import build_encoder, morphface_presets

    cfg = morphface_presets()["toy"]
    from dataclasses import asdict

    torch.manual_seed(0)
    # the toy preset's styled denoiser takes the renderings pixel-aligned too; the ID-only
    # generator is the plain one
    renderer = StyleRenderer(
        procedural_3dmm(), cfg.encoder.map_size, expression_offsets=cfg.renderer.expression_offsets
    )
    maps_in = renderer.channels if cfg.encoder.pixel_input else 0
    unets = {
        True: ConditionalUNet(**asdict(cfg.unet) | {"extra_input_channels": maps_in}),
        False: ConditionalUNet(**asdict(cfg.unet)),
    }
    enc = build_encoder(cfg, cfg.unet.context_channels)
    b = 16
    toy = StyledToyFaces(8, 2, size=32, seed=0, difficulty="easy")
    params = toy.style_params()
    x = toy.materialize(torch.float32)[:b] if hasattr(toy, "materialize") else None
    x = torch.randn(b, 3, 32, 32) if x is None else x.float()
    ctx = F.normalize(torch.randn(b, 512), dim=1)
    t = torch.randint(0, 1000, (b,))
    opts = {
        True: torch.optim.AdamW(list(unets[True].parameters()) + list(enc.parameters()), lr=1e-4),
        False: torch.optim.AdamW(unets[False].parameters(), lr=1e-4),
    }

    def step(style: bool):
        kwargs = {}
        tokens = None
        if style:
            maps = renderer.maps(params)
            tokens = enc(maps)
            if maps_in:
                kwargs["extra_input"] = maps
        loss = F.mse_loss(unets[style](x, t, ctx, None, tokens, **kwargs), x)
        opts[style].zero_grad(set_to_none=True)
        loss.backward()
        opts[style].step()

    def render_encode():
        with torch.no_grad():
            enc(renderer.maps(params))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t_style, t_id, t_re = _cpu_times(
            [lambda: step(True), lambda: step(False), render_encode], repeat=2 if small else 5
        )
    finally:
        torch.set_num_threads(threads)
    share = t_re / t_style
    return [
        _row(
            "morphface train step (toy)",
            "ID + style",
            "ID only",
            1 / t_style,
            1 / t_id,
            f"batch {b}, 32 px, CPU 1 thread; render+encode forward = {share:.0%} of the step"
            + ("; renderings also pixel-aligned at the input" if maps_in else ""),
        ),
    ]


def run_morphface_bench(small: bool) -> list[dict[str, Any]]:
    return raster_rows(small) + style_step_rows(small)


__all__ = ["run_morphface_bench"]
