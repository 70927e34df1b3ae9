"""The training recipe: hook, EMA schedule and exact resume, context sources, bad input, the
VQ-f4 key conversion, the cosine-restarts schedule, core without the extra, and per-image extra
conditioning (``ExtraConditioner``: the tokens reach the denoiser and train, flips are reported,
EMA + checkpoints + generator folders keep them, bad shapes are clear errors, nothing changes
for the base without it)."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

pytest.importorskip("diffusers")

from facelab.core.diffusion import (
    AutoencoderConfig,
    ContextOutput,
    ContextTransform,
    ExtraConditioner,
    ReferenceUNetConfig,
    SynthDataConfig,
    SynthImages,
    SynthTrainConfig,
    apply_extra,
    load_extra_conditioner,
    load_generator,
    token_width,
    train_diffusion,
)
from facelab.core.diffusion.autoencoder import VQ_F4_CONFIG, ldm_vq_to_diffusers
from facelab.core.diffusion.hooks import ExtraOutput
from facelab.core.errors import (
    FacelabError,
    FacelabTypeError,
    FormatError,
    KeyMismatchError,
    ShapeError,
)
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


def _cfg(out, steps=4, **data):
    return SynthTrainConfig(
        data=SynthDataConfig(
            source="toyfaces",
            image_size=32,
            contexts="identity",
            toy_identities=4,
            toy_images_per_identity=4,
            **data,
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


class Shift(ContextTransform):
    """A hook with its own parameter and a loss term."""

    def __init__(self, dim=512):
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(dim))

    def forward(self, context, timesteps):
        new = torch.nn.functional.normalize(context + self.delta, dim=1)
        loss = 0.1 * (1 - (new * context).sum(1)).mean() + (self.delta - 0.05).pow(2).sum()
        return ContextOutput(new, loss, {"shift": self.delta.norm()})


def test_hook_trains_and_resume_is_exact_with_ema(tmp_path):
    hook = Shift()
    straight = train_diffusion(_cfg(tmp_path / "a"), context_transform=hook)
    assert hook.delta.abs().sum() > 0  # its parameters trained with the denoiser
    assert "hook_shift" in straight.train.losses and "hook_loss" in straight.train.losses
    assert (tmp_path / "a" / "generator" / "context_transform.safetensors").is_file()
    # 2 steps, stop, resume to 4: same EMA and raw weights as the straight run
    train_diffusion(_cfg(tmp_path / "b", steps=2), context_transform=Shift())
    resumed = train_diffusion(_cfg(tmp_path / "b", steps=4), context_transform=Shift())
    for (k, v), (_, w) in zip(
        straight.denoiser.state_dict().items(), resumed.denoiser.state_dict().items()
    ):
        assert torch.equal(v, w), k
    sampler = load_generator(tmp_path / "a", num_steps=2)
    for (k, v), (_, w) in zip(
        straight.denoiser.state_dict().items(), sampler.denoiser.state_dict().items()
    ):
        assert torch.equal(v, w), k


def test_ema_follows_the_reference_schedule():
    from diffusers.training_utils import EMAModel

    ema = EMAModel(
        [nn.Parameter(torch.zeros(1))], decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75
    )
    for step in (1, 2, 10, 1000, 10**6):
        s = max(0, step - 1)
        want = 0.0 if s == 0 else min(0.9999, 1 - (1 + s) ** -0.75)  # utils/ema.py of the reference
        assert ema.get_decay(step) == pytest.approx(want)


def test_recognizer_contexts_and_file_contexts(tmp_path):
    from facelab.core.backbones import get_backbone
    from facelab.core.hub import save_pretrained

    torch.manual_seed(0)
    rec = get_backbone("r18", input_size=32, embedding_size=512, base_width=8)
    save_pretrained(rec, tmp_path / "rec")
    cfg = _cfg(tmp_path / "r", steps=1)
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(
            cfg.data, contexts="recognizer", recognizer=str(tmp_path / "rec"), recognizer_size=32
        ),
        ema=dataclasses.replace(cfg.ema, enabled=False),
    )
    assert train_diffusion(cfg).train.step == 1
    # a file of unit vectors, one per image; wrong count and non-unit rows are refused
    from safetensors.torch import save_file

    good = torch.nn.functional.normalize(torch.randn(16, 512), dim=1)
    save_file({"embeddings": good}, str(tmp_path / "emb.safetensors"))
    save_file({"embeddings": good[:5]}, str(tmp_path / "few.safetensors"))
    save_file({"embeddings": good * 3}, str(tmp_path / "big.safetensors"))
    base = dataclasses.replace(cfg.data, contexts="file")
    ok = dataclasses.replace(
        cfg,
        data=dataclasses.replace(base, embeddings=str(tmp_path / "emb.safetensors")),
        train=dataclasses.replace(cfg.train, output_dir=str(tmp_path / "f")),
    )
    assert train_diffusion(ok).train.step == 1
    from facelab.core.errors import RangeError, ShapeError

    with pytest.raises(ShapeError, match="one 512-d ID vector per training image"):
        train_diffusion(
            dataclasses.replace(
                ok, data=dataclasses.replace(base, embeddings=str(tmp_path / "few.safetensors"))
            )
        )
    with pytest.raises(RangeError, match="unit"):
        train_diffusion(
            dataclasses.replace(
                ok, data=dataclasses.replace(base, embeddings=str(tmp_path / "big.safetensors"))
            )
        )


def test_unreadable_training_image_names_the_file(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(root / "a" / f"{i}.png")
    (root / "a" / "3.png").write_bytes(b"not a png")
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(f"imgs/a/{i}.png" for i in range(4)))
    cfg = _cfg(tmp_path / "u", steps=1)
    cfg = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, source=str(lst), contexts="identity")
    )
    cfg.train = dataclasses.replace(cfg.train, shuffle=False)
    with pytest.raises(FormatError, match=r"3\.png"):
        train_diffusion(cfg)


# ------------------------------------------------------------------ VQ-f4 first stage


def _ldm_keys(ch=32, mult=(1, 2), blocks=1, z=3, n_embed=16):
    """LDM VQModel key names / shapes (models/autoencoder/modules.py of the reference)."""
    d = {}

    def conv(k, o, i, s=3):
        d[f"{k}.weight"], d[f"{k}.bias"] = (o, i, s, s), (o,)

    def gn(k, c):
        d[f"{k}.weight"], d[f"{k}.bias"] = (c,), (c,)

    def res(p, i, o):
        gn(f"{p}.norm1", i), conv(f"{p}.conv1", o, i), gn(f"{p}.norm2", o), conv(f"{p}.conv2", o, o)
        if i != o:
            conv(f"{p}.nin_shortcut", o, i, 1)

    def attn(p, c):
        gn(f"{p}.norm", c)
        for n in ("q", "k", "v", "proj_out"):
            conv(f"{p}.{n}", c, c, 1)

    conv("encoder.conv_in", ch, 3)
    cin = ch
    for i, m in enumerate(mult):
        for j in range(blocks):
            res(f"encoder.down.{i}.block.{j}", cin, ch * m)
            cin = ch * m
        if i < len(mult) - 1:
            conv(f"encoder.down.{i}.downsample.conv", cin, cin)
    (
        res("encoder.mid.block_1", cin, cin),
        attn("encoder.mid.attn_1", cin),
        res("encoder.mid.block_2", cin, cin),
    )
    gn("encoder.norm_out", cin), conv("encoder.conv_out", z, cin)
    conv("quant_conv", z, z, 1), conv("post_quant_conv", z, z, 1)
    d["quantize.embedding.weight"] = (n_embed, z)
    cin = ch * mult[-1]
    conv("decoder.conv_in", cin, z)
    (
        res("decoder.mid.block_1", cin, cin),
        attn("decoder.mid.attn_1", cin),
        res("decoder.mid.block_2", cin, cin),
    )
    for i in reversed(range(len(mult))):
        for j in range(blocks + 1):
            res(f"decoder.up.{i}.block.{j}", cin, ch * mult[i])
            cin = ch * mult[i]
        if i > 0:
            conv(f"decoder.up.{i}.upsample.conv", cin, cin)
    gn("decoder.norm_out", cin), conv("decoder.conv_out", 3, cin)
    return d


def test_ldm_vq_state_dicts_load_strictly_into_diffusers_vqmodel(tmp_path):
    from diffusers import VQModel

    from facelab.core.diffusion.autoencoder import VQAutoencoder

    cfg = dict(VQ_F4_CONFIG) | {
        "block_out_channels": [32, 64],
        "down_block_types": ["DownEncoderBlock2D"] * 2,
        "up_block_types": ["UpDecoderBlock2D"] * 2,
        "layers_per_block": 1,
        "num_vq_embeddings": 16,
    }
    g = torch.Generator().manual_seed(0)
    layout = _ldm_keys()
    tensors = {k: torch.randn(*s, generator=g) for k, s in layout.items()}
    enc = {k: v for k, v in tensors.items() if k.startswith(("encoder.", "quant_conv"))}
    dec = {k: v for k, v in tensors.items() if k not in enc}
    torch.save(enc, tmp_path / "enc.pt")
    torch.save(dec, tmp_path / "dec.pt")
    ae = VQAutoencoder.from_ldm_f4(tmp_path / "enc.pt", tmp_path / "dec.pt", config=cfg)
    sd = ae.model.state_dict()
    # the decoder's lowest resolution (LDM up.1) is diffusers' first up block
    assert torch.equal(
        sd["decoder.up_blocks.0.resnets.0.conv1.weight"],
        tensors["decoder.up.1.block.0.conv1.weight"],
    )
    assert torch.equal(
        sd["decoder.up_blocks.0.upsamplers.0.conv.weight"],
        tensors["decoder.up.1.upsample.conv.weight"],
    )
    assert torch.equal(
        sd["encoder.mid_block.attentions.0.to_q.weight"],
        tensors["encoder.mid.attn_1.q.weight"][:, :, 0, 0],
    )
    assert ae.latent_shape(32) == (3, 16, 16)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert ae.decode(ae.encode(x)).shape == x.shape
    assert isinstance(ae.model, VQModel)
    del dec["decoder.conv_out.bias"]
    torch.save(dec, tmp_path / "dec2.pt")
    with pytest.raises(KeyMismatchError, match=r"decoder\.conv_out\.bias"):
        VQAutoencoder.from_ldm_f4(tmp_path / "enc.pt", tmp_path / "dec2.pt", config=cfg)
    # the released f4 layout maps onto the full-size diffusers VQModel key for key
    full = {k: torch.empty(0) for k in _ldm_keys(128, (1, 2, 4), 2, 3, 8192)}
    with torch.device("meta"):
        vq = VQModel(**VQ_F4_CONFIG)
    assert set(ldm_vq_to_diffusers(full)) == set(vq.state_dict())


# ------------------------------------------------------------------ core pieces used here


def test_cosine_restarts_matches_torch():
    from facelab.core.train.schedule import LRSchedule

    sched = LRSchedule("cosine_restarts", 10**6, restart_period=7, restart_mult=2, min_ratio=0.1)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=7, T_mult=2, eta_min=0.1)
    for s in range(800):
        assert sched(s) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-9), s
        opt.step()
        ref.step()


def test_core_imports_without_diffusers(tmp_path):
    """Core and its CLI work when diffusers cannot be imported; the extra says how to install."""
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "diffusers" or name.startswith("diffusers."):
                    raise ImportError("blocked")
        sys.meta_path.insert(0, Block())
        import importlib.util
        importlib.util.find_spec = (lambda f: (lambda n, *a: None if n.startswith("diffusers") else f(n, *a)))(importlib.util.find_spec)
        import facelab.core, facelab.core.train, facelab.core.recipe, facelab.core.diffusion
        assert "diffusers" not in sys.modules
        try:
            facelab.core.diffusion.ConditionalUNet
        except ImportError as e:
            assert "facelab-core[diffusion]" in str(e)
        else:
            raise SystemExit("no ImportError")
        from facelab.core.cli import main
        sys.exit(main(["synth", "train", "--preset", "toy"]))
        """
    )
    p = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert p.returncode == 2, p.stderr[-2000:]
    assert "facelab synth: error:" in p.stderr and "facelab-core[diffusion]" in p.stderr


# --------------------------------------------------------------------------------------------
# per-image extra conditioning


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


def _extra_data(cfg, seed=0):
    ds = SynthImages(cfg.data)
    codes = torch.randn(len(ds), 3, generator=torch.Generator().manual_seed(seed))
    ds.set_extra(codes)
    return ds, codes


def test_dataset_yields_extra_rows_and_true_flip_flags():
    cfg = _cfg("unused")
    ds, codes = _extra_data(cfg)
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
    ds, codes = _extra_data(cfg)
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
    train_diffusion(cfg_b, dataset=_extra_data(cfg_b)[0], extra_conditioner=Codes())
    cfg_b = _cfg(tmp_path / "b", steps=4)
    resumed = train_diffusion(cfg_b, dataset=_extra_data(cfg_b)[0], extra_conditioner=Codes())
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
    assert apply_extra(cond, codes, flips, 4, width).tokens.shape == (4, 2, 32)
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
        train_diffusion(cfg, dataset=_extra_data(cfg)[0], extra_conditioner=Codes(width=16))


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


def test_snr_weights_match_a_brute_force_loop_over_the_schedule():
    from diffusers import DDPMScheduler

    from facelab.core.diffusion.train import snr_weights

    ab = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").alphas_cumprod
    w = snr_weights(ab, 5.0)
    for t in range(0, 1000, 7):
        a = float(ab[t])
        snr = a / (1.0 - a)
        assert float(w[t]) == pytest.approx(min(snr, 5.0) / snr, rel=1e-6)
    # low noise (high SNR) is down-weighted, high noise keeps weight 1
    assert float(w[0]) < 0.01 and float(w[999]) == 1.0
    with pytest.raises(FacelabError, match="snr_gamma"):
        snr_weights(ab, 0.0)


def test_snr_gamma_weights_the_training_loss(tmp_path):
    """A huge gamma weights every sample 1 (the plain mean MSE, up to rounding); gamma 5 trains
    different weights; a negative gamma is refused before training."""
    plain = train_diffusion(_cfg(tmp_path / "a", steps=2))
    huge = train_diffusion(dataclasses.replace(_cfg(tmp_path / "b", steps=2), snr_gamma=1e12))
    five = train_diffusion(dataclasses.replace(_cfg(tmp_path / "c", steps=2), snr_gamma=5.0))
    differs = False
    for (k, v), (_, w), (_, u) in zip(
        plain.denoiser.state_dict().items(),
        huge.denoiser.state_dict().items(),
        five.denoiser.state_dict().items(),
    ):
        assert torch.allclose(v, w, atol=1e-5), k
        differs = differs or not torch.allclose(v, u, atol=1e-5)
    assert differs
    with pytest.raises(FacelabError, match="snr_gamma"):
        train_diffusion(dataclasses.replace(_cfg(tmp_path / "d", steps=2), snr_gamma=-1.0))


# --------------------------------------------------------------------------------------------
# pixel-aligned maps from the conditioner (ExtraOutput)


class CodesAndMaps(ExtraConditioner):
    """Per-image 3-d codes -> 2 tokens of width 32 and 2 constant maps of 16 x 16."""

    def __init__(self, channels=2):
        super().__init__()
        self.proj = nn.Linear(3, 64)
        self.channels = channels

    def forward(self, extra, flipped):
        b = extra.shape[0]
        tokens = self.proj(extra.float()).view(b, 2, 32)
        maps = extra[:, : self.channels, None, None].float().expand(b, self.channels, 16, 16)
        return ExtraOutput(tokens, maps.contiguous())


def test_training_trains_the_input_path_from_the_conditioners_maps(tmp_path):
    unet = dataclasses.replace(TINY_UNET, extra_input_channels=2)
    cfg = dataclasses.replace(_cfg(tmp_path / "a", steps=3), unet=unet)
    res = train_diffusion(cfg, dataset=_extra_data(cfg)[0], extra_conditioner=CodesAndMaps())
    # zero at initialization, moved by the denoising loss's gradients (no weight decay)
    assert res.denoiser.extra_input_proj.weight.abs().max() > 0
    # a generator folder that rebuilds with the input path
    loaded = load_generator(tmp_path / "a")
    assert loaded.denoiser.config.extra_input_channels == 2
    torch.testing.assert_close(
        loaded.denoiser.extra_input_proj.weight.float(),
        res.denoiser.extra_input_proj.weight.float(),
    )
    # maps from a conditioner with a denoiser built without the input path: a clear error
    cfg = _cfg(tmp_path / "b", steps=1)  # TINY_UNET: no extra input channels
    with pytest.raises(ShapeError, match="built without extra_input_channels"):
        train_diffusion(cfg, dataset=_extra_data(cfg)[0], extra_conditioner=CodesAndMaps())
    # and maps with the wrong number of channels
    cfg = dataclasses.replace(_cfg(tmp_path / "c", steps=1), unet=unet)
    with pytest.raises(ShapeError, match=r"expected maps of shape \(4, 2, H, W\), got \(4, 3"):
        train_diffusion(
            cfg, dataset=_extra_data(cfg)[0], extra_conditioner=CodesAndMaps(channels=3)
        )


def test_apply_extra_checks_the_maps():
    cond = CodesAndMaps()
    codes, flips = torch.randn(4, 3), torch.zeros(4, dtype=torch.bool)
    out = apply_extra(cond, codes, flips, 4, 32, 2)
    assert isinstance(out, ExtraOutput) and out.maps.shape == (4, 2, 16, 16)
    assert apply_extra(cond, codes, flips, 4, 32, None).maps is not None  # channels unchecked
    with pytest.raises(ShapeError, match="built without extra_input_channels"):
        apply_extra(cond, codes, flips, 4, 32, 0)
    with pytest.raises(ShapeError, match=r"\(4, 5, H, W\)"):
        apply_extra(cond, codes, flips, 4, 32, 5)
