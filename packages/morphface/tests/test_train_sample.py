"""A tiny training run of the recipe, loading, sampling, the dataset writer, and bad input."""

import json
from dataclasses import replace

import pytest
import torch

from facelab.core.diffusion.train import ReferenceUNetConfig
from facelab.core.errors import FacelabError, ShapeError
from facelab.morphface.render import StyleRenderer
from facelab.morphface.toy import StyledToyFaces
from facelab.morphface.train import (
    TOY_MORPHFACE_UNET,
    EncoderConfig,
    RendererConfig,
    flip_maps,
    load_morphface,
    morphface_presets,
    train,
)

TINY_UNET = TOY_MORPHFACE_UNET | {
    "initial_channels": 32,
    "channel_multipliers": (1, 2),
    "is_attention": (False, True),
    "n_blocks_per_resolution": 1,
    "attention_head_channels": 8,
    "context_channels": 32,
}


def tiny_cfg(out, use_style=True, steps=4, pixel_input=True):
    cfg = morphface_presets()["toy"]
    cfg.data.toy_identities, cfg.data.toy_images_per_identity = 3, 4
    cfg.data.image_size = 16
    cfg.use_style = use_style
    cfg.unet = ReferenceUNetConfig(**TINY_UNET)
    cfg.encoder = EncoderConfig(
        map_size=16, widths=(8, 16), style_dropout_probability=0.2, pixel_input=pixel_input
    )
    cfg.renderer = RendererConfig(expression_offsets=4.0)  # the 12-channel maps
    cfg.guidance = replace(cfg.guidance, num_steps=3)
    cfg.train = replace(
        cfg.train,
        output_dir=str(out),
        max_steps=steps,
        batch_size=4,
        warmup=1,
        checkpoint_every=1000,
        log_every=1,
    )
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("morphface")
    res = train(tiny_cfg(out))
    return out, res


def test_training_step_updates_encoder_and_saves(trained):
    out, res = trained
    assert res.train.step == 4
    # pixel-aligned renderings (9 map channels + 3 expression-offset ones): the denoiser's
    # input path (zero at initialization) trained, and the generator folder rebuilds it
    assert res.denoiser.config.extra_input_channels == 12 == res.encoder.in_channels
    assert res.denoiser.extra_input_proj.weight.abs().max() > 0
    assert json.loads((out / "generator" / "morphface.json").read_text())["pixel_input"]
    assert torch.isfinite(torch.tensor(res.train.losses["loss"]))
    # the style encoder was trained through the denoiser's loss: its position embedding starts
    # at exactly 0 and moves only if gradients reach the encoder (EMA copy included)
    assert res.encoder.position.abs().max() > 0
    assert torch.isfinite(res.encoder.position).all()
    # the base's generator folder (its loop wrote it; the encoder as its extra conditioner)
    # plus MorphFace's 3DMM and settings
    files = ("denoiser", "generator.json", "extra_conditioner.safetensors", "3dmm.safetensors")
    for name in (*files, "morphface.json"):
        assert (out / "generator" / name).exists()
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4


def test_load_refuses_renderer_settings_the_encoder_was_not_trained_on(trained, tmp_path):
    import shutil

    from facelab.core.errors import FormatError

    out, _ = trained
    copy = shutil.copytree(out / "generator", tmp_path / "generator")
    assert load_morphface(copy).renderer.channels == 12
    doc = json.loads((copy / "morphface.json").read_text())
    doc["renderer"]["expression_offsets"] = 0.0
    (copy / "morphface.json").write_text(json.dumps(doc))
    with pytest.raises(FormatError, match=r"12 map channels.*9"):
        load_morphface(copy)


def test_sampling_is_seeded_and_responds_to_style(trained):
    out, _res = trained
    s = load_morphface(out)
    toy = StyledToyFaces(3, 4, size=32, seed=0, difficulty="easy")
    p = toy.style_params([0, 5])
    ctx = torch.nn.functional.normalize(
        torch.randn(2, 512, generator=torch.Generator().manual_seed(0)), dim=1
    )
    a = s.sample(ctx, p, seeds=[1, 2]).images
    b = s.sample(ctx, p, seeds=[1, 2]).images
    assert a.shape == (2, 3, 16, 16) and torch.equal(a, b)
    assert a.abs().max() <= 1.0
    # the style reaches the denoiser (the final latents, before the decoder's clamp)
    la = s.sample(ctx, p, seeds=[1, 2], output="latents").latents
    swapped = s.sample(ctx, p.index(torch.tensor([1, 0])), seeds=[1, 2], output="latents")
    assert (swapped.latents - la).abs().max() > 1e-3
    none = s.sample(ctx, None, seeds=[1, 2]).images  # ID-only sampling of the same network
    assert torch.isfinite(none).all()
    with pytest.raises(ShapeError, match="rows"):
        s.sample(ctx, p.index(torch.tensor([0])), seeds=[1, 2])


def test_generate_writes_styles_and_resumes(trained, tmp_path):
    from facelab.morphface.prior import StylePrior

    out, _ = trained
    s = load_morphface(out)
    toy = StyledToyFaces(4, 3, size=32, seed=0, difficulty="easy")
    prior = StylePrior.fit(toy.style_params(), toy.labels)
    ctx = torch.nn.functional.normalize(torch.randn(2, 512), dim=1)
    r1 = s.generate(
        ctx,
        tmp_path / "ds",
        prior=prior,
        images_per_identity=2,
        batch_size=4,
        image_size=16,
        progress=False,
    )
    assert r1.images_written == 4
    metas = sorted((tmp_path / "ds").glob("*/meta.json"))
    assert len(metas) == 2
    doc = json.loads(metas[0].read_text())
    assert "style" in json.dumps(doc)
    r2 = s.generate(
        ctx,
        tmp_path / "ds",
        prior=prior,
        images_per_identity=2,
        batch_size=4,
        image_size=16,
        progress=False,
    )
    assert r2.images_written == 0 and r2.identities_skipped == 2
    # explicit styles (identity-major, C x K rows) instead of a prior; a wrong count is refused
    given, _ = prior.sample(2, 2, seed=5)
    r3 = s.generate(
        ctx, tmp_path / "ds3", styles=given, images_per_identity=2, image_size=16, progress=False
    )
    assert r3.images_written == 4
    doc = json.loads(sorted((tmp_path / "ds3").glob("*/meta.json"))[1].read_text())
    torch.testing.assert_close(
        torch.tensor(doc["images"][0]["style"]), given.to_vector()[2].float(), atol=1e-5, rtol=0
    )
    with pytest.raises(ShapeError, match=r"expected 4 rows \(identities x images per identity\)"):
        s.generate(
            ctx,
            tmp_path / "ds4",
            styles=given.index(torch.arange(3)),
            images_per_identity=2,
            image_size=16,
            progress=False,
        )
    with pytest.raises(FacelabError):
        s.generate(
            ctx, tmp_path / "ds2", prior=None, images_per_identity=2, image_size=16, progress=False
        )


def test_style_conditioner_drops_maps_with_the_tokens(head):
    """In training a dropped style is the null tokens *and* zero maps, by one draw; in eval
    mode every sample keeps its style; without ``pixel_input`` only tokens come back."""
    from facelab.core.diffusion.hooks import ExtraOutput
    from facelab.morphface.encoder import StyleEncoder
    from facelab.morphface.params import StyleLayout
    from facelab.morphface.train import StyleConditioner

    layout = StyleLayout(head.num_shape, head.num_expression, head.num_albedo)
    toy = StyledToyFaces(4, 8, size=32, seed=0, difficulty="easy")
    vec = toy.style_params().to_vector()
    flips = torch.zeros(len(vec), dtype=torch.bool)
    enc = StyleEncoder(
        map_size=16, widths=(8, 16), context_channels=8, style_dropout_probability=0.5
    )
    cond = StyleConditioner(enc, StyleRenderer(head, 16), layout, pixel_input=True).train()
    torch.manual_seed(0)
    out = cond(vec, flips)
    assert isinstance(out, ExtraOutput) and out.maps.shape == (32, 9, 16, 16)
    dropped_maps = out.maps.flatten(1).abs().amax(1) == 0
    null = enc.null(32)
    dropped_tokens = (out.tokens - null).flatten(1).abs().amax(1) == 0
    assert torch.equal(dropped_maps, dropped_tokens)
    assert 0 < int(dropped_maps.sum()) < 32  # p = 0.5 over 32 samples
    cond.eval()
    kept = cond(vec, flips)
    assert bool((kept.maps.flatten(1).abs().amax(1) > 0).all())
    torch.testing.assert_close(kept.maps[~dropped_maps], out.maps[~dropped_maps])
    tokens_only = StyleConditioner(enc, StyleRenderer(head, 16), layout).eval()(vec, flips)
    assert isinstance(tokens_only, torch.Tensor)
    torch.testing.assert_close(tokens_only, kept.tokens)


def test_tokens_only_generator_has_no_input_path(tmp_path):
    """``encoder.pixel_input=False`` (the paper preset's layout): the plain denoiser, the
    renderings reach it through the style tokens only."""
    res = train(tiny_cfg(tmp_path, steps=2, pixel_input=False))
    assert res.denoiser.config.extra_input_channels == 0
    assert not hasattr(res.denoiser, "extra_input_proj")
    s = load_morphface(tmp_path)
    assert not s.pixel_input
    toy = StyledToyFaces(3, 4, size=32, seed=0, difficulty="easy")
    ctx = torch.nn.functional.normalize(torch.randn(2, 512), dim=1)
    out = s.sample(ctx, toy.style_params([0, 5]), seeds=[0, 1], output="latents").latents
    assert torch.isfinite(out).all()
    assert not morphface_presets()["paper"].encoder.pixel_input
    # the input channels follow encoder.pixel_input; a conflicting setting is refused
    cfg = tiny_cfg(tmp_path / "x", steps=1, pixel_input=False)
    cfg.unet = replace(cfg.unet, extra_input_channels=9)
    with pytest.raises(FacelabError, match=r"sets it from encoder\.pixel_input"):
        train(cfg)


def test_id_only_baseline_trains_and_samples(tmp_path):
    res = train(tiny_cfg(tmp_path, use_style=False, steps=2))
    assert res.encoder is None
    s = load_morphface(tmp_path)
    ctx = torch.nn.functional.normalize(torch.randn(2, 512), dim=1)
    assert s.sample(ctx, seeds=[0, 1]).images.shape == (2, 3, 16, 16)
    # the style measurements need a style encoder: a clear error, not a crash
    from facelab.morphface.bench import condition_sensitivity, style_control

    for measure in (style_control, condition_sensitivity):
        with pytest.raises(FacelabError, match="ID-only generator"):
            measure(str(tmp_path), identities=3, images_per_identity=4)


@pytest.mark.parametrize("offsets", [0.0, 4.0])
def test_flip_maps_mirrors_the_pose(head, offsets):
    from facelab.morphface.params import StyleParams

    def params(yaw, roll, tx):
        # a symmetric expression (smile, mouth opening): its mirror image is itself
        return StyleParams(
            shape=torch.zeros(1, head.num_shape),
            expression=torch.tensor([[0.8, 0.6, 0.0, 0.0]]),
            pose=torch.tensor([[yaw, 0.1, roll]]),
            camera=torch.tensor([[0.9, tx, 0.0]]),
            light=torch.zeros(1, 27),
            albedo=torch.zeros(1, head.num_albedo),
        )

    r = StyleRenderer(head, 32, expression_offsets=offsets)
    a = flip_maps(r.maps(params(0.4, 0.2, 0.1)))
    b = r.maps(params(-0.4, -0.2, -0.1))
    c = r.maps(params(0.4, 0.2, 0.1))
    assert a.shape[1] == (12 if offsets else 9)
    # the mirrored rendering matches the mirrored pose up to edge pixels (the mesh's diagonals
    # are not mirror-symmetric); the unflipped one does not. Channel by channel: the normals'
    # and the offsets' x components change sign
    for ch in range(a.shape[1]):
        assert (a - b)[:, ch].abs().mean() < 0.25 * (c - b)[:, ch].abs().mean(), ch


def test_expression_offset_channels_are_the_rotated_displacement(head):
    """A 3DMM whose two expression modes translate every vertex by (1, 0, 0) and (0, 0.5, 0)
    per unit: the offset channels are gain / scale * R(pose) (e0, 0.5 e1, 0) on the head and 0
    off it (scale = the mean of the modes' largest displacements, 0.75); the other nine
    channels are the plain renderer's."""
    from facelab.core.errors import RangeError
    from facelab.morphface.geometry import euler_to_matrix
    from facelab.morphface.morphable import MorphableModel
    from facelab.morphface.params import StyleParams

    nv = head.num_vertices
    basis = torch.zeros(nv, 3, 2)
    basis[:, 0, 0], basis[:, 1, 1] = 1.0, 0.5
    model = MorphableModel(
        mean_shape=head.mean_shape,
        shape_basis=head.shape_basis,
        expression_basis=basis,
        faces=head.faces,
        albedo_mean=head.albedo_mean,
        albedo_basis=head.albedo_basis,
    )
    assert model.expression_scale == pytest.approx(0.75)
    expr = torch.tensor([[0.3, -0.2], [0.0, 0.0]])
    pose = torch.tensor([[0.5, -0.2, 0.3], [0.1, 0.0, 0.0]])
    params = StyleParams(
        shape=torch.zeros(2, head.num_shape),
        expression=expr,
        pose=pose,
        camera=torch.tensor([[0.9, 0.0, 0.0]] * 2),
        light=torch.zeros(2, 27),
        albedo=torch.zeros(2, head.num_albedo),
    )
    gain = 3.0
    r = StyleRenderer(model, 24, expression_offsets=gain)
    assert r.channels == 12
    rendering = r.render(params)
    maps = r.maps(params)
    want = (
        gain
        / 0.75
        * (
            euler_to_matrix(pose)
            @ torch.stack([expr[:, 0], 0.5 * expr[:, 1], 0 * expr[:, 0]], 1)[..., None]
        )[..., 0]
    )
    inside = rendering.mask[:, 0] > 0
    assert inside[0].sum() > 50
    for i in range(2):
        got = maps[i, 9:12][:, inside[i]]
        torch.testing.assert_close(got, want[i, :, None].expand_as(got), atol=1e-4, rtol=1e-4)
        assert maps[i, 9:12][:, ~inside[i]].abs().max() == 0
    plain = StyleRenderer(model, 24).maps(params)
    assert plain.shape[1] == 9
    torch.testing.assert_close(maps[:, :9], plain)
    with pytest.raises(RangeError, match="expression_offsets"):
        StyleRenderer(model, 24, expression_offsets=-1.0)
    with pytest.raises(RangeError, match="expression_offsets"):
        StyleRenderer(model, 24, expression_offsets=float("nan"))


def test_cli_end_to_end_and_bad_input(trained, tmp_path, capsys):
    from facelab.morphface.cli import main

    out, _ = trained
    prior = tmp_path / "prior.safetensors"
    assert (
        main(
            [
                "fit-prior",
                "--out",
                str(prior),
                "--toy-identities",
                "6",
                "--toy-images-per-identity",
                "3",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "sample",
                "--generator",
                str(out),
                "--out",
                str(tmp_path / "ds"),
                "--prior",
                str(prior),
                "--identities",
                "3",
                "--images-per-identity",
                "3",
                "--image-size",
                "16",
                "--steps",
                "2",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    assert main(["eval", "--dataset", str(tmp_path / "ds"), "--out", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert 0.0 <= m["yaw_icc"] <= 1.0 and m["yaw_within_var"] > 0
    with pytest.raises(FacelabError, match=r"meta\.json"):
        main(["eval", "--dataset", str(tmp_path)])
    with pytest.raises(FacelabError, match="StylePrior"):
        main(
            [
                "sample",
                "--generator",
                str(out),
                "--out",
                str(tmp_path / "d2"),
                "--identities",
                "2",
                "--images-per-identity",
                "1",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
    assert main(["nope"]) == 2


def test_style_control_measurement_runs(trained):
    from facelab.morphface.bench import style_control
    from facelab.morphface.toy import REGRESSED

    out, _ = trained
    r = style_control(
        str(out),
        identities=3,
        images_per_identity=4,
        image_size=16,
        num_requests=4,
        regressor_steps=5,
        num_steps=2,
        recognizer_steps=25,
        blend=1.0,
    )
    for part in ("generated", "no_style", "real", "generated_own", "no_style_own"):
        assert set(r[part]) == {f"{n}_{k}" for n in REGRESSED for k in ("corr", "mae")}
        assert all(v == v for v in r[part].values())  # no NaN
    assert r["settings"]["swap"] and r["settings"]["clip_sample"]
    assert r["settings"]["blend"] == 1.0
    for part in ("generated", "no_style"):
        ident = r["identity"][part]
        assert 0.0 <= ident["identification_accuracy"] <= 1.0
        assert -2.0 <= ident["consistency_gap"] <= 2.0
    # the tiny run trained on the preset's default styles and recorded them in morphface.json
    # (reading non-default settings back: test_generator_toy_style_reads_the_training_settings)
    assert tuple(r["settings"]["toy_style"]["yaw"]) == (0.0, 14.0, 6.0)
    assert json.loads((out / "generator" / "morphface.json").read_text())["toy_style"]["yaw"] == [
        0.0,
        14.0,
        6.0,
    ]


def test_swap_donors_pairs_every_request_with_another_identity():
    from facelab.morphface.bench import swap_donors

    g = torch.Generator().manual_seed(0)
    for n, k in ((96, 24), (7, 3), (10, 2)):
        labels = torch.randint(0, k, (n,), generator=g)
        if torch.bincount(labels).max() > n // 2:
            continue
        d = swap_donors(labels)
        assert sorted(d.tolist()) == list(range(n))  # a permutation: every style used once
        assert bool((labels[d] != labels).all())
    with pytest.raises(FacelabError, match="more than half"):
        swap_donors(torch.tensor([0, 0, 0, 1]))


def test_generator_toy_style_reads_the_training_settings(tmp_path):
    from facelab.morphface.bench import generator_toy_style
    from facelab.morphface.toy import ToyStyleConfig

    assert generator_toy_style(tmp_path) == ToyStyleConfig()
    (tmp_path / "morphface.json").write_text(json.dumps({"toy_style": {"yaw": [1, 2, 3]}}))
    assert generator_toy_style(tmp_path).yaw == (1, 2, 3)
    assert generator_toy_style(tmp_path).pitch == ToyStyleConfig().pitch
    (tmp_path / "morphface.json").write_text("{not json")
    with pytest.raises(FacelabError, match="not a readable JSON file"):
        generator_toy_style(tmp_path)


def test_real_data_path_matches_rows_by_image_name(tmp_path):
    """Identity folders + a parameter file whose rows are named (and shuffled): the rows are
    matched to the images by relative path; a missing image row is an error."""
    from PIL import Image

    from facelab.core.data import ToyFaces
    from facelab.morphface.procedural import procedural_3dmm
    from facelab.morphface.toy import toy_style_params
    from facelab.morphface.train import StyledImages

    toy = ToyFaces(2, 2, size=32, seed=0)
    u8 = toy.materialize(torch.uint8)
    names = []
    for i in range(4):
        rel = f"id{int(toy.labels[i])}/{i}.png"
        (tmp_path / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(u8[i].permute(1, 2, 0).numpy()).save(tmp_path / "data" / rel)
        names.append(rel)
    params = toy_style_params(toy)
    order = torch.tensor([2, 0, 3, 1])
    params.index(order).save(tmp_path / "p.safetensors", images=[names[i] for i in order])
    cfg = tiny_cfg(tmp_path / "run")
    cfg.data.source = str(tmp_path / "data")
    cfg.style.params = str(tmp_path / "p.safetensors")
    data = StyledImages(cfg, procedural_3dmm(rings=8, segments=12))
    torch.testing.assert_close(data.styles, params.to_vector())
    params.index(torch.tensor([0, 1, 2])).save(tmp_path / "q.safetensors", images=names[:3])
    cfg.style.params = str(tmp_path / "q.safetensors")
    with pytest.raises(FacelabError, match="no parameter row"):
        StyledImages(cfg, procedural_3dmm(rings=8, segments=12))


def test_condition_sensitivity_reports_every_variant(trained):
    from facelab.morphface.bench import condition_sensitivity

    out, _ = trained
    kw = dict(identities=3, images_per_identity=4, num_images=12, timesteps=(100, 700))
    r = condition_sensitivity(str(out), **kw)
    assert set(r) == {100, 700}
    for row in r.values():
        assert set(row) == {"style", "null_style", "swapped_style", "no_id"}
        assert all(v > 0 and v == v for v in row.values())
    # even the 4-step denoiser reacts to its inputs: removing the ID vector
    # or swapping the style changes the prediction (the variants are really different inputs)
    assert any(row["no_id"] != row["style"] for row in r.values())
    assert any(row["swapped_style"] != row["style"] for row in r.values())
    assert condition_sensitivity(str(out), **kw) == r  # seeded
