"""The attention operations against independent NumPy / sequential references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import numpy_aggregate, numpy_layer_map, tiny_unet

from facelab.core.diffusion import AttentionController, attention_controller
from facelab.core.diffusion.sampling import StepState
from facelab.core.errors import RangeError, ShapeError
from facelab.uiface import (
    UIFaceController,
    aggregate_cross_attention,
    inject_cross_logits,
    layer_attention_map,
    map_distance,
)


def _logits(b, heads, lq, lk, seed=0):
    return torch.randn(b, heads, lq, lk, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("lq", [16, 64, 256])
def test_layer_map_matches_numpy(lq):
    x = _logits(3, 4, lq, 8, seed=lq)
    ours = layer_attention_map(x, 32).numpy()
    ref = numpy_layer_map(x.double().numpy(), 32)
    np.testing.assert_allclose(ours, ref, atol=2e-6)
    # the map is max-normalized before resizing: every sample's maximum is 1 up to interpolation
    assert ours.max() <= 1.0 and ours.min() >= 0.0


def test_aggregate_over_layers_of_different_resolutions():
    layers = [_logits(2, 2, 16, 4, 1), _logits(2, 4, 64, 4, 2), _logits(2, 8, 256, 4, 3)]
    ours = aggregate_cross_attention(layers, 32).numpy()
    ref = numpy_aggregate([x.double().numpy() for x in layers], 32)
    np.testing.assert_allclose(ours, ref, atol=2e-6)
    flat = ours.reshape(2, -1)
    np.testing.assert_allclose(flat.min(1), 0.0, atol=1e-7)
    np.testing.assert_allclose(flat.max(1), 1.0, atol=1e-6)


def test_map_distance_is_mean_absolute_difference():
    a, b = torch.rand(4, 32, 32), torch.rand(4, 32, 32)
    ref = np.abs(a.numpy() - b.numpy()).reshape(4, -1).mean(1)
    np.testing.assert_allclose(map_distance(a, b).numpy(), ref, rtol=1e-6)


def test_inject_cross_logits_matches_formula_and_hits_target_statistics():
    tgt, src = _logits(2, 3, 16, 6, 4), _logits(2, 3, 16, 6, 5) + 2.0
    w = 0.5
    out = inject_cross_logits(tgt, src, w).double().numpy()
    t, s = tgt.double().numpy(), src.double().numpy()
    m, sd = t.mean(-1, keepdims=True), t.std(-1, ddof=1, keepdims=True)
    ms, sds = s.mean(-1, keepdims=True), s.std(-1, ddof=1, keepdims=True)
    ref = (t - m) / sd * (w * sds + (1 - w) * sd) + (w * ms + (1 - w) * m)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.mean(-1), (w * ms + (1 - w) * m)[..., 0], atol=1e-5)
    np.testing.assert_allclose(out.std(-1, ddof=1), (w * sds + (1 - w) * sd)[..., 0], rtol=1e-5)
    # weight 0 leaves the logits unchanged, weight 1 takes the source's row statistics
    np.testing.assert_allclose(inject_cross_logits(tgt, src, 0.0).numpy(), tgt.numpy(), atol=1e-5)
    with pytest.raises(ShapeError):
        inject_cross_logits(tgt, src[:1])


def test_controller_rejects_bad_settings():
    with pytest.raises(RangeError):
        UIFaceController(injection_weight=1.5)
    with pytest.raises(RangeError):
        UIFaceController(map_size=0)


class _Sequential(AttentionController):
    """Reference: the second pass takes recorded self logits and injects cross statistics."""

    def __init__(self, source=None):
        self.source = source
        self.self_l, self.cross_l = [], []
        self.k = 0

    def logits(self, site, logits):
        if self.source is None:
            (self.self_l if site.kind == "self" else self.cross_l).append(logits.clone())
            return logits
        i = self.k // 2
        self.k += 1
        if site.kind == "self":
            return self.source.self_l[i]
        return inject_cross_logits(logits, self.source.cross_l[i], 0.5)


def test_batched_controller_equals_two_sequential_forwards_per_sample():
    """One batched forward [uncond; cond] with the controller = the reference's two forwards
    (unconditional first, then the conditional pass fed with its maps), sample by sample."""
    torch.manual_seed(0)
    model = tiny_unet(1)
    b = 3
    x = torch.randn(b, 3, 16, 16)
    t = torch.tensor([700, 300, 120])
    ctx = torch.nn.functional.normalize(torch.randn(b, 512), dim=1)
    state = StepState(
        index=0,
        timestep=300,
        num_steps=1,
        latents=x,
        contexts=ctx,
        context_flag=torch.ones(b, dtype=torch.bool),
        guidance_scale=torch.ones(b),
    )
    state.branch_slices = {"uncond": slice(0, b), "cond": slice(b, 2 * b)}
    state.scratch["uiface"] = {"share_self": True, "inject_cross": True, "record": True}
    ctl = UIFaceController()
    with attention_controller(model, ctl), torch.no_grad():
        ctl.begin_forward(state)
        flags = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)])
        both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([ctx, ctx]), flags)
    agg = ctl.take_map()
    src = _Sequential()
    with attention_controller(model, src), torch.no_grad():
        e_u = model(x, t, None)
    rep = _Sequential(src)
    with attention_controller(model, rep), torch.no_grad():
        e_c = model(x, t, ctx)
    torch.testing.assert_close(both[:b], e_u, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(both[b:], e_c, atol=1e-5, rtol=1e-4)
    # the recorded map is the conditional pass's own (pre-injection) cross logits, aggregated
    own = _Sequential()

    class _Own(AttentionController):
        k = 0

        def logits(self, site, logits):
            i = self.k // 2
            self.k += 1
            if site.kind == "self":
                return src.self_l[i]
            own.cross_l.append(logits.clone())
            return inject_cross_logits(logits, src.cross_l[i], 0.5)

    with attention_controller(model, _Own()), torch.no_grad():
        model(x, t, ctx)
    ref = numpy_aggregate([c.double().numpy() for c in own.cross_l], 32)
    np.testing.assert_allclose(agg.numpy(), ref, atol=1e-5)
    # without injection the conditional rows differ (the operations do something here)
    plain = model(x, t, ctx)
    assert (plain - e_c).abs().max() > 1e-3
