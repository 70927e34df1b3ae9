"""Recipe mechanics: the generator's 0.1x learning rate, the stage-1 loss, configs."""

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from facelab.core.errors import RangeError, UnknownNameError
from facelab.core.recipe import DataConfig, HeadConfig
from facelab.core.train import TrainConfig
from facelab.minusface import MinusFaceConfig, minusface_presets
from facelab.minusface.train import stage1_trainer, stage2_trainer


def tiny_config(tmp_path, **stage) -> MinusFaceConfig:
    run = (
        dict(
            output_dir="x",
            max_steps=1,
            batch_size=8,
            lr=0.05,
            momentum=0.0,
            weight_decay=0.0,
            scheduler="constant",
            progress=False,
            save_on_exit=False,
            log_every=1,
        )
        | stage
    )
    return MinusFaceConfig(
        output_dir=str(tmp_path / "run"),
        data=DataConfig(image_size=32, toy_identities=4, toy_images_per_identity=4, eval_pairs=0),
        generator_widths=(4, 8),
        input_scale=1 / 64,
        embedding_size=16,
        base_width=4,
        stage1=TrainConfig(**run),
        stage2=TrainConfig(**run),
        evaluate=False,
    )


def _dataset(cfg):
    from facelab.core.recipe import build_train_dataset

    return build_train_dataset(cfg.data)


def test_generator_parameter_group_learns_at_a_tenth_of_the_rate(tmp_path):
    cfg = tiny_config(tmp_path)
    trainer = stage1_trainer(cfg, *_dataset(cfg))
    gen = trainer.unwrap("generator")
    others = list(trainer.unwrap("recognizer").parameters()) + list(
        trainer.unwrap("head").parameters()
    )
    group_of = {id(p): g for g in trainer.optimizer.param_groups for p in g["params"]}
    for p in gen.parameters():
        assert group_of[id(p)]["lr"] == pytest.approx(0.1 * 0.05)
    for p in others:
        if p.requires_grad:
            assert group_of[id(p)]["lr"] == pytest.approx(0.05)

    # and the update really is 0.1x: plain SGD, so step = -lr * grad for every parameter
    grads, before = {}, {}
    trained = [p for p in [*gen.parameters(), *others] if p.requires_grad]
    for p in trained:
        before[id(p)] = p.detach().clone()
        p.register_post_accumulate_grad_hook(lambda q: grads.__setitem__(id(q), q.grad.clone()))
    trainer.fit()
    ratios = {"gen": [], "rest": []}
    for p in trained:
        g, w = grads[id(p)], before[id(p)]
        step = w - p.detach()
        # float32 round-off of `before - after` is relative to the weights, not the step:
        # only steps well above it measure the learning rate
        resolution = 4 * torch.finfo(torch.float32).eps * float(w.abs().max())
        if float(step.abs().max()) < 1e3 * resolution:
            continue
        lr = float((step * g).sum() / (g * g).sum())  # least-squares step size
        torch.testing.assert_close(step, lr * g, rtol=1e-3, atol=resolution)
        ratios["gen" if any(p is q for q in gen.parameters()) else "rest"].append(lr)
    assert ratios["gen"] and ratios["rest"]
    assert all(lr == pytest.approx(0.005, rel=1e-3) for lr in ratios["gen"])
    assert all(lr == pytest.approx(0.05, rel=1e-3) for lr in ratios["rest"])


def test_stage1_loss_is_weighted_l1_plus_margin_ce(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg = dataclasses.replace(cfg, gen_weight=5.0, fr_weight=1.0)
    trainer = stage1_trainer(cfg, *_dataset(cfg))
    images, labels = next(iter(trainer._loader))
    with torch.no_grad():
        loss, logs = trainer.loss_fn((images, labels), trainer.modules, trainer.ctx)
        gen = trainer.unwrap("generator").eval()
        # independent: X' = d(x') * 2 - 1 through core's codec, L1 over this batch
        from facelab.core.freq import FrequencyCodec

        x = FrequencyCodec("reference").encode(images)
        regen, _ = gen.unet(x / 64)
        regen_img = FrequencyCodec("reference", input_range=(0, 1)).decode(regen * 64, clamp=True)
        l1 = F.l1_loss(regen_img * 2 - 1, images)
    assert float(logs["l1"]) == pytest.approx(float(l1), rel=1e-4)
    assert float(loss) == pytest.approx(5 * float(l1) + float(logs["ce"]), rel=1e-5)


def test_stage2_freezes_the_generator(tmp_path):
    cfg = tiny_config(tmp_path)
    data = _dataset(cfg)
    gen = stage1_trainer(cfg, *data).unwrap("generator")
    ref = {k: v.clone() for k, v in gen.state_dict().items()}
    trainer = stage2_trainer(cfg, *data, gen)
    assert trainer.unwrap("recognizer").in_channels == 3
    trainer.fit()
    assert all(torch.equal(ref[k], v) for k, v in gen.state_dict().items())
    assert all(
        id(p) not in {id(q) for g in trainer.optimizer.param_groups for q in g["params"]}
        for p in gen.parameters()
    )


def test_presets_and_bad_configs(tmp_path):
    presets = minusface_presets()
    paper = presets["paper"]
    assert paper.generator_widths == (64, 128, 256, 512, 1024)
    assert (paper.gen_weight, paper.fr_weight, paper.sparsity_weight) == (5.0, 1.0, 0.0)
    assert paper.generator_lr_scale == 0.1 and paper.data.repeat == 3
    assert paper.stage1.lr == 0.01 and paper.stage1.milestones == (10, 18, 22)
    assert paper.stage1.epochs == 24 and paper.backbone == "r18"
    assert paper.head == paper.stage1_head == HeadConfig()  # ArcFace s 64, m 0.5, both stages
    assert (paper.head.s, paper.head.m) == (64.0, 0.5)
    assert paper.stage("stage1").output_dir == str(Path("runs/minusface") / "stage1")
    for bad in (
        dict(domain="dct"),
        dict(stages="stage3"),
    ):
        with pytest.raises(UnknownNameError):
            MinusFaceConfig(**bad)
    for bad in (
        dict(n_duplicates=0),
        dict(gen_weight=-1.0),
        dict(generator_lr_scale=0.0),
        dict(sparsity_target=1.0),
        dict(generator_widths=(8,)),
        dict(resume="yesterday"),
    ):
        with pytest.raises(RangeError):
            MinusFaceConfig(**bad)
    cfg = tiny_config(tmp_path)
    gen = stage1_trainer(cfg, *_dataset(cfg)).unwrap("generator")
    other = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, image_size=40))
    with pytest.raises(RangeError):
        stage2_trainer(other, *_dataset(cfg), gen)


def test_initial_weights_depend_on_the_seed_alone(tmp_path):
    cfg = tiny_config(tmp_path)
    data = _dataset(cfg)

    def weights(cfg):
        tr1 = stage1_trainer(cfg, *data)
        gen = tr1.unwrap("generator")
        tr2 = stage2_trainer(cfg, *data, gen)
        return {
            f"{stage}.{name}.{k}": v.clone()
            for stage, tr in (("s1", tr1), ("s2", tr2))
            for name in ("generator", "recognizer", "head")
            if stage == "s1" or name != "generator"
            for k, v in tr.unwrap(name).state_dict().items()
        }

    torch.manual_seed(123)
    a = weights(cfg)
    torch.rand(1000)  # whatever used the global RNG in between
    state = torch.get_rng_state()
    b = weights(cfg)
    assert torch.equal(torch.get_rng_state(), state)  # and the global RNG is left alone
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = dataclasses.replace(
        cfg,
        stage1=dataclasses.replace(cfg.stage1, seed=cfg.stage1.seed + 1),
        stage2=dataclasses.replace(cfg.stage2, seed=cfg.stage2.seed + 1),
    )
    c = weights(other)
    for prefix in ("s1.generator", "s1.recognizer", "s2.recognizer", "s2.head"):
        keys = [k for k in a if k.startswith(prefix) and a[k].is_floating_point()]
        assert not all(torch.equal(a[k], c[k]) for k in keys), prefix


def test_stage_folders_follow_output_dir_unless_set(tmp_path):
    from facelab.core.recipe import parse_with_presets

    def parse(*argv):
        return parse_with_presets(MinusFaceConfig, minusface_presets(), list(argv), "t", "")

    cfg = parse("--preset", "toy", "--output-dir", str(tmp_path / "run"))
    assert cfg.stage("stage1").output_dir == str(tmp_path / "run" / "stage1")
    assert cfg.stage("stage2").output_dir == str(tmp_path / "run" / "stage2")
    explicit = parse("--output-dir", str(tmp_path / "run"), "--stage2.output-dir", "elsewhere")
    assert explicit.stage("stage2").output_dir == "elsewhere"
    assert explicit.stage("stage1").output_dir == str(tmp_path / "run" / "stage1")
    with pytest.raises(UnknownNameError):
        cfg.stage("stage3")


def test_paper_shape_preset_has_the_papers_layout():
    from facelab.minusface.train import build_generator, build_recognizer

    cfg = minusface_presets()["paper-shape"]
    toy = minusface_presets()["toy"]
    assert cfg.data.image_size == 112 and cfg.data.is_toy
    # the paper's five U-Net levels (4 poolings: a 7 x 7 bottleneck at 112 px), toy widths
    assert len(cfg.generator_widths) == len(minusface_presets()["paper"].generator_widths)
    assert (cfg.gen_weight, cfg.head, cfg.stage2.max_steps) == (
        toy.gen_weight,
        toy.head,
        toy.stage2.max_steps,
    )
    torch.manual_seed(0)
    gen = build_generator(cfg).eval()
    with torch.no_grad():
        x, regen, latent = gen(torch.zeros(1, 3, 112, 112))
    assert x.shape == regen.shape == (1, 192, 112, 112)
    assert latent.shape == (1, cfg.generator_widths[-1], 7, 7)
    rec = build_recognizer(cfg, 3).eval()
    with torch.no_grad():
        assert rec(torch.zeros(2, 3, 112, 112)).shape == (2, cfg.embedding_size)
