import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facelab.core.backbones import (
    IRSE,
    IResNet,
    MobileFaceNet,
    get_backbone,
    infer_iresnet_depth,
    list_backbones,
    load_insightface,
)
from facelab.core.errors import (
    FacelabTypeError,
    FormatError,
    RangeError,
    ShapeError,
    UnknownNameError,
)


def close(actual, expected, rtol=1e-7, atol=0.0):
    """assert_allclose on tensors (torch.testing.assert_close costs seconds of imports)."""
    np.testing.assert_allclose(
        actual.detach().cpu().numpy(), expected.detach().cpu().numpy(), rtol=rtol, atol=atol
    )


# ---------------------------------------------------------------------------------------------
# independent references, written from the spec (specs/core.md), not from the code under test

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}


def expected_iresnet(depth, in_channels=3, emb=512, fc_in=512 * 7 * 7):
    """Ordered {key: shape} of insightface's arcface_torch IResNet."""
    out = {}

    def bn(prefix, c):
        for b in BN:
            out[f"{prefix}.{b}"] = () if b == "num_batches_tracked" else (c,)

    out["conv1.weight"] = (64, in_channels, 3, 3)
    bn("bn1", 64)
    out["prelu.weight"] = (64,)
    cin = 64
    for s, n in enumerate(BLOCKS[depth], start=1):
        c = 64 * 2 ** (s - 1)
        for i in range(n):
            p = f"layer{s}.{i}"
            first_in = cin if i == 0 else c
            bn(f"{p}.bn1", first_in)
            out[f"{p}.conv1.weight"] = (c, first_in, 3, 3)
            bn(f"{p}.bn2", c)
            out[f"{p}.prelu.weight"] = (c,)
            out[f"{p}.conv2.weight"] = (c, c, 3, 3)
            bn(f"{p}.bn3", c)
            if i == 0:
                out[f"{p}.downsample.0.weight"] = (c, cin, 1, 1)
                bn(f"{p}.downsample.1", c)
        cin = c
    bn("bn2", 512)
    out["fc.weight"] = (emb, fc_in)
    out["fc.bias"] = (emb,)
    bn("features", emb)
    return out


def key_shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def randomize(model, seed=0):
    """Non-trivial BN statistics/affines and PReLU slopes, well-scaled conv/linear weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, torch.nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g))
            elif isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / math.sqrt(fan_in))
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model


def f_bn(x, sd, p, affine=True):
    return F.batch_norm(
        x,
        sd[f"{p}.running_mean"],
        sd[f"{p}.running_var"],
        sd[f"{p}.weight"] if affine else None,
        sd[f"{p}.bias"] if affine else None,
        training=False,
        eps=1e-5,
    )


def functional_iresnet(sd, x, blocks):
    """arcface_torch IResNet forward (eval) from the spec, with torch.nn.functional only."""
    x = F.conv2d(x, sd["conv1.weight"], padding=1)
    x = F.prelu(f_bn(x, sd, "bn1"), sd["prelu.weight"])
    for s, n in enumerate(blocks, start=1):
        for i in range(n):
            p = f"layer{s}.{i}"
            stride = 2 if i == 0 else 1
            y = F.conv2d(f_bn(x, sd, f"{p}.bn1"), sd[f"{p}.conv1.weight"], padding=1)
            y = F.prelu(f_bn(y, sd, f"{p}.bn2"), sd[f"{p}.prelu.weight"])
            y = f_bn(F.conv2d(y, sd[f"{p}.conv2.weight"], stride=stride, padding=1), sd, f"{p}.bn3")
            if i == 0:
                x = f_bn(
                    F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=2), sd, f"{p}.downsample.1"
                )
            x = y + x
    x = f_bn(x, sd, "bn2").flatten(1)
    x = F.linear(x, sd["fc.weight"], sd["fc.bias"])
    return f_bn(x, sd, "features")


def functional_irse(sd, x, blocks, stem_stride=1):
    """TFace IR-SE forward (eval): BN-conv-BN-PReLU-conv-BN-SE + (subsample | conv-BN)."""
    x = F.conv2d(x, sd["input_layer.0.weight"], stride=stem_stride, padding=1)
    x = F.prelu(f_bn(x, sd, "input_layer.1"), sd["input_layer.2.weight"])
    u = 0
    for n in blocks:
        for i in range(n):
            p = f"body.{u}"
            stride = 2 if i == 0 else 1
            r = F.conv2d(f_bn(x, sd, f"{p}.res_layer.0"), sd[f"{p}.res_layer.1.weight"], padding=1)
            r = F.prelu(f_bn(r, sd, f"{p}.res_layer.2"), sd[f"{p}.res_layer.3.weight"])
            r = F.conv2d(r, sd[f"{p}.res_layer.4.weight"], stride=stride, padding=1)
            r = f_bn(r, sd, f"{p}.res_layer.5")
            z = r.mean(dim=(2, 3), keepdim=True)
            z = F.relu(F.conv2d(z, sd[f"{p}.res_layer.se_block.fc1.weight"]))
            r = r * torch.sigmoid(F.conv2d(z, sd[f"{p}.res_layer.se_block.fc2.weight"]))
            if f"{p}.shortcut_layer.0.weight" in sd:
                sc = F.conv2d(x, sd[f"{p}.shortcut_layer.0.weight"], stride=stride)
                sc = f_bn(sc, sd, f"{p}.shortcut_layer.1")
            else:
                sc = x[:, :, ::stride, ::stride]
            x = r + sc
            u += 1
    x = f_bn(x, sd, "output_layer.0").flatten(1)
    x = F.linear(x, sd["output_layer.3.weight"], sd["output_layer.3.bias"])
    return f_bn(x, sd, "output_layer.4", affine=False)


def functional_mobilefacenet(sd, x, stem_stride=2):
    """TFace MobileFaceNet forward (eval), returning (embedding, [4 tap maps])."""

    def cbp(x, p, stride=1, pad=0, dw=False):  # conv -> BN -> PReLU
        w = sd[f"{p}.conv.weight"]
        x = F.conv2d(x, w, stride=stride, padding=pad, groups=w.shape[0] if dw else 1)
        return F.prelu(f_bn(x, sd, f"{p}.bn"), sd[f"{p}.prelu.weight"])

    def bottleneck(x, p, stride, residual):
        y = cbp(x, f"{p}.conv")
        y = cbp(y, f"{p}.conv_dw", stride=stride, pad=1, dw=True)
        y = f_bn(F.conv2d(y, sd[f"{p}.project.conv.weight"]), sd, f"{p}.project.bn")
        return x + y if residual else y

    taps = []
    x = cbp(x, "conv1", stride=stem_stride, pad=1)
    x = cbp(x, "conv2_dw", pad=1, dw=True)
    x = bottleneck(x, "conv_23", 2, False)
    taps.append(x)
    for i in range(4):
        x = bottleneck(x, f"conv_3.model.{i}", 1, True)
    x = bottleneck(x, "conv_34", 2, False)
    taps.append(x)
    for i in range(6):
        x = bottleneck(x, f"conv_4.model.{i}", 1, True)
    x = bottleneck(x, "conv_45", 2, False)
    taps.append(x)
    for i in range(2):
        x = bottleneck(x, f"conv_5.model.{i}", 1, True)
    x = cbp(x, "conv_6_sep")
    taps.append(x)
    w = sd["output_layer.conv_6_dw.conv.weight"]
    x = f_bn(F.conv2d(x, w, groups=w.shape[0]), sd, "output_layer.conv_6_dw.bn").flatten(1)
    x = F.linear(x, sd["output_layer.linear.weight"])
    return f_bn(x, sd, "output_layer.bn", affine=False), taps


def images(b, c, h, w=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w or h, generator=g) * 2 - 1


# ---------------------------------------------------------------------------------------------
# iresnet: insightface naming


@pytest.fixture(scope="module")
def iresnet_keys():
    """{depth: {key: shape}} of full-size r18/r50/r100 (built once; ~2 s)."""
    return {d: key_shapes(get_backbone(f"r{d}")) for d in (18, 50, 100)}


@pytest.mark.parametrize("depth", [18, 50, 100])
def test_iresnet_keys_and_shapes_match_insightface(depth, iresnet_keys):
    assert list(iresnet_keys[depth].items()) == list(expected_iresnet(depth).items())


def test_iresnet_literal_keys(iresnet_keys):
    r18, r50, r100 = iresnet_keys[18], iresnet_keys[50], iresnet_keys[100]
    assert r50["layer3.13.conv2.weight"] == (256, 256, 3, 3)
    assert "layer3.14.conv2.weight" not in r50
    assert r50["layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert "layer2.1.downsample.0.weight" not in r50
    assert r50["fc.weight"] == (512, 25088)
    assert r100["layer3.29.bn3.running_var"] == (256,)
    assert r100["layer2.12.prelu.weight"] == (128,)
    assert r18["layer1.0.downsample.1.num_batches_tracked"] == ()
    assert "maxpool" not in " ".join(r18)
    assert len(r18) == 187 and len(r50) == 475 and len(r100) == 925


def test_iresnet200_blocks_and_aliases():
    # base_width only scales the shapes: a tiny r200 has r200's key names
    r200 = get_backbone("r200", base_width=4, input_size=16)
    same = get_backbone("iresnet200", base_width=4, input_size=16)
    assert [len(s) for s in r200.stages] == [6, 26, 60, 6]
    assert "layer3.59.conv2.weight" in r200.state_dict()
    assert infer_iresnet_depth(r200.state_dict()) == 200
    assert list(r200.state_dict()) == list(same.state_dict())
    for depth in (18, 34, 50, 100):
        tiny = get_backbone(f"r{depth}", base_width=4, input_size=16)
        assert infer_iresnet_depth(tiny.state_dict()) == depth


def test_iresnet_features_bn_weight_frozen_at_one():
    model = get_backbone("r18", input_size=32)
    assert not model.features.weight.requires_grad
    assert torch.equal(model.features.weight, torch.ones(512))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "features.weight" not in trainable and "features.bias" in trainable


INSIGHTFACE_REFERENCE = Path(__file__).parent / "data" / "insightface_iresnet_reference.safetensors"


def seeded_state_dict(template):
    """Deterministic float64 weights for an insightface-named iresnet state_dict: numpy's
    legacy ``RandomState`` (whose streams numpy keeps fixed) seeded by each key's CRC32, scaled
    per kind of tensor so that the activations of a 100-layer net stay finite and informative.
    data/make_insightface_reference.py fills insightface's own model with the same function."""
    out = {}
    for key, t in template.items():
        shape = tuple(t.shape)
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros((), dtype=torch.long)
            continue
        rs = np.random.RandomState(zlib.crc32(key.encode()))
        if key.endswith("running_var"):
            v = rs.uniform(0.5, 1.5, shape)
        elif key.endswith("running_mean"):
            v = 0.1 * rs.standard_normal(shape)
        elif key.endswith("prelu.weight"):
            v = 0.25 + 0.05 * rs.standard_normal(shape)
        elif key.endswith(".weight") and len(shape) == 1:  # BatchNorm scale
            v = 1.0 + 0.1 * rs.standard_normal(shape)
        elif key.endswith(".bias"):
            v = 0.1 * rs.standard_normal(shape)
        else:  # convolution and fc weights
            v = rs.standard_normal(shape) / math.sqrt(math.prod(shape[1:]))
        out[key] = torch.from_numpy(np.asarray(v, dtype=np.float64))
    return out


def reference_input():
    return torch.from_numpy(np.random.RandomState(0).uniform(-1, 1, (2, 3, 112, 112)))


@pytest.mark.parametrize("depth", [18, 34, 50, 100])
def test_iresnet_equals_insightface_outputs(depth):
    """Same weights, same input: the embedding insightface's own iresnet computed (stored by
    data/make_insightface_reference.py, float64) equals ours to float64 round-off."""
    from safetensors import safe_open

    with safe_open(str(INSIGHTFACE_REFERENCE), "pt") as f:
        expected = f.get_tensor(f"r{depth}")
    model = get_backbone(f"r{depth}").double().eval()
    model.load_state_dict(seeded_state_dict(model.state_dict()), strict=True)
    with torch.no_grad():
        ours = model(reference_input())
    assert ours.shape == expected.shape == (2, 512)
    assert expected.abs().max() > 0.1 and not torch.allclose(expected[0], expected[1], atol=0.1)
    close(ours, expected, rtol=0, atol=1e-9 * float(expected.abs().max()))


def test_iresnet18_matches_functional_reference():
    model = randomize(get_backbone("r18")).eval()
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    x = images(1, 3, 112)
    with torch.no_grad():
        ours = model(x)
        ref = functional_iresnet(sd, x, BLOCKS[18])
    assert ours.shape == (1, 512)
    close(ours, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "opts, shape, stages",
    [
        (
            {"base_width": 64},
            (3, 112, 112),
            [(64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)],
        ),
        (
            {"in_channels": 162},
            (162, 112, 112),
            [(8, 56, 56), (16, 28, 28), (32, 14, 14), (64, 7, 7)],
        ),
        (
            {"in_channels": 192, "input_size": 14},
            (192, 14, 14),
            [(8, 7, 7), (16, 4, 4), (32, 2, 2), (64, 1, 1)],
        ),
        (
            {"in_channels": 30, "input_size": 56, "stem_stride": 2},
            (30, 56, 56),
            [(8, 14, 14), (16, 7, 7), (32, 4, 4), (64, 2, 2)],
        ),
        (
            {"input_size": (112, 96), "embedding_size": 128},
            (3, 112, 96),
            [(8, 56, 48), (16, 28, 24), (32, 14, 12), (64, 7, 6)],
        ),
    ],
)
def test_iresnet_forward_shapes(opts, shape, stages):
    model = get_backbone("r18", **{"base_width": 8, **opts}).eval()
    x = images(2, *shape)
    with torch.no_grad():
        emb, maps = model(x, return_stages=True)
    assert emb.shape == (2, opts.get("embedding_size", 512))
    got = [tuple(m.shape[1:]) for m in maps]
    assert got == list(model.stage_shapes) == stages
    c, h, w = got[-1]
    assert model.fc.in_features == c * h * w


def test_stem_stages_head_compose_to_forward():
    model = randomize(get_backbone("r18", input_size=32, base_width=16)).eval()
    x = images(3, 3, 32)
    with torch.no_grad():
        h = model.forward_stem(x)
        for stage in model.stages:
            h = stage(h)
        assert len(model.stages) == 4
        close(model.forward_head(h), model(x), rtol=0, atol=0)
        feats = model.forward_features(x)
        close(feats[-1], h, rtol=0, atol=0)


def test_channels_last_gives_same_embedding():
    model = randomize(get_backbone("r18", input_size=32, base_width=16)).eval()
    x = images(2, 3, 32)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    close(out, ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# IR-SE and MobileFaceNet


def test_ir_se50_keys():
    sd = key_shapes(get_backbone("ir_se50"))
    units = {int(k.split(".")[1]) for k in sd if k.startswith("body.")}
    assert units == set(range(24))  # 3 + 4 + 14 + 3
    assert sd["input_layer.0.weight"] == (64, 3, 3, 3)
    assert not any(k.startswith("body.0.shortcut_layer") for k in sd)  # 64 -> 64: subsample
    assert sd["body.3.shortcut_layer.0.weight"] == (128, 64, 1, 1)
    assert sd["body.21.res_layer.se_block.fc1.weight"] == (32, 512, 1, 1)
    assert sd["body.20.res_layer.se_block.fc2.weight"] == (256, 16, 1, 1)
    assert sd["body.7.res_layer.1.weight"] == (256, 128, 3, 3)
    assert sd["body.7.res_layer.4.weight"] == (256, 256, 3, 3)
    assert sd["output_layer.3.weight"] == (512, 25088)
    assert "output_layer.4.weight" not in sd and sd["output_layer.4.running_var"] == (512,)


def test_irse_matches_functional_reference():
    model = randomize(IRSE(18, input_size=32, base_width=16, in_channels=5, stem_stride=1)).eval()
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    x = images(2, 5, 32)
    with torch.no_grad():
        close(model(x), functional_irse(sd, x, (2, 2, 2, 2)), rtol=1e-4, atol=1e-4)


def test_mobilefacenet_duetface_client_taps_and_keys():
    model = get_backbone("mobilefacenet", in_channels=30).eval()
    assert model.stage_shapes == ((64, 28, 28), (128, 14, 14), (128, 7, 7), (512, 7, 7))
    sd = key_shapes(model)
    assert sd["conv1.conv.weight"] == (64, 30, 3, 3)
    assert sd["conv2_dw.conv.weight"] == (64, 1, 3, 3)
    assert sd["conv_23.conv_dw.conv.weight"] == (128, 1, 3, 3)
    assert sd["conv_4.model.5.project.conv.weight"] == (128, 256, 1, 1)
    assert "conv_4.model.6.project.conv.weight" not in sd
    assert sd["conv_6_sep.conv.weight"] == (512, 128, 1, 1)
    assert sd["output_layer.conv_6_dw.conv.weight"] == (512, 1, 7, 7)
    assert sd["output_layer.linear.weight"] == (512, 512)
    assert "output_layer.linear.bias" not in sd and "output_layer.bn.weight" not in sd
    with torch.no_grad():
        emb, maps = model(images(2, 30, 112), return_stages=True)
    assert emb.shape == (2, 512)
    assert [tuple(m.shape[1:]) for m in maps] == list(model.stage_shapes)


def test_mobilefacenet_matches_functional_reference():
    model = randomize(MobileFaceNet(width=0.25, embedding_size=64)).eval()
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    x = images(2, 3, 112)
    with torch.no_grad():
        emb, maps = model(x, return_stages=True)
        ref, taps = functional_mobilefacenet(sd, x)
    close(emb, ref, rtol=1e-4, atol=1e-4)
    for m, t in zip(maps, taps, strict=True):
        close(m, t, rtol=1e-4, atol=1e-4)
    assert [tuple(m.shape[1:]) for m in maps] == [
        (16, 28, 28),
        (32, 14, 14),
        (32, 7, 7),
        (128, 7, 7),
    ]


def test_mobilefacenet_other_input_size_sets_gdc_kernel():
    model = MobileFaceNet(input_size=64, width=0.125, stem_stride=1).eval()
    assert model.stage_shapes[-1][1:] == (8, 8)
    assert model.output_layer.conv_6_dw.conv.kernel_size == (8, 8)
    assert model(images(2, 3, 64)).shape == (2, 512)


# ---------------------------------------------------------------------------------------------
# registry, config, bad input


def test_registry_names_and_configs_rebuild():
    names = list_backbones()
    for n in ("iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200", "r18", "r200"):
        assert n in names
    assert "ir_se50" in names and "mobilefacenet" in names
    for name, small in (
        ("r34", {"base_width": 8}),
        ("ir_se50", {"base_width": 16}),
        ("mobilefacenet", {"width": 0.25}),
    ):
        m = get_backbone(name, in_channels=7, input_size=(56, 48), embedding_size=64, **small)
        assert m.config["in_channels"] == 7 and m.config["input_size"] == [56, 48]
        again = type(m)(**m.config)
        assert again.config == m.config and again.name == m.name
        assert key_shapes(again) == key_shapes(m)
    assert get_backbone("r34", input_size=32).name == "iresnet34"
    assert isinstance(get_backbone("r18", input_size=32), IResNet)


def test_unknown_name_lists_valid_names():
    with pytest.raises(
        UnknownNameError, match=r"unknown backbone 'resnet50'.*iresnet50.*mobilefacenet"
    ):
        get_backbone("resnet50")


def test_bad_options():
    with pytest.raises(FacelabTypeError, match=r"unknown option.*'fp16'.*valid options"):
        get_backbone("r18", fp16=True)
    with pytest.raises(FacelabTypeError, match="depth"):
        get_backbone("r18", depth=34)
    with pytest.raises(RangeError, match="in_channels"):
        get_backbone("r18", in_channels=0)
    with pytest.raises(RangeError, match="dropout"):
        get_backbone("r18", dropout=1.5)
    with pytest.raises(FacelabTypeError, match="input_size"):
        get_backbone("r18", input_size=(112, 112, 3))
    with pytest.raises(RangeError, match="width"):
        get_backbone("mobilefacenet", width=0)
    with pytest.raises(RangeError, match="depth"):
        IResNet(42)


def test_wrong_input_shape_is_a_clear_error():
    model = get_backbone("r18", input_size=32)
    with pytest.raises(ShapeError, match=r"expected \(B, 3, 32, 32\), got shape \(2, 1, 32, 32\)"):
        model(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ShapeError, match=r"expected \(B, 3, 32, 32\), got shape \(2, 3, 28, 28\)"):
        model(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ShapeError, match=r"got shape \(3, 32, 32\)"):
        model.forward_features(torch.zeros(3, 32, 32))
    with pytest.raises(FacelabTypeError, match="floating"):
        model(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    mfn = get_backbone("mobilefacenet", in_channels=30, width=0.125)
    with pytest.raises(ShapeError, match=r"expected \(B, 30, 112, 112\)"):
        mfn(torch.zeros(1, 3, 112, 112))


# ---------------------------------------------------------------------------------------------
# load_insightface

TINY = {"input_size": 32, "base_width": 16}


def tiny_r18(**opts):
    return get_backbone("r18", **{**TINY, **opts})


def test_load_insightface_round_trip(tmp_path):
    src = randomize(tiny_r18(), seed=3).eval()
    path = tmp_path / "backbone.pth"
    torch.save(src.state_dict(), path)
    model = load_insightface(path, "r18", **TINY)
    assert not model.training
    x = images(2, 3, 32)
    with torch.no_grad():
        close(model(x), src(x), rtol=0, atol=0)
    # a DDP-wrapped save ("module." prefix) loads too
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, tmp_path / "ddp.pth")
    with torch.no_grad():
        close(load_insightface(tmp_path / "ddp.pth", "r18", **TINY)(x), src(x), rtol=0, atol=0)


def test_load_insightface_wrong_depth_names_keys_and_depth(tmp_path):
    path = tmp_path / "r34.pth"
    torch.save(get_backbone("r34", **TINY).state_dict(), path)
    with pytest.raises(FormatError) as err:
        load_insightface(path, "r18", **TINY)
    msg = str(err.value)
    assert "looks like r34" in msg
    assert "unexpected keys" in msg and "layer1.2.bn1.weight" in msg
    assert "missing keys" not in msg  # r18 is a prefix of r34


def test_load_insightface_reports_missing_and_shape_mismatch(tmp_path):
    sd = tiny_r18().state_dict()
    del sd["layer4.1.conv2.weight"]
    torch.save(sd, tmp_path / "cut.pth")
    with pytest.raises(FormatError, match=r"missing keys \(1\): \['layer4.1.conv2.weight'\]"):
        load_insightface(tmp_path / "cut.pth", "r18", **TINY)
    torch.save(tiny_r18(in_channels=4).state_dict(), tmp_path / "c4.pth")
    with pytest.raises(FormatError, match=r"(?s)conv1.weight: file \(16, 4, 3, 3\).*in_channels=4"):
        load_insightface(tmp_path / "c4.pth", "r18", **TINY)


def test_load_insightface_rejects_non_state_dicts(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(FormatError, match="plain state dict"):
        load_insightface(tmp_path / "list.pth", "r18")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(FormatError, match="not a torch state-dict file"):
        load_insightface(tmp_path / "junk.pth", "r18")
    with pytest.raises(UnknownNameError, match="not an iresnet"):
        load_insightface(tmp_path / "list.pth", "mobilefacenet")
    with pytest.raises(FileNotFoundError):
        load_insightface(tmp_path / "absent.pth", "r18")


def test_load_insightface_never_unpickles_arbitrary_objects(tmp_path):
    import datetime

    # a global outside weights_only's allow-list: refused before anything is constructed
    torch.save({"conv1.weight": datetime.date(2020, 1, 1)}, tmp_path / "obj.pth")
    with pytest.raises(FormatError, match="loadable safely"):
        load_insightface(tmp_path / "obj.pth", "r18")
