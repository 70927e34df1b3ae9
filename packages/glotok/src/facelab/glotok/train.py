"""The GloTok tokenizer recipe on the core trainer.

Loss (paper): ``lambda_R ||x - x_hat||^2 + lambda_Q L_Q + lambda_P perceptual + lambda_G L_G
+ lambda_res L_res + lambda_hist L_hist``, plus the discriminator's hinge loss. Defaults:
lambda_R = 1, lambda_Q = 1 (beta = 0.25 inside L_Q), perceptual 1, adversarial 0.5 from step
20,000 (LlamaGen's recipe, which the paper builds on), lambda_res = 0.5, lambda_hist = 0.01; Adam
2e-4, betas (0.9, 0.95), no weight decay, constant rate; global batch 240, 150 epochs.

One optimizer, one backward: the generator's adversarial term is computed through the
discriminator with its parameters detached (``torch.func.functional_call``), and the
discriminator's hinge loss on detached reconstructions is added to the same scalar. One Adam step
then updates the tokenizer on ``L_G`` and the discriminator on ``L_D`` (simultaneous GAN
updates, as taming's two optimizers do one after the other on the same batch), so the recipe
runs on the shared ``Trainer`` unchanged: Accelerate, accumulation, exact resume.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from facelab.core.errors import FacelabError, RangeError
from facelab.core.train import TrainConfig, Trainer
from facelab.glotok.data import ImageDataConfig, build_dataset, eval_dataset
from facelab.glotok.histogram import TeacherHistogram, histogram_relation_loss
from facelab.glotok.losses import PatchDiscriminator, build_perceptual, hinge_d_loss, hinge_g_loss
from facelab.glotok.model import GloTok, GloTokConfig
from facelab.glotok.teacher import TeacherConfig, resolve_teacher, train_toy_recognizer

logger = logging.getLogger(__name__)


@dataclass
class LossConfig:
    recon_weight: float = 1.0
    """lambda_R (L2 reconstruction)"""
    quant_weight: float = 1.0
    """lambda_Q (codebook + beta * commitment, both codebooks)"""
    perceptual: Literal["none", "vgg16", "recognizer"] = "vgg16"
    perceptual_path: str | None = None
    """local weights: VGG-16 state dict, or a recognizer directory (None with 'recognizer' =
    the toy recognizer trained in-process)"""
    lpips_heads: str | None = None
    """the lpips package's weights/v0.1/vgg.pth (optional; makes 'vgg16' LPIPS proper)"""
    perceptual_weight: float = 1.0
    disc_weight: float = 0.5
    disc_start: int = 20_000
    """optimizer step from which the adversarial terms are on"""
    disc_channels: int = 64
    disc_layers: int = 3
    hist_weight: float = 0.01
    """lambda_hist (0 turns the histogram relation loss off: the baseline)"""
    res_weight: float = 0.5
    """lambda_res (used when the model has the residual module)"""

    def __post_init__(self) -> None:
        for name in (
            "recon_weight",
            "quant_weight",
            "perceptual_weight",
            "disc_weight",
            "hist_weight",
            "res_weight",
        ):
            v = getattr(self, name)
            if not isinstance(v, int | float) or isinstance(v, bool) or not v >= 0:
                raise RangeError(f"loss.{name}: expected a number >= 0, got {v!r}")
        if self.disc_start < 0:
            raise RangeError(f"loss.disc_start: expected >= 0, got {self.disc_start}")


def _paper_train() -> TrainConfig:
    return TrainConfig(
        output_dir="runs/glotok",
        epochs=150,
        batch_size=30,  # x 8 GPUs = the paper's global batch 240
        optimizer="adamw",
        lr=2e-4,
        betas=(0.9, 0.95),
        weight_decay=0.0,  # Adam without decay
        scheduler="constant",
        seed=0,
        checkpoint_every=5000,
        log_every=100,
        ddp_find_unused_parameters=True,  # the discriminator idles before disc_start
    )


@dataclass
class TokenizerRecipe:
    """Everything a tokenizer run needs; ``presets()`` gives ``paper`` and ``toy``."""

    model: GloTokConfig = field(default_factory=GloTokConfig)
    data: ImageDataConfig = field(default_factory=lambda: ImageDataConfig(source="imagenet/train"))
    loss: LossConfig = field(default_factory=LossConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    train: TrainConfig = field(default_factory=_paper_train)
    toy_recognizer: str | None = None
    """an existing toy recognizer directory to reuse (else one is trained into
    output_dir/toy-recognizer when the teacher or perceptual loss needs it)"""
    eval_images: int = 1000
    resume: str | None = "latest"


def toy_model_config(**overrides: Any) -> GloTokConfig:
    """The toy tokenizer: 32 px, 4x downsampling (8 x 8 tokens), 256 + 768 codes of dim 8."""
    base = dict(
        image_size=32,
        base_channels=16,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        z_channels=32,
        code_dim=8,
        semantic_codes=256,
        visual_codes=768,
        residual_width=64,
        residual_heads=4,
        residual_mlp_ratio=2.0,
    )
    return GloTokConfig(**(base | overrides))


def presets() -> dict[str, TokenizerRecipe]:
    """``paper``: ImageNet-style folders at 256 px with the paper's recipe; ``toy``: toyfaces at
    32 px, a tiny network, CPU minutes (perceptual loss and teacher: the toy recognizer)."""
    toy = TokenizerRecipe(
        model=toy_model_config(),
        data=ImageDataConfig(image_size=32, toy_identities=50, toy_images_per_identity=40),
        loss=LossConfig(
            perceptual="recognizer",
            perceptual_weight=0.1,
            disc_start=300,
            disc_channels=16,
            disc_layers=2,
        ),
        teacher=TeacherConfig(feature_images=2000),
        train=TrainConfig(
            output_dir="runs/glotok-toy",
            max_steps=400,
            batch_size=32,
            optimizer="adamw",
            lr=1e-3,
            betas=(0.9, 0.95),
            weight_decay=0.0,
            scheduler="constant",
            seed=0,
            log_every=50,
            ddp_find_unused_parameters=True,
        ),
        eval_images=500,
    )
    return {"paper": TokenizerRecipe(), "toy": toy}


@dataclass
class TokenizerResult:
    model: GloTok
    train: Any
    metrics: dict[str, float]
    output_dir: Path
    wall_time: float


def _needs_toy_recognizer(cfg: TokenizerRecipe) -> bool:
    teacher = cfg.loss.hist_weight > 0 and not (
        cfg.teacher.histogram or cfg.teacher.codebook or cfg.teacher.recognizer
    )
    percept = cfg.loss.perceptual == "recognizer" and cfg.loss.perceptual_path is None
    return teacher or percept


def build_models(cfg: TokenizerRecipe) -> tuple[GloTok, PatchDiscriminator | None]:
    """Tokenizer and discriminator whose initial weights depend on ``train.seed`` only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        model = GloTok(cfg.model)
        disc = (
            PatchDiscriminator(cfg.model.in_channels, cfg.loss.disc_channels, cfg.loss.disc_layers)
            if cfg.loss.disc_weight > 0
            else None
        )
    return model, disc


def make_loss_fn(cfg: TokenizerRecipe, teacher: TeacherHistogram | None):
    lc = cfg.loss

    def loss_fn(batch, modules, ctx):
        images, _ = batch
        out = modules["tokenizer"](images)
        rec = F.mse_loss(out.recon, images)
        loss = lc.recon_weight * rec + lc.quant_weight * out.loss_q
        logs: dict[str, torch.Tensor] = {"rec": rec.detach(), "q": out.loss_q.detach()}
        if cfg.model.residual:
            loss = loss + lc.res_weight * out.loss_res
            logs["res"] = out.loss_res.detach()
        if "perceptual" in modules and lc.perceptual_weight > 0:
            p = modules["perceptual"](out.recon, images)
            loss = loss + lc.perceptual_weight * p
            logs["perc"] = p.detach()
        if teacher is not None and lc.hist_weight > 0:
            h = histogram_relation_loss(ctx.unwrap("tokenizer").semantic_codebook, teacher)
            loss = loss + lc.hist_weight * h
            logs["hist"] = h.detach()
        if "disc" in modules and ctx.step >= lc.disc_start:
            plain = ctx.unwrap("disc")
            frozen = {k: v.detach() for k, v in plain.named_parameters()}
            g = hinge_g_loss(torch.func.functional_call(plain, frozen, (out.recon,)))
            d = hinge_d_loss(modules["disc"](images), modules["disc"](out.recon.detach()))
            loss = loss + lc.disc_weight * g + d
            logs |= {"g_adv": g.detach(), "d": d.detach()}
        return loss, logs

    return loss_fn


def train(cfg: TokenizerRecipe) -> TokenizerResult:
    """Train, save ``output_dir/tokenizer`` (``GloTok.from_pretrained``) and ``metrics.json``."""
    from facelab.core.hub import save_pretrained

    t0 = time.perf_counter()
    out = Path(cfg.train.output_dir)
    dataset = build_dataset(cfg.data)
    recognizer_dir = cfg.toy_recognizer
    if recognizer_dir is None and _needs_toy_recognizer(cfg):
        recognizer_dir = str(
            train_toy_recognizer(out / "toy-recognizer", cfg.data.image_size, cfg.teacher.toy)
        )
    teacher = None
    if cfg.loss.hist_weight > 0:
        images, _ = dataset.tensors(cfg.teacher.feature_images)
        teacher = resolve_teacher(
            cfg.teacher, cfg.model.semantic_codes, images, out, cfg.data.image_size, recognizer_dir
        )
    percept = build_perceptual(
        cfg.loss.perceptual,
        recognizer_dir
        if cfg.loss.perceptual == "recognizer" and cfg.loss.perceptual_path is None
        else cfg.loss.perceptual_path,
        cfg.loss.lpips_heads,
    )
    model, disc = build_models(cfg)
    modules: dict[str, torch.nn.Module] = {"tokenizer": model}
    if disc is not None:
        modules["disc"] = disc
    if percept is not None:
        modules["perceptual"] = percept
    trainer = Trainer(
        cfg.train,
        modules,
        make_loss_fn(cfg, teacher),
        dataset,
        frozen=("perceptual",) if percept is not None else (),
    )
    result = trainer.fit(resume=cfg.resume)
    model = trainer.unwrap("tokenizer")
    metrics: dict[str, float] = {}
    if trainer.accelerator.is_main_process:
        from facelab.glotok.evaluate import tokenizer_metrics

        held_out = eval_dataset(cfg.data, cfg.eval_images)
        x, _ = held_out.tensors()
        metrics = tokenizer_metrics(model, x.to(trainer.accelerator.device), teacher=teacher)
        save_pretrained(model, out / "tokenizer")
        doc = {
            "steps": result.step,
            "losses": result.losses,
            "metrics": metrics,
            "teacher": None if teacher is None else teacher.to_json(),
            "toy_recognizer": recognizer_dir,
            "config": _jsonable(cfg),
        }
        _write_json(out / "metrics.json", doc)
    trainer.accelerator.wait_for_everyone()
    return TokenizerResult(model.eval(), result, metrics, out, time.perf_counter() - t0)


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def _write_json(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str))
    tmp.replace(path)


__all__ = [
    "FacelabError",
    "LossConfig",
    "TokenizerRecipe",
    "TokenizerResult",
    "build_models",
    "make_loss_fn",
    "presets",
    "toy_model_config",
    "train",
]
