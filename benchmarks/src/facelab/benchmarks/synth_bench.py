"""Speed rows of the synthesis base (``facelab.core.diffusion``).

* sampling-loop overhead: ``IdentitySampler.sample`` (DDIM scheduler, classifier-free guidance
  with per-sample scales and context flags, one batched forward per step, attention recording
  off) against a bare loop of the same denoiser calls (same batched inputs, same number of
  steps); goal: ours within 5 % (speedup >= 0.95);
* the cost of attention: explicit logits through a pass-through controller, and recording every
  self/cross map with ``AttentionRecorder``, against the fused default;
* on a GPU (when one is present): the paper-size UNet (216 M parameters) sampling 50 DDIM steps
  with guidance at batch 64 in bf16 / fp16: images/s and peak memory, against the bare loop.
"""

from __future__ import annotations

from typing import Any

import torch

from facelab.benchmarks.timing import measure


def _rows_for(
    model, image_size, batch, steps, device, dtype, label, repeat
) -> list[dict[str, Any]]:
    from facelab.core.diffusion import (
        AttentionController,
        AttentionRecorder,
        IdentitySampler,
        random_identities,
    )

    sampler = IdentitySampler(model, image_size=image_size, num_steps=steps, guidance_scale=1.0)
    ctx = random_identities(batch, model.context_width, 0).to(device, dtype)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(batch, *sampler.latent_shape, generator=g).to(device, dtype)
    flags = torch.ones(batch, dtype=torch.bool, device=device)
    scales = torch.linspace(0.5, 1.5, batch)  # per-sample guidance: the general path

    def ours(controller=None):
        with torch.no_grad():
            sampler.sample(
                ctx,
                noise=noise,
                guidance_scale=scales,
                context_flag=flags,
                controller=controller,
                output="latents",
                check=False,
            )

    sampler.scheduler.set_timesteps(steps)
    ts = [int(t) for t in sampler.scheduler.timesteps]
    x2, c2 = torch.cat([noise, noise]), torch.cat([ctx, ctx])
    f2 = torch.cat([torch.zeros_like(flags), flags])
    tt = {t: torch.full((2 * batch,), t, dtype=torch.long, device=device) for t in ts}

    def bare():
        with torch.no_grad():
            for t in ts:
                model(x2, tt[t], c2, f2)

    t_bare = measure(bare, repeat, device=device)
    t_ours = measure(ours, repeat, device=device)
    t_explicit = measure(lambda: ours(AttentionController()), repeat, device=device)
    t_record = measure(lambda: ours(AttentionRecorder()), repeat, device=device)
    where = f"{label}, batch {batch} (x2 branches), {steps} DDIM steps"
    return [
        {
            "benchmark": f"synth sampling loop, {where}",
            "ours": "IdentitySampler.sample (CFG, per-sample scales + flags)",
            "reference": "bare loop of the same denoiser calls",
            "ours/s": batch / t_ours,
            "reference/s": batch / t_bare,
            "speedup": t_bare / t_ours,
            "note": "images/s; goal speedup >= 0.95 (overhead <= 5 %)",
        },
        {
            "benchmark": f"synth attention logits explicit, {where}",
            "ours": "pass-through AttentionController",
            "reference": "IdentitySampler.sample, fused SDPA",
            "ours/s": batch / t_explicit,
            "reference/s": batch / t_ours,
            "speedup": t_ours / t_explicit,
            "note": "images/s; the cost of exposing the logits",
        },
        {
            "benchmark": f"synth attention recording, {where}",
            "ours": "AttentionRecorder (every self + cross map)",
            "reference": "IdentitySampler.sample, fused SDPA",
            "ours/s": batch / t_record,
            "reference/s": batch / t_ours,
            "speedup": t_ours / t_record,
            "note": "images/s; recording cost (speedup < 1 = slower)",
        },
    ]


def run_synth_bench(small: bool) -> list[dict[str, Any]]:
    from facelab.core.diffusion import ConditionalUNet
    from facelab.core.diffusion.train import TOY_UNET

    torch.manual_seed(0)
    toy = ConditionalUNet(**TOY_UNET).eval()
    rows = _rows_for(
        toy,
        32,
        batch=2 if small else 16,
        steps=3 if small else 50,
        device="cpu",
        dtype=torch.float32,
        label="toy UNet 3.3 M, 32 px, CPU",
        repeat=2 if small else 3,
    )
    if torch.cuda.is_available() and not small:
        for dtype in (torch.bfloat16, torch.float16):
            torch.cuda.reset_peak_memory_stats()
            paper = ConditionalUNet().to("cuda", dtype).eval()
            part = _rows_for(
                paper, 32, 64, 50, "cuda", dtype, f"paper UNet 216 M, 3x32x32 latents, {dtype}", 2
            )
            peak = torch.cuda.max_memory_allocated() / 2**30
            for r in part:
                r["note"] += f"; peak GPU memory {peak:.1f} GiB"
            rows += part
            del paper
            torch.cuda.empty_cache()
    return rows
