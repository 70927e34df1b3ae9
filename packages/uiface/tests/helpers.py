"""Test helpers: tiny denoisers and an independent, sequential re-implementation of the
reference sampler (two separate forwards per step, as TFace's ``sample_ddim_2stage``), with the
aggregated map computed in NumPy."""

from __future__ import annotations

import math

import numpy as np
import torch

from facelab.core.diffusion import (
    AttentionController,
    ConditionalUNet,
    attention_controller,
    make_scheduler,
)

TINY = {
    "initial_channels": 32,
    "channel_multipliers": (1, 2),
    "is_attention": (True, True),
    "attention_head_channels": 16,
    "n_blocks_per_resolution": 1,
    "context_channels": 32,
    "n_context_tokens": 4,
}


def tiny_unet(seed: int = 0, **over) -> ConditionalUNet:
    """A tiny reference UNet whose zero-initialized output layers are randomized, so that
    attention (and the context) changes the prediction."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ConditionalUNet(**{**TINY, **over})
    with torch.no_grad():
        for p in model.parameters():
            if float(p.abs().max()) == 0.0 and p.dim() > 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


# --------------------------------------------------------------------------------------------
# NumPy map aggregation (the reference's get_attn_map)


def _bilinear_half_pixel(a: np.ndarray, size: int) -> np.ndarray:
    """(B, h, w) -> (B, size, size), bilinear with half-pixel centres (align_corners=False)."""
    _, h, w = a.shape

    def axis(n_in: int):
        src = (np.arange(size) + 0.5) * n_in / size - 0.5
        src = np.clip(src, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    ylo, yhi, fy = axis(h)
    xlo, xhi, fx = axis(w)
    top = a[:, ylo][:, :, xlo] * (1 - fx) + a[:, ylo][:, :, xhi] * fx
    bot = a[:, yhi][:, :, xlo] * (1 - fx) + a[:, yhi][:, :, xhi] * fx
    return top * (1 - fy)[None, :, None] + bot * fy[None, :, None]


def numpy_layer_map(logits: np.ndarray, size: int) -> np.ndarray:
    b, _, lq, _ = logits.shape
    side = math.isqrt(lq)
    z = logits - logits.max(axis=2, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=2, keepdims=True)  # softmax over queries
    m = p.mean(axis=3).mean(axis=1)  # (B, Lq)
    m = m / m.max(axis=1, keepdims=True)
    return np.clip(_bilinear_half_pixel(m.reshape(b, side, side), size), 0, 1)


def numpy_aggregate(layer_logits: list[np.ndarray], size: int = 32) -> np.ndarray:
    m = np.mean([numpy_layer_map(x, size) for x in layer_logits], axis=0)
    lo = m.reshape(len(m), -1).min(1)[:, None, None]
    hi = m.reshape(len(m), -1).max(1)[:, None, None]
    return (m - lo) / (hi - lo)


# --------------------------------------------------------------------------------------------
# the sequential reference sampler


class _Record(AttentionController):
    def __init__(self):
        self.self_logits: list[torch.Tensor] = []
        self.cross_logits: list[torch.Tensor] = []

    def logits(self, site, logits):
        (self.self_logits if site.kind == "self" else self.cross_logits).append(logits.clone())
        return logits


class _FromSource(AttentionController):
    """Second forward of a step: self logits := the source's, cross logits rescaled toward the
    source's per-row statistics when ``inject``; records its own cross logits."""

    def __init__(self, source: _Record, inject: bool, weight: float):
        self.source, self.inject, self.weight = source, inject, weight
        self.k_self = self.k_cross = 0
        self.own_cross: list[torch.Tensor] = []

    def logits(self, site, logits):
        if site.kind == "self":
            out = self.source.self_logits[self.k_self].clone()
            self.k_self += 1
            return out
        self.own_cross.append(logits.clone())
        src = self.source.cross_logits[self.k_cross]
        self.k_cross += 1
        if not self.inject:
            return logits
        n = logits.shape[-1]
        mean, mean_s = logits.mean(-1, keepdim=True), src.mean(-1, keepdim=True)
        std = ((logits - mean) ** 2).sum(-1, keepdim=True).div(n - 1).sqrt()
        std_s = ((src - mean_s) ** 2).sum(-1, keepdim=True).div(n - 1).sqrt()
        w = self.weight
        return (logits - mean) / std * (w * std_s + (1 - w) * std) + (w * mean_s + (1 - w) * mean)


@torch.no_grad()
def reference_uiface(
    model, contexts, noise, num_steps, step_th, mse_th, s=1.0, weight=0.5, size=32
):
    """TFace's two-stage loop written out: returns final latents, switch steps, distances."""
    sched = make_scheduler()
    sched.set_timesteps(num_steps)
    ts = [int(t) for t in sched.timesteps]
    b = noise.shape[0]
    x = noise.clone()
    flag = torch.zeros(b, dtype=torch.bool)
    switch = torch.full((b,), -1, dtype=torch.long)
    prev = None
    distances = []
    for i, t in enumerate(ts):
        tt = torch.full((b,), t, dtype=torch.long)
        rec = _Record()
        with attention_controller(model, rec):
            e_u = model(x, tt, None)
        if t < step_th:
            switch[switch < 0] = i
            repl = _FromSource(rec, inject=True, weight=weight)
            with attention_controller(model, repl):
                e_c = model(x, tt, contexts)
            eps = (1 + s) * e_c - s * e_u
        else:
            repl = _FromSource(rec, inject=False, weight=weight)
            with attention_controller(model, repl):
                e_c = model(x, tt, contexts, flag.clone())
            eps = e_c
            m = numpy_aggregate([c.numpy().astype(np.float64) for c in repl.own_cross], size)
            if prev is not None:
                d = np.abs(m - prev).mean(axis=(1, 2))
                distances.append(d)
                newly = torch.from_numpy(d < mse_th) & ~flag
                switch[newly] = i + 1
                flag |= newly
            prev = m
        x = sched.step(eps, t, x).prev_sample
    return x, switch, np.array(distances)
