"""The team protocol runner: train the recognizer on a training set, score it the challenge's
way, and print the leaderboard row.

The recognizer is the one the synthetic-data papers around FRCSyn use (the UIFace authors'
FRCSyn entry, ADMIS, on TFace): IR-50 + ArcFace (s = 64, m = 0.5), 40 epochs, SGD lr 0.1
(momentum 0.9) divided by 10 at epochs 22, 28 and 32, weight decay 5e-4, batch 64 per GPU on 8
GPUs, random horizontal flips. It is built from core's recipe parts (``build_arcface_models``,
``margin_loss``) and trained by core's ``Trainer`` (Accelerate: ``accelerate launch`` runs it on
8 GPUs unchanged; checkpoints and exact resume come with it).

Presets: ``paper`` (the recipe above at 112 x 112) and ``toy`` (IResNet-18 at width 16 on
56 x 56 images, 6 epochs of batch 64, the same recipe shape; with the toy edition's
evaluation sets and a real-toyfaces baseline of the same size, on a laptop CPU in minutes).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from facelab.core.errors import FormatError, RangeError
from facelab.core.recipe import HeadConfig
from facelab.core.train import TrainConfig
from facelab.frcsyn.check import CheckResult, check_subtask
from facelab.frcsyn.evalsets import PairSet, load_eval_sets
from facelab.frcsyn.leaderboard import LeaderboardRow, leaderboard_row
from facelab.frcsyn.metrics import EvalConfig, SetResult, TaskScores, evaluate_model, task_scores
from facelab.frcsyn.sources import SourceCount, count_source, dataset_root, open_training_source
from facelab.frcsyn.subtasks import get_subtask
from facelab.frcsyn.toy import ToyEditionConfig, toy_eval_sets, toy_real_dataset

TOYFACES = "toyfaces"


def team_train_config(output_dir: str = "", **overrides: Any) -> TrainConfig:
    """The team protocol's optimizer and schedule (per process: batch 64; 8 processes)."""
    fields: dict[str, Any] = {
        "output_dir": output_dir,
        "epochs": 40,
        "batch_size": 64,
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "scheduler": "step",
        "milestones": (22, 28, 32),
        "gamma": 0.1,
        "seed": 1337,
        "checkpoint_every": 2000,
        "log_every": 50,
    }
    return TrainConfig(**(fields | overrides))


@dataclass
class RecipeConfig:
    """The recognizer trained on each training set (defaults: the team protocol)."""

    backbone: str = "r50"
    """core backbone name: r18 ... r200 (IResNet), ir_se50, mobilefacenet"""
    embedding_size: int = 512
    base_width: int = 64
    dropout: float = 0.0
    image_size: int = 112
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=team_train_config)
    hflip: bool = True
    """random horizontal flips of training images (p = 0.5)"""
    resume: bool = True
    """continue from the newest checkpoint in the output folder, if any"""

    def __post_init__(self) -> None:
        if self.image_size < 32 or self.image_size % 8:
            raise RangeError(f"image_size: expected a multiple of 8, >= 32, got {self.image_size}")


@dataclass
class RunConfig:
    """``facelab frcsyn run``: train the team protocol on a training set and print its row."""

    subtask: str = "2.1"
    """FRCSyn sub-task: 1.1 1.2 1.3 (bias, ranked by TO) or 2.1 2.2 2.3 (overall, by AVG)"""
    train: tuple[str, ...] = ()
    """synthetic training set(s): identity folders, index files, RecordIO folders or manifests"""
    real: tuple[str, ...] = ()
    """sub-tasks x.3: the real part (CASIA-WebFace; 'toyfaces' in the toy edition)"""
    baseline: str | None = None
    """real-data baseline for GAP: 'toyfaces' (real toyfaces of the same size), a training-set
    path (trained with the same recipe), or the frcsyn.json of an earlier run"""
    name: str | None = None
    """the row's Team column (default: the first training set's folder name)"""
    bins: tuple[str, ...] = ()
    """evaluation .bin sets ('path' or 'name=path')"""
    pairs: tuple[str, ...] = ()
    """evaluation pair lists 'img1;img2;label[;group]' ('path' or 'name=path')"""
    toy: ToyEditionConfig = field(default_factory=ToyEditionConfig)
    """the toy edition's sets, used when no --bins/--pairs are given"""
    toy_real_images: int = 4000
    """size of the 'toyfaces' real part of sub-tasks x.3 (images)"""
    toy_real_identities: int = 200
    """people of the 'toyfaces' real part of sub-tasks x.3"""
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs/frcsyn"
    """entry/ and baseline/ (checkpoints, model), frcsyn.json, row.md, roc-*.png; use a fresh
    folder per training set (training resumes from the checkpoints it finds there)"""
    check: bool = True
    """refuse training data that break the sub-task's rules"""
    plots: bool = True
    """write ROC plots (one PNG per evaluation set)"""


def run_presets() -> dict[str, RunConfig]:
    """``paper``: the team protocol at 112 px; ``toy``: a CPU-sized run on the toy edition."""
    toy_train = TrainConfig(
        output_dir="",
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
    )
    toy = RunConfig(
        baseline=TOYFACES,
        recipe=RecipeConfig(
            backbone="r18",
            embedding_size=128,
            base_width=16,
            image_size=56,
            train=toy_train,
        ),
        eval=EvalConfig(batch_size=256),
        output_dir="runs/frcsyn-toy",
    )
    return {"paper": RunConfig(), "toy": toy}


# --------------------------------------------------------------------------------------------
# training


class LabelOffsetConcat(Dataset):
    """Several identity-labelled datasets as one: the identities of part ``k`` come after those
    of parts ``0..k-1`` (real CASIA-WebFace + synthetic people in sub-tasks x.3)."""

    def __init__(self, parts: Sequence[tuple[Dataset, int]]) -> None:
        if not parts:
            raise RangeError("LabelOffsetConcat: expected at least one dataset")
        self.parts = [d for d, _ in parts]
        self.num_classes = int(sum(c for _, c in parts))
        self.class_offsets = np.concatenate([[0], np.cumsum([c for _, c in parts])[:-1]])
        self.starts = np.concatenate([[0], np.cumsum([len(d) for d in self.parts])])  # type: ignore[arg-type]

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        k = int(np.searchsorted(self.starts, i, side="right") - 1)
        return k, i - int(self.starts[k])

    def __getitem__(self, i: int):
        k, j = self._locate(int(i))
        image, label = self.parts[k][j]
        return image, torch.as_tensor(label) + int(self.class_offsets[k])

    def __getitems__(self, indices: Sequence[int]):
        idx = np.asarray(indices, dtype=np.int64)
        part = np.searchsorted(self.starts, idx, side="right") - 1
        out: list[Any] = [None] * idx.size
        for k in np.unique(part):  # one batched call per part (toyfaces renders a batch at once)
            pos = np.flatnonzero(part == k)
            local = (idx[pos] - self.starts[k]).tolist()
            ds = self.parts[k]
            items = (
                ds.__getitems__(local) if hasattr(ds, "__getitems__") else [ds[j] for j in local]
            )
            off = int(self.class_offsets[k])
            for p, (image, label) in zip(pos.tolist(), items):
                out[p] = (image, torch.as_tensor(label) + off)
        return out


def open_source(source: str, image_size: int, toy_size: tuple[int, int] | None = None):
    """``(Dataset, num_classes)`` of a path, or of ``'toyfaces'`` (real toyfaces of
    ``toy_size = (images, identities)``)."""
    if source == TOYFACES:
        if toy_size is None:
            raise RangeError("'toyfaces' as a training source needs a size (images, identities)")
        return toy_real_dataset(toy_size[0], toy_size[1], image_size)
    return open_training_source(source, image_size)


def build_models(recipe: RecipeConfig, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """Backbone + margin head from core's recipe (initial weights depend on the seed only)."""
    from facelab.core.recipe import ArcFaceConfig, DataConfig, build_arcface_models

    arc = ArcFaceConfig(
        data=DataConfig(image_size=recipe.image_size),
        backbone=recipe.backbone,
        embedding_size=recipe.embedding_size,
        base_width=recipe.base_width,
        dropout=recipe.dropout,
        head=recipe.head,
        train=recipe.train,
    )
    return build_arcface_models(arc, num_classes)


def train_recognizer(
    recipe: RecipeConfig, parts: Sequence[tuple[Dataset, int]], output_dir: str | Path
) -> tuple[nn.Module, Any]:
    """Train backbone + ArcFace head on the concatenated parts with core's ``Trainer``; save
    the backbone with ``save_pretrained`` under ``output_dir/model``. Returns
    ``(backbone, TrainResult)``."""
    from facelab.core.hub import save_pretrained
    from facelab.core.recipe import margin_loss
    from facelab.core.train import Trainer

    out = Path(output_dir)
    if len(parts) == 1:
        dataset, num_classes = parts[0]
    else:
        dataset = LabelOffsetConcat(parts)
        num_classes = dataset.num_classes
    backbone, head = build_models(recipe, num_classes)
    hflip = recipe.hflip

    def loss_fn(batch, modules, ctx):
        images, labels = batch
        if hflip:  # vectorized random mirror, drawn from the trainer's seeded RNG stream
            flip = torch.rand(images.shape[0], device=images.device) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(3), images)
        return margin_loss(modules["head"], modules["backbone"](images), labels)

    tcfg = dataclasses.replace(recipe.train, output_dir=str(out / "checkpoints"))
    trainer = Trainer(tcfg, {"backbone": backbone, "head": head}, loss_fn, dataset)
    result = trainer.fit(resume="latest" if recipe.resume else None)
    model = trainer.unwrap("backbone")
    if trainer.accelerator.is_main_process:
        save_pretrained(model, out / "model")
    return model, result


# --------------------------------------------------------------------------------------------
# the run


@dataclass
class EntryResult:
    """One trained recognizer and its per-set results."""

    name: str
    sources: tuple[SourceCount | str, ...]
    num_images: int
    num_identities: int | None
    results: dict[str, SetResult]
    model: nn.Module | None = field(default=None, repr=False)
    train_time: float = 0.0

    def task(self, task: int, sd_ddof: int = 0) -> TaskScores:
        return task_scores(task, self.results, sd_ddof)

    def to_dict(self, sd_ddof: int = 0) -> dict[str, Any]:
        tasks: dict[str, Any] = {}
        for t in (1, 2):
            try:
                s = self.task(t, sd_ddof)
            except RangeError:
                continue
            tasks[str(t)] = dataclasses.asdict(s)
        return {
            "name": self.name,
            "num_images": self.num_images,
            "num_identities": self.num_identities,
            "train_time_s": round(self.train_time, 1),
            "sets": {k: v.to_dict() for k, v in self.results.items()},
            "task_scores": tasks,
        }


@dataclass
class RunResult:
    """What ``run`` returns: the row, the entry, the baseline and the sub-task check."""

    row: LeaderboardRow
    entry: EntryResult
    baseline: EntryResult | TaskScores | None
    check: CheckResult
    output_dir: Path
    plots: dict[str, Path] = field(default_factory=dict)

    def sets_table(self) -> str:
        """Per-set accuracy / FNMR / AUC (percent) of the entry and the baseline."""
        return sets_markdown(
            {self.entry.name: self.entry.results}
            | (
                {"real baseline": self.baseline.results}
                if isinstance(self.baseline, EntryResult)
                else {}
            )
        )


def sets_markdown(models: Mapping[str, Mapping[str, SetResult]]) -> str:
    lines = ["| model | set | stands in for | pairs | accuracy [%] | FNMR@FMR=1% | AUC [%] |"]
    lines.append("|---|---|---|---|---|---|---|")
    for m, res in models.items():
        for r in res.values():
            lines.append(
                f"| {m} | {r.name} | {r.stands_in_for or ''} | {r.n_pairs} | "
                f"{100 * r.accuracy:.2f} | {100 * r.fnmr:.2f} | {100 * r.auc:.2f} |"
            )
    return "\n".join(lines)


def build_eval_sets(cfg: RunConfig) -> list[PairSet]:
    """The run's evaluation sets: ``--bins`` / ``--pairs``, else the toy edition."""
    if cfg.bins or cfg.pairs:
        return load_eval_sets(cfg.bins, cfg.pairs, image_size=cfg.recipe.image_size)
    toy = dataclasses.replace(cfg.toy, image_size=cfg.recipe.image_size)
    return toy_eval_sets(toy)


def _count(source: str, toy_size: tuple[int, int]) -> SourceCount:
    if source == TOYFACES:
        return SourceCount(TOYFACES, "toyfaces", toy_size[0], toy_size[1], "toy configuration")
    return count_source(source)


def _load_baseline_json(path: Path, task: int, sd_ddof: int) -> TaskScores:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ts = data["entry"]["task_scores"][str(task)]
        return TaskScores(**{k: (tuple(v) if k == "sets" else v) for k, v in ts.items()})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FormatError(
            f"{path}: expected the frcsyn.json of an earlier run with task {task} scores: {exc}"
        ) from exc


def is_main_process() -> bool:
    """True in a single process and on rank 0 of a distributed run."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def train_and_evaluate(
    name: str,
    sources: Sequence[str],
    recipe: RecipeConfig,
    sets: Sequence[PairSet],
    eval_cfg: EvalConfig,
    output_dir: Path,
    *,
    toy_size: tuple[int, int] | None = None,
    counts: Sequence[SourceCount] | None = None,
) -> EntryResult:
    """Train the recipe on ``sources`` (paths or 'toyfaces'), evaluate on ``sets``."""
    t0 = time.perf_counter()
    parts = [open_source(s, recipe.image_size, toy_size) for s in sources]
    model, _ = train_recognizer(recipe, parts, output_dir)
    train_time = time.perf_counter() - t0
    # under `accelerate launch` every process trains; the main one evaluates
    results = evaluate_model(model, sets, eval_cfg) if is_main_process() else {}
    n_img = sum(len(d) for d, _ in parts)  # type: ignore[arg-type]
    n_ids = sum(c for _, c in parts)
    return EntryResult(name, tuple(counts or sources), n_img, n_ids, results, model, train_time)


def run(cfg: RunConfig, sets: Sequence[PairSet] | None = None) -> RunResult | None:
    """Check the training data against the sub-task, train the recipe, evaluate, and build the
    leaderboard row (with GAP when a baseline is given). Writes ``frcsyn.json``, ``row.md`` and
    ROC plots into ``cfg.output_dir``. Under ``accelerate launch`` every process trains and
    only the main one evaluates and returns a result (the others return None)."""
    st = get_subtask(cfg.subtask)
    if not cfg.train:
        raise RangeError("train: expected at least one training set (--train DIR)")
    toy_real = (cfg.toy_real_images, cfg.toy_real_identities)
    syn_counts = [count_source(s) for s in cfg.train]
    real_counts = [_count(s, toy_real) for s in cfg.real]
    check = check_subtask(st, syn_counts, real_counts)
    if cfg.check:
        check.raise_if_failed()
    out = Path(cfg.output_dir)
    sets = list(sets) if sets is not None else build_eval_sets(cfg)
    if st.task == 1 and not any(s.groups is not None for s in sets):
        raise RangeError(
            f"sub-task {st.id} (task 1) needs an evaluation set with demographic groups; "
            f"got {[s.name for s in sets]}"
        )
    name = cfg.name or dataset_root(cfg.train[0])[0].resolve().name or "entry"
    sources = [*cfg.real, *cfg.train]
    counts = [*real_counts, *syn_counts]
    entry = train_and_evaluate(
        name, sources, cfg.recipe, sets, cfg.eval, out / "entry", toy_size=toy_real, counts=counts
    )
    baseline: EntryResult | TaskScores | None = None
    if cfg.baseline is not None:
        bpath = Path(cfg.baseline)
        if cfg.baseline != TOYFACES and bpath.is_file() and bpath.suffix == ".json":
            baseline = _load_baseline_json(bpath, st.task, cfg.eval.sd_ddof)
        else:
            size = (entry.num_images, int(entry.num_identities or 1))
            baseline = train_and_evaluate(
                "real baseline", [cfg.baseline], cfg.recipe, sets, cfg.eval, out / "baseline",
                toy_size=size,
            )  # fmt: skip
    if not is_main_process():
        return None
    base_scores = baseline if isinstance(baseline, TaskScores) else None
    row = leaderboard_row(
        st,
        name,
        entry.results,
        base_scores or (baseline.results if isinstance(baseline, EntryResult) else None),
        sd_ddof=cfg.eval.sd_ddof,
    )
    result = RunResult(row, entry, baseline, check, out)
    if cfg.plots:
        result.plots = write_roc_plots(
            {name: entry.results}
            | ({"real baseline": baseline.results} if isinstance(baseline, EntryResult) else {}),
            out,
        )
    write_run_files(result, cfg)
    return result


def write_roc_plots(models: Mapping[str, Mapping[str, SetResult]], out: Path) -> dict[str, Path]:
    """One ROC PNG per evaluation set with a curve per model (core ``plot_roc``)."""
    from facelab.core.eval import plot_roc

    names = list(next(iter(models.values())).keys())
    paths: dict[str, Path] = {}
    for s in names:
        curves = {m: res[s].roc() for m, res in models.items() if s in res}
        paths[s] = plot_roc(
            curves,
            out / f"roc-{s}.png",
            title=f"ROC: {s}",
            fpr_range=(1e-4, 1.0),
            mark_fars=(0.01,),
        )
    return paths


def write_run_files(result: RunResult, cfg: RunConfig) -> None:
    from facelab.core.recipe import to_jsonable, write_json

    out = result.output_dir
    base = result.baseline
    payload = {
        "subtask": result.row.subtask.id,
        "row": result.row.to_dict()["row"],
        "columns": list(result.row.columns),
        "check": result.check.to_dict(),
        "entry": result.entry.to_dict(cfg.eval.sd_ddof),
        "baseline": base.to_dict(cfg.eval.sd_ddof)
        if isinstance(base, EntryResult)
        else (None if base is None else dataclasses.asdict(base)),
        "plots": {k: str(v.name) for k, v in result.plots.items()},
        "config": to_jsonable(cfg),
    }
    write_json(out / "frcsyn.json", payload)
    (out / "row.md").write_text(result.row.markdown() + "\n\n" + result.sets_table() + "\n")
