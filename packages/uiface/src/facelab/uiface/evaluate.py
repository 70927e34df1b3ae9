"""Evaluation: identity consistency, intra-class diversity, FR accuracy, the ablation table.

* :func:`dataset_metrics`: embedding metrics of a generated identity-folder dataset under an
  independent recognizer (the core's ``synthetic_quality``: genuine / impostor cosine, closed-set
  identification against real references, centroid distance, pairwise angle), plus pixel
  diversity and the switch statistics read from the dataset's ``meta.json`` files;
* :func:`fr_accuracy`: the accuracy on held-out *real* toyfaces of an ArcFace model (the core
  toy recipe) trained on the generated set;
* :func:`run_ablation`: one dataset per sampling variant (single-stage; empty-context only;
  + two-stage fixed; + adaptive switch; + attention injection), each measured as above, written
  as ``report.md`` / ``report.json``;
* :func:`toy_setup`: what the toy preset needs for all of it: the generator's identity vectors,
  an independent recognizer trained on real images of those identities, held-out real images.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from facelab.core.errors import FormatError, RangeError
from facelab.uiface.sampler import VARIANTS, UIFaceSampler, UIFaceSamplingConfig, variant

#: what the report table shows, in order: (key, header, format)
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("adaptive_switch_fraction", "adaptive switch", "{:.0%}"),
    ("mean_switch_step", "mean switch step", "{:.1f}"),
    ("genuine_cos", "genuine cos", "{:.3f}"),
    ("impostor_cos", "impostor cos", "{:.3f}"),
    ("identification_accuracy", "identification acc", "{:.1%}"),
    ("centroid_distance", "centroid dist (div.)", "{:.3f}"),
    ("pairwise_angle_deg", "pair angle deg (div.)", "{:.1f}"),
    ("pixel_diversity", "pixel div.", "{:.3f}"),
    ("fr_accuracy", "FR acc, held-out real", "{:.1%}"),
)


# --------------------------------------------------------------------------------------------
# switch statistics


def switch_statistics(
    switch_step: torch.Tensor, adaptive: torch.Tensor | None = None
) -> dict[str, Any]:
    """How many samples switch at which DDIM step: ``histogram`` {step: count} (step -1 =
    never, e.g. the empty-context variant), the adaptive fraction and the mean switch step."""
    s = torch.as_tensor(switch_step).long().flatten()
    if s.numel() == 0:
        raise RangeError("switch_statistics: expected at least one sample")
    steps, counts = torch.unique(s, return_counts=True)
    out: dict[str, Any] = {
        "samples": int(s.numel()),
        "histogram": {int(k): int(v) for k, v in zip(steps, counts, strict=True)},
        "never_switched": int((s < 0).sum()),
    }
    valid = s[s >= 0]
    out["mean_switch_step"] = float(valid.float().mean()) if valid.numel() else math.nan
    if adaptive is not None:
        out["adaptive_switch_fraction"] = float(torch.as_tensor(adaptive).float().mean())
    return out


def read_switches(dataset_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Per-image switch records of a generated dataset (from every identity's ``meta.json``)."""
    root = Path(dataset_dir)
    steps: list[int] = []
    ts: list[int] = []
    ad: list[bool] = []
    metas = sorted(root.glob("*/meta.json"))
    if not metas:
        raise FormatError(f"{root}: no identity folder with a meta.json (not a generated dataset)")
    for meta in metas:
        doc = json.loads(meta.read_text())
        for rec in doc.get("images", []):
            if "switch_step" not in rec:
                raise FormatError(f"{meta}: image records without 'switch_step' (not UIFace)")
            steps.append(int(rec["switch_step"]))
            ts.append(int(rec["switch_timestep"]))
            ad.append(bool(rec["adaptive_switch"]))
    return {
        "switch_step": torch.tensor(steps, dtype=torch.long),
        "switch_timestep": torch.tensor(ts, dtype=torch.long),
        "adaptive": torch.tensor(ad, dtype=torch.bool),
    }


# --------------------------------------------------------------------------------------------
# metrics


def pixel_diversity(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean within-identity root-mean-square pixel distance of image pairs (images in [-1, 1]),
    from per-identity sums (no pair loop): for identity k with n_k images,
    mean_pairs ||x_i - x_j||^2 = 2 (n_k sum ||x||^2 - ||sum x||^2) / (n_k (n_k - 1))."""
    x = images.double().flatten(1)
    uniq, inv = torch.unique(labels, return_inverse=True)
    k = uniq.numel()
    n = torch.bincount(inv, minlength=k).double()
    s1 = torch.zeros(k, x.shape[1], dtype=torch.float64).index_add_(0, inv, x)
    s2 = torch.zeros(k, dtype=torch.float64).index_add_(0, inv, (x * x).sum(1))
    ok = n >= 2
    if not bool(ok.any()):
        raise RangeError("pixel_diversity: expected an identity with at least two images")
    msd = 2 * (n[ok] * s2[ok] - (s1[ok] ** 2).sum(1)) / (n[ok] * (n[ok] - 1))
    return float((msd.clamp_min(0) / x.shape[1]).sqrt().mean())


def load_folder(root: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images (N, 3, H, W) in [-1, 1], labels and identity names of an identity-folder set."""
    from facelab.core.data.folders import IdentityFolderDataset

    ds = IdentityFolderDataset(root)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    return images, ds.labels.clone(), list(ds.classes)


def dataset_metrics(
    dataset_dir: str | os.PathLike,
    recognizer: torch.nn.Module | None = None,
    *,
    references: torch.Tensor | None = None,
    reference_labels: torch.Tensor | None = None,
    recognizer_size: int | None = None,
) -> dict[str, Any]:
    """Metrics of a generated dataset. ``references`` / ``reference_labels``: real images of
    the same identities (label k = the k-th identity folder in sorted order)."""
    images, labels, _ = load_folder(dataset_dir)
    out: dict[str, Any] = {"images": int(labels.numel()), "identities": int(labels.max()) + 1}
    out["pixel_diversity"] = pixel_diversity(images, labels)
    if recognizer is not None:
        from facelab.core.diffusion.metrics import synthetic_quality

        x, refs = images, references
        if recognizer_size and x.shape[-1] != recognizer_size:
            x = _resize(x, recognizer_size)
            refs = None if refs is None else _resize(refs, recognizer_size)
        out |= synthetic_quality(
            recognizer, x, labels, references=refs, reference_labels=reference_labels
        )
    try:
        sw = read_switches(dataset_dir)
        out |= switch_statistics(sw["switch_step"], sw["adaptive"])
    except FormatError:
        pass
    return out


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    return torch.nn.functional.interpolate(
        x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )


@dataclass
class FRConfig:
    """The FR check: the core ArcFace toy recipe on the generated set, verified on held-out
    real toyfaces identities (never seen by the generator). ``image_size`` must be the size the
    dataset was written at; ``epochs`` / ``seed`` override the recipe's."""

    image_size: int = 32
    toy_difficulty: str = "easy"
    epochs: int = 12
    batch_size: int = 64
    seed: int = 1337
    eval_identities: int = 100
    eval_pairs: int = 2000


def fr_accuracy(
    dataset_dir: str | os.PathLike, output_dir: str | os.PathLike, cfg: FRConfig | None = None
) -> float:
    """Held-out real toyfaces verification accuracy of ArcFace trained on ``dataset_dir``."""
    from facelab.core.diffusion.metrics import train_on_synthetic
    from facelab.core.recipe import arcface_presets

    cfg = cfg or FRConfig()
    base = arcface_presets()["toy"]
    data = dataclasses.replace(
        base.data,
        image_size=cfg.image_size,
        toy_difficulty=cfg.toy_difficulty,
        eval_identities=cfg.eval_identities,
        eval_pairs=cfg.eval_pairs,
    )
    epochs = cfg.epochs
    milestones = (round(epochs * 2 / 3), round(epochs * 5 / 6))
    train = dataclasses.replace(
        base.train,
        epochs=epochs,
        milestones=milestones,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        progress=False,
    )
    res = train_on_synthetic(
        dataset_dir, preset="toy", output_dir=output_dir, data=data, train=train
    )
    return float(res["toy-heldout-real"].accuracy)


# --------------------------------------------------------------------------------------------
# toy setup


@dataclass
class ToySetup:
    contexts: torch.Tensor  # (C, 512): the generator's identity vectors
    recognizer: torch.nn.Module  # independent: trained on real images, never on generated ones
    references: torch.Tensor  # held-out real images of the C identities
    reference_labels: torch.Tensor


def toy_setup(
    data: Any, *, reference_images: int = 10, recognizer_steps: int = 400, seed: int = 0
) -> ToySetup:
    """For a generator trained on toyfaces with ``contexts="identity"`` (``data``: its
    ``SynthDataConfig``): its identity vectors, an IResNet-18 ArcFace recognizer trained on the
    real training images (the core's toy recognizer), and held-out real images."""
    from facelab.core.data.toyfaces import ToyFaces
    from facelab.core.diffusion.identities import random_identities
    from facelab.core.diffusion.toy import train_toy_recognizer

    if data.source != "toyfaces" or data.contexts != "identity":
        raise RangeError(
            "toy_setup: expected a toyfaces generator conditioned on one vector per identity "
            f"(source 'toyfaces', contexts 'identity'), got {data.source!r} / {data.contexts!r}"
        )
    n, per = data.toy_identities, data.toy_images_per_identity
    real = ToyFaces(
        n,
        per + reference_images,
        size=data.image_size,
        seed=data.toy_seed,
        difficulty=data.toy_difficulty,
    )
    images = real.render(slice(None))
    labels = real.labels
    pos = torch.arange(len(real)) % (per + reference_images)
    train_mask = pos < per
    rec = train_toy_recognizer(
        images[train_mask], labels[train_mask], steps=recognizer_steps, seed=seed
    )
    return ToySetup(
        contexts=random_identities(n, data.context_dim, data.context_seed),
        recognizer=rec,
        references=images[~train_mask],
        reference_labels=labels[~train_mask],
    )


# --------------------------------------------------------------------------------------------
# the ablation


@dataclass
class AblationConfig:
    """One generated dataset per variant (same identities, same seeds), then the metrics."""

    variants: tuple[str, ...] = tuple(VARIANTS)
    images_per_identity: int = 16
    batch_size: int = 64
    seed: int = 0
    image_size: int = 32
    train_fr: bool = True
    fr: FRConfig = field(default_factory=FRConfig)

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise RangeError(f"variants: expected names from {list(VARIANTS)}, got {unknown}")


@dataclass
class AblationReport:
    rows: dict[str, dict[str, Any]]
    sampling: dict[str, Any]
    settings: dict[str, Any]
    seconds: float

    def markdown(self) -> str:
        head = "| variant | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
        lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
        for name, row in self.rows.items():
            cells = []
            for key, _, fmt in COLUMNS:
                v = row.get(key)
                ok = isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v))
                cells.append(fmt.format(v) if ok else "-")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "sampling": self.sampling,
            "settings": self.settings,
            "seconds": round(self.seconds, 1),
        }


def run_ablation(
    base_sampler: Any,
    contexts: torch.Tensor,
    out_dir: str | os.PathLike,
    *,
    sampling: UIFaceSamplingConfig | None = None,
    cfg: AblationConfig | None = None,
    recognizer: torch.nn.Module | None = None,
    references: torch.Tensor | None = None,
    reference_labels: torch.Tensor | None = None,
    progress: bool = False,
) -> AblationReport:
    """Generate ``out_dir/<variant>/`` for every variant (resumable) and measure each; writes
    ``out_dir/report.md`` and ``report.json``."""
    from facelab.uiface.generate import generate

    t0 = time.perf_counter()
    cfg = cfg or AblationConfig()
    sampling = sampling or UIFaceSamplingConfig()
    out = Path(out_dir)
    rows: dict[str, dict[str, Any]] = {}
    for name in cfg.variants:
        sampler = UIFaceSampler(base_sampler, variant(name, sampling))
        folder = out / name
        generate(
            sampler,
            contexts,
            folder,
            images_per_identity=cfg.images_per_identity,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            image_size=cfg.image_size,
            progress=progress,
        )
        row = dataset_metrics(
            folder, recognizer, references=references, reference_labels=reference_labels
        )
        if cfg.train_fr:
            row["fr_accuracy"] = fr_accuracy(folder, out / f"fr-{name}", cfg.fr)
        rows[name] = row
    report = AblationReport(
        rows=rows,
        sampling=dataclasses.asdict(sampling),
        settings=_jsonable(dataclasses.asdict(cfg)) | {"identities": int(contexts.shape[0])},
        seconds=time.perf_counter() - t0,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(report.markdown() + "\n")
    (out / "report.json").write_text(json.dumps(report.to_json(), indent=2, default=str))
    return report


def _jsonable(d: Any) -> Any:
    return json.loads(json.dumps(d, default=str))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    v = torch.tensor(list(values), dtype=torch.float64)
    return float(v.mean()), float(v.std()) if v.numel() > 1 else 0.0


__all__ = [
    "COLUMNS",
    "AblationConfig",
    "AblationReport",
    "FRConfig",
    "ToySetup",
    "dataset_metrics",
    "fr_accuracy",
    "load_folder",
    "mean_std",
    "pixel_diversity",
    "read_switches",
    "run_ablation",
    "switch_statistics",
    "toy_setup",
]
