"""The PartialFace training recipe, on the core trainer and the shared recipe parts.

Paper defaults (``paper`` preset, the dataclass defaults): IR-18 with a 27-channel stem,
ArcFace s = 64, m = 0.5, SGD lr 0.1, momentum 0.9, weight decay 5e-4, x0.1 at epochs 10, 18,
22 of 24, batch 64 per GPU, every sample 3 times per epoch (NUM_AUG), reference-mode DCT of
112 x 112 faces. The ``toy`` preset is a small IR-18 on 32 x 32 toyfaces that trains on a
laptop CPU in minutes.

``train(cfg)`` writes ``output_dir/model`` (``from_pretrained``-able, records the plan id),
``output_dir/plan.json`` (the plan, kept apart from the model: it is the server's secret) and
``output_dir/metrics.json`` (same-subset and cross-subset verification). Run the paper-scale
recipe with ``accelerate launch --multi_gpu --num_processes N -m facelab.partialface.cli train
--preset paper --data.source /data/ms1m``; a stopped run continues with ``--resume latest``
and reuses the saved plan.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from facelab.core.errors import KeyMismatchError
from facelab.core.hub import save_pretrained
from facelab.core.recipe import (
    DataConfig,
    HeadConfig,
    RepeatDataset,
    build_eval_sets,
    build_head,
    build_train_dataset,
    margin_loss,
    paper_shape_data,
    paper_train_config,
    to_jsonable,
    write_json,
)
from facelab.core.train import TrainConfig, Trainer, TrainResult
from facelab.partialface.batches import IndexedDataset, form_training_batch
from facelab.partialface.evaluate import SubsetVerification, evaluate_subsets
from facelab.partialface.model import PartialFaceModel, estimate_position_std
from facelab.partialface.plan import SubsetPlan, resolve_plan

PLAN_FILE = "plan.json"
MODEL_DIR = "model"
#: toyfaces caches at most this many float32 values in memory (2 GB)
_MAX_CACHE_VALUES = 512 * 1024 * 1024


def _paper_train() -> TrainConfig:
    return paper_train_config("runs/partialface", batch_size=64)


def _paper_data() -> DataConfig:
    return DataConfig(repeat=3)


@dataclass
class PartialFaceConfig:
    """Everything the PartialFace recipe needs; the defaults are the paper's."""

    data: DataConfig = field(default_factory=_paper_data)
    """training / evaluation data; ``repeat`` is the paper's r = 3 (NUM_AUG)"""
    plan: str = "generate"
    """the subset plan: ``generate`` (a fresh one from the CSPRNG, or from ``plan_seed``),
    ``reference`` (TFace's hard-coded one) or a .json/.safetensors plan file"""
    plan_seed: int | None = None
    """seed for ``plan=generate`` (reproducible, not secret); None = CSPRNG"""
    num_subsets: int = 6
    """subsets of a generated plan (54 / num_subsets positions each)"""
    num_permutations: int = 3
    """permutations of a generated plan"""
    codec_mode: Literal["reference", "compact"] = "reference"
    backbone: str = "iresnet18"
    embedding_size: int = 512
    base_width: int = 64
    dropout: float = 0.0
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=_paper_train)
    input_norm: Literal["subset", "none"] = "subset"
    """ours: scale each sample by its subset's RMS coefficient scale (see model.py); ``none``
    feeds raw coefficients as TFace"""
    norm_samples: int = 512
    """training images the input statistics are estimated from"""
    eval_challenges: int = 6
    """challenges each evaluation image is embedded under (same/cross-subset matching)"""
    eval_batch_size: int = 128
    cache_images: bool = True
    """keep rendered toyfaces in memory (only when they fit in 2 GB)"""
    resume: str | None = None
    """``latest`` or a checkpoint path"""


def partialface_presets() -> dict[str, PartialFaceConfig]:
    """``paper``: the paper's recipe (defaults); ``toy``: toyfaces, 32 px, CPU minutes;
    ``paper-shape``: the paper's 112 px faces and block layout (reference-mode 27-channel
    subsets of 112 x 112 maps into an IR-18 with four stages at 56/28/14/7 px) on toyfaces
    (``facelab.core.recipe.paper_shape_data``) with the toy preset's widths and optimisation.

    The toy data uses ``toy_difficulty="easy"``: the default nuisance (optics blur, sensor
    noise) wipes out most of the high frequencies PartialFace keeps, and at this budget the
    subset model then stays near chance (see the README).
    """
    toy = PartialFaceConfig(
        data=DataConfig(
            image_size=32,
            toy_identities=200,
            toy_images_per_identity=10,
            eval_identities=100,
            eval_images_per_identity=6,
            eval_pairs=600,
            toy_difficulty="easy",
            repeat=3,
        ),
        plan="reference",
        embedding_size=128,
        base_width=8,
        head=HeadConfig(s=32.0),
        train=TrainConfig(
            output_dir="runs/partialface-toy",
            max_steps=600,  # one backbone for six subsets: ~4x the RGB baseline's steps
            batch_size=64,
            lr=0.1,
            momentum=0.9,
            weight_decay=5e-4,
            scheduler="cosine",
            warmup=20,
            warmup_unit="step",
            seed=1337,
            log_every=25,
        ),
        eval_batch_size=256,
    )
    paper_shape = dataclasses.replace(
        toy,
        data=paper_shape_data(repeat=3),
        train=dataclasses.replace(toy.train, output_dir="runs/partialface-paper-shape"),
        eval_batch_size=64,
    )
    return {"paper": PartialFaceConfig(), "toy": toy, "paper-shape": paper_shape}


@dataclass
class PartialFaceResult:
    """What :func:`train` returns; ``verification`` only on the main process."""

    model: PartialFaceModel
    plan: SubsetPlan
    train: TrainResult
    verification: dict[str, dict[str, SubsetVerification]]
    output_dir: Path
    wall_time: float

    def summary(self) -> dict[str, Any]:
        return {
            "steps": self.train.step,
            "wall_time_s": round(self.wall_time, 1),
            "losses": self.train.losses,
            "plan_id": self.plan.plan_id,
            "verification": {
                s: {m: r.to_dict() for m, r in res.items()} for s, res in self.verification.items()
            },
        }


def _cache_toy(dataset: Dataset) -> None:
    from facelab.core.data.toyfaces import ToyFaces

    base = dataset.base if isinstance(dataset, RepeatDataset) else dataset
    if isinstance(base, ToyFaces) and len(base) * 3 * base.size**2 <= _MAX_CACHE_VALUES:
        base.materialize(torch.float32)


def select_plan(cfg: PartialFaceConfig) -> SubsetPlan:
    """The plan of a run: a resumed run reuses ``output_dir/plan.json`` (a mismatch with an
    explicitly named plan fails); otherwise ``cfg.plan`` resolved."""
    saved = Path(cfg.train.output_dir) / PLAN_FILE
    if cfg.resume is not None and saved.is_file():
        plan = SubsetPlan.load(saved)
        if cfg.plan != "generate":
            wanted = resolve_plan(cfg.plan)
            if wanted != plan:
                raise KeyMismatchError(
                    f"resume: {saved} holds plan {plan.plan_id}, the config names plan "
                    f"{wanted.plan_id}"
                )
        return plan
    if cfg.plan == "generate":
        return SubsetPlan.generate(cfg.num_subsets, cfg.num_permutations, seed=cfg.plan_seed)
    return resolve_plan(cfg.plan)


def build_model(cfg: PartialFaceConfig, plan: SubsetPlan) -> PartialFaceModel:
    return PartialFaceModel(
        backbone=cfg.backbone,
        subset_size=plan.subset_size,
        image_size=cfg.data.image_size,
        codec_mode=cfg.codec_mode,
        embedding_size=cfg.embedding_size,
        base_width=cfg.base_width,
        dropout=cfg.dropout,
        plan_id=plan.plan_id,
        input_norm=cfg.input_norm,
    )


def sample_images(dataset: Dataset, n: int) -> torch.Tensor:
    """``n`` training images spread evenly over the dataset (deterministic)."""
    size = len(dataset)  # type: ignore[arg-type]
    idx = torch.linspace(0, size - 1, min(n, size)).round().long().unique()
    return torch.stack([dataset[int(i)][0] for i in idx])


def train(cfg: PartialFaceConfig) -> PartialFaceResult:
    """Train on random subsets, evaluate same/cross-subset matching, save model and plan."""
    t0 = time.perf_counter()
    plan = select_plan(cfg)
    dataset, num_classes = build_train_dataset(cfg.data)
    if cfg.cache_images and cfg.data.is_toy:
        _cache_toy(dataset)
    with torch.random.fork_rng(devices=[]):  # initial weights from the configured seed alone
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg, plan)
        head = build_head(cfg.head, cfg.embedding_size, num_classes)
    encoder = model.make_encoder(check=False)
    if model.input_norm != "none":
        model.set_position_std(
            estimate_position_std(sample_images(dataset, cfg.norm_samples), encoder)
        )
    seed = cfg.train.seed

    def loss_fn(batch, modules, ctx):
        images, labels, indices = batch
        b = form_training_batch(images, labels, indices, plan, encoder, seed=seed, epoch=ctx.epoch)
        return margin_loss(modules["head"], modules["model"](b.channels, b.positions), labels)

    out = Path(cfg.train.output_dir)
    trainer = Trainer(cfg.train, {"model": model, "head": head}, loss_fn, IndexedDataset(dataset))
    if trainer.accelerator.is_main_process:
        plan.save(out / PLAN_FILE)  # before training: a resumed run must find the same plan
    result = trainer.fit(resume=cfg.resume)
    trained: PartialFaceModel = trainer.unwrap("model")  # type: ignore[assignment]
    verification: dict[str, dict[str, SubsetVerification]] = {}
    if trainer.accelerator.is_main_process:
        verification = evaluate_subsets(
            trained,
            plan,
            build_eval_sets(cfg.data),
            num_challenges=cfg.eval_challenges,
            batch_size=cfg.eval_batch_size,
        )
        save_pretrained(trained, out / MODEL_DIR)
    rr = PartialFaceResult(trained, plan, result, verification, out, time.perf_counter() - t0)
    if trainer.accelerator.is_main_process:
        write_json(out / "metrics.json", rr.summary() | {"config": to_jsonable(cfg)})
    trainer.accelerator.wait_for_everyone()
    return rr


def load_trained(output_dir: str | Path) -> tuple[PartialFaceModel, SubsetPlan]:
    """The model and plan written by :func:`train` (checked to belong together)."""
    from facelab.partialface.model import PartialFaceModel as _Model

    out = Path(output_dir)
    model = _Model.from_pretrained(out / MODEL_DIR)
    plan = SubsetPlan.load(out / PLAN_FILE)
    model.check_plan(plan.plan_id)
    return model, plan
