"""Where the teacher histogram comes from, computed once and saved.

In order of precedence (``TeacherConfig``): a saved histogram file; a pretrained semantic
codebook (a safetensors file with a ``codebook`` tensor, or a state dict / ``.npy`` holding one);
a pretrained recognizer directory (``save_pretrained``) whose embeddings of the training images
are k-means clustered (scikit-learn) into as many centroids as the student's semantic codebook
has codes; or, for toy runs, **the core's toy ArcFace recognizer trained in-process**
(``facelab.core.recipe.train_arcface``: a small IResNet-18 on toyfaces at the tokenizer's image
size), then the same k-means route. The teacher network never runs during tokenizer training.

The same toy recognizer serves as the toy perceptual network (``perceptual="recognizer"`` with
no path) and, trained with another seed, as the toy FID feature extractor of the benchmark.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from facelab.core.errors import FormatError, KeyMismatchError
from facelab.glotok.histogram import (
    DEFAULT_BINS,
    TeacherHistogram,
    teacher_histogram_from_codebook,
    teacher_histogram_from_features,
)

logger = logging.getLogger(__name__)

TEACHER_FILE = "teacher_histogram.safetensors"


@dataclass
class ToyRecognizerConfig:
    """The toy ArcFace recognizer (core recipe) trained in-process when no teacher is given."""

    identities: int = 200
    images_per_identity: int = 10
    epochs: int = 3
    batch_size: int = 64
    base_width: int = 8
    embedding_size: int = 64
    seed: int = 1337


@dataclass
class TeacherConfig:
    histogram: str | None = None
    """a saved teacher histogram (TeacherHistogram.save)"""
    codebook: str | None = None
    """a pretrained semantic codebook file (safetensors 'codebook' / state dict / .npy)"""
    recognizer: str | None = None
    """a save_pretrained recognizer: k-means of its embeddings of the training images"""
    toy: ToyRecognizerConfig = dataclasses.field(default_factory=ToyRecognizerConfig)
    feature_images: int = 4000
    """training images embedded for k-means (the first N)"""
    bins: int = DEFAULT_BINS
    alpha: float | None = None
    """histogram sharpness; None = (bins - 1)^2 / 8 (see facelab.glotok.histogram)"""
    seed: int = 0


def train_toy_recognizer(
    out_dir: str | Path, image_size: int, cfg: ToyRecognizerConfig, progress: bool = False
) -> Path:
    """Train (once: an existing ``out_dir/model`` is reused) the core's ArcFace baseline at toy
    scale; returns the ``save_pretrained`` directory of the backbone."""
    from facelab.core.recipe import ArcFaceConfig, DataConfig, HeadConfig, train_arcface
    from facelab.core.train import TrainConfig

    out = Path(out_dir)
    if (out / "model" / "config.json").is_file():
        return out / "model"
    arc = ArcFaceConfig(
        data=DataConfig(
            image_size=image_size,
            toy_identities=cfg.identities,
            toy_images_per_identity=cfg.images_per_identity,
            eval_identities=0,
            eval_pairs=0,
        ),
        backbone="r18",
        embedding_size=cfg.embedding_size,
        base_width=cfg.base_width,
        # a milder margin than s=64, m=0.5 lets a tiny net learn in a few hundred steps
        head=HeadConfig(s=32.0, m=0.3),
        train=TrainConfig(
            output_dir=str(out),
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            lr=0.1,
            milestones=(cfg.epochs - 1,) if cfg.epochs > 1 else (),
            seed=cfg.seed,
            progress=progress,
            save_on_exit=False,
            log_every=50,
        ),
        eval_batch_size=256,
    )
    logger.info("training the toy ArcFace recognizer (%s)", out)
    train_arcface(arc)
    return out / "model"


@torch.no_grad()
def embed_images(
    model: torch.nn.Module, images: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    from facelab.glotok.metrics import RecognizerFeatures

    ext = RecognizerFeatures(model)
    return torch.cat(
        [ext(images[s : s + batch_size]) for s in range(0, images.shape[0], batch_size)]
    )


def load_codebook_file(path: str | Path) -> torch.Tensor:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"teacher codebook: no file {p}")
    if p.suffix == ".npy":
        import numpy as np

        arr = np.load(p, allow_pickle=False)
        return torch.from_numpy(np.asarray(arr, dtype=np.float32))
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        state = torch.load(p, map_location="cpu", weights_only=True)
        if isinstance(state, torch.Tensor):
            return state.float()
    keys = [
        k
        for k, v in state.items()
        if (isinstance(v, torch.Tensor) and v.dim() == 2 and "codebook" in k)
        or k.endswith("embedding.weight")
    ]
    if len(keys) != 1:
        raise FormatError(
            f"{p}: expected exactly one 2-D 'codebook' (or '*embedding.weight') tensor, found {keys or sorted(state)[:10]}"
        )
    return state[keys[0]].float()


def resolve_teacher(
    cfg: TeacherConfig,
    num_codes: int,
    train_images: torch.Tensor | None,
    out_dir: str | Path,
    image_size: int,
    toy_recognizer_dir: str | Path | None = None,
) -> TeacherHistogram:
    """The teacher histogram: ``out_dir/teacher_histogram.safetensors`` when it exists (a resumed
    run), else computed from the first available source and saved there."""
    out = Path(out_dir) / TEACHER_FILE
    if out.is_file():
        hist = TeacherHistogram.load(out)
        return hist
    if cfg.histogram is not None:
        hist = TeacherHistogram.load(cfg.histogram)
        if hist.bins != cfg.bins or (
            cfg.alpha is not None and abs(hist.alpha - cfg.alpha) > 1e-9 * cfg.alpha
        ):
            raise KeyMismatchError(
                f"teacher histogram {cfg.histogram}: computed with bins={hist.bins}, "
                f"alpha={hist.alpha}; this run expects bins={cfg.bins}, alpha={cfg.alpha or 'default'}"
            )
    elif cfg.codebook is not None:
        hist = teacher_histogram_from_codebook(
            load_codebook_file(cfg.codebook),
            cfg.bins,
            cfg.alpha,
            source=f"codebook:{Path(cfg.codebook).name}",
        )
    else:
        if train_images is None:
            raise FormatError("teacher: a recognizer teacher needs training images to embed")
        if cfg.recognizer is not None:
            model_dir, source = Path(cfg.recognizer), f"kmeans:{Path(cfg.recognizer).name}"
        else:
            model_dir = (
                Path(toy_recognizer_dir)
                if toy_recognizer_dir
                else train_toy_recognizer(Path(out_dir) / "toy-recognizer", image_size, cfg.toy)
            )
            source = "kmeans:toy-arcface-r18 (core recipe, trained in-process)"
        from facelab.core.hub import from_pretrained

        feats = embed_images(from_pretrained(model_dir), train_images[: cfg.feature_images])
        hist = teacher_histogram_from_features(
            feats, num_codes, cfg.bins, cfg.alpha, seed=cfg.seed, source=source
        )
    hist.save(out)
    return hist
