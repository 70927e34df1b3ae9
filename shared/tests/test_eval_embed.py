import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from facelab.core.errors import (
    FacelabTypeError,
    NonFiniteError,
    RangeError,
    ShapeError,
    ZeroVectorError,
)
from facelab.core.eval import embed


def tiny_model(seed=0, d=8):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2),
        nn.BatchNorm2d(4),
        nn.PReLU(4),
        nn.Dropout(0.5),  # must be off in eval mode
        nn.Flatten(),
        nn.Linear(4 * 7 * 7, d),
    )


def images(n=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 16, generator=g) * 2 - 1


def test_flip_sum_equals_manual():
    model = tiny_model()
    model.train()
    x = images()
    got = embed(model, x, batch_size=3)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        f = model(x) + model(torch.flip(x, dims=[3]))
        ref = f / f.norm(dim=1, keepdim=True)
        plain = model(x)
    assert got.dtype == torch.float32 and got.device.type == "cpu" and got.shape == (10, 8)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    # the flip matters for this (asymmetric) model, and flip=False is f(x) normalized
    assert (got - plain / plain.norm(dim=1, keepdim=True)).abs().max() > 1e-3
    torch.testing.assert_close(
        embed(model, x, flip=False), plain / plain.norm(dim=1, keepdim=True), atol=1e-6, rtol=0
    )
    raw = embed(model, x, normalize=False)
    torch.testing.assert_close(raw, f, atol=1e-5, rtol=1e-5)


def test_dataset_and_dataloader_inputs():
    model = tiny_model().eval()
    x = images(7)
    ref = embed(model, x)
    labels = torch.arange(7)
    torch.testing.assert_close(embed(model, TensorDataset(x, labels), batch_size=2), ref)
    loader = DataLoader(TensorDataset(x), batch_size=4, shuffle=False)
    torch.testing.assert_close(embed(model, loader), ref)
    with pytest.raises(FacelabTypeError, match="shuffle=False"):
        embed(model, DataLoader(TensorDataset(x), batch_size=4, shuffle=True))


def test_embed_bad_inputs():
    model = tiny_model().eval()
    with pytest.raises(RangeError, match="images"):
        embed(model, images() * 2)
    bad = images()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="images"):
        embed(model, bad)
    with pytest.raises(ShapeError, match="images"):
        embed(model, images()[:, :1])
    with pytest.raises(FacelabTypeError, match="images"):
        embed(model, (images() * 127 + 128).to(torch.uint8))
    with pytest.raises(ShapeError, match="at least one image"):
        embed(model, images()[:0])
    with pytest.raises(FacelabTypeError, match="images"):
        embed(model, [1, 2, 3])
    with pytest.raises(FacelabTypeError, match="model"):
        embed(lambda x: x, images())

    class Bad(nn.Module):
        def forward(self, x):
            return x  # not (B, D)

    with pytest.raises(ShapeError, match="model output"):
        embed(Bad(), images())

    class Zero(nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 4)

    with pytest.raises(ZeroVectorError, match="norm 0"):
        embed(Zero(), images())
