"""The paper's claims on toy data, over seeds: the ablation (baseline dual-codebook tokenizer ->
+ histogram relation loss -> + residual module) at an equal training budget, and AR generation
on the baseline's vs GloTok's tokens at an equal AR budget.

Everything is trained here, on toyfaces at 32 px (``facelab glotok ablation``):

1. the toy ArcFace recognizer (core recipe, seed 1337): the teacher (k-means of its embeddings
   -> the teacher histogram, computed once) and the perceptual network;
2. a second recognizer with another seed (7): the **toy FID feature extractor** ("toy-rFID",
   "toy-gFID"; not comparable to Inception FIDs);
3. for each seed and variant, a tokenizer with the toy preset (same steps, batch, data);
4. for each seed, an AR generator on the baseline's and on the full model's tokens.

``quality_rows`` returns one row per (variant, seed) and ``summary`` the mean and standard
deviation per variant; a family suite (``facelab bench tokenizer``, a later issue) can call them.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from facelab.glotok.data import ImageDataConfig, eval_dataset
from facelab.glotok.teacher import (
    TeacherConfig,
    ToyRecognizerConfig,
    resolve_teacher,
    train_toy_recognizer,
)

VARIANTS = {
    "baseline": {"hist": False, "residual": False},
    "+hist": {"hist": True, "residual": False},
    "+hist+res": {"hist": True, "residual": True},
}
#: the paper's ImageNet rFID for the same three rows (Table: ablation)
PAPER_RFID = {"baseline": 1.43, "+hist": 0.97, "+hist+res": 0.92}


@dataclass
class AblationConfig:
    out: str = "results/glotok-ablation"
    seeds: tuple[int, ...] = (0, 1, 2)
    variants: tuple[str, ...] = tuple(VARIANTS)
    steps: int = 300
    """tokenizer optimizer steps per run (batch 32): the equal training budget"""
    ar_steps: int = 600
    """AR optimizer steps per run (batch 64)"""
    ar_variants: tuple[str, ...] = ("baseline", "+hist+res")
    identities: int = 50
    images_per_identity: int = 40
    eval_images: int = 500
    gen_images: int = 500
    cfg_scale: float = 1.5
    recognizer_epochs: int = 3
    threads: int = 1
    shared: str | None = None
    """folder of the recognizers and the teacher histogram (default: out); several processes
    with different --seeds can share it and be merged with merge_reports"""
    small: bool = False
    """tiny settings for a smoke test (minutes on a busy CPU)"""


def _small(cfg: AblationConfig) -> AblationConfig:
    return dataclasses.replace(
        cfg, seeds=cfg.seeds[:1], steps=6, ar_steps=6, identities=16, images_per_identity=20,
        eval_images=32, gen_images=16, recognizer_epochs=1,
    )  # fmt: skip


def _recipe(
    cfg: AblationConfig, variant: str, seed: int, root: Path, recognizer: str, teacher_file: str
):
    from facelab.glotok.train import presets

    v = VARIANTS[variant]
    r = presets()["toy"]
    r.model = dataclasses.replace(r.model, residual=v["residual"])
    r.data = dataclasses.replace(
        r.data, toy_identities=cfg.identities, toy_images_per_identity=cfg.images_per_identity
    )
    r.loss = dataclasses.replace(
        r.loss, hist_weight=r.loss.hist_weight if v["hist"] else 0.0, disc_start=cfg.steps // 2
    )
    r.teacher = dataclasses.replace(r.teacher, histogram=teacher_file)
    r.toy_recognizer = recognizer
    r.train = dataclasses.replace(
        r.train, output_dir=str(root / f"{variant}-seed{seed}"), max_steps=cfg.steps, seed=seed, progress=False,
        save_on_exit=False, log_every=max(1, cfg.steps // 4),
    )  # fmt: skip
    r.eval_images = cfg.eval_images
    r.resume = None
    return r


def run_ablation(cfg: AblationConfig) -> dict[str, Any]:
    """Train everything, write ``out/results.json`` and ``out/report.md``; returns the report."""
    from facelab.core.hub import from_pretrained
    from facelab.glotok.evaluate import tokenizer_metrics
    from facelab.glotok.generate import SampleConfig, ar_presets, generation_metrics, train_ar
    from facelab.glotok.metrics import RecognizerFeatures
    from facelab.glotok.train import train

    if cfg.small:
        cfg = _small(cfg)
    torch.set_num_threads(cfg.threads)
    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = ImageDataConfig(
        image_size=32,
        toy_identities=cfg.identities,
        toy_images_per_identity=cfg.images_per_identity,
    )
    rc = ToyRecognizerConfig(
        epochs=cfg.recognizer_epochs, identities=max(cfg.identities, 8 if cfg.small else 200)
    )
    shared = Path(cfg.shared) if cfg.shared else root
    teacher_dir = train_toy_recognizer(shared / "recognizer-teacher", 32, rc)
    fid_dir = train_toy_recognizer(shared / "recognizer-fid", 32, dataclasses.replace(rc, seed=7))
    extractor = RecognizerFeatures(from_pretrained(fid_dir))
    from facelab.glotok.data import build_dataset

    train_images, _ = build_dataset(data).tensors()
    from facelab.glotok.train import toy_model_config

    teacher = resolve_teacher(
        TeacherConfig(feature_images=2000),
        toy_model_config().semantic_codes,
        train_images,
        shared,
        32,
        teacher_dir,
    )
    teacher_file = str(shared / "teacher_histogram.safetensors")
    held_out, _ = eval_dataset(data, cfg.eval_images).tensors()

    rows: list[dict[str, Any]] = []
    tokenizers: dict[tuple[str, int], Any] = {}
    for seed in cfg.seeds:
        for variant in cfg.variants:
            r = _recipe(cfg, variant, seed, root, str(teacher_dir), teacher_file)
            res = train(r)
            m = tokenizer_metrics(res.model, held_out, teacher=teacher, extractor=extractor)
            rows.append(
                {
                    "variant": variant,
                    "seed": seed,
                    "steps": res.train.step,
                    "wall_s": round(res.wall_time, 1),
                    **m,
                }
            )
            tokenizers[(variant, seed)] = res.model
            _dump(root, cfg, rows, [])
    gen_rows: list[dict[str, Any]] = []
    for seed in cfg.seeds:
        for variant in cfg.ar_variants:
            if (variant, seed) not in tokenizers:
                continue
            ar = ar_presets()["toy"]
            ar.data = data
            ar.tokenizer = str(root / f"{variant}-seed{seed}" / "tokenizer")
            ar.train = dataclasses.replace(
                ar.train, output_dir=str(root / f"ar-{variant}-seed{seed}"), max_steps=cfg.ar_steps, seed=seed,
                progress=False, save_on_exit=False, warmup=min(50, cfg.ar_steps // 4),
            )  # fmt: skip
            ar.resume = None
            tok = tokenizers[(variant, seed)]
            gen = train_ar(ar, tokenizer=tok)
            g = generation_metrics(
                gen.model,
                tok,
                data,
                extractor,
                cfg.gen_images,
                SampleConfig(cfg_scale=cfg.cfg_scale),
                seed=seed,
            )
            gen_rows.append(
                {
                    "variant": variant,
                    "seed": seed,
                    "ar_steps": gen.train.step,
                    "ar_loss": gen.train.losses.get("loss"),
                    **g,
                }
            )
            _dump(root, cfg, rows, gen_rows)
    report = _dump(root, cfg, rows, gen_rows)
    report["wall_s"] = time.perf_counter() - t0
    return report


def summary(rows: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation of ``keys`` per variant (in row order)."""
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        sel = [r for r in rows if r["variant"] == variant]
        row: dict[str, Any] = {"variant": variant, "n": len(sel)}
        for k in keys:
            vals = [float(r[k]) for r in sel if k in r]
            if vals:
                row[k] = statistics.fmean(vals)
                row[k + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(row)
    return out


def quality_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    return report["rows"]


TOK_KEYS = [
    "rfid",
    "psnr",
    "ssim",
    "hist_kl",
    "usage_semantic",
    "usage_visual",
    "perplexity_semantic",
    "uniformity_latent",
    "uniformity_codebook",
]


def markdown(
    rows: list[dict[str, Any]], gen_rows: list[dict[str, Any]], cfg: AblationConfig
) -> str:
    def pm(r: dict[str, Any], k: str, fmt: str = ".3f") -> str:
        return f"{r[k]:{fmt}} ± {r[k + '_std']:{fmt}}" if k in r else "-"

    lines = [
        f"Tokenizer ablation on toyfaces 32 px ({cfg.steps} steps x batch 32 each; mean ± std over seeds {list(cfg.seeds)}; "
        "toy-rFID under our toy recognizer, not Inception)",
        "",
        "| variant | toy-rFID | PSNR (dB) | SSIM | KL to teacher hist | sem. usage | vis. usage | sem. perplexity | uniformity (latent) | paper rFID (ImageNet) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary(rows, TOK_KEYS):
        lines.append(
            f"| {r['variant']} | {pm(r, 'rfid', '.4f')} | {pm(r, 'psnr', '.2f')} | {pm(r, 'ssim')} | {pm(r, 'hist_kl')} | "
            f"{pm(r, 'usage_semantic', '.2f')} | {pm(r, 'usage_visual', '.2f')} | {pm(r, 'perplexity_semantic', '.1f')} | "
            f"{pm(r, 'uniformity_latent')} | {PAPER_RFID.get(r['variant'], '-')} |"
        )
    if gen_rows:
        lines += [
            "",
            f"AR generation ({cfg.ar_steps} steps x batch 64, cfg {cfg.cfg_scale}; toy-gFID of {cfg.gen_images} samples vs held-out images)",
            "",
            "| tokens | toy-gFID | final AR loss |",
            "|---|---|---|",
        ]
        for r in summary(gen_rows, ["gfid", "ar_loss"]):
            lines.append(f"| {r['variant']} | {pm(r, 'gfid', '.4f')} | {pm(r, 'ar_loss')} |")
    return "\n".join(lines) + "\n"


def _dump(root: Path, cfg: AblationConfig, rows, gen_rows) -> dict[str, Any]:
    md = markdown(rows, gen_rows, cfg)
    report = {
        "config": dataclasses.asdict(cfg),
        "rows": rows,
        "generation": gen_rows,
        "markdown": md,
    }
    (root / "results.json").write_text(json.dumps(report, indent=2, default=str))
    (root / "report.md").write_text(md)
    return report


def merge_reports(folders: list[str | Path], dest: str | Path) -> dict[str, Any]:
    """Merge the ``results.json`` of several ablation runs (e.g. one process per seed)."""
    rows, gen_rows, cfg = [], [], None
    for f in folders:
        doc = json.loads((Path(f) / "results.json").read_text())
        rows += doc["rows"]
        gen_rows += doc["generation"]
        c = dict(doc["config"])
        cfg = c if cfg is None else cfg | {"seeds": tuple(cfg["seeds"]) + tuple(c["seeds"])}
    order = {v: i for i, v in enumerate(VARIANTS)}
    rows.sort(key=lambda r: (order.get(r["variant"], 99), r["seed"]))
    gen_rows.sort(key=lambda r: (order.get(r["variant"], 99), r["seed"]))
    conf = AblationConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in (cfg or {}).items()}
    )
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    return _dump(out, conf, rows, gen_rows)
