"""The FR claim and the ablation with their seed spread, for a family quality suite.

:func:`fr_claim` runs :func:`facelab.uiface.evaluate.run_ablation` once per seed (the sampling
seed and the FR training seed both change; the generator, its identities and the independent
recognizer stay fixed) and aggregates every metric over the seeds: mean, sample standard
deviation and the per-seed values. The claim of the paper, in toy form: the ArcFace model
trained on the ``uiface`` set is more accurate on held-out *real* toyfaces than the one trained
on the ``single-stage`` set of the same size; ``claim["fr_gain"]`` holds the per-seed
differences (``uiface - single-stage``) and whether every seed shows a gain.

:func:`quality_rows` turns the result into flat rows (one per variant) that a family suite
(``facelab bench synth``, a later issue) can print next to the other generators.

Both take a trained toy generator folder (``facelab uiface train --preset toy``); the whole
thing is CPU-heavy (one FR training per variant and seed), so it is not part of the tests.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from facelab.core.errors import RangeError
from facelab.uiface.evaluate import COLUMNS, AblationConfig, FRConfig, mean_std
from facelab.uiface.sampler import VARIANTS, UIFaceSamplingConfig

#: the two rows of the FR claim
CLAIM_VARIANTS: tuple[str, str] = ("single-stage", "uiface")


def fr_claim(
    generator: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    variants: Sequence[str] = CLAIM_VARIANTS,
    images_per_identity: int = 16,
    steps: int = 50,
    clip_sample: bool = False,
    fr_epochs: int = 12,
    sampling: UIFaceSamplingConfig | None = None,
    recognizer_steps: int = 400,
    train_fr: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """One ablation per seed under ``out_dir/seed<k>/`` (resumable: finished datasets are kept),
    aggregated over the seeds; writes ``out_dir/claim.json`` and ``out_dir/claim.md``."""
    from facelab.uiface.evaluate import run_ablation, toy_setup
    from facelab.uiface.generate import load_sampler
    from facelab.uiface.sampler import UIFaceSampler, sampling_presets
    from facelab.uiface.train import uiface_presets

    seeds = [int(s) for s in seeds]
    if not seeds:
        raise RangeError("seeds: expected at least one seed, got none")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise RangeError(f"variants: expected names from {list(VARIANTS)}, got {list(variants)}")
    t0 = time.perf_counter()
    sampling = sampling or sampling_presets()["toy"]
    base = load_sampler(generator, num_steps=steps, clip_sample=clip_sample)
    UIFaceSampler(base, sampling)  # thresholds vs the schedule, the empty context
    data = uiface_presets()["toy"].data
    setup = toy_setup(data, recognizer_steps=recognizer_steps, seed=0)
    out = Path(out_dir)
    per_seed: dict[int, dict[str, dict[str, Any]]] = {}
    for seed in seeds:
        cfg = AblationConfig(
            variants=tuple(variants),
            images_per_identity=images_per_identity,
            seed=seed,
            image_size=data.image_size,
            train_fr=train_fr,
            fr=FRConfig(
                image_size=data.image_size,
                toy_difficulty=data.toy_difficulty,
                epochs=fr_epochs,
                seed=seed,
            ),
        )
        report = run_ablation(
            base,
            setup.contexts,
            out / f"seed{seed}",
            sampling=sampling,
            cfg=cfg,
            recognizer=setup.recognizer,
            references=setup.references,
            reference_labels=setup.reference_labels,
            progress=progress,
        )
        per_seed[seed] = report.rows
    result = aggregate(per_seed)
    result["settings"] = {
        "seeds": seeds,
        "images_per_identity": images_per_identity,
        "identities": int(setup.contexts.shape[0]),
        "steps": steps,
        "fr_epochs": fr_epochs,
        "sampling": dataclasses.asdict(sampling),
    }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "claim.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "claim.md").write_text(markdown(result) + "\n")
    return result


def aggregate(per_seed: dict[int, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """``{seed: {variant: metrics}}`` -> ``{"rows": {variant: {metric: {mean, std, values}}},
    "claim": ...}`` for every numeric metric of :data:`COLUMNS`."""
    seeds = sorted(per_seed)
    variants = list(per_seed[seeds[0]])
    rows: dict[str, dict[str, Any]] = {}
    for v in variants:
        row: dict[str, Any] = {}
        for key, _, _ in COLUMNS:
            vals = [per_seed[s][v].get(key) for s in seeds]
            if all(isinstance(x, int | float) and not math.isnan(x) for x in vals):
                m, sd = mean_std(vals)
                row[key] = {"mean": m, "std": sd, "values": vals}
        rows[v] = row
    out: dict[str, Any] = {"rows": rows, "seeds": seeds}
    a, b = CLAIM_VARIANTS
    if a in rows and b in rows and "fr_accuracy" in rows[a] and "fr_accuracy" in rows[b]:
        gain = [
            y - x
            for x, y in zip(
                rows[a]["fr_accuracy"]["values"], rows[b]["fr_accuracy"]["values"], strict=True
            )
        ]
        m, sd = mean_std(gain)
        out["claim"] = {
            "fr_gain": {"mean": m, "std": sd, "values": gain},
            "holds_every_seed": all(g > 0 for g in gain),
        }
    return out


def markdown(result: dict[str, Any]) -> str:
    """The aggregated table: mean +- std over the seeds."""
    rows = result["rows"]
    keys = [(k, h, f) for k, h, f in COLUMNS if any(k in r for r in rows.values())]
    n = len(result.get("seeds", []))
    lines = [
        f"| variant (mean +- std, {n} seeds) | " + " | ".join(h for _, h, _ in keys) + " |",
        "|" + "---|" * (len(keys) + 1),
    ]
    for name, row in rows.items():
        cells = []
        for k, _, fmt in keys:
            if k in row:
                cells.append(f"{fmt.format(row[k]['mean'])} +- {fmt.format(row[k]['std'])}")
            else:
                cells.append("-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    claim = result.get("claim")
    if claim:
        g = claim["fr_gain"]
        vals = ", ".join(f"{x:+.1%}" for x in g["values"])
        lines.append("")
        lines.append(
            f"FR gain uiface - single-stage: {g['mean']:+.1%} +- {g['std']:.1%} "
            f"(per seed {vals}); holds on every seed: {claim['holds_every_seed']}"
        )
    return "\n".join(lines)


def quality_rows(result: dict[str, Any], method: str = "uiface") -> list[dict[str, Any]]:
    """Flat rows for a family quality suite: ``{"method", "variant", <metric>_mean,
    <metric>_std}`` per variant of a :func:`fr_claim` result."""
    out = []
    for name, row in result["rows"].items():
        flat: dict[str, Any] = {"method": method, "variant": name}
        for key, stats in row.items():
            flat[f"{key}_mean"] = stats["mean"]
            flat[f"{key}_std"] = stats["std"]
        out.append(flat)
    return out


__all__ = ["CLAIM_VARIANTS", "aggregate", "fr_claim", "markdown", "quality_rows"]
