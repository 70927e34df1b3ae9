"""The ArcFace baseline of the suites, through core's recipe pieces, and its evaluation.

``train_baseline`` trains ``facelab.core.recipe``'s ArcFace baseline (``build_backbone`` +
``build_head`` + ``margin_loss`` on core's ``Trainer``) from an ``ArcFaceConfig``. On toyfaces the
training images are rendered once and kept in memory (``ToyFaces`` renders one sample per
``__getitem__``, which would make the toy run data-bound); on real data it is
``facelab.core.recipe.train_arcface`` itself.

``verification`` returns everything the tables and plots need from a model on a
verification set: 10-fold accuracy (insightface protocol), TAR@FAR=1e-3 (ROC of cosine scores),
the ROC itself, the embeddings and the embedding throughput.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

FAR = 1e-3


@dataclass
class TrainedBaseline:
    model: nn.Module
    train_time_s: float
    steps: int
    model_dir: Path
    final_loss: float


def toy_training_data(cfg: Any) -> tuple[TensorDataset, int]:
    """The toy training set of a core ``DataConfig``, rendered once into memory."""
    from facelab.core.data.toyfaces import ToyFaces

    ds = ToyFaces(
        cfg.toy_identities,
        cfg.toy_images_per_identity,
        size=cfg.image_size,
        seed=cfg.toy_seed,
        difficulty=cfg.toy_difficulty,
    )
    images = ds.render(torch.arange(len(ds)))
    return TensorDataset(images, ds.labels.clone()), cfg.toy_identities


def train_baseline(cfg: Any, dataset: TensorDataset | None = None) -> TrainedBaseline:
    """Train the baseline of an ``ArcFaceConfig``; save it to ``<output_dir>/model``.

    ``dataset``: in-memory ``(images, labels)`` (toyfaces); None trains with
    ``facelab.core.recipe.train_arcface`` on ``cfg.data`` (real data).
    """
    from facelab.core.hub import save_pretrained
    from facelab.core.recipe import build_backbone, build_head, margin_loss, train_arcface
    from facelab.core.train import Trainer

    out = Path(cfg.train.output_dir)
    if dataset is None:
        rr = train_arcface(cfg)
        loss = float(rr.train.losses.get("loss", float("nan")))
        return TrainedBaseline(
            rr.model.eval(), rr.train.wall_time, rr.train.step, out / "model", loss
        )
    num_classes = int(dataset.tensors[1].max()) + 1
    backbone = build_backbone(cfg)
    head = build_head(cfg.head, cfg.embedding_size, num_classes)

    def loss_fn(batch, modules, ctx):
        images, labels = batch
        return margin_loss(modules["head"], modules["backbone"](images), labels)

    trainer = Trainer(cfg.train, {"backbone": backbone, "head": head}, loss_fn, dataset)
    result = trainer.fit()
    model = trainer.unwrap("backbone").eval()
    save_pretrained(model, out / "model")
    loss = float(result.losses.get("loss", float("nan")))
    return TrainedBaseline(model, result.wall_time, result.step, out / "model", loss)


def images_per_second(model: nn.Module, images: torch.Tensor, repeat: int = 2) -> float:
    """Embedding throughput (no flip), median of ``repeat`` passes after a warm-up."""
    from facelab.core.eval import embed

    embed(model, images[:8], flip=False)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        embed(model, images, flip=False, batch_size=256)
        times.append(time.perf_counter() - t0)
    return images.shape[0] / sorted(times)[len(times) // 2]


def pair_roc(scores: torch.Tensor, same: torch.Tensor) -> tuple[Any, float]:
    """(core RocCurve, TAR at FAR=1e-3 by insightface's nearest-point rule)."""
    from facelab.core.eval import roc

    curve = roc(scores.double().numpy(), same.numpy().astype(int))
    return curve, float(curve.tar_at_far(FAR)[FAR])


def verification(
    model: nn.Module, eval_set: Any, *, batch_size: int = 256, speed_images: int = 256
) -> dict[str, Any]:
    """Accuracy (10-fold), TAR@FAR=1e-3, ROC, embeddings and images/s on a core ``EvalSet``."""
    from facelab.core.eval import embed, verify_interleaved

    emb = embed(model, eval_set.images, flip=True, batch_size=batch_size)
    ver = verify_interleaved(emb, eval_set.issame, nfolds=min(10, eval_set.num_pairs))
    scores = (emb[0::2] * emb[1::2]).sum(1)
    curve, tar = pair_roc(scores, eval_set.issame)
    speed = images_per_second(model, eval_set.images[:speed_images])
    return {
        "accuracy": float(ver.accuracy),
        "accuracy_std": float(ver.accuracy_std),
        "val_at_far_1e-3": float(ver.val),
        "tar_at_far_1e-3": tar,
        "roc": curve,
        "embeddings": emb,
        "infer_images_per_s": speed,
    }
