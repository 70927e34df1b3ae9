"""The full-scale suites on real data: ``ppfr`` and ``templates``.

Without data paths (neither ``train_data`` nor ``eval_bins``) they run on toy data: toyfaces
written as identity folders and a ``.bin`` of held-out people (``facelab.benchmarks.toydata``,
the ArcFace toy preset's sizes; ``small``: a few people at 32 px), with the ``toy`` presets
unless ``preset`` names another.

Both take aligned training data (identity folders, or a folder with insightface's
``train.rec``/``train.idx``) and insightface ``.bin`` verification sets, train with each method's
preset (``paper`` by default: the published recipes), and report one row per method and
verification set: 10-fold accuracy, TAR@FAR=1e-3 (ROC of the pair scores), inversion-attack
SSIM / PSNR / identity leakage, bytes per image, training time and throughput.

* ``ppfr``: the ArcFace baseline (``facelab.core.recipe``) and DuetFace / PartialFace /
  MinusFace. A method runs through ``facelab.<m>.quick.run_full`` when its package has one (the
  proposed contract, same rows as ``run_quick``), else through the recipe convention every
  method package follows (``<m>_presets()[preset]`` + ``train(cfg)`` returning ``verification``):
  its core ``DataConfig`` is pointed at the data and every ``TrainConfig`` at the work folder.
* ``templates``: the ArcFace baseline (recognizer of the attacks, and its embedding as the
  unprotected template), the SlerpFace extractor trained with ``facelab.slerpface.train`` on the
  same data, its templates protected with SlerpFace, BioHashing and IronMask.

The inversion attacks train on the images of the first half of the pairs of the first ``.bin``
and are scored on the second half (no identity labels in a ``.bin``: identity leakage, no
success rate).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from facelab.benchmarks.methods import PPFR_METHODS, load_entry, run_method
from facelab.benchmarks.progress import Progress
from facelab.benchmarks.report import SuiteResult
from facelab.benchmarks.rows import (
    TABLE_COLUMNS,
    empty_row,
    failed_row,
    not_built_row,
)
from facelab.core.errors import FormatError, UnknownNameError

#: attack images per side (attacker / victims) at most; --small uses fewer
ATTACK_IMAGES = 2000
ATTACK_IMAGES_SMALL = 32
#: the attacks' default budget: training steps and decoder width per data kind. On the
#: paper-shape toy data (112 px) the full budget alone takes hours on a CPU (measured on 2 cores:
#: 4.0 s per step of the image attack, 1.6 s of the embedding attack, at width 32, batch 32), so
#: that run trains a narrower decoder for fewer steps and fits an hour; ``--attack-steps`` sets
#: the steps of any run
ATTACK_STEPS = 2000
ATTACK_STEPS_SMALL = 20
ATTACK_STEPS_PAPER_SHAPE_TOY = 300
ATTACK_WIDTH_PAPER_SHAPE_TOY = 16


def _paper_shape_toy(toy: bool, preset: str | None, small: bool) -> bool:
    return toy and preset == "paper-shape" and not small


@dataclasses.dataclass
class FullArgs:
    train_data: Path
    eval_bins: tuple[Path, ...]
    preset: str
    max_steps: int | None
    batch_size: int | None
    image_size: int | None
    attack_steps: int
    seed: int
    small: bool
    progress: bool
    work: Path
    toy: bool = False

    @property
    def paper_shape_toy(self) -> bool:
        """The paper-shape preset on its toy data (the CPU-hour attack budget)."""
        return _paper_shape_toy(self.toy, self.preset, self.small)

    def attack_config(self) -> Any:
        """The inversion attacks' decoder (core ``AttackConfig``) of this run."""
        from facelab.core.privacy import AttackConfig

        if self.small:
            return AttackConfig(width=8, depth=2)
        if self.paper_shape_toy:
            return AttackConfig(width=ATTACK_WIDTH_PAPER_SHAPE_TOY)
        return AttackConfig()

    def train_overrides(self, train: Any) -> dict[str, Any]:
        """Fields to replace in a preset's ``TrainConfig``. A step budget (``max_steps``) turns
        the preset's epoch milestones into a cosine schedule (milestones could fall outside the
        run) and keeps a step-counted warm-up only when it is shorter than the run."""
        o: dict[str, Any] = {"progress": self.progress}
        if self.max_steps is not None:
            o.update(max_steps=self.max_steps, scheduler="cosine", milestones=())
            if not (train.warmup_unit == "step" and train.warmup < self.max_steps):
                o.update(warmup=0.0, warmup_unit="step")
        if self.batch_size is not None:
            o["batch_size"] = self.batch_size
        return o


def _check_args(
    train_data: Any,
    eval_bins: Any,
    preset: str | None,
    max_steps: int | None,
    batch_size: int | None,
    image_size: int | None,
    attack_steps: int | None,
    seed: int,
    small: bool,
    progress: bool,
    out: Path,
) -> FullArgs:
    for name, v in (
        ("max_steps", max_steps),
        ("batch_size", batch_size),
        ("image_size", image_size),
    ):
        if v is not None and (not isinstance(v, int) or v < 1):
            raise FormatError(f"{name}: expected a positive integer, got {v!r}")
    toy = not train_data and not eval_bins
    if toy:
        from facelab.benchmarks import toydata

        sizes = toydata.sizes_for(preset or "toy", small)
        if image_size is not None:
            sizes = dataclasses.replace(sizes, image_size=image_size)
        train_data, eval_bins = toydata.write_toy_data(out / "work" / "toydata", sizes, seed)
        eval_bins = [eval_bins]
        image_size = sizes.image_size
    preset = preset if preset is not None else ("toy" if toy else "paper")
    if not train_data:
        raise FormatError(
            "train_data: eval_bins were given without training data (aligned identity folders "
            "or a folder with train.rec/train.idx); give both, or neither for toy data"
        )
    root = Path(train_data)
    if not root.is_dir():
        raise FormatError(f"train_data: expected an existing folder, got {str(root)!r}")
    if not eval_bins:
        raise FormatError("eval_bins: expected one or more insightface .bin files, got none")
    bins = tuple(Path(b) for b in eval_bins)
    for b in bins:
        if not b.is_file():
            raise FormatError(f"eval_bins: no such file {str(b)!r}")
    if attack_steps is not None:
        steps = attack_steps
    elif small:
        steps = ATTACK_STEPS_SMALL
    elif _paper_shape_toy(toy, preset, small):
        steps = ATTACK_STEPS_PAPER_SHAPE_TOY
    else:
        steps = ATTACK_STEPS
    if steps < 1:
        raise FormatError(f"attack_steps: expected a positive integer, got {attack_steps!r}")
    return FullArgs(
        root,
        bins,
        preset,
        max_steps,
        batch_size,
        image_size,
        steps,
        seed,
        small,
        progress,
        out / "work",
        toy,
    )


def _start(suite: str, *args: Any) -> tuple[FullArgs, Progress]:
    """Checked arguments (see :func:`_check_args`), the work folder, the seed and progress."""
    a = _check_args(*args)
    a.work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(a.seed)
    return a, Progress(suite, a.progress)


# --------------------------------------------------------------------------------------------
# the ArcFace baseline on real data


def baseline_config(a: FullArgs) -> Any:
    from facelab.core.recipe import arcface_presets

    presets = arcface_presets()
    if a.preset == "paper-shape" and a.preset not in presets:
        # the baseline has no paper-shape preset: its toy recipe at the data's 112 px (the
        # methods' paper-shape presets keep the toy presets' widths and optimisation too)
        presets = {**presets, "paper-shape": presets["toy"]}
    if a.preset not in presets:
        raise UnknownNameError(
            f"preset: the ArcFace baseline has presets {sorted(presets)}, got {a.preset!r}"
        )
    cfg = presets[a.preset]
    data = dataclasses.replace(
        cfg.data,
        source=str(a.train_data),
        eval_bins=tuple(str(b) for b in a.eval_bins),
        image_size=a.image_size or cfg.data.image_size,
    )
    train = dataclasses.replace(
        cfg.train,
        output_dir=str(a.work / "arcface"),
        seed=1337 + a.seed,
        **a.train_overrides(cfg.train),
    )
    return dataclasses.replace(cfg, data=data, train=train)


def _bin_sets(cfg_data: Any) -> list[Any]:
    from facelab.core.recipe import build_eval_sets

    return build_eval_sets(cfg_data)


def _attack_split(eval_set: Any, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Attacker images (first half of the pairs) and victim images (second half)."""
    n = eval_set.images.shape[0]
    half = (n // 4) * 2  # whole pairs
    att = eval_set.images[:half][:limit]
    vic = eval_set.images[half:][:limit]
    if att.shape[0] < 2 or vic.shape[0] < 2:
        raise FormatError(
            f"{eval_set.name}: too few pairs to split into attacker and victim images"
        )
    return att, vic


def _compare(
    obs: dict[str, tuple[torch.Tensor, torch.Tensor]],
    att: torch.Tensor,
    vic: torch.Tensor,
    recognizer: torch.nn.Module,
    a: FullArgs,
    grid: Path,
) -> dict[str, dict[str, Any]]:
    from facelab.core.privacy import compare_attacks

    rows = compare_attacks(
        obs,
        att,
        vic,
        config=a.attack_config(),
        steps=a.attack_steps,
        batch_size=32,
        seed=a.seed,
        recognizer=recognizer,
        baseline=True,
        grid_path=grid,
        grid_samples=8,
        progress=a.progress,
    )
    return {r["attack"]: r for r in rows}


def _cells(att: dict[str, Any] | None) -> dict[str, float]:
    nan = float("nan")
    if att is None:
        return {"attack_ssim": nan, "attack_psnr": nan, "attack_identity_leakage": nan}
    psnr = float(att["psnr"])
    return {
        "attack_ssim": float(att["ssim"]),
        "attack_psnr": psnr if math.isfinite(psnr) else nan,
        "attack_identity_leakage": float(att["identity_leakage"]),
    }


def _row(method: str, **values: Any) -> dict[str, Any]:
    row = empty_row(method, "ok")
    row.update(values)
    return row


def _train_baseline(a: FullArgs, prog: Progress) -> tuple[Any, Any, list[Any]]:
    from facelab.benchmarks.baseline import train_baseline, verification

    cfg = baseline_config(a)
    with prog.stage(f"arcface baseline: train (preset {a.preset})"):
        base = train_baseline(cfg)
    with prog.stage("arcface baseline: verify on " + ", ".join(b.name for b in a.eval_bins)):
        sets = _bin_sets(cfg.data)
        results = [(s, verification(base.model, s)) for s in sets]
    return cfg, base, results


# --------------------------------------------------------------------------------------------
# methods on real data


def _retarget(cfg: Any, a: FullArgs, method: str) -> Any:
    """Point a method config's core ``DataConfig`` at the data and its ``TrainConfig``s and
    ``output_dir`` at the work folder, with the step / batch overrides."""
    from facelab.core.recipe import DataConfig
    from facelab.core.train import TrainConfig

    if not dataclasses.is_dataclass(cfg):
        raise FormatError(f"{method}: the preset is not a dataclass config ({type(cfg).__name__})")
    changes: dict[str, Any] = {}
    found_data = False
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, DataConfig):
            found_data = True
            changes[f.name] = dataclasses.replace(
                v,
                source=str(a.train_data),
                eval_bins=tuple(str(b) for b in a.eval_bins),
                image_size=a.image_size or v.image_size,
            )
        elif isinstance(v, TrainConfig):
            changes[f.name] = dataclasses.replace(
                v, output_dir=str(a.work / method / f.name), **a.train_overrides(v)
            )
        elif f.name == "output_dir" and isinstance(v, str):
            changes[f.name] = str(a.work / method)
    if not found_data:
        raise FormatError(
            f"{method}: the preset has no facelab.core.recipe.DataConfig field to point at the data"
        )
    return dataclasses.replace(cfg, **changes)


def run_recipe(method: str, a: FullArgs, log: Any = print) -> list[dict[str, Any]]:
    """``facelab.<m>.<m>_presets()[preset]`` retargeted, ``facelab.<m>.train(cfg)``, one row per
    verification set (accuracy, VAL@FAR=1e-3 of the 10-fold protocol; no attack)."""
    import importlib

    mod = importlib.import_module(f"facelab.{method}")
    presets = getattr(mod, f"{method}_presets", None) or getattr(mod, "presets", None)
    train = getattr(mod, "train", None)
    if not callable(presets) or not callable(train):
        raise ImportError(f"facelab.{method} exposes no {method}_presets() / train(cfg)")
    all_presets = presets()
    if a.preset not in all_presets:
        raise UnknownNameError(f"{method}: no preset {a.preset!r}; valid: {sorted(all_presets)}")
    cfg = _retarget(all_presets[a.preset], a, method)
    log(f"{method}: training preset {a.preset!r} through facelab.{method}.train")
    result = train(cfg)
    ver = getattr(result, "verification", None)
    if not isinstance(ver, dict) or not ver:
        raise FormatError(f"{method}: train(cfg) returned no verification results")
    wall = float(getattr(result, "wall_time", float("nan")))
    rows = []
    for path, v in _verification_leaves(ver):
        rows.append(
            _row(
                f"{method} [{'/'.join(path)}]",
                accuracy=float(v.accuracy),
                accuracy_std=float(v.accuracy_std),
                **{"tar_at_far_1e-3": float(getattr(v, "val", float("nan")))},
                train_time_s=wall,
                notes=f"preset {a.preset!r} via {method}.train; TAR = VAL@FAR=1e-3 of the "
                "10-fold protocol; no attack (the package has no quick.run_full yet)",
            )
        )
    if not rows:
        raise FormatError(f"{method}: train(cfg).verification holds no accuracy results")
    return rows


def _verification_leaves(
    tree: Any, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], Any]]:
    """The results with an ``accuracy`` in a nested ``{key: ... {key: result}}`` mapping (one
    level per set, model or matching mode, as each package arranges them), with their keys."""
    if hasattr(tree, "accuracy") and hasattr(tree, "accuracy_std"):
        return [(path, tree)]
    if isinstance(tree, dict):
        return [leaf for k, v in tree.items() for leaf in _verification_leaves(v, (*path, str(k)))]
    return []


def _method_rows(method: str, a: FullArgs, prog: Progress) -> tuple[list[dict[str, Any]], str]:
    """(rows, status) of one method on real data."""
    fn, _ = load_entry(method, "run_full")
    if fn is not None:
        outcome = run_method(
            method,
            function="run_full",
            log=prog.log,
            train_data=str(a.train_data),
            eval_bins=[str(b) for b in a.eval_bins],
            preset=a.preset,
            workdir=a.work / method,
            seed=a.seed,
            progress=a.progress,
            overrides={
                "max_steps": a.max_steps,
                "batch_size": a.batch_size,
                "image_size": a.image_size,
            },
        )
        return outcome.rows, outcome.status
    try:
        rows = run_recipe(method, a, log=prog.log)
    except ImportError as err:
        return [not_built_row(method, f"{type(err).__name__}: {err}")], "not built"
    except Exception as err:
        prog.log(f"{method} FAILED: {type(err).__name__}: {err}")
        return [failed_row(method, err)], "failed"
    return rows, "ok"


# --------------------------------------------------------------------------------------------
# the suites


def run_ppfr(
    small: bool = False,
    seed: int = 0,
    out: str | Path | None = None,
    progress: bool = True,
    train_data: str | Path | None = None,
    eval_bins: Sequence[str | Path] | None = None,
    preset: str | None = None,
    max_steps: int | None = None,
    batch_size: int | None = None,
    image_size: int | None = None,
    attack_steps: int | None = None,
    methods: Sequence[str] = PPFR_METHODS,
    **_: Any,
) -> SuiteResult:
    """ArcFace baseline + the privacy-preserving recognition methods on real data."""

    out = Path(out or "results/ppfr")
    a, prog = _start(
        "ppfr",
        train_data,
        eval_bins,
        preset,
        max_steps,
        batch_size,
        image_size,
        attack_steps,
        seed,
        small,
        progress,
        out,
    )
    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    curves: dict[str, Any] = {}
    attacks: dict[str, Any] = {}
    grid = out / "grid_inversion.png"
    cfg, base, results = _train_baseline(a, prog)
    size = cfg.data.image_size
    with prog.stage(f"inversion attacks ({a.attack_steps} steps)"):
        from facelab.core.eval import embed

        att, vic = _attack_split(results[0][0], ATTACK_IMAGES_SMALL if small else ATTACK_IMAGES)
        obs = {
            "rgb image": (att, vic),
            "arcface embedding": (embed(base.model, att), embed(base.model, vic)),
        }
        attacks = _compare(obs, att, vic, base.model, a, grid)
    for s, v in results:
        name = f"arcface [{s.name}]"
        curves[name] = v["roc"]
        first = s is results[0][0]
        rows.append(
            _row(
                name,
                accuracy=v["accuracy"],
                accuracy_std=v["accuracy_std"],
                **{"tar_at_far_1e-3": v["tar_at_far_1e-3"]},
                **_cells(attacks.get("rgb image") if first else None),
                bytes_per_image=3 * size * size,
                train_time_s=base.train_time_s,
                infer_images_per_s=v["infer_images_per_s"],
                notes=f"preset {a.preset!r}, {cfg.backbone}; sends the uint8 image"
                + ("; attack observes the image (reference)" if first else ""),
            )
        )
    if "mean image" in attacks:
        rows.append(
            _row(
                "reference: mean-image attack",
                **_cells(attacks["mean image"]),
                notes="no-information attack",
            )
        )
    for m in methods:
        with prog.stage(f"{m} (preset {a.preset})") as record:
            got, status = _method_rows(m, a, prog)
            record.status = status
        if status == "failed":
            failed.append(m)
        rows += [{k: v for k, v in r.items() if k not in ("roc", "grid")} for r in got]
    plots = _plots(out, rows, curves, attacks, grid, "ppfr")
    return SuiteResult(
        suite="ppfr",
        summary=ppfr_claims(rows, methods, results[0][0].name if results else ""),
        columns=[k for k, _ in TABLE_COLUMNS],
        headers=dict(TABLE_COLUMNS),
        rows=rows,
        settings=_settings(a, methods),
        notes=_notes(a),
        plots=plots,
        failed=failed,
        timings=prog.summary(),
        extra={"attacks": attacks},
    )


def slerpface_config(a: FullArgs, image_size: int) -> Any:
    """``facelab.slerpface.train.presets()[preset]`` pointed at the data and the work folder."""
    from facelab.slerpface.train import presets

    all_presets = presets()
    if a.preset not in all_presets:
        raise UnknownNameError(f"slerpface: no preset {a.preset!r}; valid: {sorted(all_presets)}")
    cfg = all_presets[a.preset]
    kind = "recordio" if (a.train_data / "train.rec").is_file() else "folder"
    data = dataclasses.replace(cfg.data, kind=kind, root=str(a.train_data), size=image_size)
    options = dict(cfg.model.backbone_options, input_size=image_size)
    model = dataclasses.replace(cfg.model, backbone_options=options)
    train = dataclasses.replace(
        cfg.train,
        output_dir=str(a.work / "slerpface"),
        seed=2337 + a.seed,
        **a.train_overrides(cfg.train),
    )
    return dataclasses.replace(cfg, data=data, model=model, train=train)


def run_templates(
    small: bool = False,
    seed: int = 0,
    out: str | Path | None = None,
    progress: bool = True,
    train_data: str | Path | None = None,
    eval_bins: Sequence[str | Path] | None = None,
    preset: str | None = None,
    max_steps: int | None = None,
    batch_size: int | None = None,
    image_size: int | None = None,
    attack_steps: int | None = None,
    **_: Any,
) -> SuiteResult:
    """SlerpFace, BioHashing and IronMask on the templates of a SlerpFace extractor trained on
    real data, beside the ArcFace baseline's unprotected embedding."""
    from facelab.benchmarks import templates as T

    out = Path(out or "results/templates")
    a, prog = _start(
        "templates",
        train_data,
        eval_bins,
        preset,
        max_steps,
        batch_size,
        image_size,
        attack_steps,
        seed,
        small,
        progress,
        out,
    )
    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    curves: dict[str, Any] = {}
    grid = out / "grid_inversion.png"
    cfg, base, results = _train_baseline(a, prog)
    size = cfg.data.image_size
    first = results[0][0]
    att, vic = _attack_split(first, ATTACK_IMAGES_SMALL if small else ATTACK_IMAGES)
    from facelab.core.eval import embed

    obs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {
        "arcface embedding (unprotected)": (embed(base.model, att), embed(base.model, vic))
    }
    tpl: dict[str, dict[str, dict[str, Any]]] = {}
    ext, status, train_s = None, "ok", float("nan")
    try:
        import facelab.slerpface  # noqa: F401
    except ImportError as err:
        status = f"not built: {err}"
    if status == "ok":
        try:
            from facelab.slerpface.train import train as train_slerpface

            scfg = slerpface_config(a, size)
            with prog.stage(f"slerpface extractor: train (preset {a.preset})"):
                ext, result = train_slerpface(scfg, resume=None)
                train_s = float(result.wall_time)
            with prog.stage("templates: extract, protect, verify"):
                for s, _ in results:
                    e = T.extract(ext, s.images)
                    n = s.num_pairs
                    pairs = (torch.arange(0, 2 * n, 2), torch.arange(1, 2 * n, 2), s.issame)
                    tpl[s.name] = T.evaluate_protectors(e, pairs, seed=seed, log=prog.log)
                att_t, vic_t = T.extract(ext, att), T.extract(ext, vic)
                for name in T.PROTECTORS:
                    obs[T.ROW_NAMES[name]] = (
                        T.observations(name, att_t, seed * 1000 + 11),
                        T.observations(name, vic_t, seed * 1000 + 12),
                    )
        except Exception as err:
            failed.append("slerpface")
            prog.log(f"slerpface FAILED: {type(err).__name__}: {err}")
            status = f"failed: {type(err).__name__}: {err}"
    with prog.stage(f"inversion attacks ({a.attack_steps} steps)"):
        attacks = _compare(obs, att, vic, base.model, a, grid)
    for s, v in results:
        label = f"arcface embedding (unprotected) [{s.name}]"
        curves[label] = v["roc"]
        rows.append(
            _row(
                label,
                accuracy=v["accuracy"],
                accuracy_std=v["accuracy_std"],
                **{"tar_at_far_1e-3": v["tar_at_far_1e-3"]},
                **_cells(attacks.get("arcface embedding (unprotected)") if s is first else None),
                bytes_per_image=4 * cfg.embedding_size,
                train_time_s=base.train_time_s,
                infer_images_per_s=v["infer_images_per_s"],
                notes=f"ArcFace preset {a.preset!r} ({cfg.backbone}); float32 embedding stored as is",
            )
        )
    if "mean image" in attacks:
        rows.append(
            _row(
                "reference: mean-image attack",
                **_cells(attacks["mean image"]),
                notes="no-information attack",
            )
        )
    for name in T.PROTECTORS:
        label = T.ROW_NAMES[name]
        if status != "ok":
            make = not_built_row if status.startswith("not built") else failed_row
            rows.append(make(label, status.split(": ", 1)[1]))
            continue
        for s, _ in results:
            res = tpl[s.name][name]
            curves[f"{label} [{s.name}]"] = res["roc"]
            rows.append(
                _row(
                    f"{label} [{s.name}]",
                    accuracy=res["accuracy"],
                    accuracy_std=res["accuracy_std"],
                    **{"tar_at_far_1e-3": res["tar_at_far_1e-3"]},
                    **_cells(attacks.get(label) if s is first else None),
                    bytes_per_image=res["bytes_per_image"],
                    train_time_s=train_s,
                    infer_images_per_s=res["infer_images_per_s"],
                    notes=f"slerpface preset {a.preset!r}; params {res['params']}",
                )
            )
    plots = _plots(out, rows, curves, attacks, grid, "templates")
    return SuiteResult(
        suite="templates",
        columns=[k for k, _ in TABLE_COLUMNS],
        headers=dict(TABLE_COLUMNS),
        rows=rows,
        settings=_settings(a, ()),
        notes=_notes(a),
        plots=plots,
        failed=failed,
        timings=prog.summary(),
        extra={"attacks": attacks},
    )


def _plots(
    out: Path,
    rows: list[dict[str, Any]],
    curves: dict[str, Any],
    attacks: dict[str, Any],
    grid: Path,
    suite: str,
) -> list[str]:
    from facelab.benchmarks.plots import plot_accuracy_vs_leakage, plot_rocs

    plots = []
    p = plot_rocs(curves, out / "roc.png", f"{suite}: ROC per method and set")
    if p is not None:
        plots.append(p.name)
    ref = (
        {"mean-image attack": attacks["mean image"]["identity_leakage"]}
        if "mean image" in attacks
        else {}
    )
    p = plot_accuracy_vs_leakage(
        rows,
        out / "accuracy_vs_leakage.png",
        title=f"{suite}: accuracy vs identity leakage",
        reference_leakage=ref,
    )
    if p is not None:
        plots.append(p.name)
    if grid.is_file():
        plots.append(grid.name)
    return plots


def _settings(a: FullArgs, methods: Sequence[str]) -> dict[str, Any]:
    return {
        "train_data": str(a.train_data) if not a.toy else f"toyfaces (written to {a.train_data})",
        "toy_data": a.toy,
        "eval_bins": [str(b) for b in a.eval_bins],
        "preset": a.preset,
        "overrides": {
            "max_steps": a.max_steps,
            "batch_size": a.batch_size,
            "image_size": a.image_size,
        },
        "attack_steps": a.attack_steps,
        "attack_width": a.attack_config().width,
        "seed": a.seed,
        "seeds": {
            "arcface_train": 1337 + a.seed,
            "slerpface_train": 2337 + a.seed,
            "attacks": a.seed,
        },
        "small": a.small,
        "methods": list(methods),
        "torch_threads": torch.get_num_threads(),
    }


def _notes(a: FullArgs) -> list[str]:
    toy = (
        [
            "toy data (no --train-data / --eval-bins given): toyfaces identity folders and a "
            ".bin of held-out toyfaces people, written by facelab.benchmarks.toydata; "
            f"preset {a.preset!r}"
        ]
        if a.toy
        else []
    )
    budget = (
        [
            f"paper-shape toy data: the inversion attacks train a width-"
            f"{ATTACK_WIDTH_PAPER_SHAPE_TOY} decoder for {a.attack_steps} steps (default "
            f"{ATTACK_STEPS_PAPER_SHAPE_TOY}: the CPU-hour budget; other runs: width 32, "
            f"{ATTACK_STEPS:,} steps), so their rows are a lower bound on what a fully trained "
            "attack recovers"
        ]
        if a.paper_shape_toy
        else []
    )
    return [
        *toy,
        *budget,
        "accuracy: insightface 10-fold verification on each .bin; TAR@FAR=1e-3: the ROC point of "
        "the pair scores nearest to FAR 1e-3 (method rows without scores: VAL@FAR=1e-3)",
        f"inversion attacks: trained on the images of the first half of the pairs of "
        f"{a.eval_bins[0].name}, scored on the second half; identity leakage under the ArcFace "
        "baseline; attack columns are filled on that set's rows only",
        "bytes/image: what crosses the client -> server boundary (templates: the stored template)",
    ]


#: the claim each frequency-method paper makes against its unprotected ArcFace baseline, and
#: the accuracy drop (in points) this report still counts as "close"
PPFR_CLAIMS: dict[str, str] = {
    "duetface": "DuetFace: the two-party channel split keeps verification accuracy close to the "
    "unprotected baseline while the server never sees the RGB image",
    "partialface": "PartialFace: training and inference on a random subset of frequency "
    "channels keeps accuracy close to the baseline",
    "minusface": "MinusFace: the feature-subtraction transform keeps accuracy close to the "
    "baseline while its protected representation resists inversion",
}
CLAIM_DROP_POINTS = 2.0


def ppfr_claims(rows: Sequence[dict[str, Any]], methods: Sequence[str], first_set: str) -> str:
    """One line per method: its accuracy on the first set against the RGB baseline's, and
    whether the paper's accuracy claim holds here (a drop of at most ``CLAIM_DROP_POINTS``)."""
    base = next(
        (
            r
            for r in rows
            if r["method"] == f"arcface [{first_set}]"
            and math.isfinite(r.get("accuracy", math.nan))
        ),
        None,
    )
    if base is None:
        return "- the ArcFace baseline has no accuracy: no claim can be checked"
    lines = [f"- RGB ArcFace baseline on {first_set}: accuracy {base['accuracy']:.4f}"]
    for m in methods:
        mine = [r for r in rows if r["method"].split(" [")[0] == m]
        ok = next(
            (
                r
                for r in mine
                if r.get("status") == "ok" and math.isfinite(r.get("accuracy", math.nan))
            ),
            None,
        )
        claim = PPFR_CLAIMS.get(m, m)
        if ok is None:
            status = mine[0]["status"] if mine else "not run"
            lines.append(f"- {claim}: not checked ({status})")
            continue
        drop = 100 * (base["accuracy"] - ok["accuracy"])
        verdict = (
            "holds here" if drop <= CLAIM_DROP_POINTS else "does not hold at this size or budget"
        )
        # a method above the baseline reads "N points above", not "-N points below"
        gap = f"{drop:.1f} points below" if drop >= 0 else f"{-drop:.1f} points above"
        lines.append(
            f"- {claim}: {ok['method']} accuracy {ok['accuracy']:.4f}, {gap} the baseline "
            f"(claim counted as holding within {CLAIM_DROP_POINTS:g} points below): {verdict}"
        )
    return "\n".join(lines)
