"""SteerFace speed: ``steer`` against the least work any implementation does, and the cost of
the regularizer per training step.

* ``steer`` (input checks included) at N = 65,536, D = 512 against a bare ``torch.randn`` of the
  same shape plus one fused multiply-add (``torch.addcmul``): the issue's goal is within 2x
  (speedup >= 0.5);
* ``steer`` against the readable composition from ``facelab.core.sphere``
  (``random_orthogonal`` then ``rotate_toward``);
* one generator training step (forward, MSE, backward, AdamW) with the adaptive SteerFace hook
  (head + steer + regularizer) against the same step with the hook off (same code path).

Rows: rows (or steps) per CPU second of this process on one thread, timed in turns; ``speedup``
= ours / reference (below 1: ours is slower, i.e. the overhead).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from facelab.benchmarks.timing import interleaved_cpu_times
from facelab.benchmarks.timing import speed_row as _row

_interleaved = functools.partial(interleaved_cpu_times, warmup=2)
"""Median CPU seconds of each function, timed in turns (see ``interleaved_cpu_times``)."""


def steer_rows(n: int, d: int = 512, repeat: int = 5) -> list[dict[str, Any]]:
    from facelab.steerface import steer, steer_reference

    g = torch.Generator().manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    theta = torch.rand(n, generator=g) * (math.pi / 2)
    gen = torch.Generator().manual_seed(1)
    a, b = torch.rand(n, 1), torch.rand(n, 1)

    def least():
        r = torch.randn(e.shape, generator=gen)
        return torch.addcmul(e * a, r, b)

    t_steer, t_least, t_ref = _interleaved(
        [lambda: steer(e, theta, gen), least, lambda: steer_reference(e, theta, gen)], repeat
    )
    shape = f"N={n:,}, D={d}, float32, 1 thread"
    return [
        _row(
            "steerface steer vs least work",
            "steer (checks on)",
            "randn + addcmul",
            n / t_steer,
            n / t_least,
            f"{shape}; rows/CPU-s; goal speedup >= 0.5",
        ),
        _row(
            "steerface steer vs core sphere",
            "steer (fused)",
            "random_orthogonal + rotate_toward",
            n / t_steer,
            n / t_ref,
            f"{shape}; rows/CPU-s",
        ),
    ]


def step_rows(small: bool, repeat: int = 5) -> list[dict[str, Any]]:
    """One training step with the adaptive hook vs the hook off."""
    import torch.nn.functional as F

    from facelab.core.diffusion import ConditionalUNet
    from facelab.core.diffusion.hooks import apply_transform
    from facelab.steerface.hook import SteerTransform
    from facelab.steerface.strength import SteerConfig

    size, batch = (16, 8) if small else (32, 16)
    unet = {
        "initial_channels": 32,
        "channel_multipliers": (1, 2, 2),
        "is_attention": (False, False, True),
        "n_blocks_per_resolution": 1,
        "context_channels": 64,
        "n_context_tokens": 8,
    }
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    c = torch.nn.functional.normalize(torch.randn(batch, 512, generator=g), dim=1)

    def make(mode: str):
        torch.manual_seed(0)
        model = ConditionalUNet(**unet).train()
        hook = SteerTransform(SteerConfig(mode=mode))
        opt = torch.optim.AdamW([*model.parameters(), *hook.parameters()], lr=1e-4)

        def step():
            t = torch.randint(0, 1000, (batch,))
            eps = torch.randn_like(x)
            out = apply_transform(hook, c, t)
            loss = F.mse_loss(model(x + eps, t, out.context), eps)
            if out.loss is not None:
                loss = loss + out.loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    t_on, t_off = _interleaved([make("adaptive"), make("off")], repeat)
    return [
        _row(
            "steerface training step",
            "adaptive hook",
            "hook off",
            1 / t_on,
            1 / t_off,
            f"toy UNet (32 ch), batch {batch} at {size} px, AdamW; steps/CPU-s; "
            f"overhead {100 * (t_on / t_off - 1):.1f} %",
        )
    ]


def run_steerface_bench(small: bool) -> list[dict[str, Any]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        n = 8192 if small else 65_536
        return steer_rows(n, repeat=3 if small else 7) + step_rows(small, 3 if small else 10)
    finally:
        torch.set_num_threads(threads)
