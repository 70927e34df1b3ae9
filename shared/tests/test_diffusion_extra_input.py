"""Pixel-aligned extra input (``extra_input_channels``): both denoisers start as the plain
model (zero-initialized), missing maps mean zeros, maps are resized to the latent size, the
sampler carries them per guidance branch (zeros for a branch without them), and bad shapes are
clear errors. (Training the input path from an ``ExtraOutput``'s maps: test_diffusion_train.)"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("diffusers")

from facelab.core.diffusion import (
    Branch,
    ConditionalUNet,
    IdentitySampler,
    UNet2DConditionDenoiser,
    random_identities,
)
from facelab.core.errors import RangeError, ShapeError

TINY = {
    "initial_channels": 32,
    "channel_multipliers": (1, 2),
    "is_attention": (False, True),
    "n_blocks_per_resolution": 1,
    "context_input_channels": 16,
    "context_channels": 32,
}
DIFFUSERS = {
    "sample_size": 8,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": 16,
    "n_tokens": 4,
    "context_input_channels": 16,
}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _inputs(b=2, size=8, channels=4):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(b, 3, size, size, generator=g)
    t = torch.full((b,), 400)
    c = random_identities(b, 16, seed=1)
    maps = torch.randn(b, channels, size, size, generator=g)
    return x, t, c, maps


def _reference_pair():
    """(plain, with 4 extra input channels) sharing every other weight (random, std 0.2)."""
    torch.manual_seed(0)
    plain = ConditionalUNet(**TINY).eval()
    for p in plain.parameters():
        nn.init.normal_(p, std=0.2)
    extra = ConditionalUNet(**TINY, extra_input_channels=4).eval()
    missing, unexpected = extra.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["extra_input_proj.bias", "extra_input_proj.weight"]
    assert unexpected == []
    return plain, extra


def _diffusers_pair():
    torch.manual_seed(0)
    plain = UNet2DConditionDenoiser(**DIFFUSERS).eval()
    extra = UNet2DConditionDenoiser(**DIFFUSERS, extra_input_channels=4).eval()
    assert extra.unet.conv_in.weight.shape[1] == 3 + 4
    assert extra.unet.conv_in.weight[:, 3:].abs().max() == 0  # zero-initialized
    state = plain.state_dict()
    w = torch.zeros_like(extra.unet.conv_in.weight)
    w[:, :3] = state["unet.conv_in.weight"]
    state["unet.conv_in.weight"] = w
    extra.load_state_dict(state, strict=True)
    return plain, extra


def _extra_weights(model):
    if isinstance(model, ConditionalUNet):
        return [model.extra_input_proj.weight, model.extra_input_proj.bias]
    return [model.unet.conv_in.weight]


@pytest.mark.parametrize("pair", [_reference_pair, _diffusers_pair])
def test_zero_initialized_input_path_is_the_plain_denoiser(pair):
    plain, extra = pair()
    x, t, c, maps = _inputs()
    with torch.no_grad():
        ref = plain(x, t, c)
        # at initialization the maps cannot change the prediction
        torch.testing.assert_close(extra(x, t, c, extra_input=maps), ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(extra(x, t, c), ref, atol=1e-5, rtol=0)
        # once the input path has weights, the maps change the prediction, and missing maps
        # are zero maps
        for w in _extra_weights(extra):
            w.add_(torch.randn_like(w) * 0.2)
        with_maps = extra(x, t, c, extra_input=maps)
        none = extra(x, t, c)
        zeros = extra(x, t, c, extra_input=torch.zeros_like(maps))
    assert (with_maps - ref).abs().max() > 1e-2
    torch.testing.assert_close(none, zeros, atol=1e-5, rtol=0)
    # the maps are per sample: swapping the batch's maps changes each sample's prediction
    with torch.no_grad():
        swapped = extra(x, t, c, extra_input=maps.flip(0))
    assert all((swapped[i] - with_maps[i]).abs().max() > 1e-3 for i in range(2))


@pytest.mark.parametrize("pair", [_reference_pair, _diffusers_pair])
def test_maps_are_resized_to_the_latent_size(pair):
    _, extra = pair()
    for w in _extra_weights(extra):
        nn.init.normal_(w, std=0.2)
    x, t, c, _ = _inputs()
    big = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(5))
    small = F.interpolate(big, size=(8, 8), mode="bilinear", antialias=True)
    with torch.no_grad():
        torch.testing.assert_close(
            extra(x, t, c, extra_input=big), extra(x, t, c, extra_input=small), atol=0, rtol=0
        )


@pytest.mark.parametrize("pair", [_reference_pair, _diffusers_pair])
def test_bad_extra_input_is_a_clear_error(pair):
    plain, extra = pair()
    x, t, c, maps = _inputs()
    with pytest.raises(ShapeError, match="built without extra_input_channels"):
        plain(x, t, c, extra_input=maps)
    with pytest.raises(ShapeError, match=r"expected maps of shape \(2, 4, H, W\), got \(2, 3, 8"):
        extra(x, t, c, extra_input=maps[:, :3])
    with pytest.raises(ShapeError, match=r"\(2, 4, H, W\), got \(1, 4, 8, 8\)"):
        extra(x, t, c, extra_input=maps[:1])
    with pytest.raises(ShapeError, match=r"got \(2, 4, 8\)"):
        extra(x, t, c, extra_input=maps[..., 0])
    with pytest.raises(RangeError, match="extra_input_channels"):
        ConditionalUNet(**TINY, extra_input_channels=-1)
    with pytest.raises(RangeError, match="extra_input_channels"):
        UNet2DConditionDenoiser(**DIFFUSERS, extra_input_channels=-2)


class Recording(nn.Module):
    """eps = 0.1 x + the mean of the maps (0 without them); records the maps of every call."""

    context_width = 16

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.maps: list[torch.Tensor | None] = []

    def forward(
        self, x, t, context=None, condition_flag=None, extra_context=None, extra_input=None
    ):
        self.maps.append(None if extra_input is None else extra_input.clone())
        m = 0.0 if extra_input is None else extra_input.mean((1, 2, 3), keepdim=True)
        return 0.1 * x + 0.01 * m + 0 * self.w


def test_sampler_gives_each_branch_its_maps_and_zeros_to_the_rest():
    den = Recording()
    s = IdentitySampler(den, image_size=4, num_steps=2)
    ctx = random_identities(2, 16, seed=0)
    maps = torch.randn(2, 5, 4, 4, generator=torch.Generator().manual_seed(0))
    # classifier-free guidance: the maps go with the conditional branch only
    s.sample(ctx, seeds=[0, 1], guidance_scale=2.0, extra_input=maps)
    assert len(den.maps) == 2
    for m in den.maps:
        assert m.shape == (4, 5, 4, 4)
        assert m[:2].abs().max() == 0  # "uncond" first, zeros
        torch.testing.assert_close(m[2:], maps)
    # without guidance only the conditional branch runs
    den.maps.clear()
    s.sample(ctx, seeds=[0, 1], guidance_scale=0.0, extra_input=maps)
    assert all(torch.equal(m, maps) for m in den.maps)
    # no maps anywhere: the keyword is not passed (old-style denoisers keep working)
    den.maps.clear()
    s.sample(ctx, seeds=[0, 1], guidance_scale=2.0)
    assert den.maps == [None, None]

    class Both:
        def branches(self, state):
            return {
                "a": Branch(state.context_flag, None, maps.flip(0)),
                "b": Branch(state.context_flag, None, maps),
            }

        def combine(self, eps, state):
            return eps["a"] - eps["b"] + eps["b"]

    den.maps.clear()
    s.sample(ctx, seeds=[0, 1], guidance=Both())
    torch.testing.assert_close(den.maps[0], torch.cat([maps.flip(0), maps]))
    # and they reach the result: the same noise with other maps ends elsewhere
    a = s.sample(ctx, seeds=[0, 1], guidance_scale=0.0, extra_input=maps).latents
    b = s.sample(ctx, seeds=[0, 1], guidance_scale=0.0, extra_input=maps + 1.0).latents
    assert (a - b).abs().max() > 1e-2
