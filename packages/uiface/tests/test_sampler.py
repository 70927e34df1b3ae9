"""The sampler: equivalence with a sequential re-implementation of the reference loop, the stage
schedule and switch rule, per-sample independence, the ablation options, bad input."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from helpers import reference_uiface, tiny_unet

from facelab.core.diffusion import IdentitySampler, random_identities
from facelab.core.errors import FacelabTypeError, RangeError, ShapeError, UnknownNameError
from facelab.uiface import (
    VARIANTS,
    UIFaceSampler,
    UIFaceSamplingConfig,
    sampling_presets,
    variant,
)

STEPS = 10  # timesteps 900, 800, ..., 0: stage 1 = 900 .. 500 (5 steps), stage 2 = 400 .. 0


@pytest.fixture(scope="module")
def model():
    return tiny_unet(0)


@pytest.fixture(scope="module")
def base(model):
    return IdentitySampler(model, image_size=16, num_steps=STEPS)


def _noise(b, seed=0):
    return torch.randn(b, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_equals_the_sequential_reference_loop(model, base):
    """Batched per-sample UIFace = TFace's loop (two forwards per step, maps in NumPy), for a
    threshold that makes some samples switch early and some not (picked with a margin so float
    round-off cannot flip a decision)."""
    ctx = random_identities(4, 512, 1)
    noise = _noise(4)
    for th in (0.05, 0.04, 0.06, 0.03, 0.07):
        x_ref, sw_ref, d_ref = reference_uiface(model, ctx, noise, STEPS, 500, th)
        if np.abs(d_ref - th).min() > 1e-4:
            break
    else:  # pragma: no cover - the tiny model's distances are spread out
        pytest.fail("no threshold with a margin")
    adaptive = (sw_ref >= 0) & (sw_ref < 5)
    assert 0 < int(adaptive.sum()) < 4, (sw_ref, d_ref, th)  # a mixed batch
    out = UIFaceSampler(base, UIFaceSamplingConfig(mse_th=th)).sample(
        ctx, noise=noise, output="latents"
    )
    assert out.switch_step.tolist() == sw_ref.tolist()
    np.testing.assert_allclose(out.distances.numpy(), d_ref, atol=1e-5)
    torch.testing.assert_close(out.latents, x_ref, atol=2e-3, rtol=1e-3)
    assert out.adaptive.tolist() == adaptive.tolist()
    ts = out.timesteps
    assert out.switch_timestep.tolist() == [ts[s] for s in sw_ref.tolist()]


class _Spy:
    def __init__(self):
        self.rows = []

    def on_step_end(self, state):
        self.rows.append(
            (
                state.timestep,
                sorted(state.branch_slices),
                state.context_flag.clone(),
                state.guidance_scale.clone(),
            )
        )


def _spy_run(sampler, ctx, noise):
    spy = _Spy()
    plan_cb = None
    original = sampler.base.sample

    def wrapped(*a, **k):
        k["callbacks"] = [*k["callbacks"], spy]
        return original(*a, **k)

    sampler.base.sample = wrapped
    try:
        out = sampler.sample(ctx, noise=noise, output="latents")
    finally:
        del sampler.base.sample
    return out, spy.rows, plan_cb


@pytest.mark.parametrize("name", list(VARIANTS))
def test_stage_schedule_of_every_variant(base, name):
    cfg = variant(name, UIFaceSamplingConfig(mse_th=0.0, guidance_scale=1.5))
    ctx = random_identities(3, 512, 2)
    out, rows, _ = _spy_run(UIFaceSampler(base, cfg), ctx, _noise(3))
    assert [r[0] for r in rows] == list(range(900, -1, -100))
    for t, branches, flag, scale in rows:
        stage1 = name == "empty-context" or (name != "single-stage" and t >= 500)
        if stage1:
            assert not flag.any()  # mse_th 0: nobody switches early
            assert torch.all(scale == 0)
            two = cfg.injection
        else:
            assert flag.all()
            assert torch.all(scale == 1.5)
            two = True
        assert branches == (["cond", "uncond"] if two else ["cond"])
    first2 = {"single-stage": 0, "empty-context": -1}.get(name, 5)
    assert out.switch_step.tolist() == [first2] * 3
    assert not out.adaptive.any()


def test_threshold_extremes(base):
    ctx = random_identities(3, 512, 3)
    # a huge threshold: everybody switches right after the first comparison (step 1 -> 2)
    out = UIFaceSampler(base, UIFaceSamplingConfig(mse_th=10.0)).sample(ctx, noise=_noise(3))
    assert out.switch_step.tolist() == [2, 2, 2] and out.adaptive.all()
    # zero: the strict rule d < 0 never fires; everybody switches at step_th
    out0 = UIFaceSampler(base, UIFaceSamplingConfig(mse_th=0.0)).sample(ctx, noise=_noise(3))
    assert out0.switch_step.tolist() == [5, 5, 5] and not out0.adaptive.any()
    assert out0.switch_timestep.tolist() == [400] * 3
    assert out.images.shape == (3, 3, 16, 16)
    assert float(out.images.abs().max()) <= 1.0


def test_per_sample_independence(base):
    """Sample i of a batch = sample i drawn alone: switches and images (no batch coupling)."""
    ctx = random_identities(3, 512, 4)
    noise = _noise(3, 7)
    s = UIFaceSampler(base, UIFaceSamplingConfig(mse_th=0.05))
    full = s.sample(ctx, noise=noise, output="latents")
    for i in range(3):
        one = s.sample(ctx[i : i + 1], noise=noise[i : i + 1], output="latents")
        if full.distances.numel() and np.abs(full.distances[:, i].numpy() - 0.05).min() < 1e-4:
            continue  # a near-tie could flip on round-off; the others still check
        assert one.switch_step.tolist() == [int(full.switch_step[i])]
        torch.testing.assert_close(one.latents[0], full.latents[i], atol=2e-3, rtol=1e-3)


def test_seeds_and_records(base):
    ctx = random_identities(2, 512, 5)
    s = UIFaceSampler(base, UIFaceSamplingConfig(mse_th=0.05))
    a = s.sample(ctx, seeds=[11, 12])
    b = s.sample(ctx, seeds=[11, 12])
    torch.testing.assert_close(a.images, b.images)
    recs = a.records()
    assert [set(r) for r in recs] == [{"switch_step", "switch_timestep", "adaptive_switch"}] * 2
    assert [r["switch_step"] for r in recs] == a.switch_step.tolist()


def test_reference_alpha_prev_runs_and_differs(model):
    ctx = random_identities(2, 512, 6)
    cfg = UIFaceSamplingConfig(mse_th=0.0)
    outs = {
        ap: UIFaceSampler(
            IdentitySampler(model, image_size=16, num_steps=STEPS, alpha_prev=ap), cfg
        ).sample(ctx, noise=_noise(2), output="latents")
        for ap in ("diffusers", "reference")
    }
    assert (outs["diffusers"].latents - outs["reference"].latents).abs().max() > 1e-4


def test_presets_and_variants():
    p = sampling_presets()
    assert dataclasses.asdict(p["paper"]) == dataclasses.asdict(UIFaceSamplingConfig())
    paper = p["paper"]
    assert (paper.step_th, paper.mse_th, paper.guidance_scale, paper.injection_weight) == (
        500,
        0.006,
        1.0,
        0.5,
    )
    assert paper.map_size == 32 and paper.mode == "two-stage" and paper.adaptive
    assert list(VARIANTS) == [
        "single-stage",
        "empty-context",
        "two-stage-fixed",
        "two-stage-adaptive",
        "uiface",
    ]
    assert variant("uiface", p["toy"]).mse_th == p["toy"].mse_th
    with pytest.raises(UnknownNameError):
        variant("nope")


@pytest.mark.parametrize(
    ("field", "value", "err"),
    [
        ("mse_th", -0.001, RangeError),
        ("mse_th", math.nan, RangeError),
        ("guidance_scale", -1.0, RangeError),
        ("injection_weight", 1.5, RangeError),
        ("map_size", 0, RangeError),
        ("mode", "three-stage", UnknownNameError),
        ("adaptive", 1, FacelabTypeError),
        ("step_th", 500.0, FacelabTypeError),
    ],
)
def test_bad_settings(field, value, err):
    with pytest.raises(err):
        UIFaceSamplingConfig(**{field: value})


@pytest.mark.parametrize("step_th", [0, 1000, -3, 5000])
def test_step_th_outside_the_schedule(base, step_th):
    with pytest.raises(RangeError, match=r"step_th: expected a timestep in \(0, 1000\)"):
        UIFaceSampler(base, UIFaceSamplingConfig(step_th=step_th))


def test_bad_denoiser_and_contexts(base):
    no_empty = tiny_unet(0, learn_empty_context=False)
    with pytest.raises(RangeError, match="learned empty context"):
        UIFaceSampler(IdentitySampler(no_empty, image_size=16, num_steps=4))
    never = tiny_unet(0, unconditioned_probability=0.0)
    with pytest.raises(RangeError, match="unconditioned_probability"):
        UIFaceSampler(IdentitySampler(never, image_size=16, num_steps=4))
    with pytest.raises(FacelabTypeError):
        UIFaceSampler("not a sampler")  # type: ignore[arg-type]
    s = UIFaceSampler(base)
    with pytest.raises(ShapeError, match=r"\(N, 512\)"):
        s.sample(torch.nn.functional.normalize(torch.randn(2, 128), dim=1))
    with pytest.raises(RangeError, match="unit"):
        s.sample(torch.randn(2, 512) * 3)
    with pytest.raises(FacelabTypeError):
        s.sample(None)  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match="seeds"):
        s.sample(random_identities(2, 512, 0), seeds=[1])
