"""Image tokenizer: GloTok's ablation (baseline dual-codebook tokenizer -> + histogram relation
loss -> + residual module) at an equal training budget, through ``facelab.glotok.bench``.

``run_ablation`` trains everything on toyfaces at 32 px (the toy teacher and FID recognizers,
one tokenizer per variant and seed, optionally the AR generator on two variants' tokens) and
returns its rows; ``summary`` gives mean and spread per variant. This module only chooses the
sizes per level and draws the plot.

Levels: ``quick`` one seed, 100 tokenizer steps, no AR generator; ``suite`` the package's own
defaults (three seeds, 300 steps, AR generation on the baseline's and GloTok's tokens);
``small`` the package's smoke-test size.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

from facelab.benchmarks.families import (
    FamilySection,
    Table,
    failed_row,
    finite,
    fmt,
    installed,
    missing_row,
    new_figure,
    one_line,
    save_figure,
)

COLUMNS = [
    ("variant", "variant"),
    ("status", "status"),
    ("rfid", "toy-rFID"),
    ("rfid_std", "± sd"),
    ("psnr", "PSNR (dB)"),
    ("ssim", "SSIM"),
    ("hist_kl", "KL to teacher histogram"),
    ("usage_semantic", "semantic codebook usage"),
    ("perplexity_semantic", "semantic perplexity"),
    ("paper_rfid", "paper rFID (ImageNet)"),
    ("n", "seeds"),
]
GEN_COLUMNS = [
    ("variant", "tokens"),
    ("gfid", "toy-gFID"),
    ("gfid_std", "± sd"),
    ("ar_loss", "final AR loss"),
    ("n", "seeds"),
]


def ablation_config(level: str, seed: int, workdir: Path) -> Any:
    from facelab.glotok.bench import AblationConfig

    out = str(workdir / "glotok-ablation")
    if level == "small":
        return AblationConfig(out=out, seeds=(seed,), small=True)
    if level == "suite":
        base = AblationConfig()
        return dataclasses.replace(base, out=out, seeds=tuple(seed + s for s in base.seeds))
    return AblationConfig(
        out=out,
        seeds=(seed,),
        steps=100,
        ar_variants=(),
        identities=30,
        images_per_identity=20,
        eval_images=200,
        recognizer_epochs=2,
    )


def _plot(rows: list[dict[str, Any]], path: Path) -> str | None:
    ok = [r for r in rows if finite(r.get("rfid"))]
    if not ok:
        return None
    fig, (a, b) = new_figure(9, 3.6, cols=2)
    x = range(len(ok))
    names = [r["variant"] for r in ok]
    for ax, key, label in ((a, "rfid", "toy-rFID (lower is better)"), (b, "hist_kl", "KL")):
        ax.bar(
            x,
            [r[key] for r in ok],
            yerr=[r.get(f"{key}_std", 0.0) or 0.0 for r in ok],
            color=[f"C{i}" for i in x],
            capsize=4,
        )
        ax.set_xticks(list(x), names)
        ax.set_ylabel(label)
        ax.grid(True, axis="y", ls="--", lw=0.5, alpha=0.6)
    a.set_title("reconstruction (toy recognizer FID)")
    b.set_title("KL to the teacher's code histogram")
    return save_figure(fig, path)


def _summary(rows: list[dict[str, Any]], cfg: dict[str, Any]) -> str:
    by = {r["variant"]: r for r in rows if finite(r.get("rfid"))}
    order = [v for v in ("baseline", "+hist", "+hist+res") if v in by]
    if len(order) < 2:
        return "GloTok: too few variants finished to compare."
    chain = " -> ".join(f"{v} {fmt(by[v]['rfid'])}" for v in order)
    paper = " -> ".join(f"{by[v]['paper_rfid']}" for v in order)
    monotone = all(by[a]["rfid"] > by[b]["rfid"] for a, b in itertools.pairwise(order))
    kl = (
        f"; the histogram loss takes the KL to the teacher's histogram from "
        f"{fmt(by['baseline']['hist_kl'])} to {fmt(by['+hist']['hist_kl'])}"
        if "baseline" in by and "+hist" in by
        else ""
    )
    verdict = (
        "each addition lowers it, as in the paper"
        if monotone
        else "the paper's ordering is not reproduced at this size"
    )
    return (
        f"GloTok ablation (toyfaces 32 px, {cfg['steps']} steps each, seeds {list(cfg['seeds'])}): "
        f"toy-rFID {chain} (paper, ImageNet rFID: {paper}); {verdict}{kl}."
    )


def run(
    *, level: str, seed: int, workdir: Path, out: Path, progress: bool, **_: Any
) -> FamilySection:
    section = FamilySection("tokenizer", "Image tokenizer")
    caption = (
        "GloTok ablation at an equal training budget (`facelab.glotok.bench.run_ablation`; "
        "mean and sd over seeds; toy-rFID: Fréchet distance under a toy recognizer, not "
        "Inception)"
    )
    if not installed("facelab.glotok"):
        section.status = "not installed"
        section.summary = "GloTok: not installed."
        section.tables.append(
            Table(caption, COLUMNS, [missing_row("GloTok", "facelab.glotok", COLUMNS)])
        )
        return section
    try:
        from facelab.glotok.bench import PAPER_RFID, TOK_KEYS, run_ablation, summary

        cfg = ablation_config(level, seed, workdir)
        report = run_ablation(cfg)
        eff = dict(report["config"])  # the sizes that ran (``small`` applies the package's own)
        rows = []
        for r in summary(report["rows"], TOK_KEYS):
            rows.append({**r, "status": "ok", "paper_rfid": PAPER_RFID.get(r["variant"])})
        gen = summary(report.get("generation", []), ["gfid", "ar_loss"])
    except Exception as err:
        section.status = f"failed: {one_line(err)}"
        section.failed.append("glotok")
        section.summary = f"GloTok: failed ({one_line(err, 120)})."
        section.tables.append(Table(caption, COLUMNS, [failed_row("GloTok", err, COLUMNS)]))
        return section
    section.tables.append(Table(caption, COLUMNS, rows))
    if gen:
        section.tables.append(
            Table(
                f"AR generation on each variant's tokens ({eff['ar_steps']} steps; toy-gFID of "
                f"{eff['gen_images']} samples against held-out images)",
                GEN_COLUMNS,
                gen,
            )
        )
    plot = _plot(rows, out / "tokenizer_ablation.png")
    if plot:
        section.plots.append(plot)
    section.summary = _summary(rows, eff)
    section.settings = eff
    section.notes = [
        "toy-rFID / toy-gFID use a second toy recognizer (seed 7) as the feature extractor: "
        "comparable within this table, not with Inception FIDs",
        "the teacher is the toy ArcFace recognizer (k-means of its embeddings), not the paper's "
        "pretrained vision model",
    ]
    return section
