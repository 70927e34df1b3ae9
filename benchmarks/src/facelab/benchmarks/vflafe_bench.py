"""VFL-AFE speed: the cost of privacy per training step, and the Flower app's round.

* one VFL training step (2 passive parties, breast cancer, batch 64: forward, loss, backward,
  AdamW) with VFL-AFE's privatize (clip + noise, NaN check) against the same step without DP;
* the same with an opacus RDP epsilon computed every step as well (the recipe accounts once per
  run; this is the worst case);
* one round of the Flower app (embed + backward messages to both parties through Flower's wire
  format, each party rebuilt from its ``context.state``) against the in-process step.

Ratios: reference time / our time (below 1 = ours is slower, i.e. the overhead), both in CPU
time of this process on one thread.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from facelab.benchmarks.timing import interleaved_cpu_times
from facelab.benchmarks.timing import speed_row as _row

_interleaved = functools.partial(interleaved_cpu_times, warmup=3)
"""Median CPU seconds of each function, timed in turns (see ``interleaved_cpu_times``)."""


def _stepper(mode: str, sigma: float, account: bool):
    from facelab.vflafe import ModelConfig, PrivacyConfig, VFLModel, embedding_epsilon
    from facelab.vflafe.recipe import DataConfig

    train, _ = DataConfig().load()
    torch.manual_seed(0)
    privacy = PrivacyConfig(mode=mode, noise_multiplier=sigma, noise_seed=0)
    model = VFLModel(train.feature_shapes, train.num_classes, ModelConfig(), privacy)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    xs = [x[:64] for x in train.parties]
    y = train.labels[:64]
    releases = [0]

    def step() -> None:
        loss = F.cross_entropy(model(xs), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if account:
            releases[0] += 1
            embedding_epsilon(noise_multiplier=sigma, releases=releases[0], delta=1e-5)

    return step


def run_vflafe_bench(small: bool) -> list[dict[str, Any]]:
    from facelab.vflafe.flower import AppConfig, run_local

    repeat = 20 if small else 100
    base, plain, priv, acct = _interleaved(
        [
            _stepper("none", 0.0, False),
            _stepper("plain", 4.0, False),
            _stepper("afe", 4.0, False),
            _stepper("afe", 4.0, True),
        ],
        repeat,
    )
    rows = [
        _row(
            "VFL step: privatize (plain clip + noise, 2 parties, batch 64)",
            "plain DP step",
            "non-private step",
            1 / plain,
            1 / base,
            "steps per CPU second; ratio < 1 is the overhead of clip + noise + NaN check",
        ),
        _row(
            "VFL step: privatize + AFE layers",
            "AFE step",
            "non-private step",
            1 / priv,
            1 / base,
            "steps per CPU second; adds AFE's affine + sphere projection and the active-side denoiser",
        ),
        _row(
            "VFL step: privatize + RDP epsilon every step",
            "AFE step + accountant",
            "non-private step",
            1 / acct,
            1 / base,
            "steps per CPU second; the recipe accounts once per run, this is the worst case",
        ),
    ]
    outcome, _ = run_local(
        AppConfig(mode="afe", noise_multiplier=4.0, epochs=1 if small else 3, noise_seed=0)
    )
    rnd = float(np.median(outcome.step_cpu_times[1:]))  # the first round imports, loads data
    (priv,) = _interleaved([_stepper("afe", 4.0, False)], repeat)  # again, right after the rounds
    rows.append(
        _row(
            "Flower app round (2 parties, batch 64, in-process grid)",
            "Flower round",
            "in-process step",
            1 / rnd,
            1 / priv,
            "rounds per CPU second; wire format round trip + party state rebuilt per message",
        )
    )
    return rows
