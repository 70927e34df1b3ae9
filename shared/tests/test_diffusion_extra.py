"""Per-image extra conditioning in the base's training (``ExtraConditioner``): the tokens reach
the denoiser and train, flips are reported, EMA + checkpoints + generator folders keep them,
bad shapes are clear errors, and nothing changes for the base without it."""

import dataclasses
import json

import pytest
import torch
from torch import nn

pytest.importorskip("diffusers")

from facelab.core.diffusion import (
    AutoencoderConfig,
    ExtraConditioner,
    ReferenceUNetConfig,
    SynthDataConfig,
    SynthImages,
    SynthTrainConfig,
    apply_extra,
    load_extra_conditioner,
    token_width,
    train_diffusion,
)
from facelab.core.errors import FacelabError, FacelabTypeError, KeyMismatchError, ShapeError
from facelab.core.train import TrainConfig

TINY_UNET = ReferenceUNetConfig(
    initial_channels=32,
    channel_multipliers=(1, 2),
    is_attention=(False, True),
    n_blocks_per_resolution=1,
    context_channels=32,
    n_context_tokens=4,
)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(out, steps=4, flip=True):
    return SynthTrainConfig(
        data=SynthDataConfig(
            source="toyfaces",
            image_size=32,
            flip=flip,
            contexts="identity",
            toy_identities=4,
            toy_images_per_identity=4,
        ),
        unet=TINY_UNET,
        autoencoder=AutoencoderConfig(kind="pixel"),
        train=TrainConfig(
            output_dir=str(out),
            max_steps=steps,
            batch_size=4,
            optimizer="adamw",
            lr=1e-3,
            weight_decay=0.0,
            scheduler="constant",
            seed=0,
            checkpoint_every=2,
            log_every=1,
            progress=False,
        ),
    )


class Codes(ExtraConditioner):
    """Per-image 3-d codes -> 2 tokens of width 32; the code's first entry is negated for a
    mirrored image (a handed input)."""

    def __init__(self, width=32):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            self.proj = nn.Linear(3, 2 * width)
        self.width = width
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, extra, flipped):
        self.seen.append((extra.detach().clone(), flipped.clone()))
        code = extra.float().clone()
        code[:, 0] = torch.where(flipped, -code[:, 0], code[:, 0])
        return self.proj(code).view(-1, 2, self.width)


def _data(cfg, seed=0):
    ds = SynthImages(cfg.data)
    codes = torch.randn(len(ds), 3, generator=torch.Generator().manual_seed(seed))
    ds.set_extra(codes)
    return ds, codes


def test_dataset_yields_extra_rows_and_true_flip_flags():
    cfg = _cfg("unused")
    ds, codes = _data(cfg)
    plain = SynthImages(dataclasses.replace(cfg.data, flip=False))
    flips = []
    torch.manual_seed(0)
    for i in range(len(ds)):
        img, _payload, extra, flipped = ds[i]
        ref = plain[i][0]
        assert torch.equal(extra, codes[i])
        assert flipped.dtype == torch.bool and flipped.dim() == 0
        assert torch.equal(img, ref.flip(-1) if flipped else ref)
        assert not torch.equal(ref, ref.flip(-1))  # the check can tell a flip
        flips.append(bool(flipped))
    assert 0 < sum(flips) < len(flips)
    assert len(plain[0]) == 2  # without extra: the base's (image, payload)
    with pytest.raises(ShapeError, match="one row per training image"):
        ds.set_extra(codes[:-1])
    with pytest.raises(ShapeError, match="'style'"):
        ds.set_extra({"code": codes, "style": codes[:2]})
    ds.set_extra({"code": codes, "style": codes * 2})  # a dict of per-image tensors
    assert torch.equal(ds[3][2]["style"], codes[3] * 2)


def test_extra_tokens_train_change_the_output_and_survive_resume(tmp_path):
    cfg = _cfg(tmp_path / "a")
    ds, codes = _data(cfg)
    cond = Codes()
    init = {k: v.clone() for k, v in cond.state_dict().items()}
    res = train_diffusion(cfg, dataset=ds, extra_conditioner=cond)
    # it was called on the batches with their codes and flip flags, and it trained (weight
    # decay 0: the weights move only through gradients of the denoising loss)
    assert len(cond.seen) == 4 and all(e.shape == (4, 3) for e, _ in cond.seen)
    seen_codes = torch.cat([e for e, _ in cond.seen])
    assert all((codes == row).all(1).any() for row in seen_codes)
    assert not torch.equal(cond.proj.weight, init["proj.weight"])
    # EMA copy in the result (differs from the raw weights after 4 steps)
    ema = res.extra_conditioner
    assert ema is not None and not torch.equal(ema.proj.weight, cond.proj.weight)
    # the tokens change the denoiser's output
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([500, 500])
    ctx = torch.nn.functional.normalize(torch.randn(2, 512), dim=1)
    with torch.no_grad():
        tok_a = ema(codes[:2], torch.tensor([False, False]))
        tok_b = ema(codes[2:4], torch.tensor([False, False]))
        e0 = res.denoiser(x, t, ctx)
        ea = res.denoiser(x, t, ctx, None, tok_a)
        eb = res.denoiser(x, t, ctx, None, tok_b)
    # (EMA weights after 4 steps: small but not zero, which is what a denoiser ignoring the
    # tokens gives; seed 0, one thread: max |ea - e0| 2.6e-5, max |ea - eb| 1.8e-5)
    assert (ea - e0).abs().max() > 1e-6 and (ea - eb).abs().max() > 1e-6
    # saved with the generator: the file loads strictly into a fresh module = the EMA weights
    gen = tmp_path / "a" / "generator"
    assert (gen / "extra_conditioner.safetensors").is_file()
    assert json.loads((gen / "generator.json").read_text())["extra_conditioner"] == "Codes"
    loaded = load_extra_conditioner(tmp_path / "a", Codes())
    for k, v in ema.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    # checkpoint round trip: 2 steps, stop, resume to 4 = the straight run (EMA included)
    cfg_b = _cfg(tmp_path / "b", steps=2)
    train_diffusion(cfg_b, dataset=_data(cfg_b)[0], extra_conditioner=Codes())
    cfg_b = _cfg(tmp_path / "b", steps=4)
    resumed = train_diffusion(cfg_b, dataset=_data(cfg_b)[0], extra_conditioner=Codes())
    for k, v in ema.state_dict().items():
        assert torch.equal(resumed.extra_conditioner.state_dict()[k], v), k
    for (k, v), (_, w) in zip(
        res.denoiser.state_dict().items(), resumed.denoiser.state_dict().items()
    ):
        assert torch.equal(v, w), k
    with pytest.raises(KeyMismatchError, match=r"proj\.weight"):
        load_extra_conditioner(tmp_path / "a", Codes(width=16))


def test_bad_tokens_and_mismatched_samples_are_clear_errors(tmp_path):
    from facelab.core.diffusion import ConditionalUNet

    unet = ConditionalUNet(**dataclasses.asdict(TINY_UNET))
    width = token_width(unet)
    assert width == 32
    cond = Codes()
    codes, flips = torch.randn(4, 3), torch.zeros(4, dtype=torch.bool)
    assert apply_extra(cond, codes, flips, 4, width).shape == (4, 2, 32)
    with pytest.raises(ShapeError, match=r"expected tokens of shape \(4, N, 16\)"):
        apply_extra(cond, codes, flips, 4, 16)
    with pytest.raises(ShapeError, match=r"\(5, N, 32\)"):
        apply_extra(cond, codes, flips, 5, width)

    class Flat(ExtraConditioner):
        def forward(self, extra, flipped):
            return torch.zeros(extra.shape[0], 32)

    class NotTokens(ExtraConditioner):
        def forward(self, extra, flipped):
            return [extra]

    with pytest.raises(ShapeError, match=r"got \(4, 32\)"):
        apply_extra(Flat(), codes, flips, 4, width)
    with pytest.raises(FacelabTypeError, match="list"):
        apply_extra(NotTokens(), codes, flips, 4, width)
    # a conditioner with a dataset that has no extra inputs
    cfg = _cfg(tmp_path, steps=1)
    with pytest.raises(FacelabError, match="expected 4 items per sample"):
        train_diffusion(cfg, extra_conditioner=Codes())
    # wrong token width inside training
    cfg = _cfg(tmp_path / "w", steps=1)
    with pytest.raises(ShapeError, match="token width"):
        train_diffusion(cfg, dataset=_data(cfg)[0], extra_conditioner=Codes(width=16))


def test_without_the_hook_the_base_is_unchanged(tmp_path):
    """The default data path and an explicit extra-less SynthImages train identically, and the
    generator folder has no extra-conditioner file or key."""
    a = train_diffusion(_cfg(tmp_path / "a", steps=2))
    cfg = _cfg(tmp_path / "b", steps=2)
    b = train_diffusion(cfg, dataset=SynthImages(cfg.data))
    assert a.extra_conditioner is None
    for (k, v), (_, w) in zip(a.denoiser.state_dict().items(), b.denoiser.state_dict().items()):
        assert torch.equal(v, w), k
    gen = tmp_path / "a" / "generator"
    assert not (gen / "extra_conditioner.safetensors").exists()
    assert "extra_conditioner" not in json.loads((gen / "generator.json").read_text())
