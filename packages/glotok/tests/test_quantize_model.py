"""Quantizer against brute force, the straight-through/loss contract, the tokenizer's shapes,
decode path, residual module, save/load and bad inputs."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facelab.core.errors import FacelabTypeError, NonFiniteError, RangeError, ShapeError
from facelab.glotok.histogram import histogram_relation_loss
from facelab.glotok.model import GloTok, GloTokConfig, ResidualRefiner
from facelab.glotok.quantize import VectorQuantizer


@pytest.mark.parametrize("l2", [True, False])
def test_nearest_code_equals_bruteforce(l2):
    torch.manual_seed(0)
    vq = VectorQuantizer(37, 5, l2_normalize=l2)
    vq.codebook.data.normal_()
    z = torch.randn(3, 5, 4, 6)
    q = vq(z)
    x = z.permute(0, 2, 3, 1).reshape(-1, 5).numpy().astype(np.float64)
    cb = vq.codebook.detach().numpy().astype(np.float64)
    if l2:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        cb = cb / np.linalg.norm(cb, axis=1, keepdims=True)
    want = ((x[:, None, :] - cb[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(q.indices.flatten().numpy(), want)
    assert torch.allclose(q.z_q, q.codes, atol=1e-6)  # straight-through values are the codes
    assert torch.equal(vq.lookup(q.indices), q.codes.detach())


def test_losses_and_gradient_routes():
    torch.manual_seed(1)
    vq = VectorQuantizer(8, 3, beta=0.25, l2_normalize=False)
    z = torch.randn(2, 3, 2, 2, requires_grad=True)
    q = vq(z)
    codes = vq.codebook[q.indices].permute(0, 3, 1, 2).detach()
    assert torch.allclose(q.codebook_loss, F.mse_loss(codes, z.detach()))
    assert torch.allclose(q.loss, 1.25 * F.mse_loss(codes, z.detach()))
    q.loss.backward()
    # codebook term: 2 (code - z) / numel; commitment term on z: beta * 2 (z - code) / numel
    n = z.numel()
    assert torch.allclose(z.grad, 0.25 * 2 * (z.detach() - codes) / n, atol=1e-7)
    grad_cb = torch.zeros_like(vq.codebook)
    diff = (codes - z.detach()).permute(0, 2, 3, 1).reshape(-1, 3) * 2 / n
    grad_cb.index_add_(0, q.indices.flatten(), diff)
    assert torch.allclose(vq.codebook.grad, grad_cb, atol=1e-7)
    # straight-through: d z_q / d z is the identity
    z2 = torch.randn(2, 3, 2, 2, requires_grad=True)
    (vq(z2).z_q * torch.arange(24.0).view(2, 3, 2, 2)).sum().backward()
    assert torch.equal(z2.grad, torch.arange(24.0).view(2, 3, 2, 2))


def test_lookup_rejects_bad_indices():
    vq = VectorQuantizer(8, 3)
    with pytest.raises(RangeError, match=r"\[0, 7\]"):
        vq.lookup(torch.full((1, 2, 2), 8))
    with pytest.raises(ShapeError):
        vq.lookup(torch.zeros(2, 2))


def test_tokenizer_shapes_decode_and_residual(make_tokenizer, images):
    model = make_tokenizer().eval()
    out = model(images)
    assert out.recon.shape == images.shape
    assert out.semantic.indices.shape == (4, 8, 8) and out.visual.indices.shape == (4, 8, 8)
    sem, vis = model.encode(images)
    assert torch.allclose(model.decode(sem, vis), out.recon, atol=1e-5)
    # the refiners start at zero (zero-initialized output), so L_res is the quantization error
    assert torch.equal(out.residual_semantic, torch.zeros_like(out.residual_semantic))
    q_err = F.mse_loss(out.semantic.codes, out.semantic.z) + F.mse_loss(
        out.visual.codes, out.visual.z
    )
    assert torch.allclose(out.loss_res, q_err, atol=1e-6)
    plain = make_tokenizer(residual=False)
    assert plain.semantic_residual is None and float(plain(images).loss_res) == 0.0


def test_residual_refiner_learns_the_quantization_residual():
    # calibrated: final/first MSE over seeds 0-5 x 1 and 2 threads = 0.0010 - 0.0028; the 0.2
    # threshold leaves a 70x margin
    torch.manual_seed(0)
    r = ResidualRefiner(4, 16, 2, 2.0)
    zq = torch.randn(8, 4, 3, 3)
    target = 0.3 * zq.flip(1)  # a residual that depends on the codes
    opt = torch.optim.Adam(r.parameters(), lr=1e-2)
    first = float(F.mse_loss(r(zq), target).detach())
    for _ in range(60):
        opt.zero_grad()
        F.mse_loss(r(zq), target).backward()
        opt.step()
    assert float(F.mse_loss(r(zq), target).detach()) < 0.2 * first


def test_semantic_codebook_receives_histogram_gradient(make_tokenizer):
    model = make_tokenizer()
    loss = histogram_relation_loss(model.semantic_codebook, torch.full((40,), 1 / 40))
    loss.backward()
    assert model.semantic_codebook.grad is not None and model.semantic_codebook.grad.abs().sum() > 0
    assert model.visual_quantizer.codebook.grad is None


def test_save_and_load(tmp_path, make_tokenizer, images):
    model = make_tokenizer().eval()
    model.save_pretrained(tmp_path / "tok")
    back = GloTok.from_pretrained(tmp_path / "tok")
    assert back.cfg == model.cfg
    assert torch.equal(back(images).recon, model(images).recon)


def test_paper_defaults():
    cfg = GloTokConfig()
    assert (cfg.image_size, cfg.downsample, cfg.grid, cfg.code_dim) == (256, 16, 16, 8)
    assert (cfg.semantic_codes, cfg.visual_codes, cfg.beta) == (4096, 12288, 0.25)


def test_bad_images(make_tokenizer, images):
    model = make_tokenizer()
    with pytest.raises(ShapeError, match=r"\(B, 3, 16, 16\)"):
        model(torch.zeros(2, 3, 32, 32))
    with pytest.raises(RangeError, match=r"\[-1.0, 1.0\]"):
        model(images * 3)
    bad = images.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        model(bad)
    with pytest.raises(FacelabTypeError):
        model((images * 127).to(torch.uint8))
    with pytest.raises(RangeError, match="multiple of the downsampling"):
        GloTokConfig(image_size=18, channel_mult=(1, 2, 2))
