"""Synthetic face data: every installed generator writes a dataset of the same size from its
shipped toy weights, and FRCSyn's cross-dataset table scores them side by side with the
real-data baseline and GAP.

* generators: ``facelab.benchmarks.generators`` (the synthesis base of core, UIFace, SteerFace,
  MorphFace): each needs its package installed, its toy weights (``scripts/make_toy_weights.py``)
  and a dataset writer; the rest get a row saying which is missing;
* scoring: ``facelab.frcsyn.cross_dataset_table`` (one recognizer recipe and seed for every
  dataset and for the baseline; the toy edition's evaluation sets, or ``.bin`` sets given with
  ``eval_bins``; the baseline is real toyfaces of the same size, or ``train_data``).
  FRCSyn imports no generator; making the datasets is this module's job.

Levels: ``quick`` 24 identities x 16 images per generator, 10 DDIM steps, an IResNet-18 (width
8) trained 300 steps at 32 px, smaller toy sets; ``suite`` 24 x 40 images (the toy generators'
whole training size), 25 DDIM steps, width 16 and 600 steps, the toy edition's default sets at
32 px; ``small`` a smoke-test size.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

from facelab.benchmarks.families import (
    NOT_INSTALLED,
    FamilySection,
    Table,
    finite,
    installed,
    new_figure,
    one_line,
    save_figure,
)

COLUMNS = [
    ("dataset", "training data"),
    ("status", "status"),
    ("images", "images"),
    ("identities", "identities"),
    ("avg", "AVG [%] (task 2)"),
    ("fnmr", "FNMR@FMR=1% [%]"),
    ("auc", "AUC [%]"),
    ("gap", "GAP [%]"),
    ("to", "TO [%] (task 1)"),
    ("gen_images_per_s", "generated img/s"),
]
REAL = "real (baseline)"
UNSCORED = "not scored: facelab-frcsyn is not installed"


def settings(level: str, seed: int) -> dict[str, Any]:
    if level == "suite":
        return {
            "identities": 24,
            "images_per_identity": 40,
            "num_steps": 25,
            "image_size": 32,
            "width": 16,
            "steps": 600,
            "toy": {"image_size": 32},
            "seed": seed,
        }
    if level == "small":
        return {
            "identities": 4,
            "images_per_identity": 3,
            "num_steps": 2,
            "image_size": 32,
            "width": 8,
            "steps": 4,
            "batch_size": 8,
            "toy": {
                "image_size": 32,
                "sets": ("bupt", "cfpfp"),
                "group_identities": 2,
                "group_images": 4,
                "group_pairs": 20,
                "hard_identities": 6,
                "hard_pairs": 20,
                "candidates": 24,
            },
            "seed": seed,
        }
    return {
        "identities": 24,
        "images_per_identity": 16,
        "num_steps": 10,
        "image_size": 32,
        "width": 8,
        "steps": 300,
        "toy": {
            "image_size": 32,
            "group_identities": 10,
            "group_images": 5,
            "group_pairs": 200,
            "hard_identities": 50,
            "hard_pairs": 400,
            "candidates": 32,
        },
        "seed": seed,
    }


def recipe(s: dict[str, Any], workdir: Path, progress: bool, image_size: int) -> Any:
    """FRCSyn's recognizer recipe at toy size: IResNet-18, ArcFace, SGD, cosine over steps."""
    from facelab.core.train import TrainConfig
    from facelab.frcsyn import RecipeConfig

    train = TrainConfig(
        output_dir=str(workdir / "frcsyn"),
        max_steps=s["steps"],
        batch_size=s.get("batch_size", 64),
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        scheduler="cosine",
        warmup=min(20, s["steps"] // 4),
        warmup_unit="step",
        seed=1337 + s["seed"],
        log_every=max(1, s["steps"] // 5),
        progress=progress,
        checkpoint_every=None,
        save_on_exit=False,
    )
    return RecipeConfig(
        backbone="r18",
        embedding_size=128,
        base_width=s["width"],
        image_size=image_size,
        train=train,
        resume=False,
    )


def _generate(
    spec: Any, root: Path | None, s: dict[str, Any], dest: Path, progress: bool
) -> tuple[str, dict[str, Any]]:
    """(status, info) of one generator's dataset: ok, or why there is none."""
    from facelab.benchmarks.generators import MissingWeightsError, weights_dir

    if not spec.is_installed():
        return f"{NOT_INSTALLED} ({spec.module.replace('facelab.', 'facelab-')})", {}
    writer = spec.writer()
    if writer is None:
        return (
            f"not built ({spec.module}.bench has no write_toy_dataset and benchmarks has no "
            "adapter)",
            {},
        )
    try:
        weights = weights_dir(spec.name, root)
    except MissingWeightsError as err:
        return f"no toy weights ({one_line(err, 200)})", {}
    if dest.exists():
        shutil.rmtree(dest)
    # the first generator would otherwise pay the diffusion modules' import in its img/s
    import facelab.core.diffusion.generate
    import facelab.core.diffusion.train  # noqa: F401

    t0, c0 = time.perf_counter(), time.process_time()
    writer(
        weights,
        dest,
        identities=s["identities"],
        images_per_identity=s["images_per_identity"],
        seed=s["seed"],
        image_size=s["image_size"],
        num_steps=s["num_steps"],
        progress=progress,
    )
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = s["identities"] * s["images_per_identity"]
    return "ok", {"wall_s": wall, "cpu_s": cpu, "images": n, "images_per_s": n / max(wall, 1e-9)}


def _samples_grid(datasets: dict[str, Path], path: Path, per_row: int = 8) -> str | None:
    """The first image of the first ``per_row`` identities of each dataset, one row each."""
    import numpy as np
    from PIL import Image

    rows = []
    for name, root in datasets.items():
        folders = sorted(p for p in Path(root).iterdir() if p.is_dir())[:per_row]
        imgs = []
        for f in folders:
            files = sorted(p for p in f.iterdir() if p.suffix.lower() in (".png", ".jpg"))
            if files:
                imgs.append(np.asarray(Image.open(files[0]).convert("RGB").resize((48, 48))))
        if imgs:
            rows.append((name, imgs))
    if not rows:
        return None
    fig, axes = new_figure(1.2 * per_row + 1.6, 1.25 * len(rows) + 0.3)
    ax = axes
    ax.axis("off")
    canvas = np.full((len(rows) * 52, per_row * 52, 3), 255, dtype=np.uint8)
    for i, (_, imgs) in enumerate(rows):
        for j, img in enumerate(imgs):
            canvas[i * 52 + 2 : i * 52 + 50, j * 52 + 2 : j * 52 + 50] = img
    ax.imshow(canvas)
    for i, (name, _) in enumerate(rows):
        ax.text(-4, i * 52 + 26, name, ha="right", va="center", fontsize=8)
    ax.set_title("generated identities (first image each)", fontsize=9)
    return save_figure(fig, path)


def _plot(entries: list[dict[str, Any]], sets: list[str], path: Path) -> str | None:
    ok = [e for e in entries if e.get("set_accuracy")]
    if not ok:
        return None
    fig, ax = new_figure(2 + 1.6 * len(sets), 3.8)
    width = 0.8 / len(ok)
    for i, e in enumerate(ok):
        xs = [j + (i - (len(ok) - 1) / 2) * width for j in range(len(sets))]
        gap = e.get("gap")
        label = e["dataset"] + (
            f" (GAP {gap:.1f} %)" if finite(gap) and e["dataset"] != REAL else ""
        )
        ax.bar(xs, [100 * e["set_accuracy"].get(s, math.nan) for s in sets], width, label=label)
    ax.set_xticks(range(len(sets)), sets)
    ax.set_ylabel("verification accuracy (%)")
    ax.set_ylim(40, 100)
    ax.set_title("FRCSyn toy protocol: a recognizer trained on each dataset")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, axis="y", ls="--", lw=0.5, alpha=0.6)
    return save_figure(fig, path)


def _summary(rows: list[dict[str, Any]], s: dict[str, Any]) -> str:
    real = next((r for r in rows if r["dataset"] == REAL and r["status"] == "ok"), None)
    gens = [r for r in rows if r["dataset"] != REAL and r["status"] == "ok"]
    if real is None or not gens:
        return ""
    parts = [f"{r['dataset']} {r['avg']:.1f} % (GAP {r['gap']:.1f} %)" for r in gens]
    best = min(gens, key=lambda r: r["gap"] if finite(r["gap"]) else math.inf)
    text = (
        f"FRCSyn toy protocol ({s['identities']} identities x {s['images_per_identity']} "
        f"images per dataset, one recognizer recipe): real toyfaces reach AVG {real['avg']:.1f} %, "
        + ", ".join(parts)
        + "; GAP is how far a generator's data falls behind real data of the same size "
        "(lower is better, 0 = as good as real)"
    )
    if len(gens) > 1:
        text += f"; {best['dataset']} comes closest"
    return text + "."


def run(
    *,
    level: str,
    seed: int,
    workdir: Path,
    out: Path,
    progress: bool,
    toy_weights: str | Path | None = None,
    generators: tuple[str, ...] | None = None,
    eval_bins: tuple[str, ...] | None = None,
    train_data: str | None = None,
    **_: Any,
) -> FamilySection:
    from facelab.benchmarks.generators import GENERATORS, get_generator, weights_root

    section = FamilySection("synth", "Synthetic face data")
    s = settings(level, seed)
    root = weights_root(toy_weights)
    names = tuple(generators) if generators is not None else tuple(GENERATORS)
    specs = [get_generator(n) for n in names]
    caption = (
        "Each generator's dataset (same identities, same size) and real toyfaces of the same "
        "size, each training the same FRCSyn recognizer recipe, scored on the same sets "
        "(`facelab.frcsyn.cross_dataset_table`; GAP = 100 (REAL - SYN) / SYN of AVG)"
    )
    frcsyn = installed("facelab.frcsyn")
    status: dict[str, str] = {}
    info: dict[str, dict[str, Any]] = {}
    datasets: dict[str, Path] = {}
    for spec in specs:
        dest = workdir / "datasets" / spec.name
        try:
            st, inf = _generate(spec, root, s, dest, progress)
        except Exception as err:
            st, inf = f"failed: {one_line(err)}", {}
            section.failed.append(spec.name)
        status[spec.label] = st
        info[spec.label] = inf
        if st == "ok":
            datasets[spec.label] = dest
    rows: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    sets: list[str] = []
    if frcsyn and datasets:
        try:
            table, sets = _score(datasets, s, workdir, progress, eval_bins, train_data)
            rows, entries = _rows(table, info)
            section.text = "FRCSyn's own table (per-set accuracy):\n\n" + table.markdown(2)
            section.data["frcsyn"] = table.to_dict()
        except Exception as err:
            section.failed.append("frcsyn table")
            for label in datasets:
                status[label] = f"failed: {one_line(err)}"
    done = {r["dataset"] for r in rows}
    for spec in specs:
        if spec.label not in done:
            row = {k: math.nan for k, _ in COLUMNS}
            st = status.get(spec.label, "not run")
            if st == "ok" and not frcsyn:  # generated, but nothing scores it
                inf = info.get(spec.label, {})
                st = f"generated; {UNSCORED}"
                row.update(
                    images=inf.get("images", math.nan),
                    identities=s["identities"],
                    gen_images_per_s=inf.get("images_per_s", math.nan),
                )
            row.update(dataset=spec.label, status=st)
            rows.append(row)
    section.tables.append(Table(caption, COLUMNS, rows))
    plot = _plot(entries, sets, out / "synth_frcsyn.png")
    if plot:
        section.plots.append(plot)
    grid = _samples_grid(datasets, out / "synth_samples.png") if datasets else None
    if grid:
        section.plots.append(grid)
    gen_ok = [k for k, v in status.items() if v == "ok"]
    if not frcsyn:
        section.status = (
            f"partial ({UNSCORED})" if gen_ok else f"{NOT_INSTALLED} ({UNSCORED}, no generator)"
        )
        gens = "; ".join(
            f"{k}: "
            + (
                f"{info[k]['images']} images at {info[k]['images_per_s']:.1f} img/s"
                if v == "ok"
                else v.split(" (")[0]
            )
            for k, v in status.items()
        )
        section.summary = (
            "Synthesis: facelab-frcsyn (the scoring protocol) is not installed, so the "
            f"generated datasets are not scored ({gens})."
        )
    elif not gen_ok:
        section.status = "no generator" if not section.failed else "failed"
        section.summary = (
            "Synthesis: no generator produced a dataset ("
            + "; ".join(f"{k}: {v}" for k, v in status.items())
            + ")."
        )
    else:
        missing = [k for k, v in status.items() if v != "ok"]
        section.status = "ok" if not missing else f"partial ({', '.join(missing)} missing)"
        section.summary = _summary(rows, s) or "Synthesis: the FRCSyn table did not finish."
    section.settings = {
        **s,
        "toy_weights": str(root) if root else None,
        "generators": list(names),
        "eval_bins": list(eval_bins or []),
        "train_data": train_data,
    }
    section.data["generation"] = info
    section.notes = [
        "the toy generators condition on the random ID vectors of the 24 toyfaces people they "
        "were trained on (toy presets: one unit vector per identity); every dataset uses the "
        "same vectors and per-image noise seeds",
        "real (baseline): real toyfaces of the same number of images and people (FRCSyn's toy "
        "baseline); the generators were trained on toyfaces 'easy' (less nuisance)",
        "generated img/s: wall time of writing the dataset on this machine (speed ratios "
        "against a bare denoiser loop are in `facelab bench speed`)",
    ]
    return section


def _score(
    datasets: dict[str, Path],
    s: dict[str, Any],
    workdir: Path,
    progress: bool,
    eval_bins: tuple[str, ...] | None,
    train_data: str | None,
) -> tuple[Any, list[str]]:
    from facelab.frcsyn import EvalConfig, ToyEditionConfig, cross_dataset_table, toy_eval_sets

    if eval_bins:
        from facelab.frcsyn import load_eval_sets

        sets = load_eval_sets(list(eval_bins), [])
        size = sets[0].image_size
    else:
        toy = dict(s["toy"])
        toy["seed"] = s["seed"]
        sets = toy_eval_sets(ToyEditionConfig(**toy))
        size = s["image_size"]
    table = cross_dataset_table(
        datasets,
        sets,
        recipe=recipe(s, workdir, progress, size),
        eval_cfg=EvalConfig(batch_size=256),
        baseline=train_data or "toyfaces",
        output_dir=workdir / "frcsyn-table",
        require_equal_size=True,
    )
    return table, [x.name for x in sets]


def _rows(table: Any, info: dict[str, dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """Our rows (task 2 AVG / FNMR / AUC / GAP, task 1 TO) and per-set accuracies."""
    t2 = {r.team: r.values for r in table.rows("2.1")}
    try:
        t1 = {r.team: r.values for r in table.rows("1.1")}
    except Exception:  # no demographic set (real .bin sets): no task 1
        t1 = {}
    rows, entries = [], []
    all_entries = ([table.baseline] if table.baseline is not None else []) + table.entries
    for e in all_entries:
        v2, v1 = t2.get(e.name, {}), t1.get(e.name, {})
        name = REAL if e is table.baseline else e.name
        row = {
            "dataset": name,
            "status": "ok",
            "images": e.num_images,
            "identities": e.num_identities,
            "avg": _num(v2.get("AVG [%]")),
            "fnmr": _num(v2.get("FNMR@FMR=1%")),
            "auc": _num(v2.get("AUC [%]")),
            "gap": _num(v2.get("GAP [%]")),
            "to": _num(v1.get("TO [%]")),
            "gen_images_per_s": info.get(e.name, {}).get("images_per_s", math.nan),
        }
        rows.append(row)
        entries.append(
            {
                "dataset": name,
                "gap": row["gap"],
                "set_accuracy": {k: r.accuracy for k, r in e.results.items()},
            }
        )
    return rows, entries


def _num(v: Any) -> float:
    return float(v) if v is not None and finite(float(v)) else math.nan
