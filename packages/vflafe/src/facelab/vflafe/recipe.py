"""The VFL training recipe on the core ``Trainer`` (in one process: simulation and benchmarks).

``train(cfg)`` builds the vertical dataset and the model, sets the noise multiplier (given, or
solved from ``target_epsilon`` for ``releases = epochs`` releases per training sample), trains
every party jointly through the ``Exchange`` (one optimizer over all parties' parameters is the
same update as one optimizer per party: AdamW is per-parameter), records the last epoch's
boundary transcript for the attacks, and evaluates on the test split (one more release of each
test sample).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from facelab.core.errors import RangeError
from facelab.core.train import TrainConfig, Trainer
from facelab.vflafe.accounting import embedding_epsilon, embedding_noise_for
from facelab.vflafe.data import DatasetName, VerticalData, load
from facelab.vflafe.model import ModelConfig, PrivacyConfig, Transcript, VFLModel

__all__ = [
    "DataConfig",
    "RecipeConfig",
    "TrainOutcome",
    "VerticalDataset",
    "evaluate",
    "presets",
    "resolve_privacy",
    "train",
]


@dataclass
class DataConfig:
    """``name``: breast_cancer, digits or toyfaces; ``parties``: passive parties (feature
    blocks); toyfaces' size, identities and images per identity; the split's seed."""

    name: DatasetName = "breast_cancer"
    parties: int = 2
    test_fraction: float = 0.25
    seed: int = 0
    num_identities: int = 20
    images_per_identity: int = 20
    size: int = 32

    def load(self) -> tuple[VerticalData, VerticalData]:
        extra = {}
        if self.name == "toyfaces":
            extra = {
                "num_identities": self.num_identities,
                "images_per_identity": self.images_per_identity,
                "size": self.size,
            }
        return load(self.name, self.parties, self.seed, test_fraction=self.test_fraction, **extra)


@dataclass
class RecipeConfig:
    """A VFL run. ``target_epsilon`` (with ``delta``, ``relation``, ``accountant``) sets
    ``privacy.noise_multiplier`` for ``train.epochs`` releases per training sample; leave it
    None to use ``privacy.noise_multiplier`` as given."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            output_dir="",
            epochs=10,
            batch_size=64,
            optimizer="adamw",
            lr=1e-2,
            weight_decay=1e-4,
            scheduler="cosine",
            log_every=1000,
            progress=False,
            save_on_exit=False,
        )
    )
    target_epsilon: float | None = None
    delta: float = 1e-5
    relation: Literal["replace", "zero-out"] = "replace"
    accountant: Literal["rdp", "prv"] = "rdp"
    record_transcript: bool = True

    def __post_init__(self) -> None:
        if self.target_epsilon is not None and self.privacy.mode == "none":
            raise RangeError(
                "target_epsilon: mode 'none' has no noise to set; use 'plain' or 'afe'"
            )
        if self.train.max_steps is not None:
            raise RangeError(
                "train.max_steps: the accounting counts whole epochs (one release per sample "
                f"and epoch); set train.epochs instead, got max_steps={self.train.max_steps}"
            )


def presets() -> dict[str, RecipeConfig]:
    """``breast_cancer`` / ``digits`` (2 parties, 10 epochs of batch 64, AdamW 1e-2 cosine) and
    ``toyfaces`` (2 image bands, 20 identities x 20 images at 32 px, 32-dim embeddings), all
    VFL-AFE without noise until a target epsilon or noise multiplier is given."""
    base = RecipeConfig()
    return {
        "breast_cancer": base,
        "digits": dataclasses.replace(base, data=DataConfig(name="digits")),
        "toyfaces": dataclasses.replace(
            base, data=DataConfig(name="toyfaces"), model=ModelConfig(embed_dim=32)
        ),
    }


class VerticalDataset(Dataset):
    """``(ids, [x_1 .. x_K], y)`` batches, gathered in one indexing op per party."""

    def __init__(self, data: VerticalData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitems__(self, indices: list[int]):
        idx = torch.as_tensor(indices, dtype=torch.int64)
        d = self.data
        return d.ids[idx], [x[idx] for x in d.parties], d.labels[idx]

    def __getitem__(self, i: int):
        return self.__getitems__([i])


def _identity_collate(batch):
    return batch


def resolve_privacy(cfg: RecipeConfig) -> PrivacyConfig:
    """``cfg.privacy`` with the noise multiplier solved from ``target_epsilon`` when set."""
    if cfg.target_epsilon is None:
        return cfg.privacy
    solve = {
        "target_epsilon": cfg.target_epsilon,
        "delta": cfg.delta,
        "relation": cfg.relation,
        "accountant": cfg.accountant,
    }
    return dataclasses.replace(
        cfg.privacy,
        noise_multiplier=embedding_noise_for(releases=cfg.train.epochs, **solve),
        inference_noise_multiplier=embedding_noise_for(releases=1, **solve),
    )


@dataclass
class TrainOutcome:
    """``accuracy`` on the test split (its embeddings released once, with noise), ``epsilon`` of
    a training sample after ``releases`` releases (``inf`` without noise), the trained model, the
    last epoch's transcript and the data."""

    accuracy: float
    epsilon: float
    noise_multiplier: float
    releases: int
    model: VFLModel
    transcript: Transcript
    train_data: VerticalData
    test_data: VerticalData
    losses: dict[str, float]
    wall_time: float


@torch.no_grad()
def evaluate(model: VFLModel, data: VerticalData, batch_size: int = 512) -> float:
    """Top-1 accuracy with every party releasing (privatized) embeddings of ``data`` once."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for start in range(0, len(data), batch_size):
        sl = slice(start, start + batch_size)
        logits = model([x[sl].to(device) for x in data.parties])
        correct += (logits.argmax(-1) == data.labels[sl].to(device)).sum()
    model.train(was)
    return float(correct) / len(data)


def train(
    cfg: RecipeConfig, *, data: tuple[VerticalData, VerticalData] | None = None
) -> TrainOutcome:
    """Train one VFL run (see the module docstring); ``data`` overrides ``cfg.data``."""
    train_data, test_data = data if data is not None else cfg.data.load()
    privacy = resolve_privacy(cfg)
    torch.manual_seed(cfg.train.seed)
    model = VFLModel(train_data.feature_shapes, train_data.num_classes, cfg.model, privacy)
    epochs = cfg.train.epochs

    def loss_fn(batch, modules, ctx):
        ids, xs, y = batch
        vfl = ctx.unwrap("vfl")
        vfl.transcript.recording = cfg.record_transcript and ctx.epoch == epochs - 1
        return F.cross_entropy(modules["vfl"](xs, ids), y)

    tmp = None
    tcfg = cfg.train
    if not tcfg.output_dir:
        tmp = tempfile.TemporaryDirectory(prefix="vflafe-")
        tcfg = dataclasses.replace(tcfg, output_dir=tmp.name)
    try:
        trainer = Trainer(
            tcfg,
            {"vfl": model},
            loss_fn,
            VerticalDataset(train_data),
            collate_fn=_identity_collate,
        )
        for source in model.noise_sources():
            trainer.accelerator.register_for_checkpointing(source)
        result = trainer.fit(
            resume="latest" if tcfg.checkpoint_every or tcfg.save_on_exit else None
        )
    finally:
        if tmp is not None:
            tmp.cleanup()
    model = trainer.unwrap("vfl")
    model.transcript.recording = False
    accuracy = evaluate(model, test_data)
    eps = (
        math.inf
        if privacy.mode == "none" or privacy.noise_multiplier == 0
        else embedding_epsilon(
            noise_multiplier=privacy.noise_multiplier,
            releases=epochs,
            delta=cfg.delta,
            relation=cfg.relation,
            accountant=cfg.accountant,
        )
    )
    return TrainOutcome(
        accuracy=accuracy,
        epsilon=eps,
        noise_multiplier=privacy.noise_multiplier,
        releases=epochs,
        model=model,
        transcript=model.transcript,
        train_data=train_data,
        test_data=test_data,
        losses=result.losses,
        wall_time=result.wall_time,
    )
