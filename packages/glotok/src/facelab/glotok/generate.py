"""Tokenize a dataset, train the AR generator on the core trainer, sample images, gFID.

Token files (``facelab glotok tokenize``) are safetensors with ``semantic`` and ``visual``
``(N, h, w)`` int32 indices and ``labels`` ``(N,)``, plus metadata (grid, codebook sizes,
number of classes, the tokenizer's path).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from facelab.core.errors import FormatError, KeyMismatchError, RangeError
from facelab.core.train import TrainConfig, Trainer
from facelab.glotok.ar import ARConfig, ARTransformer
from facelab.glotok.data import ImageDataConfig, build_dataset, eval_dataset
from facelab.glotok.model import GloTok

TOKENS_FORMAT = "facelab.glotok.tokens"


@torch.no_grad()
def tokenize_images(
    tokenizer: GloTok, images: torch.Tensor, batch_size: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """Semantic and visual indices ``(N, h, w)`` of images in [-1, 1]."""
    tokenizer.eval()
    device = next(tokenizer.parameters()).device
    sem, vis = [], []
    for s in range(0, images.shape[0], batch_size):
        a, b = tokenizer.encode(images[s : s + batch_size].to(device))
        sem.append(a.cpu())
        vis.append(b.cpu())
    return torch.cat(sem).int(), torch.cat(vis).int()


def tokenize_dataset(
    tokenizer: GloTok, data: ImageDataConfig, out: str | Path | None = None, batch_size: int = 128
) -> dict[str, torch.Tensor]:
    """Tokens of the whole training set (and a file ``out`` when given)."""
    ds = build_dataset(data)
    images, labels = ds.tensors()
    sem, vis = tokenize_images(tokenizer, images, batch_size)
    tokens = {
        "semantic": sem.contiguous(),
        "visual": vis.contiguous(),
        "labels": labels.long().contiguous(),
    }
    if out is not None:
        save_tokens(out, tokens, tokenizer, ds.num_classes)
    return tokens


def save_tokens(
    path: str | Path, tokens: dict[str, torch.Tensor], tokenizer: GloTok, num_classes: int
) -> Path:
    from safetensors.torch import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": TOKENS_FORMAT,
        "grid": str(tokenizer.cfg.grid),
        "semantic_codes": str(tokenizer.cfg.semantic_codes),
        "visual_codes": str(tokenizer.cfg.visual_codes),
        "num_classes": str(num_classes),
    }
    tmp = p.with_name(p.name + ".tmp")
    save_file(tokens, str(tmp), metadata=meta)
    tmp.replace(p)
    return p


def load_tokens(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"tokens: no file {p}")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as exc:
        raise FormatError(f"{p}: not a readable safetensors file ({exc})") from None
    if meta.get("format") != TOKENS_FORMAT or not {"semantic", "visual", "labels"} <= set(tensors):
        raise FormatError(f"{p}: expected a token file written by `facelab glotok tokenize`")
    info = {k: int(meta[k]) for k in ("grid", "semantic_codes", "visual_codes", "num_classes")}
    return tensors, info


class TokenDataset(Dataset):
    """``(semantic (N,), visual (N,), label)`` flattened raster sequences."""

    def __init__(self, tokens: dict[str, torch.Tensor]) -> None:
        self.sem = tokens["semantic"].flatten(1).long()
        self.vis = tokens["visual"].flatten(1).long()
        self.labels = tokens["labels"].long()

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, i: int):
        return self.sem[i], self.vis[i], self.labels[i]


@dataclass
class SampleConfig:
    cfg_scale: float = 2.0
    temperature: float = 1.0
    top_k: int | None = None
    batch_size: int = 64


def _paper_ar_train() -> TrainConfig:
    # LlamaGen's class-conditional recipe: AdamW 1e-4, betas (0.9, 0.95), weight decay 0.05,
    # batch 256, 300 epochs
    return TrainConfig(
        output_dir="runs/glotok-ar",
        epochs=300,
        batch_size=32,  # x 8 GPUs = 256
        optimizer="adamw",
        lr=1e-4,
        betas=(0.9, 0.95),
        weight_decay=0.05,
        scheduler="constant",
        grad_clip=1.0,
        checkpoint_every=5000,
        log_every=100,
    )


@dataclass
class ARRecipe:
    tokenizer: str = "runs/glotok/tokenizer"
    """a tokenizer saved by `facelab glotok train` (save_pretrained directory)"""
    tokens: str | None = None
    """a token file from `facelab glotok tokenize` (else the training set is tokenized now)"""
    data: ImageDataConfig = field(default_factory=lambda: ImageDataConfig(source="imagenet/train"))
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    class_dropout: float = 0.1
    train: TrainConfig = field(default_factory=_paper_ar_train)
    sample: SampleConfig = field(default_factory=SampleConfig)
    resume: str | None = "latest"


def ar_presets() -> dict[str, ARRecipe]:
    toy = ARRecipe(
        tokenizer="runs/glotok-toy/tokenizer",
        data=ImageDataConfig(image_size=32, toy_identities=50, toy_images_per_identity=40),
        dim=128,
        depth=4,
        heads=4,
        mlp_ratio=4.0,
        train=TrainConfig(
            output_dir="runs/glotok-toy-ar",
            max_steps=600,
            batch_size=64,
            optimizer="adamw",
            lr=1e-3,
            betas=(0.9, 0.95),
            weight_decay=0.05,
            scheduler="cosine",
            warmup=50,
            warmup_unit="step",
            grad_clip=1.0,
            log_every=100,
        ),
        sample=SampleConfig(cfg_scale=1.5, temperature=1.0, top_k=None),
    )
    return {"paper": ARRecipe(), "toy": toy}


@dataclass
class ARResult:
    model: ARTransformer
    train: Any
    output_dir: Path
    wall_time: float


def train_ar(cfg: ARRecipe, tokenizer: GloTok | None = None) -> ARResult:
    """Train the AR generator on the tokenizer's tokens; saves ``output_dir/generator``."""
    from facelab.core.hub import save_pretrained

    t0 = time.perf_counter()
    if tokenizer is None:
        tokenizer = GloTok.from_pretrained(cfg.tokenizer)
    if cfg.tokens is not None:
        tokens, info = load_tokens(cfg.tokens)
        want = {
            "grid": tokenizer.cfg.grid,
            "semantic_codes": tokenizer.cfg.semantic_codes,
            "visual_codes": tokenizer.cfg.visual_codes,
        }
        diff = {k: (info[k], v) for k, v in want.items() if info[k] != v}
        if diff:
            raise KeyMismatchError(
                f"tokens {cfg.tokens}: do not belong to this tokenizer (file vs tokenizer: {diff})"
            )
        num_classes = info["num_classes"]
    else:
        tokens = tokenize_dataset(tokenizer, cfg.data)
        num_classes = int(tokens["labels"].max()) + 1
    arc = ARConfig(
        num_classes=num_classes,
        grid=tokenizer.cfg.grid,
        semantic_codes=tokenizer.cfg.semantic_codes,
        visual_codes=tokenizer.cfg.visual_codes,
        dim=cfg.dim,
        depth=cfg.depth,
        heads=cfg.heads,
        mlp_ratio=cfg.mlp_ratio,
        dropout=cfg.dropout,
        class_dropout=cfg.class_dropout,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        model = ARTransformer(arc)

    def loss_fn(batch, modules, ctx):
        sem, vis, labels = batch
        ar = modules["generator"]
        ls, lv = ar(sem, vis, labels)
        ce_s = torch.nn.functional.cross_entropy(ls.flatten(0, 1), sem.flatten())
        ce_v = torch.nn.functional.cross_entropy(lv.flatten(0, 1), vis.flatten())
        return ce_s + ce_v, {"ce_sem": ce_s.detach(), "ce_vis": ce_v.detach()}

    trainer = Trainer(cfg.train, {"generator": model}, loss_fn, TokenDataset(tokens))
    result = trainer.fit(resume=cfg.resume)
    model = trainer.unwrap("generator")
    out = Path(cfg.train.output_dir)
    if trainer.accelerator.is_main_process:
        save_pretrained(model, out / "generator")
        (out / "generator.json").write_text(
            json.dumps(
                {"steps": result.step, "losses": result.losses, "tokenizer": cfg.tokenizer},
                indent=2,
            )
        )
    trainer.accelerator.wait_for_everyone()
    return ARResult(model.eval(), result, out, time.perf_counter() - t0)


@torch.no_grad()
def sample_images(
    generator: ARTransformer,
    tokenizer: GloTok,
    labels: torch.Tensor,
    sample: SampleConfig | None = None,
    *,
    seed: int = 0,
    use_cache: bool = True,
) -> torch.Tensor:
    """Images in [-1, 1] for class ``labels``: AR sampling of both grids, then the tokenizer's
    decoder."""
    sc = sample or SampleConfig()
    if (
        generator.cfg.grid != tokenizer.cfg.grid
        or generator.cfg.semantic_codes != tokenizer.cfg.semantic_codes
        or generator.cfg.visual_codes != tokenizer.cfg.visual_codes
    ):
        raise KeyMismatchError(
            "sample: the generator was trained on another tokenizer's tokens (grid or codebook sizes differ)"
        )
    if sc.batch_size < 1:
        raise RangeError(f"batch_size: expected >= 1, got {sc.batch_size}")
    device = next(generator.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    tokenizer.eval()
    out = []
    n = tokenizer.cfg.grid
    for s in range(0, labels.shape[0], sc.batch_size):
        lab = labels[s : s + sc.batch_size].to(device)
        sem, vis = generator.generate(
            lab,
            cfg_scale=sc.cfg_scale,
            temperature=sc.temperature,
            top_k=sc.top_k,
            use_cache=use_cache,
            generator=g,
        )
        out.append(tokenizer.decode(sem.view(-1, n, n), vis.view(-1, n, n)).clamp(-1, 1).cpu())
    return torch.cat(out)


def generation_metrics(
    generator: ARTransformer,
    tokenizer: GloTok,
    data: ImageDataConfig,
    extractor: torch.nn.Module | None,
    num_images: int,
    sample: SampleConfig | None = None,
    *,
    inception_weights: str | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """gFID: samples for the class labels of ``num_images`` held-out images, against them."""
    from facelab.glotok.metrics import frechet_distance

    real, labels = eval_dataset(data, num_images).tensors()
    fake = sample_images(generator, tokenizer, labels, sample, seed=seed)
    return {
        "gfid": frechet_distance(real, fake, extractor, inception_weights=inception_weights),
        "num_images": float(num_images),
    }


__all__ = [
    "ARRecipe",
    "ARResult",
    "SampleConfig",
    "TokenDataset",
    "ar_presets",
    "dataclasses",
    "generation_metrics",
    "load_tokens",
    "sample_images",
    "save_tokens",
    "tokenize_dataset",
    "tokenize_images",
    "train_ar",
]
