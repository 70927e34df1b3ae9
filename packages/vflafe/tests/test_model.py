import copy

import pytest
import torch
import torch.nn.functional as F

from facelab.core.errors import RangeError, UnknownNameError
from facelab.vflafe import ModelConfig, PrivacyConfig, VFLModel, clip_rows


def _batch(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, 6, generator=g), torch.randn(n, 5, generator=g)]
    y = torch.randint(0, 3, (n,), generator=g)
    return xs, y, torch.arange(n)


def _model(mode="afe", sigma=0.5, clip=1.0, **kw):
    torch.manual_seed(0)
    privacy = PrivacyConfig(mode=mode, clip_norm=clip, noise_multiplier=sigma, noise_seed=3, **kw)
    return VFLModel(
        [(6,), (5,)], 3, ModelConfig(embed_dim=8, bottom_hidden=16, top_hidden=16), privacy
    )


def test_afe_releases_rows_on_the_clip_sphere_and_plain_does_not():
    xs, _, _ = _batch()
    afe, plain = _model("afe", 0.0, clip=2.0), _model("plain", 0.0, clip=2.0)
    z = afe.passive[0].release(xs[0])
    torch.testing.assert_close(torch.linalg.vector_norm(z, dim=1), torch.full((32,), 2.0))
    assert (torch.linalg.vector_norm(plain.passive[0].release(xs[0]), dim=1) < 1.9).any()


def test_afe_is_invariant_to_the_clip_norm():
    """With the noise std proportional to C, an AFE release is C times a C-free release: the
    clip norm needs no tuning (plain clip + noise depends on it)."""
    xs, _, _ = _batch()
    a, b = _model("afe", 2.0, clip=0.1), _model("afe", 2.0, clip=10.0)
    b.load_state_dict(a.state_dict())
    za, zb = a.passive[0].release(xs[0]), b.passive[0].release(xs[0])
    torch.testing.assert_close(za / 0.1, zb / 10.0, rtol=1e-5, atol=1e-5)
    a.eval(), b.eval()
    torch.testing.assert_close(a(xs), b(xs), rtol=1e-4, atol=1e-4)  # same noise draws (seeded)


def test_active_party_sees_only_the_released_tensor():
    xs, y, ids = _batch()
    m = _model("afe", 1.0)
    seen = []
    m.active.register_forward_pre_hook(
        lambda mod, args: seen.append([z.detach().clone() for z in args[0]])
    )
    m.transcript.recording = True
    F.cross_entropy(m(xs, ids), y).backward()
    released = m.transcript.steps[0]["released"]
    private = [p.embed(x).detach() for p, x in zip(m.passive, xs)]
    for k in range(2):
        assert torch.equal(seen[0][k], released[k])
        diff = released[k] - clip_rows(private[k], 1.0)
        assert 0.8 < diff.std().item() < 1.2  # noise of std sigma * C = 1 separates them


@pytest.mark.parametrize("protect", [False, True])
def test_in_process_step_equals_the_explicit_two_party_protocol(protect):
    """The autograd Exchange gives every party the update it would get from messages: passive
    k sends z_k, the active party computes dL/dz_k from the z alone (and protects it), passive
    k back-propagates what it receives."""
    kw = {"grad_clip_norm": 0.01, "grad_noise_multiplier": 1.0} if protect else {}
    xs, y, ids = _batch()
    joint = _model("afe", 0.7, **kw)
    split = copy.deepcopy(joint)  # same weights and noise generator states
    joint.transcript.recording = True
    F.cross_entropy(joint(xs, ids), y).backward()

    graphs = [p.release(x) for p, x in zip(split.passive, xs)]  # passive side
    received = [z.detach().requires_grad_() for z in graphs]  # the wire
    F.cross_entropy(split.active(received), y).backward()  # active side
    sent = [c.protect(z.grad) for c, z in zip(split.channels, received)]
    for z, g in zip(graphs, sent):
        z.backward(g)  # passive side again

    for (name, a), (_, b) in zip(joint.named_parameters(), split.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    for k in range(2):
        torch.testing.assert_close(joint.transcript.steps[0]["gradients"][k], sent[k])
        torch.testing.assert_close(joint.transcript.steps[0]["released"][k], received[k].detach())
    if protect:
        noise = sent[0] - clip_rows(received[0].grad, 0.01)
        assert 0.008 < noise.std().item() < 0.012  # std grad_noise_multiplier * grad_clip_norm


def test_inference_releases_use_their_own_noise_level():
    xs, _, _ = _batch(n=2000)
    m = _model("plain", 4.0, inference_noise_multiplier=0.5)
    p = m.passive[0]
    h = clip_rows(p.embed(xs[0]).detach(), 1.0)
    p.train()
    assert 3.8 < (p.release(xs[0]).detach() - h).std() < 4.2
    p.eval()
    assert 0.45 < (p.release(xs[0]).detach() - h).std() < 0.55


def test_bad_privacy_configs():
    with pytest.raises(UnknownNameError, match="mode"):
        PrivacyConfig(mode="dp")
    with pytest.raises(RangeError, match="mode 'none'"):
        PrivacyConfig(mode="none", noise_multiplier=1.0)
    with pytest.raises(RangeError, match="clip_norm"):
        PrivacyConfig(clip_norm=0.0)
    with pytest.raises(RangeError, match="noise_multiplier"):
        PrivacyConfig(noise_multiplier=-1.0)
    with pytest.raises(RangeError, match="grad_clip_norm"):
        PrivacyConfig(grad_noise_multiplier=1.0)
    with pytest.raises(RangeError, match="embed_dim"):
        ModelConfig(embed_dim=0)
