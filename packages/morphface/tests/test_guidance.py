"""Identity / style guidance: the branches each setting needs and the combination formula."""

import pytest
import torch

from facelab.core.diffusion.sampling import StepState
from facelab.core.errors import RangeError, ShapeError
from facelab.morphface.guidance import MorphFaceGuidance


def state(b=3, timestep=500):
    return StepState(
        index=0,
        timestep=timestep,
        num_steps=10,
        latents=torch.zeros(b, 3, 4, 4),
        contexts=torch.zeros(b, 8),
        context_flag=torch.ones(b, dtype=torch.bool),
        guidance_scale=torch.zeros(b),
        extra_context=None,
    )


def tokens(b=3):
    return torch.randn(b, 4, 6), torch.randn(b, 4, 6)


@pytest.mark.parametrize(
    "ids, sts, want",
    [
        (0.0, 0.0, {"full"}),
        (2.0, 0.0, {"full", "style"}),
        (0.0, 1.5, {"full", "style", "uncond"}),
        (1.0, 1.0, {"full", "style", "uncond"}),
    ],
)
def test_branches_needed(ids, sts, want):
    sty, null = tokens()
    g = MorphFaceGuidance(sty, null, id_scale=ids, style_scale=sts)
    br = g.branches(state())
    assert set(br) == want
    assert torch.equal(br["full"].extra_context, sty) and bool(br["full"].condition_flag.all())
    if "style" in br:  # style kept, ID dropped
        assert torch.equal(br["style"].extra_context, sty)
        assert not bool(br["style"].condition_flag.any())
    if "uncond" in br:  # both dropped
        assert torch.equal(br["uncond"].extra_context, null)
        assert not bool(br["uncond"].condition_flag.any())


def test_combine_formula_and_blend_schedule():
    sty, null = tokens()
    ids = torch.tensor([0.0, 1.0, 3.0])
    g = MorphFaceGuidance(
        sty, null, id_scale=ids, style_scale=2.0, blend=0.5, num_train_timesteps=1000
    )
    for t in (999, 500, 0):
        st = state(timestep=t)
        e = {k: torch.randn(3, 3, 4, 4) for k in ("full", "style", "uncond")}
        r = 2 * t / 1000 - 1
        w_id = ids * (1 - 0.5 * r)
        w_st = 2.0 * (1 + 0.5 * r)
        want = e["full"].clone()
        for i in range(3):  # per sample, written out
            want[i] = (
                e["full"][i]
                + w_id[i] * (e["full"][i] - e["style"][i])
                + w_st * (e["style"][i] - e["uncond"][i])
            )
        torch.testing.assert_close(g.combine(e, st), want)
    # the blend keeps each scale's mean over a uniform trajectory
    w = torch.stack([torch.stack(g.weights(t)) for t in range(1000)])
    torch.testing.assert_close(w.mean(0)[1], torch.full((3,), 2.0), atol=3e-3, rtol=0)
    torch.testing.assert_close(w.mean(0)[0], ids, atol=3e-3, rtol=0)


def test_zero_scales_return_the_conditional_prediction():
    sty, null = tokens()
    g = MorphFaceGuidance(sty, null, id_scale=0.0, style_scale=0.0)
    e = {"full": torch.randn(3, 3, 4, 4)}
    assert torch.equal(g.combine(e, state()), e["full"])


def test_bad_guidance():
    sty, null = tokens()
    with pytest.raises(RangeError, match="blend"):
        MorphFaceGuidance(sty, null, blend=1.5)
    with pytest.raises(RangeError, match="id_scale"):
        MorphFaceGuidance(sty, null, id_scale=-1.0)
    with pytest.raises(RangeError, match="style_scale"):
        MorphFaceGuidance(sty, null, style_scale=float("nan"))
    with pytest.raises(ShapeError, match="id_scale"):
        MorphFaceGuidance(sty, null, id_scale=torch.ones(2))
    with pytest.raises(ShapeError, match="tokens"):
        MorphFaceGuidance(sty, null[:, :2])


def test_style_maps_go_with_the_style_tokens():
    """With pixel-aligned renderings: the maps in the (id, sty) and (0, sty) branches, none in
    the (0, 0) branch (the base sampler gives it zeros: a dropped style in training)."""
    sty, null = tokens()
    maps = torch.randn(3, 9, 8, 8)
    g = MorphFaceGuidance(sty, null, style_maps=maps, id_scale=1.0, style_scale=1.0)
    br = g.branches(state())
    assert torch.equal(br["full"].extra_input, maps) and torch.equal(br["style"].extra_input, maps)
    assert br["uncond"].extra_input is None
    plain = MorphFaceGuidance(sty, null, id_scale=1.0, style_scale=1.0).branches(state())
    assert all(b.extra_input is None for b in plain.values())
    with pytest.raises(ShapeError, match=r"style maps: expected \(3, C, H, W\)"):
        MorphFaceGuidance(sty, null, style_maps=maps[:2])
