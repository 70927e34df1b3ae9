"""Recognition recipes shared by the ArcFace baseline and the privacy methods.

Every recognition method in facelab trains "some network + a margin head" on the same kinds of
data and reports the same held-out verification numbers. This module owns those shared parts:

* :class:`DataConfig` + :func:`build_train_dataset` / :func:`build_eval_sets`: toyfaces (the
  default; held-out identities for evaluation), an aligned identity-folder tree, or an
  insightface ``train.rec`` folder; ``.bin`` verification sets for evaluation;
* :class:`HeadConfig` + :func:`build_head`: the margin head (ArcFace s=64, m=0.5 by default);
* :func:`evaluate_sets`: 10-fold verification (insightface protocol) of an image -> embedding
  module on every evaluation set;
* the ArcFace baseline itself (:class:`ArcFaceConfig`, :func:`train_arcface`) and the
  ``facelab train`` / ``facelab embed`` commands.

The paper-scale defaults (insightface / TFace: SGD lr 0.1, momentum 0.9, weight decay 5e-4,
x0.1 at epochs 10, 18, 22 of 24, batch 128 per GPU, s = 64, m = 0.5) are the dataclass defaults;
``--preset toy`` is a small IResNet on toyfaces that trains on a laptop CPU in minutes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from facelab.core.errors import FacelabError, FormatError, RangeError, UnknownNameError

#: toyfaces identities from this global index on are never used for training: evaluation
#: identities are drawn from here, so they are disjoint from any training set below 10^6 people
TOY_HELDOUT_OFFSET = 1_000_000

#: the papers' face crops: 112 x 112 (insightface's ArcFace alignment template)
PAPER_IMAGE_SIZE = 112


# --------------------------------------------------------------------------------------------
# data


@dataclass
class DataConfig:
    """Where training and evaluation data come from.

    ``source``: ``"toyfaces"`` (procedural, the default), a folder of aligned identity folders,
    or a folder with insightface's ``train.rec`` / ``train.idx``. Evaluation uses held-out toy
    identities (``eval_identities`` people, ``eval_pairs`` pairs) when training on toyfaces, plus
    any ``eval_bins`` (insightface ``.bin`` files such as lfw.bin, cfp_fp.bin, agedb_30.bin).
    ``repeat``: how many times each training sample appears per epoch (TFace's NUM_AUG).
    """

    source: str = "toyfaces"
    image_size: int = 112
    toy_identities: int = 1000
    toy_images_per_identity: int = 20
    toy_seed: int = 0
    toy_difficulty: str = "default"
    eval_identities: int = 200
    eval_images_per_identity: int = 10
    eval_pairs: int = 3000
    eval_bins: tuple[str, ...] = ()
    repeat: int = 1

    def __post_init__(self) -> None:
        self.eval_bins = tuple(self.eval_bins)
        for name in ("image_size", "toy_identities", "toy_images_per_identity", "repeat"):
            if int(getattr(self, name)) < 1:
                raise RangeError(f"{name}: expected a positive int, got {getattr(self, name)}")
        if self.image_size % 8:
            raise RangeError(f"image_size: expected a multiple of 8, got {self.image_size}")
        if self.eval_pairs < 0 or self.eval_identities < 0:
            raise RangeError("eval_pairs / eval_identities: expected non-negative ints")

    @property
    def is_toy(self) -> bool:
        return self.source == "toyfaces"


def paper_shape_data(**overrides: Any) -> DataConfig:
    """Toyfaces at the papers' resolution: the data of the privacy methods' ``paper-shape``
    presets (DuetFace, PartialFace, MinusFace), which keep the papers' block layout and cut
    only widths and budget.

    112 px crops, so every network has the papers' shapes (IR-18 stages at 56, 28, 14 and 7 px,
    14 x 14 DCT blocks per channel, MinusFace's U-Net with its 7 x 7 bottleneck); toyfaces
    "easy" (as the toy presets), 100 training identities x 10 images, 60 held-out identities x 6
    images and 600 pairs for verification. ``overrides`` replace any field.
    """
    fields: dict[str, Any] = {
        "image_size": PAPER_IMAGE_SIZE,
        "toy_identities": 100,
        "toy_images_per_identity": 10,
        "toy_difficulty": "easy",
        "eval_identities": 60,
        "eval_images_per_identity": 6,
        "eval_pairs": 600,
    }
    return DataConfig(**(fields | overrides))


class RepeatDataset(Dataset):
    """Each item of ``base`` ``times`` times per epoch (index i -> base[i % len(base)])."""

    def __init__(self, base: Dataset, times: int) -> None:
        if times < 1:
            raise RangeError(f"times: expected a positive int, got {times}")
        self.base, self.times = base, int(times)
        self.labels = getattr(base, "labels", None)
        if isinstance(self.labels, torch.Tensor):
            self.labels = self.labels.repeat(self.times)

    def __len__(self) -> int:
        return len(self.base) * self.times  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        return self.base[i % len(self.base)]  # type: ignore[arg-type]


def build_train_dataset(cfg: DataConfig) -> tuple[Dataset, int]:
    """The training dataset and its number of classes."""
    if cfg.is_toy:
        from facelab.core.data.toyfaces import ToyFaces

        ds: Dataset = ToyFaces(
            cfg.toy_identities,
            cfg.toy_images_per_identity,
            size=cfg.image_size,
            seed=cfg.toy_seed,
            difficulty=cfg.toy_difficulty,
        )
        num_classes = cfg.toy_identities
    else:
        root = Path(cfg.source)
        if not root.is_dir():
            raise FormatError(
                f"data source: expected 'toyfaces' or an existing folder, got {cfg.source!r}"
            )
        if (root / "train.rec").is_file():
            from facelab.core.data.recordio import MXFaceDataset

            ds = MXFaceDataset(root, image_size=(cfg.image_size, cfg.image_size))
            num_classes = int(ds.num_classes)
        else:
            from facelab.core.data.folders import IdentityFolderDataset

            ds = IdentityFolderDataset(root)
            num_classes = int(ds.num_classes)
    if cfg.repeat > 1:
        ds = RepeatDataset(ds, cfg.repeat)
    return ds, num_classes


@dataclass
class EvalSet:
    """A verification set: pair k is (images[2k], images[2k+1]); ``issame`` (N,) bool."""

    name: str
    images: torch.Tensor
    issame: torch.Tensor
    labels: torch.Tensor | None = None  # identity of every image when known (toy sets)

    @property
    def num_pairs(self) -> int:
        return int(self.issame.numel())


def toy_eval_set(cfg: DataConfig, name: str = "toy-heldout") -> EvalSet:
    """Pairs of held-out toy identities (never seen in training), interleaved like a .bin."""
    from facelab.core.data.toyfaces import ToyFaces, make_pairs

    ds = ToyFaces(
        cfg.eval_identities,
        cfg.eval_images_per_identity,
        size=cfg.image_size,
        seed=cfg.toy_seed,
        identity_offset=TOY_HELDOUT_OFFSET,
        difficulty=cfg.toy_difficulty,
    )
    idx1, idx2, issame = make_pairs(ds, cfg.eval_pairs, seed=cfg.toy_seed)
    # alternate genuine and impostor pairs so that every one of insightface's unshuffled 10
    # folds holds both kinds (like LFW's balanced folds); VAL@FAR needs both in every fold
    gen, imp = torch.nonzero(issame).flatten(), torch.nonzero(~issame).flatten()
    k = min(gen.numel(), imp.numel())
    pair_order = torch.cat([torch.stack([gen[:k], imp[:k]], 1).flatten(), gen[k:], imp[k:]])
    idx1, idx2, issame = idx1[pair_order], idx2[pair_order], issame[pair_order]
    order = torch.stack([idx1, idx2], dim=1).flatten()
    images = ds.render(order)
    return EvalSet(name, images, issame.bool(), labels=ds.labels[order])


def build_eval_sets(cfg: DataConfig) -> list[EvalSet]:
    sets: list[EvalSet] = []
    if cfg.is_toy and cfg.eval_pairs > 0 and cfg.eval_identities > 0:
        sets.append(toy_eval_set(cfg))
    for path in cfg.eval_bins:
        from facelab.core.data.verification import load_bin

        images, issame = load_bin(path, image_size=(cfg.image_size, cfg.image_size))
        sets.append(EvalSet(Path(path).stem, images, issame.bool()))
    return sets


def evaluate_sets(
    model: nn.Module,
    sets: Sequence[EvalSet],
    *,
    batch_size: int = 128,
    flip: bool = True,
) -> dict[str, Any]:
    """insightface 10-fold verification of ``model`` (images -> embeddings) on every set.

    Returns ``{set name: VerificationResult}``.
    """
    from facelab.core.eval import embed, verify_interleaved

    out: dict[str, Any] = {}
    for s in sets:
        emb = embed(model, s.images, flip=flip, batch_size=batch_size)
        out[s.name] = verify_interleaved(emb, s.issame, nfolds=min(10, s.num_pairs))
    return out


def results_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table: rows = models, columns = sets, cells = accuracy +- std (percent)."""
    sets = sorted({s for r in results.values() for s in r})
    lines = ["| model | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    for model, res in results.items():
        cells = []
        for s in sets:
            r = res.get(s)
            cells.append(
                "-" if r is None else f"{100 * r.accuracy:.2f} +- {100 * r.accuracy_std:.2f}"
            )
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# head


@dataclass
class HeadConfig:
    """Margin head: ``arcface`` (s=64, m=0.5), ``cosface`` (m=0.4), ``sphereface``,
    ``curricularface``; ``sample_rate`` < 1 enables Partial FC class sampling."""

    name: Literal["arcface", "cosface", "sphereface", "curricularface"] = "arcface"
    s: float = 64.0
    m: float = 0.5
    sample_rate: float = 1.0


def build_head(cfg: HeadConfig, embedding_size: int, num_classes: int) -> nn.Module:
    from facelab.core.heads import CurricularFace, MarginHead

    if cfg.name == "curricularface":
        return CurricularFace(
            embedding_size, num_classes, s=cfg.s, m=cfg.m, sample_rate=cfg.sample_rate
        )
    margin = {"arcface": {"m2": cfg.m}, "cosface": {"m3": cfg.m}, "sphereface": {"m1": cfg.m}}
    if cfg.name not in margin:
        raise UnknownNameError(
            f"unknown head {cfg.name!r}; valid: ['arcface', 'cosface', 'sphereface', 'curricularface']"
        )
    base = {"m1": 1.0, "m2": 0.0, "m3": 0.0} | margin[cfg.name]
    return MarginHead(embedding_size, num_classes, s=cfg.s, sample_rate=cfg.sample_rate, **base)


def margin_loss(head: nn.Module, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the head's margin logits (works with DDP-wrapped heads)."""
    out = head(embeddings, labels)
    return F.cross_entropy(out.logits, out.targets)


# --------------------------------------------------------------------------------------------
# the ArcFace baseline


def paper_train_config(output_dir: str, *, batch_size: int = 128, **overrides: Any) -> Any:
    """The TrainConfig of the insightface/TFace papers every method recipe starts from: SGD lr
    0.1, momentum 0.9, weight decay 5e-4, x0.1 at epochs 10, 18, 22 of 24, seed 1337,
    checkpoints every 2000 steps. ``overrides`` replace any other field (e.g. ``lr``)."""
    from facelab.core.train import TrainConfig

    fields: dict[str, Any] = {
        "output_dir": output_dir,
        "epochs": 24,
        "batch_size": batch_size,
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "scheduler": "step",
        "milestones": (10, 18, 22),
        "gamma": 0.1,
        "seed": 1337,
        "checkpoint_every": 2000,
        "log_every": 50,
    }
    return TrainConfig(**(fields | overrides))


def _default_train() -> Any:
    return paper_train_config("runs/arcface")


@dataclass
class ArcFaceConfig:
    """The ArcFace baseline: a backbone + margin head trained with the shared trainer."""

    data: DataConfig = field(default_factory=DataConfig)
    backbone: str = "r50"
    embedding_size: int = 512
    base_width: int = 64
    dropout: float = 0.0
    head: HeadConfig = field(default_factory=HeadConfig)
    train: Any = field(default_factory=_default_train)
    eval_batch_size: int = 128
    resume: str | None = None


def arcface_presets() -> dict[str, ArcFaceConfig]:
    """``paper``: insightface/TFace scale; ``toy``: a small IResNet-18 on toyfaces (CPU)."""
    from facelab.core.train import TrainConfig

    toy = ArcFaceConfig(
        data=DataConfig(
            image_size=56,
            toy_identities=200,
            toy_images_per_identity=20,
            eval_identities=100,
            eval_images_per_identity=10,
            eval_pairs=2000,
        ),
        backbone="r18",
        embedding_size=128,
        base_width=16,
        train=TrainConfig(
            output_dir="runs/arcface-toy",
            epochs=6,
            batch_size=64,
            lr=0.1,
            momentum=0.9,
            weight_decay=5e-4,
            scheduler="step",
            milestones=(4, 5),
            warmup=1,
            seed=1337,
            log_every=20,
        ),
        eval_batch_size=256,
    )
    return {"paper": ArcFaceConfig(), "toy": toy}


@dataclass
class RecipeResult:
    """What a recipe's ``train`` returns (on every process; ``verification`` on the main one)."""

    model: nn.Module
    train: Any
    verification: dict[str, Any]
    output_dir: Path
    wall_time: float

    def summary(self) -> dict[str, Any]:
        return {
            "steps": self.train.step,
            "wall_time_s": round(self.wall_time, 1),
            "losses": self.train.losses,
            "verification": {k: v.to_dict() for k, v in self.verification.items()},
        }


def build_backbone(cfg: ArcFaceConfig, in_channels: int = 3) -> nn.Module:
    from facelab.core.backbones import get_backbone

    opts: dict[str, Any] = {
        "in_channels": in_channels,
        "input_size": cfg.data.image_size,
        "embedding_size": cfg.embedding_size,
    }
    if cfg.backbone != "mobilefacenet":
        opts |= {"dropout": cfg.dropout, "base_width": cfg.base_width}
    return get_backbone(cfg.backbone, **opts)


def build_arcface_models(cfg: ArcFaceConfig, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """Backbone and head whose initial weights depend on ``cfg.train.seed`` alone, never on
    whatever consumed the global RNG earlier in this process (so every process and every rerun
    starts from the same weights); the global RNG state is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        backbone = build_backbone(cfg)
        head = build_head(cfg.head, cfg.embedding_size, num_classes)
    return backbone, head


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Atomic JSON write (tmp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)


def train_arcface(cfg: ArcFaceConfig) -> RecipeResult:
    """Train the baseline, save ``output_dir/model`` (from_pretrained-able) and metrics.json."""
    from facelab.core.hub import save_pretrained
    from facelab.core.train import Trainer

    t0 = time.perf_counter()
    dataset, num_classes = build_train_dataset(cfg.data)
    backbone, head = build_arcface_models(cfg, num_classes)

    def loss_fn(batch, modules, ctx):
        images, labels = batch
        return margin_loss(modules["head"], modules["backbone"](images), labels)

    trainer = Trainer(cfg.train, {"backbone": backbone, "head": head}, loss_fn, dataset)
    result = trainer.fit(resume=cfg.resume)
    model = trainer.unwrap("backbone")
    out = Path(cfg.train.output_dir)
    verification: dict[str, Any] = {}
    if trainer.accelerator.is_main_process:
        verification = evaluate_sets(
            model, build_eval_sets(cfg.data), batch_size=cfg.eval_batch_size
        )
        save_pretrained(model, out / "model")
    rr = RecipeResult(model, result, verification, out, time.perf_counter() - t0)
    if trainer.accelerator.is_main_process:
        write_json(out / "metrics.json", rr.summary() | {"config": to_jsonable(cfg)})
    trainer.accelerator.wait_for_everyone()
    return rr


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


# --------------------------------------------------------------------------------------------
# CLI helpers shared by every recipe command


def parse_with_presets(
    config_cls: type,
    presets: Mapping[str, Any],
    argv: Sequence[str],
    prog: str,
    description: str = "",
    default_preset: str = "paper",
) -> Any:
    """``--preset NAME`` picks a preset config; every other flag overrides one of its fields.

    ``prog --preset toy --train.epochs 3 --data.source /data/faces``.
    """
    import tyro

    args = list(argv)
    preset = default_preset
    for i, a in enumerate(args):
        if a == "--preset" or a.startswith("--preset="):
            if "=" in a:
                preset = a.split("=", 1)[1]
                del args[i]
            else:
                if i + 1 >= len(args):
                    raise FacelabError(f"--preset: expected a name, one of {sorted(presets)}")
                preset = args[i + 1]
                del args[i : i + 2]
            break
    if preset not in presets:
        raise UnknownNameError(f"unknown preset {preset!r}; valid presets: {sorted(presets)}")
    desc = (description + "\n\n" if description else "") + (
        f"Presets (--preset NAME, default {default_preset}): {', '.join(sorted(presets))}. "
        f"This help shows the defaults of preset {preset!r}."
    )
    return tyro.cli(config_cls, default=presets[preset], args=args, prog=prog, description=desc)


def run_cli(fn: Callable[[], int | None], prog: str) -> int:
    """Run a command body; bad input (a ``FacelabError`` or a missing file) prints one clear
    line and exits 2 (``facelab.core.cli.bad_input_exit``); bugs keep their traceback."""
    from facelab.core.cli import bad_input_exit

    try:
        return int(fn() or 0)
    except Exception as exc:
        return bad_input_exit(prog, exc)


def train_main(argv: Sequence[str] = ()) -> int:
    """Train the ArcFace baseline (backbone + margin head) on toyfaces, folders or .rec."""

    def body() -> int:
        cfg = parse_with_presets(
            ArcFaceConfig, arcface_presets(), argv, "facelab train", train_main.__doc__ or ""
        )
        rr = train_arcface(cfg)
        if rr.verification:
            print(results_table({f"arcface-{cfg.backbone}": rr.verification}))
        print(f"model saved to {rr.output_dir / 'model'} ({rr.wall_time:.0f} s)")
        return 0

    return run_cli(body, "facelab train")


@dataclass
class EmbedArgs:
    """Write embeddings (safetensors) for a folder of aligned face images."""

    model: str
    """a save_pretrained directory (e.g. runs/arcface/model)"""
    images: str
    """an identity-folder tree or a flat folder of aligned face images"""
    out: str = "embeddings.safetensors"
    batch_size: int = 128
    flip: bool = True


def embed_folder(args: EmbedArgs) -> Path:
    from PIL import Image
    from safetensors.torch import save_file

    from facelab.core.data.folders import IdentityFolderDataset, load_image
    from facelab.core.eval import embed
    from facelab.core.hub import from_pretrained

    model = from_pretrained(args.model)
    root = Path(args.images)
    if not root.is_dir():
        raise FormatError(f"images: expected a folder of images, got {args.images!r}")
    subdirs = [p for p in root.iterdir() if p.is_dir()]
    if subdirs:
        ds = IdentityFolderDataset(root)
        names = list(ds.relative_paths)
        labels = ds.labels
    else:
        exts = {e.lower() for e in Image.registered_extensions()}
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in exts)
        if not files:
            raise FormatError(f"images: no image files in {root}")
        ds = torch.stack([load_image(p) for p in files])  # type: ignore[assignment]
        names = [p.name for p in files]
        labels = None
    emb = embed(model, ds, flip=args.flip, batch_size=args.batch_size)
    tensors = {"embeddings": emb.contiguous()}
    if labels is not None:
        tensors["labels"] = labels.contiguous()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"names": json.dumps(names), "model": str(args.model)})
    tmp.replace(out)
    return out


def embed_main(argv: Sequence[str] = ()) -> int:
    """Write embeddings (safetensors) of a folder of aligned faces under a saved model."""
    import tyro

    def body() -> int:
        args = tyro.cli(EmbedArgs, args=list(argv), prog="facelab embed")
        out = embed_folder(args)
        print(f"embeddings written to {out}")
        return 0

    return run_cli(body, "facelab embed")
