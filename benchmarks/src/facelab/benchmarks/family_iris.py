"""Iris recognition: ImmerIris's normalization-free network (NormFree) against the classical
pipeline (segmentation, rubber-sheet normalization, Gabor iris codes, shifted Hamming distance)
on the package's procedural off-axis ocular data and protocols.

Everything is the package's own: ``facelab.immeriris.train`` (NormFree, and NormKeep in the
suite) from its ``toy`` preset, ``facelab.immeriris.evaluate.evaluate`` (every method on the
protocols, FRR at FAR, EER, d', rank-1; DET plots through ``Report.save``) and
``summary_rows``. This module picks the sizes per level and arranges the rows.

Levels: ``quick`` NormFree (the toy network the package ships, ``toy_normfree()``: the toy
preset's 1000 steps, trained once by ``packages/immeriris/scripts/make_toy_weights.py``) vs
classical, oracle segmentation, on the ``Control`` and ``Gaze`` protocols (frontal vs off-axis
probes), left eye and both eyes; ``suite`` the toy preset as the package defines it, NormFree
and NormKeep, all eight protocols, oracle and our segmentation; ``small`` a smoke-test size.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from facelab.benchmarks.families import (
    FamilySection,
    Table,
    copy_plot,
    failed_row,
    finite,
    installed,
    missing_row,
    new_figure,
    one_line,
    pct,
    save_figure,
)

FAR = 1e-3
OFF_AXIS = ("Gaze", "Select", "Any")
"""the protocols whose probes include off-axis gaze (the paper's claim is about these)"""
COLUMNS = [
    ("method", "method"),
    ("status", "status"),
    ("protocol", "protocol"),
    ("eye", "eye"),
    (f"frr@{FAR:g}", f"FRR at FAR {FAR:g}"),
    ("eer", "EER"),
    ("dprime", "d'"),
    ("rank1", "rank-1"),
    ("n_genuine", "genuine pairs"),
    ("n_impostor", "impostor pairs"),
]


def settings(level: str, seed: int) -> dict[str, Any]:
    """Training and evaluation sizes of a level (the ``toy`` preset's paradigm and widths)."""
    if level == "suite":
        return {
            "paradigms": ("normfree", "normkeep"),
            "train": {},  # the toy preset as the package defines it
            "eval_subjects": 30,
            "protocols": None,  # all
            "segmentations": ("oracle", "ours"),
            "seed": seed,
        }
    if level == "small":
        return {
            "paradigms": ("normfree",),
            "train": {"num_subjects": 6, "captures_per_subject": 8, "max_steps": 6, "batch": 16},
            "eval_subjects": 4,
            "protocols": ("Control", "Gaze"),
            "segmentations": ("oracle",),
            "seed": seed,
        }
    return {
        "paradigms": ("normfree",),
        # the toy preset's network as the package ships it (1000 steps, ~6 CPU-minutes to
        # train, more than the quick suite's share): no training here
        "train": "shipped",
        "eval_subjects": 16,
        "protocols": ("Control", "Gaze"),
        "segmentations": ("oracle",),
        "seed": seed,
    }


def shipped_network(paradigm: str) -> Any:
    """The trained toy network facelab-immeriris ships (NormFree only)."""
    from facelab.core.errors import UnknownNameError
    from facelab.immeriris.model import toy_normfree

    if paradigm != "normfree":
        raise UnknownNameError(
            f"shipped toy weights: expected paradigm 'normfree', got {paradigm!r}"
        )
    return toy_normfree()


def recipe(paradigm: str, s: dict[str, Any], workdir: Path, progress: bool) -> Any:
    from facelab.immeriris.train import preset

    cfg = preset("toy", paradigm)
    t = s["train"]
    data = cfg.data
    if "num_subjects" in t:
        data = dataclasses.replace(
            data,
            num_subjects=t["num_subjects"],
            captures_per_subject=t.get("captures_per_subject", data.captures_per_subject),
        )
    data = dataclasses.replace(data, seed=s["seed"])
    train = dataclasses.replace(
        cfg.train,
        output_dir=str(workdir / f"immeriris-{paradigm}"),
        seed=cfg.train.seed + s["seed"],
        progress=progress,
        save_on_exit=False,
        checkpoint_every=None,
    )
    if "max_steps" in t:
        n = t["max_steps"]
        warmup = min(train.warmup, n // 10) if train.warmup_unit == "step" else 0
        train = dataclasses.replace(
            train, max_steps=n, warmup=warmup, batch_size=t.get("batch", train.batch_size)
        )
    return dataclasses.replace(cfg, data=data, train=train, resume=None)


def eval_config(s: dict[str, Any]) -> Any:
    from facelab.immeriris.evaluate import EvalConfig

    kwargs: dict[str, Any] = {
        "num_subjects": s["eval_subjects"],
        "seed": s["seed"],
        "segmentations": s["segmentations"],
        "classical": True,
    }
    if s["protocols"] is not None:
        kwargs["protocols"] = s["protocols"]
    return EvalConfig(**kwargs)


def _plot(rows: list[dict[str, Any]], path: Path) -> str | None:
    """FRR at FAR 1e-3 per protocol (left eye), one bar per method."""
    key = f"frr@{FAR:g}"
    ok = [r for r in rows if r.get("status") == "ok" and r["eye"] == "left" and finite(r[key])]
    if not ok:
        return None
    methods = list(dict.fromkeys(r["method"] for r in ok))
    protocols = list(dict.fromkeys(r["protocol"] for r in ok))
    fig, ax = new_figure(1.6 + 1.3 * len(protocols) * max(1, len(methods)) / 2, 3.8)
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        vals = {r["protocol"]: r[key] for r in ok if r["method"] == m}
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(protocols))]
        ax.bar(xs, [100 * vals.get(p, math.nan) for p in protocols], width, label=m)
    ax.set_xticks(range(len(protocols)), protocols)
    ax.set_ylabel(f"FRR at FAR {FAR:g} (%, lower is better)")
    ax.set_title("ImmerIris protocols, left eye")
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", ls="--", lw=0.5, alpha=0.6)
    return save_figure(fig, path)


def _summary(rows: list[dict[str, Any]]) -> str:
    key = f"frr@{FAR:g}"
    ok = {
        (r["method"], r["protocol"]): r
        for r in rows
        if r.get("status") == "ok" and r["eye"] == "left" and finite(r.get(key))
    }
    nets = sorted({m for m, _ in ok if m.startswith("NormFree")})
    classical = sorted({m for m, _ in ok if m.startswith("classical")})
    if not nets or not classical:
        return "ImmerIris: no NormFree / classical pair to compare."
    net, cls = nets[0], classical[0]
    parts, off_wins, off_total, frontal = [], 0, 0, []
    for p in dict.fromkeys(p for _, p in ok):
        if (net, p) in ok and (cls, p) in ok:
            a, b = ok[(net, p)][key], ok[(cls, p)][key]
            parts.append(f"{p} {pct(a)} vs {pct(b)}")
            if p in OFF_AXIS:
                off_total += 1
                off_wins += a < b
            elif a >= b:
                frontal.append(p)
    if not off_total:
        verdict = "no off-axis protocol compared, so the paper's claim is not tested"
    elif off_wins == off_total:
        verdict = (
            "the network without normalization beats the classical pipeline on every off-axis "
            "protocol, as the paper claims"
        )
        if frontal:
            verdict += f"; the classical pipeline stays better on {', '.join(frontal)}"
    else:
        verdict = (
            f"NormFree is better on {off_wins} of {off_total} off-axis protocols at this size: "
            "the paper's claim is not shown"
        )
    return (
        f"ImmerIris (procedural off-axis eyes, left eye): FRR at FAR {FAR:g}, {net} vs {cls}: "
        + "; ".join(parts)
        + f": {verdict}."
    )


def run(
    *, level: str, seed: int, workdir: Path, out: Path, progress: bool, **_: Any
) -> FamilySection:
    section = FamilySection("iris", "Iris recognition")
    caption = (
        "NormFree (and NormKeep) against the classical iris-code pipeline on ImmerIris's "
        "protocols (`facelab.immeriris.evaluate`; scores of every gallery x probe pair)"
    )
    if not installed("facelab.immeriris"):
        section.status = "not installed"
        section.summary = "ImmerIris: not installed."
        section.tables.append(
            Table(caption, COLUMNS, [missing_row("ImmerIris", "facelab.immeriris", COLUMNS)])
        )
        return section
    s = settings(level, seed)
    try:
        from facelab.immeriris.evaluate import evaluate, summary_rows
        from facelab.immeriris.train import train as train_iris

        nets = {}
        train_s = {}
        for paradigm in s["paradigms"]:
            name = {"normfree": "NormFree", "normkeep": "NormKeep"}[paradigm]
            if s["train"] == "shipped":
                nets[name] = shipped_network(paradigm)  # not trained here: no training time
                continue
            res = recipe(paradigm, s, workdir, progress)
            trained = train_iris(res)
            nets[name] = trained.model
            train_s[name] = round(float(trained.wall_time), 1)
        report = evaluate(eval_config(s), nets, log=lambda *_: None)
        report.save(workdir / "immeriris-eval", plots=True)
        rows = []
        for r in summary_rows(report, far=FAR):
            if level == "quick" and r["eye"] == "right":
                continue
            rows.append({**r, "status": "ok"})
    except Exception as err:
        section.status = f"failed: {one_line(err)}"
        section.failed.append("immeriris")
        section.summary = f"ImmerIris: failed ({one_line(err, 120)})."
        section.tables.append(Table(caption, COLUMNS, [failed_row("ImmerIris", err, COLUMNS)]))
        return section
    section.tables.append(Table(caption, COLUMNS, rows))
    plot = _plot(rows, out / "iris_frr.png")
    if plot:
        section.plots.append(plot)
    for p in s["protocols"] or ("Gaze",):
        name = copy_plot(workdir / "immeriris-eval" / f"det_{p}-left.png", out, f"iris_det_{p}.png")
        if name:
            section.plots.append(name)
    section.summary = _summary(rows)
    section.settings = {**s, **({"train_wall_s": train_s} if train_s else {})}
    section.notes = [
        "procedural near-infrared ocular images and our protocol rules (the paper's are not "
        "available): compare the methods with each other, not with the paper's numbers",
        "FRR at FAR: the lowest threshold whose FAR does not exceed the target; with few "
        "impostor pairs the point is coarse",
    ]
    return section
