"""The sampler against a hand-written DDIM loop; guidance forms; per-sample switches; one
batched forward per step; attention controllers on both denoisers; bad input."""

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("diffusers")

from facelab.core.diffusion import (
    AttentionController,
    AttentionRecorder,
    ClassifierFreeGuidance,
    ConditionalUNet,
    IdentitySampler,
    UNet2DConditionDenoiser,
    random_identities,
)
from facelab.core.errors import (
    FacelabTypeError,
    NonFiniteError,
    RangeError,
    ShapeError,
    ZeroVectorError,
)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Analytic(nn.Module):
    """eps = 0.1 x + 0.05 * (context mean, or -1 for the empty context), deterministic;
    counts calls and records the flags it was given."""

    context_width = 4

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.calls, self.flags, self.batches = 0, [], []

    def forward(self, x, t, context=None, condition_flag=None, extra_context=None):
        self.calls += 1
        self.batches.append(x.shape[0])
        b = x.shape[0]
        if context is None:
            c = torch.full((b,), -1.0)
        else:
            c = context.mean(1)
            if condition_flag is not None:
                self.flags.append(condition_flag.clone())
                c = torch.where(condition_flag, c, torch.full_like(c, -1.0))
        return 0.1 * x + 0.05 * c.view(b, 1, 1, 1) + 0 * self.w


def hand_ddim(eps_fn, x, steps=50, alpha_prev="diffusers", clip=False):
    """DDIM, eta 0, from numpy: betas linspace(1e-4, 0.02, 1000), leading spacing."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    ab = np.cumprod(1 - betas)
    skip = 1000 // steps
    x = x.double()
    for t in range(1000 - skip, -1, -skip):
        prev = t - skip
        if alpha_prev == "diffusers":
            a_prev = ab[prev] if prev >= 0 else 1.0
        else:
            a_prev = ab[prev - 1] if prev - 1 >= 0 else 1.0
            a_prev = 1.0 if prev < 0 else a_prev
        e = eps_fn(x.float(), t).double()
        x0 = (x - np.sqrt(1 - ab[t]) * e) / np.sqrt(ab[t])
        if clip:
            x0 = x0.clamp(-1, 1)
        x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * e
    return x.float()


def _ctx(b, seed=0):
    return random_identities(b, 4, seed)


@pytest.mark.parametrize("alpha_prev", ["diffusers", "reference"])
def test_clip_sample_clips_each_predicted_x0_like_a_hand_loop(alpha_prev):
    """clip_sample=True: x0 clipped to [-1, 1] at every step, the model's eps kept (diffusers'
    rule), for both previous-alpha conventions; off by default, as in the reference."""
    ctx, noise = _ctx(3), 3 * torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    c = ctx.mean(1).view(3, 1, 1, 1)

    def eps(x, t):  # guidance 0: the conditional branch only
        return 0.1 * x + 0.05 * c

    def run(clip):
        kw = {} if clip is None else {"clip_sample": clip}
        s = IdentitySampler(
            Analytic(), image_size=4, num_steps=20, guidance_scale=0.0, alpha_prev=alpha_prev, **kw
        )
        return s, s.sample(ctx, noise=noise).latents

    s, clipped = run(True)
    assert s.settings()["clip_sample"] is True
    assert torch.allclose(clipped, hand_ddim(eps, noise, 20, alpha_prev, clip=True), atol=1e-5)
    s, plain = run(None)
    assert s.settings()["clip_sample"] is False
    unclipped = hand_ddim(eps, noise, 20, alpha_prev)
    assert unclipped.abs().max() > 10  # the case where clipping matters ...
    assert torch.allclose(plain, unclipped.clamp(-1, 1), atol=1e-5)  # (outputs are clamped)
    assert (plain - clipped).abs().max() > 0.1  # ... and changes the samples
    with pytest.raises(FacelabTypeError, match="clip_sample: expected a bool"):
        run("yes")


@pytest.mark.parametrize("alpha_prev", ["diffusers", "reference"])
def test_sampler_matches_hand_ddim_with_guidance(alpha_prev):
    model = Analytic()
    s = IdentitySampler(
        model, image_size=4, num_steps=50, guidance_scale=1.0, alpha_prev=alpha_prev
    )
    ctx = _ctx(3)
    noise = torch.randn(3, 3, 4, 4)
    out = s.sample(ctx, noise=noise)
    c = ctx.mean(1).view(3, 1, 1, 1)

    def eps(x, t):  # (1 + s) e_c - s e_u with s = 1
        return 2 * (0.1 * x + 0.05 * c) - (0.1 * x - 0.05)

    want = hand_ddim(eps, noise, 50, alpha_prev).clamp(-1, 1)
    assert torch.allclose(out.images, want, atol=1e-5)
    assert model.calls == 50  # one batched forward per step for both branches
    assert set(model.batches) == {6}


def test_guidance_forms_agree_and_zero_scale_skips_uncond():
    ctx, noise = _ctx(2), torch.randn(2, 3, 4, 4)
    ref = IdentitySampler(Analytic(), image_size=4, num_steps=10, guidance_scale=1.5).sample(
        ctx, noise=noise
    )
    dif = IdentitySampler(
        Analytic(), image_size=4, num_steps=10, guidance_scale=2.5, guidance_form="diffusers"
    ).sample(ctx, noise=noise)
    assert torch.allclose(ref.latents, dif.latents, atol=1e-6)
    m = Analytic()
    IdentitySampler(m, image_size=4, num_steps=10, guidance_scale=0.0).sample(ctx, noise=noise)
    assert set(m.batches) == {2}  # no unconditional branch when nobody needs it


def test_per_sample_guidance_equals_separate_runs():
    ctx, noise = _ctx(2), torch.randn(2, 3, 4, 4)
    s = IdentitySampler(Analytic(), image_size=4, num_steps=10)
    both = s.sample(ctx, noise=noise, guidance_scale=torch.tensor([0.0, 3.0])).latents
    a = s.sample(ctx[:1], noise=noise[:1], guidance_scale=0.0).latents
    b = s.sample(ctx[1:], noise=noise[1:], guidance_scale=3.0).latents
    assert torch.allclose(both, torch.cat([a, b]), atol=1e-6)


def test_per_sample_context_switch_from_a_callback():
    class Switch:
        def on_step_begin(self, state):
            if state.index == 3:
                state.context_flag[1] = True

    m = Analytic()
    s = IdentitySampler(m, image_size=4, num_steps=6, guidance_scale=0.0)
    out = s.sample(
        _ctx(2),
        noise=torch.randn(2, 3, 4, 4),
        context_flag=torch.tensor([True, False]),
        callbacks=[Switch()],
    )
    seen = torch.stack(m.flags)
    assert seen[:3, 1].tolist() == [False] * 3 and seen[3:, 1].tolist() == [True] * 3
    assert seen[:, 0].all()
    assert out.context_flag.tolist() == [True, True]


def test_seeds_make_samples_independent_of_batching():
    model = Analytic()
    s = IdentitySampler(model, image_size=4, num_steps=5)
    ctx = _ctx(3)
    full = s.sample(ctx, seeds=[5, 6, 7]).latents
    part = s.sample(ctx[1:], seeds=[6, 7]).latents
    assert torch.equal(full[1:], part)


TINY = {
    "initial_channels": 32,
    "channel_multipliers": (1, 2),
    "is_attention": (False, True),
    "n_blocks_per_resolution": 1,
    "context_input_channels": 16,
    "context_channels": 32,
}


class Swap(AttentionController):
    """UIFace-style: the conditional rows take the unconditional rows' self-attention logits."""

    def begin_forward(self, state=None):
        self.sl = state.branch_slices
        assert self.sl == {"uncond": slice(0, 2), "cond": slice(2, 4)}  # batch of 2 samples

    def logits(self, site, logits):
        if site.kind == "self" and "uncond" in self.sl:
            logits = logits.clone()
            logits[self.sl["cond"]] = logits[self.sl["uncond"]]
            self.last = logits
        return logits


class Uniform(AttentionController):
    """Replaces every self-attention map by uniform attention."""

    def logits(self, site, logits):
        return torch.zeros_like(logits) if site.kind == "self" else logits


def _reference_unet():
    torch.manual_seed(0)
    m = ConditionalUNet(**TINY).eval()
    for p in m.parameters():
        nn.init.normal_(p, std=0.2)
    return m


def _diffusers_unet():
    torch.manual_seed(0)
    m = UNet2DConditionDenoiser(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=16,
        n_tokens=4,
        context_input_channels=16,
    ).eval()
    return m


@pytest.mark.parametrize("build", [_reference_unet, _diffusers_unet])
def test_controllers_record_and_replace_on_both_denoisers(build):
    model = build()
    s = IdentitySampler(model, image_size=8, num_steps=3)
    ctx = random_identities(2, 16, 1)
    noise = torch.randn(2, 3, 8, 8)
    base = s.sample(ctx, noise=noise).latents
    same = s.sample(ctx, noise=noise, controller=AttentionController()).latents
    assert torch.allclose(base, same, atol=1e-4)
    rec = AttentionRecorder(kinds=("cross",))
    s.sample(ctx, noise=noise, controller=rec)
    sites = [x for x in model.attention_sites() if x.kind == "cross"]
    assert sorted(rec.records) == sorted(x.name for x in sites) and sites
    assert all(v.shape[0] == 4 for v in rec.records.values())  # uncond + cond rows
    swap = Swap()
    s.sample(ctx, noise=noise, controller=swap)
    assert torch.equal(swap.last[2:], swap.last[:2])
    uniform = s.sample(ctx, noise=noise, controller=Uniform()).latents
    assert (uniform - base).abs().max() > 1e-3
    # after sampling the default fused processors are back
    rec.clear()
    s.sample(ctx, noise=noise)
    assert rec.records == {}


def test_extra_context_tokens_reach_cross_attention():
    model = _reference_unet()
    rec = AttentionRecorder(kinds=("cross",))
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([5, 5])
    c = random_identities(2, 16)
    model.set_attention_controller(rec)
    with torch.no_grad():
        model(x, t, c, extra_context=torch.randn(2, 5, 32))
    model.set_attention_controller(None)
    assert rec.records["middle.attn.cross"].shape[-1] == 32 + 5


@pytest.mark.parametrize(
    "bad, err",
    [
        (torch.ones(2, 4), RangeError),  # not unit
        (torch.zeros(2, 4), ZeroVectorError),
        (torch.full((2, 4), float("nan")), NonFiniteError),
        (torch.nn.functional.normalize(torch.ones(2, 5), dim=1), ShapeError),
    ],
)
def test_bad_contexts(bad, err):
    s = IdentitySampler(Analytic(), image_size=4, num_steps=2)
    with pytest.raises(err):
        s.sample(bad)


def test_bad_settings():
    with pytest.raises(RangeError, match="num_steps"):
        IdentitySampler(Analytic(), image_size=4, num_steps=0)
    with pytest.raises(RangeError, match="num_steps"):
        IdentitySampler(Analytic(), image_size=4, num_steps=1001)
    with pytest.raises(RangeError, match="guidance_scale"):
        IdentitySampler(Analytic(), image_size=4, guidance_scale=-1.0)
    with pytest.raises(RangeError, match="guidance_scale"):
        IdentitySampler(Analytic(), image_size=4, guidance_scale=0.5, guidance_form="diffusers")
    s = IdentitySampler(Analytic(), image_size=4, num_steps=2)
    with pytest.raises(RangeError, match="guidance_scale"):
        s.sample(_ctx(2), guidance_scale=torch.tensor([1.0, float("nan")]))
    with pytest.raises(RangeError, match="eta"):
        IdentitySampler(Analytic(), image_size=4, eta=2.0)


def test_cfg_always_uncond_runs_both_branches_at_zero_scale():
    m = Analytic()
    s = IdentitySampler(m, image_size=4, num_steps=2, guidance_scale=0.0)
    s.sample(_ctx(2), guidance=ClassifierFreeGuidance(always_uncond=True))
    assert set(m.batches) == {4}
