"""GAN/perceptual losses, the one-backward GAN update, the AR generator (KV cache equals no
cache, causality, bad input) and the metrics against independent references."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from facelab.core.errors import RangeError, ShapeError
from facelab.glotok.ar import ARConfig, ARTransformer
from facelab.glotok.losses import PatchDiscriminator, build_perceptual, hinge_d_loss, hinge_g_loss
from facelab.glotok.metrics import (
    RecognizerFeatures,
    codebook_usage,
    frechet_distance,
    perplexity,
    psnr,
    ssim,
    uniformity,
)


def test_hinge_losses():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.0])
    want_d = 0.5 * (np.mean([0, 0.5, 2.0]) + np.mean([0, 1.0, 2.0]))
    assert math.isclose(float(hinge_d_loss(real, fake)), want_d, rel_tol=1e-6)
    assert math.isclose(float(hinge_g_loss(fake)), 1 / 3, rel_tol=1e-6)
    assert PatchDiscriminator(3, 8, 2)(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 6, 6)


def test_one_backward_gan_update_routes_gradients(make_tokenizer, images):
    """The adversarial term reaches the tokenizer but not the discriminator; the
    discriminator's gradient is exactly that of its own hinge loss."""
    from facelab.glotok.train import LossConfig, TokenizerRecipe, make_loss_fn

    torch.manual_seed(0)
    model, disc = make_tokenizer(), PatchDiscriminator(3, 8, 2)
    cfg = TokenizerRecipe(
        model=model.cfg, loss=LossConfig(perceptual="none", disc_start=0, hist_weight=0)
    )
    mods = {"tokenizer": model, "disc": disc}

    class Ctx:
        step = 0

        def unwrap(self, name):
            return mods[name]

    loss, logs = make_loss_fn(cfg, None)((images, None), mods, Ctx())
    loss.backward()
    got = [p.grad.clone() for p in disc.parameters()]
    disc.zero_grad()
    recon = model(images).recon.detach()
    hinge_d_loss(disc(images), disc(recon)).backward()
    for a, p in zip(got, disc.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)
    assert "g_adv" in logs and model.decoder.conv_out.weight.grad.abs().sum() > 0


def test_perceptual_needs_a_local_file(tmp_path):
    assert build_perceptual("none") is None
    with pytest.raises(FileNotFoundError, match="local weights path"):
        build_perceptual("vgg16")
    with pytest.raises(FileNotFoundError):
        build_perceptual("vgg16", str(tmp_path / "missing.pth"))


def test_recognizer_perceptual_and_fid_extractor(tmp_path):
    from facelab.core.backbones import get_backbone
    from facelab.core.hub import save_pretrained

    torch.manual_seed(0)
    net = get_backbone("r18", input_size=32, embedding_size=16, base_width=4).eval()
    save_pretrained(net, tmp_path / "rec")
    loss = build_perceptual("recognizer", str(tmp_path / "rec"))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert float(loss(x, x)) < 1e-10 and float(loss(x, x.flip(0))) > 0
    ext = RecognizerFeatures.from_pretrained(tmp_path / "rec")
    assert ext.num_features == 16
    assert torch.allclose(ext(x).norm(dim=1), torch.ones(2), atol=1e-5)


def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_with_a_pluggable_extractor_equals_scipy():
    class Flat(torch.nn.Module):
        num_features = 6

        def forward(self, x):
            return x.flatten(1)[:, :6].double()

    g = torch.Generator().manual_seed(0)
    real = torch.rand(40, 3, 2, 2, generator=g) * 2 - 1
    fake = (torch.rand(40, 3, 2, 2, generator=g) * 2 - 1) * 0.5 + 0.2
    got = frechet_distance(real, fake, Flat(), batch_size=16)
    want = _scipy_fid(
        real.flatten(1)[:, :6].double().numpy(), fake.flatten(1)[:, :6].double().numpy()
    )
    assert math.isclose(got, want, rel_tol=1e-4)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        frechet_distance(real, fake, inception_weights="/nonexistent/pt_inception.pth")


def test_reconstruction_and_code_metrics():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    y = (x + 0.1 * torch.randn(3, 3, 16, 16, generator=g)).clamp(-1, 1)
    mse = (((x + 1) / 2 - (y + 1) / 2) ** 2).mean(dim=(1, 2, 3))
    assert math.isclose(psnr(y, x), float((10 * torch.log10(1 / mse)).mean()), rel_tol=1e-5)
    assert math.isclose(ssim(x, x), 1.0, rel_tol=1e-6) and ssim(y, x) < 0.99
    idx = torch.tensor([0, 0, 1, 3, 3, 3])
    assert codebook_usage(idx, 8) == 3 / 8
    p = np.array([2, 1, 3]) / 6
    assert math.isclose(perplexity(idx, 8), float(np.exp(-(p * np.log(p)).sum())), rel_tol=1e-9)
    v = torch.randn(30, 4, generator=g)
    u = F.normalize(v, dim=1).double().numpy()
    vals = [np.exp(-2 * ((u[i] - u[j]) ** 2).sum()) for i in range(30) for j in range(i + 1, 30)]
    assert math.isclose(uniformity(v), float(np.log(np.mean(vals))), rel_tol=1e-4)


# ---------------------------------------------------------------------------------------------
# AR generator


def tiny_ar(seed: int = 0) -> ARTransformer:
    torch.manual_seed(seed)
    return ARTransformer(
        ARConfig(num_classes=5, grid=3, semantic_codes=7, visual_codes=11, dim=32, depth=2, heads=4)
    ).eval()


@pytest.mark.parametrize("cfg_scale,top_k", [(1.0, None), (2.5, 3)])
def test_kv_cache_sampling_equals_no_cache(cfg_scale, top_k):
    ar = tiny_ar()
    for p in ar.parameters():  # sharper logits than the 0.02 init, so samples differ by label
        p.data.mul_(20 if p.dim() > 1 else 1)
    labels = torch.tensor([0, 3, 4, 3])
    kw = dict(cfg_scale=cfg_scale, temperature=0.9, top_k=top_k)
    a = ar.generate(labels, use_cache=True, generator=torch.Generator().manual_seed(5), **kw)
    b = ar.generate(labels, use_cache=False, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (4, 9) and int(a[0].max()) < 7 and int(a[1].max()) < 11


def test_generation_follows_teacher_forced_argmax():
    """top_k=1 sampling picks, at every step, the argmax of the teacher-forced logits of the
    sequence it produced (the cached path computes the same distribution as training)."""
    ar = tiny_ar(1)
    for p in ar.parameters():
        p.data.mul_(20 if p.dim() > 1 else 1)
    labels = torch.tensor([1, 2])
    sem, vis = ar.generate(labels, top_k=1)
    ls, lv = ar(sem, vis, labels)
    assert torch.equal(ls.argmax(-1), sem) and torch.equal(lv.argmax(-1), vis)


def test_causality():
    ar = tiny_ar()
    sem = torch.randint(0, 7, (2, 9))
    vis = torch.randint(0, 11, (2, 9))
    ls, _ = ar(sem, vis, torch.tensor([0, 1]))
    sem2, vis2 = sem.clone(), vis.clone()
    sem2[:, 5], vis2[:, 5] = (sem[:, 5] + 1) % 7, (vis[:, 5] + 1) % 11
    ls2, _ = ar(sem2, vis2, torch.tensor([0, 1]))
    assert torch.allclose(ls[:, :6], ls2[:, :6], atol=1e-6)  # positions <= 5 do not see token 5
    assert not torch.allclose(ls[:, 6:], ls2[:, 6:])


def test_ar_bad_input():
    ar = tiny_ar()
    with pytest.raises(RangeError, match=r"\[0, 4\]"):
        ar.generate(torch.tensor([5]))
    with pytest.raises(ShapeError, match=r"\(B, 9\)"):
        ar(
            torch.zeros(1, 8, dtype=torch.long),
            torch.zeros(1, 8, dtype=torch.long),
            torch.tensor([0]),
        )
    with pytest.raises(RangeError, match="semantic tokens"):
        ar(torch.full((1, 9), 7), torch.zeros(1, 9, dtype=torch.long), torch.tensor([0]))
    with pytest.raises(RangeError, match="temperature"):
        ar.generate(torch.tensor([0]), temperature=0.0)
