import pytest
import torch
import torch.nn.functional as F

from facelab.core.backbones import get_backbone
from facelab.core.errors import FacelabTypeError, FormatError, RangeError, ShapeError
from facelab.core.hub import from_pretrained
from facelab.duetface import (
    ClientModel,
    InteractiveBlock,
    MaskGenerator,
    ServerModel,
    minmax_normalize,
    template_roi,
)


def literal_mask(g, conv, roi, size):
    """The paper's recipe step by step: upsample, 1x1 conv to all server channels, channel mean,
    per-sample min-max (a loop), ROI resized by area, min-max again."""
    up = F.interpolate(g, size=size, mode="bilinear", align_corners=False)
    m = F.conv2d(up, conv.weight, conv.bias).mean(dim=1, keepdim=True)
    out = torch.empty_like(m)
    for i in range(m.shape[0]):
        lo, hi = m[i].min(), m[i].max()
        out[i] = (m[i] - lo) / (hi - lo)
    r = F.adaptive_avg_pool2d(roi, size)
    m2 = out * r
    for i in range(m.shape[0]):
        lo, hi = m2[i].min(), m2[i].max()
        out[i] = (m2[i] - lo) / (hi - lo)
    return out


def test_interactive_mask_matches_the_literal_recipe():
    torch.manual_seed(0)
    blk = InteractiveBlock(12, 20)
    g = torch.randn(3, 12, 4, 4)
    roi = template_roi(32).expand(3, 1, 32, 32)
    with torch.no_grad():
        got = blk.mask(g, roi, (8, 8))
        want = literal_mask(g, blk.interface, roi, (8, 8))
    assert got.shape == (3, 1, 8, 8)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert float(got.amin()) == 0.0 and float(got.amax()) == pytest.approx(1.0)


def test_overlay_and_zero_weight():
    blk = InteractiveBlock(4, 6)
    f = torch.randn(2, 6, 5, 5)
    m = torch.rand(2, 1, 5, 5)
    assert torch.equal(blk.overlay(f, m), f)  # w starts at 0
    with torch.no_grad():
        blk.weight.fill_(0.5)
    torch.testing.assert_close(blk.overlay(f, m), f * (1 + 0.5 * m))
    names = dict(blk.named_parameters())
    assert {"interface.weight", "interface.bias", "weight"} <= set(names)  # registered, trained


def test_minmax_of_a_constant_map_is_zero_not_nan():
    x = torch.cat([torch.full((1, 1, 3, 3), 2.0), torch.arange(9.0).view(1, 1, 3, 3)])
    y = minmax_normalize(x)
    assert torch.equal(y[0], torch.zeros(1, 3, 3))
    torch.testing.assert_close(y[1], torch.arange(9.0).view(1, 3, 3) / 8)


@pytest.mark.parametrize(
    ("size", "server_sizes", "client_sizes"),
    [(112, [56, 28, 14, 7], [28, 14, 7, 7]), (32, [16, 8, 4, 2], [8, 4, 2, 2])],
)
def test_stage_and_mask_shapes(size, server_sizes, client_sizes):
    client = ClientModel(image_size=size, width=1.0)
    server = ServerModel(image_size=size, base_width=64)
    assert client.in_channels == 30 and server.in_channels == 162
    assert [s[0] for s in client.stage_shapes] == [64, 128, 128, 512]
    assert [s[1] for s in client.stage_shapes] == client_sizes
    assert [s[0] for s in server.backbone.stage_shapes] == [64, 128, 256, 512]
    assert server.mask_sizes == tuple((s, s) for s in server_sizes)
    if size == 32:
        x = torch.randn(2, 30, size, size)
        emb, maps = client.eval().features(x)
        assert emb.shape == (2, 512)
        assert [tuple(m.shape[1:]) for m in maps] == [tuple(s) for s in client.stage_shapes]
        masks = server.make_masks(maps, None)
        assert [tuple(m.shape) for m in masks] == [(2, 1, s, s) for s in server_sizes]


def test_zero_weight_server_equals_the_plain_network(make_models):
    client, server = make_models()
    plain = get_backbone(
        "r18",
        in_channels=162,
        stem_stride=1,
        input_size=32,
        embedding_size=32,
        dropout=0.4,
        base_width=8,
    ).eval()
    plain.load_state_dict(server.backbone.state_dict())
    x = torch.randn(4, 162, 32, 32)
    maps = client.feature_maps(torch.randn(4, 30, 32, 32))
    masks = server.make_masks(maps, template_roi(32).expand(4, 1, 32, 32))
    with torch.no_grad():
        torch.testing.assert_close(server(x, masks), plain(x), atol=1e-5, rtol=1e-5)
        for blk in server.blocks:
            blk.weight.fill_(0.3)
        assert (server(x, masks) - plain(x)).abs().max() > 1e-3  # the masks now act


def test_masks_from_client_maps_equal_the_mask_generator(make_models):
    client, server = make_models()
    with torch.no_grad():
        for blk in server.blocks:
            blk.interface.weight.normal_()
    gen = server.mask_generator()
    maps = client.feature_maps(torch.randn(3, 30, 32, 32))
    roi = template_roi(32).expand(3, 1, 32, 32)
    for a, b in zip(gen(maps, roi), server.make_masks(maps, roi)):
        assert torch.equal(a, b)
    x = torch.randn(3, 162, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(server(x, client_maps=maps, roi=roi), server(x, gen(maps, roi)))


def test_save_and_load_round_trip(tmp_path, make_models):
    client, server = make_models()
    with torch.no_grad():
        server.blocks[2].weight.fill_(0.7)
    for model in (client, server, server.mask_generator()):
        model.save_pretrained(tmp_path / type(model).__name__)
        back = from_pretrained(tmp_path / type(model).__name__)
        assert type(back) is type(model) and back.config == model.config
        for (k, v), (k2, v2) in zip(model.state_dict().items(), back.state_dict().items()):
            assert k == k2 and torch.equal(v, v2)
    plain = ServerModel(image_size=32, base_width=8, interactive=False)
    plain.save_pretrained(tmp_path / "plain")
    assert from_pretrained(tmp_path / "plain").mask_sizes == ()
    with pytest.raises(FormatError):
        ClientModel.from_pretrained(tmp_path / "ServerModel")


def test_bad_inputs(make_models):
    client, server = make_models()
    x = torch.randn(2, 162, 32, 32)
    maps = client.feature_maps(torch.randn(2, 30, 32, 32))
    masks = server.make_masks(maps, None)
    with pytest.raises(ShapeError, match="needs 4 masks"):
        server(x)
    with pytest.raises(ShapeError, match="needs 4 masks"):
        server(x, masks[:3])
    with pytest.raises(ShapeError, match="stage 2"):
        server(x, [masks[0], masks[0], masks[2], masks[3]])
    with pytest.raises(ShapeError):
        server(torch.randn(2, 30, 32, 32), masks)  # client channels to the server
    with pytest.raises(ShapeError):
        server.make_masks(maps[:3], None)  # 3 client maps for 4 stages
    with pytest.raises(FacelabTypeError):
        server(x, masks, client_maps=maps)
    with pytest.raises(ShapeError):
        server.make_masks([m[:, :1] for m in maps], None)
    with pytest.raises(RangeError):
        ServerModel(depth=19)
    with pytest.raises(ShapeError):
        ServerModel(client_channels=(64, 128))
    with pytest.raises(RangeError):
        ServerModel(interactive=False).mask_generator()
    with pytest.raises(ShapeError):
        ClientModel(positions=(0, 64))
    with pytest.raises(ShapeError):
        MaskGenerator(client_channels=[1, 2], server_channels=[1, 2], mask_sizes=[[1, 1]])


def test_paper_shape_preset_has_the_papers_layout():
    from facelab.duetface import duetface_presets
    from facelab.duetface.train import build_client, build_server

    cfg = duetface_presets()["paper-shape"]
    assert cfg.data.image_size == 112 and cfg.data.is_toy
    assert cfg.model == duetface_presets()["toy"].model  # the toy widths
    client = build_client(cfg)
    server = build_server(cfg, client)
    # four interactive blocks at the paper's stage sizes; the client maps are tapped where the
    # paper's client taps them (only the widths differ)
    assert server.mask_sizes == ((56, 56), (28, 28), (14, 14), (7, 7))
    paper_client = build_client(duetface_presets()["paper"])
    assert [s[1:] for s in client.stage_shapes] == [s[1:] for s in paper_client.stage_shapes]
