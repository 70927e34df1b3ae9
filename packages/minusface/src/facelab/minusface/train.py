"""The MinusFace training recipe: stage 1 (generator + residue recognizer), stage 2 (recognizer
on protected images), both through core's ``Trainer``.

Stage 1 trains ``g`` (:class:`~facelab.minusface.model.MinusFaceGenerator`), the recognizer
``f`` (IR-18 with a C-channel stem, C = 192 in the frequency domain) and a margin head on::

    x = e(X);  x' = g(x);  r = x - x';  X' = d(x') * 2 - 1
    loss = gen_weight * L1(X, X') + fr_weight * CE(head(f(r)), y)
           + sparsity_weight * KL-sparsity(latent)          (5, 1, 0 in the paper)

The generator's parameters form their own optimizer group at ``generator_lr_scale`` (0.1) times
the base rate. (The reference meant to do this, but its switch compares ``'Minusface'`` with
``'MinusFace'`` and never fires, so its generator trains at the full rate.) The L1 term is the
mean over this process's batch: under several processes DDP averages the gradients, which is
the gradient of the global mean. (The reference all-gathers the images and regenerations and
thereby scales the L1 gradient by the world size.)

Stage 2 freezes ``g`` and trains a fresh IR-18 with a 3n-channel stem and a fresh head on
``X_p = d(shuffle(r))``, quantized to 8 bits exactly like the client's output, with CE only.
The permutations of a step come from a generator seeded by ``(seed, epoch, batch, rank)``, so a
resumed run sees the same ones (deployments use the CSPRNG; see ``MinusFaceClient``).

Paper defaults (TFace ``minusface/train.yaml`` + PartialFace's trainer): IR-18, embedding 512,
ArcFace s=64 m=0.5, batch 64 per GPU, SGD momentum 0.9, weight decay 5e-4 (not on BN), lr
0.01 -> 1e-3 -> 1e-4 -> 1e-5 at epochs 10, 18, 22 of 24 for each stage, NUM_AUG 3 (each sample
three times per epoch), seed 1337.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from facelab.core.errors import FacelabTypeError, FormatError, RangeError, UnknownNameError
from facelab.core.recipe import (
    DataConfig,
    HeadConfig,
    build_eval_sets,
    build_head,
    build_train_dataset,
    evaluate_sets,
    margin_loss,
    paper_shape_data,
    paper_train_config,
    to_jsonable,
    write_json,
)
from facelab.core.train import TrainConfig, Trainer, TrainResult, stage_config
from facelab.core.train.data import mix_seed
from facelab.minusface.client import MinusFacePipeline, protect_uint8
from facelab.minusface.model import (
    PAPER_WIDTHS,
    MinusFaceGenerator,
    check_domain,
    check_widths,
    kl_sparsity,
)
from facelab.minusface.protocol import to_model_input

Stages = Literal["both", "stage1", "stage2"]
_SHUFFLE_SALT = 0x5A17
_STAGE2_INIT_SALT = 0x5E2


def _paper_stage(output_dir: str) -> TrainConfig:
    return paper_train_config(output_dir, batch_size=64, lr=0.01, no_decay_bn_bias=True)


def _paper_data() -> DataConfig:
    return DataConfig(repeat=3)  # TFace NUM_AUG: 3


@dataclass
class MinusFaceConfig:
    """The MinusFace recipe (defaults: the paper; ``--preset toy``: CPU minutes on toyfaces).

    ``output_dir`` holds everything: ``stage1/`` and ``stage2/`` (trainer checkpoints, unless a
    stage's own ``output_dir`` is set; see ``stage``), ``generator/`` (the client model),
    ``stage1_recognizer/``, ``recognizer/`` (the server model), ``baseline/`` (optional RGB
    ArcFace through the same recipe) and ``metrics.json``.
    """

    output_dir: str = "runs/minusface"
    data: DataConfig = field(default_factory=_paper_data)
    domain: Literal["freq", "rgb"] = "freq"
    """frequency domain (the paper) or the toy RGB mode"""
    generator_widths: tuple[int, ...] = PAPER_WIDTHS
    input_scale: float = 1.0
    """the U-Net sees the encoding times this (1.0 = reference)"""
    zero_init_head: bool = False
    """start the U-Net's last 1x1 conv at zero, so g(x) = 0 and r = x at step 0"""
    backbone: str = "r18"
    embedding_size: int = 512
    base_width: int = 64
    dropout: float = 0.0
    head: HeadConfig = field(default_factory=HeadConfig)
    """margin head of stage 2 and of the baseline"""
    stage1_head: HeadConfig = field(default_factory=HeadConfig)
    """margin head of stage 1 (the paper: the same ArcFace s=64, m=0.5 as stage 2)"""
    n_duplicates: int = 1
    gen_weight: float = 5.0
    fr_weight: float = 1.0
    sparsity_weight: float = 0.0
    sparsity_target: float = 0.01
    generator_lr_scale: float = 0.1
    stage1: TrainConfig = field(default_factory=lambda: _paper_stage(""))
    stage2: TrainConfig = field(default_factory=lambda: _paper_stage(""))
    stages: Stages = "both"
    """which stages to run; "stage2" needs generator_path"""
    generator_path: str | None = None
    """a saved generator (save_pretrained dir) for stages="stage2"; default output_dir/generator"""
    baseline: bool = False
    """also train the RGB ArcFace baseline (same data, backbone, head and stage-2 schedule)"""
    evaluate: bool = True
    """verify on the evaluation sets after each stage (DataConfig eval_* / eval_bins)"""
    eval_batch_size: int = 128
    eval_seed: int = 0
    """permutation seed of the evaluation (the client itself uses the CSPRNG)"""
    resume: str | None = None
    """"latest": continue every stage from its newest checkpoint"""

    def __post_init__(self) -> None:
        check_domain(self.domain)
        self.generator_widths = check_widths(tuple(self.generator_widths))
        if self.stages not in ("both", "stage1", "stage2"):
            raise UnknownNameError(
                f"stages: expected 'both', 'stage1' or 'stage2', got {self.stages!r}"
            )
        for name in ("n_duplicates", "embedding_size", "base_width", "eval_batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise RangeError(f"{name}: expected an int >= 1, got {v!r}")
        for name in ("gen_weight", "fr_weight", "sparsity_weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < float("inf"):
                raise RangeError(f"{name}: expected a finite number >= 0, got {v!r}")
        if not 0 < self.generator_lr_scale < float("inf"):
            raise RangeError(
                f"generator_lr_scale: expected a finite number > 0, got {self.generator_lr_scale}"
            )
        if not 0 < self.sparsity_target < 1:
            raise RangeError(
                f"sparsity_target: expected a value in (0, 1), got {self.sparsity_target}"
            )
        if self.resume not in (None, "latest"):
            raise RangeError(f"resume: expected None or 'latest', got {self.resume!r}")

    def stage(self, name: str) -> TrainConfig:
        """``stage1`` or ``stage2`` with its checkpoint folder resolved (empty, the default:
        ``output_dir/stage1`` or ``output_dir/stage2``; one set explicitly is kept)."""
        if name not in ("stage1", "stage2"):
            raise UnknownNameError(f"stage: expected 'stage1' or 'stage2', got {name!r}")
        return stage_config(getattr(self, name), self.output_dir, name)


def minusface_presets() -> dict[str, MinusFaceConfig]:
    """``paper``: the published recipe; ``toy``: toyfaces, tiny models, about a CPU minute;
    ``paper-shape``: the paper's 112 px faces and block layout (a five-level U-Net on the
    192 x 112 x 112 encoding with its 7 x 7 bottleneck, IR-18 recognizers with four stages at
    56/28/14/7 px) on toyfaces (``facelab.core.recipe.paper_shape_data``), with the toy
    preset's widths, loss weights and optimisation."""

    def toy_stage(steps: int, lr: float) -> TrainConfig:
        # AdamW and a margin-free normalized softmax: on a few hundred CPU steps the paper's
        # SGD + ArcFace (m = 0.5) does not get the stage-2 recognizer off the ground
        return TrainConfig(
            output_dir="",  # MinusFaceConfig.stage(): output_dir/stage1|stage2
            max_steps=steps,
            batch_size=32,
            optimizer="adamw",
            lr=lr,
            weight_decay=5e-4,
            no_decay_bn_bias=True,
            scheduler="cosine",
            warmup=20,
            warmup_unit="step",
            seed=1337,
            log_every=25,
        )

    # Tuned on toyfaces (see the README, "Toy preset"): within 70 stage-1 steps the paper's
    # L1 weight 5 leaves the generator untrained (the CE gradient outweighs the L1 one 10-100x
    # and the L1 term only starts to fall once CE is low), so the toy weights L1 by 50; a sharper
    # stage-1 softmax (s = 32) gives generators whose protected images the stage-2 recognizer
    # learns reliably (s = 16 for stage 2 and the baseline); toyfaces "easy" as PartialFace's.
    toy = MinusFaceConfig(
        output_dir="runs/minusface-toy",
        data=DataConfig(
            image_size=32,
            toy_identities=100,
            toy_images_per_identity=10,
            toy_difficulty="easy",
            eval_identities=60,
            eval_images_per_identity=6,
            eval_pairs=600,
        ),
        generator_widths=(8, 16, 32),
        input_scale=1.0 / 64,
        embedding_size=64,
        base_width=8,
        head=HeadConfig(name="arcface", s=16.0, m=0.0),
        stage1_head=HeadConfig(name="arcface", s=32.0, m=0.0),
        gen_weight=50.0,
        stage1=toy_stage(70, 0.03),
        stage2=toy_stage(200, 4e-3),
        baseline=True,
        eval_batch_size=256,
    )
    paper_shape = dataclasses.replace(
        toy,
        output_dir="runs/minusface-paper-shape",
        data=paper_shape_data(),
        generator_widths=(8, 16, 32, 64, 128),  # the paper's 4 pooling levels (64..1024 / 8)
        eval_batch_size=64,
    )
    return {"paper": MinusFaceConfig(), "toy": toy, "paper-shape": paper_shape}


# --------------------------------------------------------------------------------------------
# building blocks


def build_generator(cfg: MinusFaceConfig) -> MinusFaceGenerator:
    generator = MinusFaceGenerator(
        domain=cfg.domain,
        image_size=cfg.data.image_size,
        widths=cfg.generator_widths,
        input_scale=cfg.input_scale,
    )
    if cfg.zero_init_head:
        nn.init.zeros_(generator.unet.head.weight)
        nn.init.zeros_(generator.unet.head.bias)
    return generator


def build_recognizer(cfg: MinusFaceConfig, in_channels: int) -> nn.Module:
    """IR-18 (``cfg.backbone``) with an ``in_channels`` stem for ``image_size`` inputs."""
    from facelab.core.backbones import get_backbone

    opts: dict[str, Any] = {
        "in_channels": in_channels,
        "input_size": cfg.data.image_size,
        "embedding_size": cfg.embedding_size,
    }
    if cfg.backbone != "mobilefacenet":
        opts |= {"dropout": cfg.dropout, "base_width": cfg.base_width}
    return get_backbone(cfg.backbone, **opts)


class ResidueRecognizer(nn.Module):
    """Faces in [-1, 1] -> ``f(e(X) - g(e(X)))``: the stage-1 recognizer on the residue."""

    def __init__(self, generator: MinusFaceGenerator, recognizer: nn.Module) -> None:
        super().__init__()
        self.generator = generator
        self.recognizer = recognizer

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.recognizer(self.generator.residue(images))


#: toyfaces training sets up to this many uint8 pixel values are rendered once and cached
_MATERIALIZE_MAX_PIXELS = 64 * 2**20


def materialize_toy(dataset) -> None:
    """Render a small toyfaces training set once (as uint8) instead of at every step; every
    sample stays exactly what the renderer gives. Other datasets are left alone."""
    from facelab.core.data.toyfaces import ToyFaces

    base = getattr(dataset, "base", dataset)  # RepeatDataset
    if isinstance(base, ToyFaces) and len(base) * 3 * base.size**2 <= _MATERIALIZE_MAX_PIXELS:
        base.materialize(torch.uint8)


def stage1_loss_fn(cfg: MinusFaceConfig):
    """``loss_fn(batch, modules, ctx)`` of stage 1 (see the module docstring)."""
    gen_w, fr_w, spar_w = float(cfg.gen_weight), float(cfg.fr_weight), float(cfg.sparsity_weight)
    target = float(cfg.sparsity_target)

    def loss_fn(batch, modules, ctx):
        images, labels = batch
        x, regen, latent = modules["generator"](images)
        residue = x - regen
        # d(x') * 2 - 1 through the (parameter-free) decoder of the unwrapped generator
        regen_images = ctx.unwrap("generator").decode(regen) * 2.0 - 1.0
        l1 = F.l1_loss(regen_images, images)  # this process's batch only (no all-gather)
        ce = margin_loss(modules["head"], modules["recognizer"](residue), labels)
        loss = gen_w * l1 + fr_w * ce
        logs = {"l1": l1.detach(), "ce": ce.detach()}
        if spar_w > 0:
            spar = kl_sparsity(latent, target)
            loss = loss + spar_w * spar
            logs["sparsity"] = spar.detach()
        return loss, logs

    return loss_fn


def stage1_param_groups(cfg: MinusFaceConfig):
    """The generator's parameters in their own group at ``generator_lr_scale``."""
    scale = float(cfg.generator_lr_scale)

    def hook(modules):
        return [{"params": list(modules["generator"].parameters()), "lr_scale": scale}]

    return hook


def shuffle_rng(seed: int, ctx) -> torch.Generator:
    """The permutation RNG of one micro-batch: a function of (seed, epoch, batch, rank)."""
    s = mix_seed(seed, _SHUFFLE_SALT, ctx.epoch, ctx.trainer.batch_in_epoch, ctx.rank)
    return torch.Generator(device=ctx.device).manual_seed(s)


def stage2_loss_fn(cfg: MinusFaceConfig):
    """``loss_fn`` of stage 2: CE of the fresh recognizer on quantized protected images."""
    n, seed = cfg.n_duplicates, cfg.stage2.seed

    def loss_fn(batch, modules, ctx):
        images, labels = batch
        with torch.no_grad():
            xp = protect_uint8(modules["generator"], images, n, rng=shuffle_rng(seed, ctx))
        return margin_loss(modules["head"], modules["recognizer"](to_model_input(xp)), labels)

    return loss_fn


def stage1_trainer(
    cfg: MinusFaceConfig, dataset, num_classes: int, generator: MinusFaceGenerator | None = None
) -> Trainer:
    """The stage-1 ``Trainer`` (not yet fitted). Initial weights depend on ``cfg.stage1.seed``
    alone (not on whatever used the global RNG before); the global RNG is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.stage1.seed)
        generator = build_generator(cfg) if generator is None else generator
        recognizer = build_recognizer(cfg, generator.channels)
        head = build_head(cfg.stage1_head, cfg.embedding_size, num_classes)
    return Trainer(
        cfg.stage("stage1"),
        {"generator": generator, "recognizer": recognizer, "head": head},
        stage1_loss_fn(cfg),
        dataset,
        param_groups=stage1_param_groups(cfg),
    )


def stage2_trainer(
    cfg: MinusFaceConfig, dataset, num_classes: int, generator: MinusFaceGenerator
) -> Trainer:
    """The stage-2 ``Trainer`` (not yet fitted); ``generator`` is frozen. The fresh recognizer and
    head are initialized from ``cfg.stage2.seed`` alone."""
    if generator.image_size != cfg.data.image_size:
        raise RangeError(
            f"generator: trained for {generator.image_size}px faces, the data is "
            f"{cfg.data.image_size}px"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mix_seed(cfg.stage2.seed, _STAGE2_INIT_SALT))
        recognizer = build_recognizer(cfg, 3 * cfg.n_duplicates)
        head = build_head(cfg.head, cfg.embedding_size, num_classes)
    return Trainer(
        cfg.stage("stage2"),
        {"generator": generator, "recognizer": recognizer, "head": head},
        stage2_loss_fn(cfg),
        dataset,
        frozen=("generator",),
    )


# --------------------------------------------------------------------------------------------
# the recipe


@dataclass
class MinusFaceResult:
    """What :func:`train` returns. ``verification``: ``{model: {set: VerificationResult}}`` with
    models ``stage1`` (recognizer on the residue), ``minusface`` (client + stage-2 server) and
    ``baseline`` (when trained); filled on the main process."""

    generator: MinusFaceGenerator
    recognizer: nn.Module | None
    stage1_recognizer: nn.Module | None
    stage1: TrainResult | None
    stage2: TrainResult | None
    verification: dict[str, dict[str, Any]]
    output_dir: Path
    wall_time: float
    baseline: Any = None

    def pipeline(self, seed: int | None = None) -> MinusFacePipeline:
        if self.recognizer is None:
            raise RangeError("pipeline: stage 2 was not run (no recognizer)")
        return MinusFacePipeline(self.generator, self.recognizer, seed=seed)

    def summary(self) -> dict[str, Any]:
        def losses(r: TrainResult | None) -> dict[str, float] | None:
            return None if r is None else {"steps": r.step, **r.losses}

        return {
            "wall_time_s": round(self.wall_time, 1),
            "stage1": losses(self.stage1),
            "stage2": losses(self.stage2),
            "verification": {
                m: {s: v.to_dict() for s, v in res.items()} for m, res in self.verification.items()
            },
        }


def _load_generator(path: str | Path) -> MinusFaceGenerator:
    if not Path(path).is_dir():
        raise FormatError(
            f"generator_path: expected a saved generator directory, got {str(path)!r}"
        )
    return MinusFaceGenerator.from_pretrained(path)


def train(cfg: MinusFaceConfig) -> MinusFaceResult:
    """Run the recipe; saves the models under ``cfg.output_dir`` and writes metrics.json."""
    from facelab.core.hub import save_pretrained

    if not isinstance(cfg, MinusFaceConfig):
        raise FacelabTypeError(f"cfg: expected a MinusFaceConfig, got {type(cfg).__name__}")
    t0 = time.perf_counter()
    out = Path(cfg.output_dir)
    dataset, num_classes = build_train_dataset(cfg.data)
    materialize_toy(dataset)
    eval_sets = None
    verification: dict[str, dict[str, Any]] = {}

    def sets():
        nonlocal eval_sets
        if eval_sets is None:
            eval_sets = build_eval_sets(cfg.data)
        return eval_sets

    stage1_result = stage2_result = None
    stage1_recognizer = recognizer = None
    if cfg.stages in ("both", "stage1"):
        trainer = stage1_trainer(cfg, dataset, num_classes)
        stage1_result = trainer.fit(resume=cfg.resume)
        generator = trainer.unwrap("generator")
        stage1_recognizer = trainer.unwrap("recognizer")
        if trainer.accelerator.is_main_process:
            save_pretrained(generator, out / "generator")
            save_pretrained(stage1_recognizer, out / "stage1_recognizer")
            if cfg.evaluate:
                model = ResidueRecognizer(generator, stage1_recognizer)
                verification["stage1"] = evaluate_sets(
                    model, sets(), batch_size=cfg.eval_batch_size
                )
        trainer.accelerator.wait_for_everyone()
        main = trainer.accelerator.is_main_process
    else:
        generator = _load_generator(cfg.generator_path or out / "generator")
        main = True

    if cfg.stages in ("both", "stage2"):
        generator.eval()
        trainer = stage2_trainer(cfg, dataset, num_classes, generator)
        stage2_result = trainer.fit(resume=cfg.resume)
        recognizer = trainer.unwrap("recognizer")
        generator = trainer.unwrap("generator")
        main = trainer.accelerator.is_main_process
        if main:
            save_pretrained(recognizer, out / "recognizer")
            if cfg.evaluate:
                pipe = MinusFacePipeline(generator, recognizer, seed=cfg.eval_seed)
                verification["minusface"] = evaluate_sets(
                    pipe, sets(), batch_size=cfg.eval_batch_size
                )
        trainer.accelerator.wait_for_everyone()

    baseline = None
    if cfg.baseline:
        baseline = train_baseline(cfg)
        if main and baseline.verification:
            verification["baseline"] = baseline.verification

    result = MinusFaceResult(
        generator=generator,
        recognizer=recognizer,
        stage1_recognizer=stage1_recognizer,
        stage1=stage1_result,
        stage2=stage2_result,
        verification=verification,
        output_dir=out,
        wall_time=time.perf_counter() - t0,
        baseline=baseline,
    )
    if main:
        write_json(out / "metrics.json", result.summary() | {"config": to_jsonable(cfg)})
    return result


def baseline_config(cfg: MinusFaceConfig):
    """The RGB ArcFace baseline through core's recipe with this config's data, backbone, head
    and stage-2 schedule (output ``output_dir/baseline``)."""
    from facelab.core.recipe import ArcFaceConfig

    return ArcFaceConfig(
        data=cfg.data,
        backbone=cfg.backbone,
        embedding_size=cfg.embedding_size,
        base_width=cfg.base_width,
        dropout=cfg.dropout,
        head=cfg.head,
        train=dataclasses.replace(cfg.stage2, output_dir=str(Path(cfg.output_dir) / "baseline")),
        eval_batch_size=cfg.eval_batch_size,
        resume=cfg.resume,
    )


def train_baseline(cfg: MinusFaceConfig):
    from facelab.core.recipe import train_arcface

    return train_arcface(baseline_config(cfg))
