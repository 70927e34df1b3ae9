"""Our training recipe for the extractor (the reference ships none).

The paper says only that ``group_cov`` and the attention are "learned in a recognition-favored
way". Ours (documented as ours, not the authors'):

* the template vector ``e = concat_i(w_i * t_i / |t_i|)`` (groups normalized, weighted by the
  attention) is classified with an ArcFace head (s = 64, m = 0.5). ``e.e'`` is
  ``sum_i w_i w'_i cos(t_i, t'_i)``, close to the score SlerpFace matching uses, so the groups
  and the weights learn what makes two templates of a person agree;
* the backbone is either frozen (a pretrained one, e.g. an insightface IResNet-50 loaded with
  ``backbone_weights``; only ``group_cov`` and the attention train) or trained jointly, then
  with a second ArcFace loss on its own embedding (weight ``vector_loss_weight``) so the body
  stays a face recognizer;
* the group features are computed exactly as at inference (same flip mode).

Everything runs through ``facelab.core.train.Trainer`` (checkpoints, exact resume, AMP, DDP).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from facelab.core.errors import RangeError, UnknownNameError
from facelab.core.heads import MarginHead
from facelab.core.train import TrainConfig, Trainer, TrainResult
from facelab.slerpface.model import SlerpFaceExtractor, group_embedding


@dataclass
class ModelConfig:
    """The extractor (see ``SlerpFaceExtractor``); paper: IResNet-50, 16-dim groups."""

    backbone: str = "iresnet50"
    backbone_options: dict[str, Any] = field(default_factory=dict)
    group_size: int = 16
    flip: Literal["sum", "unflip", "none"] = "sum"
    temperature: float = 1.0

    def build(self) -> SlerpFaceExtractor:
        return SlerpFaceExtractor(
            self.backbone, self.backbone_options, self.group_size, self.flip, self.temperature
        )


@dataclass
class DataConfig:
    """Training data: ``toyfaces`` (generated), ``folder`` (one folder per identity) or
    ``recordio`` (insightface ``train.rec``/``train.idx`` under ``root``, e.g. MS1MV2)."""

    kind: Literal["toyfaces", "folder", "recordio"] = "toyfaces"
    root: str | None = None
    num_identities: int = 200
    images_per_identity: int = 16
    size: int = 112
    seed: int = 0
    difficulty: str = "default"

    def build(self) -> Dataset:
        if self.kind == "toyfaces":
            from facelab.core.data.toyfaces import ToyFaces

            return ToyFaces(
                self.num_identities,
                self.images_per_identity,
                size=self.size,
                seed=self.seed,
                difficulty=self.difficulty,
            )
        if self.root is None:
            raise RangeError(f"data.root: the {self.kind!r} data kind needs a root folder")
        if self.kind == "folder":
            from facelab.core.data.folders import IdentityFolderDataset

            return IdentityFolderDataset(self.root)
        if self.kind == "recordio":
            from facelab.core.data.recordio import MXFaceDataset

            return MXFaceDataset(self.root)
        raise UnknownNameError(
            f"data.kind: expected toyfaces, folder or recordio, got {self.kind!r}"
        )


@dataclass
class RecipeConfig:
    """Model, data, loss and the core ``TrainConfig``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    #: local insightface ``backbone.pth`` or a ``save_pretrained`` directory of a backbone
    backbone_weights: str | None = None
    freeze_backbone: bool = False
    margin_s: float = 64.0
    margin_m: float = 0.5
    #: ArcFace loss on the backbone's own embedding (joint training only; 0 disables)
    vector_loss_weight: float = 1.0


def presets() -> dict[str, RecipeConfig]:
    """``toy``: a small IResNet-18 (width 8, 64 x 64 input: a 4 x 4 map = 16 groups) trained
    jointly on toyfaces in about ten minutes on a CPU;
    ``paper``: IResNet-50 on MS1MV2 (recordio root to fill in), insightface's schedule."""
    toy = RecipeConfig(
        model=ModelConfig("iresnet18", {"base_width": 8, "input_size": 64, "embedding_size": 128}),
        data=DataConfig("toyfaces", None, 200, 16, 64, 0, "default"),
        train=TrainConfig(
            output_dir="runs/slerpface-toy",
            max_steps=400,
            batch_size=64,
            lr=0.1,
            scheduler="cosine",
            warmup=20,
            warmup_unit="step",
            weight_decay=5e-4,
            log_every=20,
            checkpoint_every=100,
        ),
        margin_s=32.0,
    )
    paper = RecipeConfig(
        model=ModelConfig("iresnet50", {"input_size": 112}),
        data=DataConfig("recordio", "data/ms1m-retinaface-t1"),
        train=TrainConfig(
            output_dir="runs/slerpface-r50",
            epochs=20,
            batch_size=128,
            lr=0.1,
            scheduler="step",
            milestones=(10, 16, 18),
            weight_decay=5e-4,
            mixed_precision="fp16",
            checkpoint_every=5000,
        ),
    )
    return {"toy": toy, "paper": paper}


class GroupBranch(nn.Module):
    """``group_cov`` + attention of an extractor (the same module objects), as one trainable
    module taking body maps, so the trainer can freeze the backbone apart from them."""

    def __init__(self, extractor: SlerpFaceExtractor) -> None:
        super().__init__()
        self.group_cov = extractor.group_cov
        self.group_attention = extractor.group_attention
        self.flip = extractor.flip

    def forward(
        self, body: torch.Tensor, body_flipped: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.group_cov(body)
        if body_flipped is not None:
            gf = self.group_cov(body_flipped)
            g = g + (torch.flip(gf, dims=(3,)) if self.flip == "unflip" else gf)
        return SlerpFaceExtractor.map_to_groups(g), self.group_attention(g)


def _load_backbone_weights(extractor: SlerpFaceExtractor, path: str) -> None:
    p = Path(path)
    if p.is_dir():
        from facelab.core.hub import from_pretrained

        src = from_pretrained(p)
        extractor.backbone.load_state_dict(src.state_dict())
        return
    from facelab.core.backbones import load_insightface

    opts = dict(extractor.backbone_options)
    src = load_insightface(p, extractor.backbone_name, **opts)
    extractor.backbone.load_state_dict(src.state_dict())


def build_trainer(cfg: RecipeConfig) -> tuple[Trainer, SlerpFaceExtractor]:
    """The extractor and a ready ``Trainer`` (call ``fit``)."""
    extractor = cfg.model.build()
    if cfg.backbone_weights:
        _load_backbone_weights(extractor, cfg.backbone_weights)
    data = cfg.data.build()
    labels = getattr(data, "labels", None)
    num_classes = (
        int(labels.max()) + 1
        if isinstance(labels, torch.Tensor)
        else len(getattr(data, "classes", []))
    )
    if num_classes < 2:
        raise RangeError(f"training data: expected at least 2 identities, got {num_classes}")
    dim = extractor.num_groups * extractor.group_size
    modules: dict[str, nn.Module] = {
        "backbone": extractor.backbone,
        "groups": GroupBranch(extractor),
        "group_head": MarginHead(dim, num_classes, s=cfg.margin_s, m2=cfg.margin_m),
    }
    joint = not cfg.freeze_backbone and cfg.vector_loss_weight > 0
    if joint:
        modules["vector_head"] = MarginHead(
            extractor.backbone.embedding_size, num_classes, s=cfg.margin_s, m2=cfg.margin_m
        )
    use_flip = extractor.flip != "none"
    weight = float(cfg.vector_loss_weight)

    def loss_fn(batch: Any, mods: dict[str, nn.Module], ctx: Any) -> Any:
        x, y = batch
        emb, maps = mods["backbone"](x, return_stages=True)
        body_f = None
        if use_flip:
            _, maps_f = mods["backbone"](torch.flip(x, dims=(3,)), return_stages=True)
            body_f = maps_f[-1]
        templates, weights = mods["groups"](maps[-1], body_f)
        out = mods["group_head"](group_embedding(templates, weights), y)
        group_loss = F.cross_entropy(out.logits, out.targets)
        logs = {"group_loss": group_loss.detach()}
        loss = group_loss
        if joint:
            out = mods["vector_head"](emb, y)
            vector_loss = F.cross_entropy(out.logits, out.targets)
            logs["vector_loss"] = vector_loss.detach()
            loss = loss + weight * vector_loss
        return loss, logs

    trainer = Trainer(
        cfg.train,
        modules,
        loss_fn,
        data,
        frozen=("backbone",) if cfg.freeze_backbone else (),
    )
    return trainer, extractor


def train(
    cfg: RecipeConfig, resume: str | None = "latest"
) -> tuple[SlerpFaceExtractor, TrainResult]:
    """Train, then save the extractor with ``save_pretrained`` to ``<output_dir>/extractor``."""
    trainer, extractor = build_trainer(cfg)
    result = trainer.fit(resume=resume)
    extractor.eval()
    extractor.save_pretrained(Path(cfg.train.output_dir) / "extractor")
    return extractor, result


def with_overrides(cfg: RecipeConfig, **train_overrides: Any) -> RecipeConfig:
    """A copy with some ``TrainConfig`` fields replaced (e.g. ``max_steps=10``)."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train_overrides))
