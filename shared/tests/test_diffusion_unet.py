"""The reference denoiser: key layout, parameter count, loading, math against hand derivations."""

import math

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from facelab.core.diffusion import AttentionController, AttentionRecorder, ConditionalUNet
from facelab.core.diffusion.unet import SinusoidalTimeEmbedding
from facelab.core.errors import (
    FormatError,
    KeyMismatchError,
    RangeError,
    ShapeError,
    UnknownNameError,
)

TINY = {
    "initial_channels": 32,
    "channel_multipliers": (1, 2),
    "is_attention": (False, True),
    "n_blocks_per_resolution": 1,
    "context_input_channels": 16,
    "context_channels": 32,
    "attention_head_channels": 32,
}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------ reference key layout
# Written from the reference source (TFace generation/uiface/models/diffusion/{unet,nn}.py):
# ConditionalUNet -> image_proj, time_emb(lin1, lin2), context_emb, empty_context_embedding,
# down[DownBlock(res, attn?) | Downsample(conv)], middle(res1, attn, res2),
# up[UpBlock(res, attn?) | Upsample(conv)], norm, final. ResidualBlock("CA"): norm1, conv1,
# time_emb.1 (Linear after SiLU), scale_emb, shift_emb, norm2.norm, conv2, shortcut (1x1 if
# widths differ). SpatialEmbeddingCrossAttentionBlock: x_proj_in, x_proj_out, self_attention and
# cross_attention (to_q/to_k/to_v/proj_out Conv1d), c_proj_in Linear(ctx, ctx*32), x_norm,
# c_norm, ff.0 / ff.2.


def _conv(k, o, i, ks):
    return {f"{k}.weight": (o, i, *ks), f"{k}.bias": (o,)}


def _lin(k, o, i):
    return {f"{k}.weight": (o, i), f"{k}.bias": (o,)}


def _gn(k, c):
    return {f"{k}.weight": (c,), f"{k}.bias": (c,)}


def _res(p, i, o, tc):
    d = {}
    d |= _gn(f"{p}.norm1", i) | _conv(f"{p}.conv1", o, i, (3, 3)) | _lin(f"{p}.time_emb.1", o, tc)
    d |= _lin(f"{p}.scale_emb", o, o) | _lin(f"{p}.shift_emb", o, o) | _gn(f"{p}.norm2.norm", o)
    d |= _conv(f"{p}.conv2", o, o, (3, 3))
    if i != o:
        d |= _conv(f"{p}.shortcut", o, i, (1, 1))
    return d


def _attn(p, ch, ctx, hc, heads, tokens):
    heads = heads if heads > 0 else ch // hc
    inner = heads * hc
    d = _conv(f"{p}.x_proj_in", inner, ch, (1, 1)) | _conv(f"{p}.x_proj_out", ch, inner, (1, 1))
    for name, kv in (("self_attention", inner), ("cross_attention", ctx)):
        d |= _conv(f"{p}.{name}.to_q", inner, inner, (1,))
        d |= _conv(f"{p}.{name}.to_k", inner, kv, (1,)) | _conv(f"{p}.{name}.to_v", inner, kv, (1,))
        d |= _conv(f"{p}.{name}.proj_out", inner, inner, (1,))
    d |= _lin(f"{p}.c_proj_in", ctx * tokens, ctx) | _gn(f"{p}.x_norm", inner)
    d |= (
        _gn(f"{p}.c_norm", ctx)
        | _lin(f"{p}.ff.0", inner * 4, inner)
        | _lin(f"{p}.ff.2", inner, inner * 4)
    )
    return d


def reference_layout(
    input_channels=3,
    initial_channels=96,
    channel_multipliers=(1, 2, 2, 2),
    is_attention=(False, True, True, True),
    attention_heads=-1,
    attention_head_channels=32,
    n_blocks_per_resolution=2,
    context_input_channels=512,
    context_channels=256,
    learn_empty_context=True,
):
    """name -> shape of the reference ConditionalUNet ("CA"), derived from its source."""
    c0, tc, hc, ctx = (
        initial_channels,
        initial_channels * 4,
        attention_head_channels,
        context_channels,
    )
    d = _conv("image_proj", c0, input_channels, (3, 3))
    d |= _lin("time_emb.lin1", tc, c0) | _lin("time_emb.lin2", tc, tc)
    d |= _lin("context_emb", ctx, context_input_channels)
    if learn_empty_context:
        d["empty_context_embedding"] = (ctx,)
    idx, ch = 0, c0
    n = len(channel_multipliers)
    for i, m in enumerate(channel_multipliers):
        out = ch * m
        for _ in range(n_blocks_per_resolution):
            d |= _res(f"down.{idx}.res", ch, out, tc)
            if is_attention[i]:
                d |= _attn(f"down.{idx}.attn", out, ctx, hc, attention_heads, hc)
            ch, idx = out, idx + 1
        if i < n - 1:
            d |= _conv(f"down.{idx}.conv", ch, ch, (3, 3))
            idx += 1
    d |= _res("middle.res1", ch, ch, tc) | _attn("middle.attn", ch, ctx, hc, attention_heads, hc)
    d |= _res("middle.res2", ch, ch, tc)
    idx = 0
    for i in reversed(range(n)):
        for _ in range(n_blocks_per_resolution):
            d |= _res(f"up.{idx}.res", 2 * ch, ch, tc)
            if is_attention[i]:
                d |= _attn(f"up.{idx}.attn", ch, ctx, hc, attention_heads, hc)
            idx += 1
        out = ch // channel_multipliers[i]
        d |= _res(f"up.{idx}.res", ch + out, out, tc)
        if is_attention[i]:
            d |= _attn(f"up.{idx}.attn", out, ctx, hc, attention_heads, hc)
        idx += 1
        ch = out
        if i > 0:
            d |= {f"up.{idx}.conv.weight": (ch, ch, 4, 4), f"up.{idx}.conv.bias": (ch,)}
            idx += 1
    d |= _gn("norm", c0) | _conv("final", input_channels, c0, (3, 3))
    return d


def test_paper_config_param_count_and_layout_on_meta():
    # the IDiff-Face YAML (learn_empty_context False) states 216,341,187 parameters; UIFace's
    # YAML copies that comment but adds the 256-d learnable empty context
    with torch.device("meta"):
        idiff = ConditionalUNet(learn_empty_context=False)
        uiface = ConditionalUNet()
    assert sum(p.numel() for p in idiff.parameters()) == 216_341_187
    assert sum(p.numel() for p in uiface.parameters()) == 216_341_187 + 256
    want = reference_layout()
    got = {k: tuple(v.shape) for k, v in uiface.state_dict().items()}
    assert got == want


def _reference_file(tmp_path, cfg, prefix="module.eps_model.", betas=None, drop=(), extra=None):
    g = torch.Generator().manual_seed(3)
    layout = reference_layout(**cfg)
    state = {prefix + k: torch.randn(*s, generator=g) for k, s in layout.items() if k not in drop}
    b = torch.linspace(1e-4, 0.02, 1000) if betas is None else betas
    a = 1 - b
    ab = torch.cumprod(a, 0)
    # the DDPM wrapper's buffers sit next to eps_model in the released file
    state |= {
        "module.betas": b,
        "module.alphas": a,
        "module.alpha_bars": ab,
        "module.sigmas": b.sqrt(),
    }
    state |= extra or {}
    path = tmp_path / "reference.ckpt"
    torch.save(state, path)
    return path, {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def test_reference_checkpoint_loads_strictly_with_prefixes_and_schedule(tmp_path):
    path, tensors = _reference_file(tmp_path, TINY)
    model = ConditionalUNet.from_reference_checkpoint(path, config=TINY)
    sd = model.state_dict()
    assert set(sd) == set(tensors)
    for k, v in tensors.items():
        assert torch.equal(sd[k], v), k


def test_reference_checkpoint_mismatches_are_named(tmp_path):
    path, _ = _reference_file(tmp_path, TINY, drop=("middle.attn.c_norm.weight",))
    with pytest.raises(KeyMismatchError, match=r"middle\.attn\.c_norm\.weight"):
        ConditionalUNet.from_reference_checkpoint(path, config=TINY)
    path, _ = _reference_file(
        tmp_path, TINY, extra={"module.eps_model.bogus.weight": torch.zeros(2)}
    )
    with pytest.raises(KeyMismatchError, match="bogus"):
        ConditionalUNet.from_reference_checkpoint(path, config=TINY)
    path, _ = _reference_file(tmp_path, TINY, betas=torch.linspace(1e-4, 0.03, 1000))
    with pytest.raises(FormatError, match="linear beta schedule"):
        ConditionalUNet.from_reference_checkpoint(path, config=TINY)
    with pytest.raises(KeyMismatchError, match="shape"):  # another architecture's file
        ConditionalUNet.from_reference_checkpoint(
            _reference_file(tmp_path, TINY)[0], config=TINY | {"context_channels": 64}
        )


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_reference_checkpoint_refuses_unsafe_pickles(tmp_path):
    p = tmp_path / "evil.ckpt"
    torch.save({"x": _Evil()}, p)
    with pytest.raises(FormatError, match="safe loading"):
        ConditionalUNet.from_reference_checkpoint(p, config=TINY)


def test_time_embedding_matches_formula():
    emb = SinusoidalTimeEmbedding(128)
    t = torch.tensor([0, 7, 999])
    half = 16
    f = np.exp(-math.log(10000) * np.arange(half) / half)
    args = t.numpy()[:, None] * f[None]
    feats = torch.tensor(np.concatenate([np.cos(args), np.sin(args)], 1), dtype=torch.float32)
    want = emb.lin2(torch.nn.functional.silu(emb.lin1(feats)))
    assert torch.allclose(emb(t), want, atol=2e-5)  # float32 sin/cos of t*f up to 999


def _hand_block(block, x, c):
    """The reference SpatialEmbeddingCrossAttentionBlock re-derived with numpy-style einsums:
    conv1d weights as matrices, scale (1/sqrt(sqrt(hc))) on q and k, softmax over keys."""
    b, ch, h, w = x.shape
    heads, hc = block.heads, block.self_attention.head_channels

    def w2(conv):
        return conv.weight.reshape(conv.weight.shape[0], -1), conv.bias

    def conv1(conv, t):  # (B, C, L)
        wt, bias = w2(conv)
        return torch.einsum("oc,bcl->bol", wt, t) + bias[None, :, None]

    def gn(norm, t):
        return torch.nn.functional.group_norm(t, 32, norm.weight, norm.bias, norm.eps)

    def mha(att, xq, kv):
        q, k, v = conv1(att.to_q, xq), conv1(att.to_k, kv), conv1(att.to_v, kv)
        s = 1 / math.sqrt(math.sqrt(hc))
        q = q.reshape(b * heads, hc, -1)
        k = k.reshape(b * heads, hc, -1)
        v = v.reshape(b * heads, hc, -1)
        wgt = torch.softmax(torch.einsum("bct,bcs->bts", q * s, k * s), -1)
        a = torch.einsum("bts,bcs->bct", wgt, v).reshape(b, heads * hc, -1)
        return conv1(att.proj_out, a)

    xin = conv1(block.x_proj_in, x.reshape(b, ch, h * w))
    cc = c @ block.c_proj_in.weight.T + block.c_proj_in.bias
    cc = gn(block.c_norm, cc.reshape(b, block.context_channels, -1))
    xx = (
        mha(block.self_attention, gn(block.x_norm, xin), None if False else gn(block.x_norm, xin))
        + xin
    )
    xx = mha(block.cross_attention, gn(block.x_norm, xx), cc) + xx
    ffin = gn(block.x_norm, xx).transpose(1, 2)
    ff = block.ff[2](torch.nn.functional.gelu(block.ff[0](ffin))).transpose(1, 2)
    xx = ff + xx
    out = conv1(block.x_proj_out, xx).reshape(b, ch, h, w)
    return out + x


@pytest.mark.parametrize("use_controller", [False, True])
def test_attention_block_matches_hand_derivation(use_controller):
    torch.manual_seed(0)
    model = ConditionalUNet(**TINY)
    block = model.middle.attn
    for p in block.parameters():  # the zero-initialised output conv would hide everything
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 64, 4, 4)
    c = torch.randn(2, 32)
    if use_controller:
        model.set_attention_controller(AttentionController())
    got = block(x, c)
    assert torch.allclose(got, _hand_block(block, x, c), atol=1e-4)


def test_controller_path_equals_fused_path_and_sees_every_site():
    torch.manual_seed(1)
    model = ConditionalUNet(**TINY).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(3, 3, 8, 8), torch.tensor([1, 500, 999])
    c = torch.nn.functional.normalize(torch.randn(3, 16), dim=1)
    with torch.no_grad():
        fused = model(x, t, c)
        rec = AttentionRecorder()
        model.set_attention_controller(rec)
        explicit = model(x, t, c)
        model.set_attention_controller(None)
    assert torch.allclose(fused, explicit, atol=1e-5)
    assert sorted(rec.records) == sorted(s.name for s in model.attention_sites())
    assert rec.records["middle.attn.cross"].shape == (
        3,
        2,
        16,
        32,
    )  # 64 ch / 32 = 2 heads, 4x4, 32 tokens
    assert rec.records["middle.attn.self"].shape == (3, 2, 16, 16)


def test_condition_flag_and_empty_context_semantics():
    torch.manual_seed(2)
    model = ConditionalUNet(**TINY).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 10])
    c = torch.nn.functional.normalize(torch.randn(2, 16), dim=1)
    with torch.no_grad():
        none = model(x, t, None)
        flagged = model(x, t, c, torch.tensor([False, True]))
        full = model(x, t, c)
    assert torch.allclose(flagged[0], none[0], atol=1e-6)
    assert torch.allclose(flagged[1], full[1], atol=1e-6)
    assert (full[0] - none[0]).abs().max() > 1e-4  # the context changes it (float noise ~1e-7)


def test_training_mode_unconditional_rules():
    model = ConditionalUNet(
        **TINY | {"context_dropout_probability": 0.0, "unconditioned_probability": 0.5}
    )
    model.train()
    c = torch.nn.functional.normalize(torch.randn(64, 16), dim=1)
    torch.manual_seed(0)
    emb = model.embed_context(c, 64)
    empty = (emb == model.empty_context_embedding).all(1)
    assert empty[0]  # the reference: sample 0 of a batch is always unconditional
    assert 16 < int(empty.sum()) < 48
    off = ConditionalUNet(
        **TINY | {"unconditioned_probability": 0.0, "first_sample_unconditional": False}
    )
    off.train()
    assert not (off.embed_context(c, 64) == off.empty_context_embedding).all(1).any()


def test_bad_inputs():
    model = ConditionalUNet(**TINY)
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ShapeError, match="context"):
        model(x, torch.tensor([1, 2]), torch.randn(2, 17))
    with pytest.raises(ShapeError, match="integer timesteps"):
        model(x, torch.tensor([1.0, 2.0]), None)
    with pytest.raises(ShapeError, match="condition_flag"):
        model(x, torch.tensor([1, 2]), torch.randn(2, 16), torch.tensor([1, 0]))
    with pytest.raises(RangeError, match="multiple of 32"):
        ConditionalUNet(**TINY | {"initial_channels": 48})
    with pytest.raises(UnknownNameError, match="CA"):
        ConditionalUNet(**TINY | {"condition_type": "AdaGN"})
