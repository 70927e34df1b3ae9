"""Speed rows of UIFace (``facelab.uiface``).

Two-stage sampling with the adaptive switch and attention injection (explicit attention logits,
self-attention logits copied from the unconditional pass, cross-attention logits rescaled, the
aggregated cross-attention map of every stage-1 step) against single-stage sampling with
classifier-free guidance of the same model, same batch, same steps (also two passes per step,
fused attention). Goal: time per image <= 1.2x the single-stage sampler's (speedup >= 0.83).

On a CPU the rows compare the process CPU time (the machine may be shared; wall time of the
same work varies with the load); on a GPU, wall time with synchronization, for the paper-size
UNet (216 M parameters, 3 x 32 x 32 latents, 50 DDIM steps, batch 50 as the reference samples)
in bf16, reported as images/s.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from facelab.benchmarks.timing import measure


def _cpu_time(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def _rows_for(model, image_size, batch, steps, device, dtype, label, repeat) -> list[dict]:
    from facelab.core.diffusion import IdentitySampler, random_identities
    from facelab.uiface import UIFaceSampler, UIFaceSamplingConfig, variant

    base = IdentitySampler(model, image_size=image_size, num_steps=steps)
    ctx = random_identities(batch, model.context_width, 0).to(device, dtype)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(batch, *base.latent_shape, generator=g).to(device, dtype)
    cfg = UIFaceSamplingConfig()
    samplers = {
        name: UIFaceSampler(base, variant(name, cfg))
        for name in ("uiface", "two-stage-adaptive", "single-stage")
    }

    def run(name):
        samplers[name].sample(ctx, noise=noise, output="latents", check=False)

    if torch.device(device).type == "cuda":
        timer, unit = (lambda f: measure(f, repeat, device=device)), "wall"
    else:
        timer, unit = (lambda f: _cpu_time(f, repeat)), "CPU"
    t = {name: timer(lambda n=name: run(n)) for name in samplers}
    where = f"{label}, batch {batch}, {steps} DDIM steps"
    ref = "single-stage CFG (s = 1, two passes per step, fused attention)"
    return [
        {
            "benchmark": f"uiface two-stage + injection, {where}",
            "ours": "UIFaceSampler (adaptive switch + attention injection)",
            "reference": ref,
            "ours/s": batch / t["uiface"],
            "reference/s": batch / t["single-stage"],
            "speedup": t["single-stage"] / t["uiface"],
            "note": f"images/s ({unit} time); goal time per image <= 1.2x (speedup >= 0.83)",
        },
        {
            "benchmark": f"uiface two-stage adaptive (no injection), {where}",
            "ours": "UIFaceSampler (adaptive switch; stage 1 one pass)",
            "reference": ref,
            "ours/s": batch / t["two-stage-adaptive"],
            "reference/s": batch / t["single-stage"],
            "speedup": t["single-stage"] / t["two-stage-adaptive"],
            "note": f"images/s ({unit} time)",
        },
    ]


def run_uiface_bench(small: bool) -> list[dict[str, Any]]:
    from facelab.core.diffusion import ConditionalUNet
    from facelab.core.diffusion.train import TOY_UNET

    torch.manual_seed(0)
    toy = ConditionalUNet(**{**TOY_UNET, "unconditioned_probability": 0.2}).eval()
    rows = _rows_for(
        toy,
        32,
        batch=4 if small else 16,
        steps=4 if small else 50,
        device="cpu",
        dtype=torch.float32,
        label="toy UNet 3.3 M, 32 px, CPU",
        repeat=1 if small else 3,
    )
    if torch.cuda.is_available() and not small:
        paper = ConditionalUNet().to("cuda", torch.bfloat16).eval()
        torch.cuda.reset_peak_memory_stats()
        part = _rows_for(
            paper, 32, 50, 50, "cuda", torch.bfloat16, "paper UNet 216 M, 3x32x32 latents, bf16", 2
        )
        peak = torch.cuda.max_memory_allocated() / 2**30
        for r in part:
            r["note"] += f"; peak GPU memory {peak:.1f} GiB"
        rows += part
        del paper
        torch.cuda.empty_cache()
    return rows
