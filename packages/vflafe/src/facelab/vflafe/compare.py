"""No-DP VFL vs plain clip + noise vs VFL-AFE at the same epsilon values, with the attacks.

``compare(cfg)`` trains every variant for every target epsilon and seed, runs the label-leakage
attack on the gradients each passive party received in the last epoch and the inversion attack
on the embeddings the active party received (party 0), and returns one row per run;
``summarize`` aggregates rows over seeds (mean, std, min, max); ``markdown`` and
``plot_privacy_utility`` present them.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facelab.core.errors import RangeError, UnknownNameError
from facelab.vflafe.attacks import invert_features, label_leakage
from facelab.vflafe.recipe import RecipeConfig, TrainOutcome, train

__all__ = [
    "VARIANTS",
    "CompareConfig",
    "attack_outcome",
    "compare",
    "markdown",
    "plot_privacy_utility",
    "summarize",
]

# name -> (privacy mode, label protection on the returned gradients)
VARIANTS = {
    "no-dp": ("none", False),
    "no-dp+grad-noise": ("none", True),
    "plain": ("plain", False),
    "afe": ("afe", False),
    "afe+grad-noise": ("afe", True),
}


@dataclass
class CompareConfig:
    """The grid: ``variants`` (keys of ``VARIANTS``) x ``epsilons`` x ``clip_norms`` x ``seeds``.
    The no-DP variants run once per seed (no clip). ``grad_clip_norm`` / ``grad_noise_multiplier``: the label
    protection of the ``+grad-noise`` variants. ``known_fraction``: share of training samples
    whose features the inversion attacker knows; ``attack_steps``: its training steps."""

    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    variants: tuple[str, ...] = ("no-dp", "plain", "afe", "afe+grad-noise")
    epsilons: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    clip_norms: tuple[float, ...] = (1.0,)
    seeds: tuple[int, ...] = (0, 1, 2)
    grad_clip_norm: float = 0.05
    grad_noise_multiplier: float = 1.0
    known_fraction: float = 0.3
    attack_steps: int = 400
    attacks: bool = True

    def __post_init__(self) -> None:
        self.variants, self.epsilons = tuple(self.variants), tuple(self.epsilons)
        self.seeds, self.clip_norms = tuple(self.seeds), tuple(self.clip_norms)
        unknown = sorted(set(self.variants) - set(VARIANTS))
        if unknown:
            raise UnknownNameError(f"variants: expected names from {list(VARIANTS)}, got {unknown}")
        if not self.seeds or not self.variants:
            raise RangeError("compare: expected at least one variant and one seed")
        for e in self.epsilons:
            if not (isinstance(e, int | float) and math.isfinite(e) and e > 0):
                raise RangeError(f"epsilons: expected finite numbers > 0, got {e!r}")


def attack_outcome(outcome: TrainOutcome, cfg: CompareConfig, seed: int) -> dict[str, float]:
    """Label leakage (party 0's received gradients) and inversion (party 0's released
    embeddings) from the last epoch's transcript."""
    tr = outcome.transcript
    if not tr.steps:
        raise RangeError("attack: the run recorded no transcript (record_transcript=False?)")
    ids = tr.ids()
    rows = outcome.train_data.rows_of(ids)
    leak = label_leakage(tr.gradients(0), outcome.train_data.labels[rows])
    inv = invert_features(
        tr.released(0),
        outcome.train_data.parties[0][rows],
        known_fraction=cfg.known_fraction,
        steps=cfg.attack_steps,
        seed=seed,
    )
    out = {
        "norm_auc": leak.norm_auc,
        "direction_auc": leak.direction_auc,
        "inversion_rel_mse": inv.relative_mse,
    }
    if inv.ssim is not None:
        out["inversion_ssim"] = inv.ssim
    return out


def compare(cfg: CompareConfig, progress=None) -> list[dict]:
    """One row per (variant, epsilon, seed): accuracy, epsilon, noise levels, attacks."""
    rows = []
    for variant in cfg.variants:
        mode, grad = VARIANTS[variant]
        targets: Sequence[float | None] = [None] if mode == "none" else cfg.epsilons
        clips = [cfg.recipe.privacy.clip_norm] if mode == "none" else cfg.clip_norms
        for eps, clip, seed in itertools.product(targets, clips, cfg.seeds):
            privacy = dataclasses.replace(
                cfg.recipe.privacy,
                mode=mode,
                clip_norm=clip,
                noise_multiplier=0.0,
                inference_noise_multiplier=None,
                grad_clip_norm=cfg.grad_clip_norm if grad else None,
                grad_noise_multiplier=cfg.grad_noise_multiplier if grad else 0.0,
                noise_seed=seed
                if cfg.recipe.privacy.noise_seed is None
                else cfg.recipe.privacy.noise_seed + seed,
            )
            recipe = dataclasses.replace(
                cfg.recipe,
                privacy=privacy,
                target_epsilon=eps,
                train=dataclasses.replace(cfg.recipe.train, seed=seed),
                record_transcript=cfg.attacks,
            )
            out = train(recipe)
            row = {
                "variant": variant,
                "target_epsilon": math.inf if eps is None else eps,
                "clip_norm": math.nan if mode == "none" else clip,
                "seed": seed,
                "accuracy": out.accuracy,
                "epsilon": out.epsilon,
                "noise_multiplier": out.noise_multiplier,
                "inference_noise_multiplier": out.model.passive[0].inference_noise_multiplier,
                "releases": out.releases,
                "train_seconds": out.wall_time,
            }
            if cfg.attacks:
                row.update(attack_outcome(out, cfg, seed))
            rows.append(row)
            if progress is not None:
                progress(row)
    return rows


METRICS = ("accuracy", "norm_auc", "direction_auc", "inversion_rel_mse", "inversion_ssim")


def summarize(rows: list[dict]) -> list[dict]:
    """Rows grouped by (variant, target_epsilon, clip_norm): mean / std / min / max of every metric."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["variant"], r["target_epsilon"], str(r.get("clip_norm", math.nan)))
        groups.setdefault(key, []).append(r)
    out = []
    for (variant, eps, _), rs in groups.items():
        s = {
            "variant": variant,
            "target_epsilon": eps,
            "clip_norm": rs[0].get("clip_norm", math.nan),
            "epsilon": max(r["epsilon"] for r in rs),
            "noise_multiplier": rs[0]["noise_multiplier"],
            "inference_noise_multiplier": rs[0]["inference_noise_multiplier"],
            "seeds": len(rs),
        }
        for m in METRICS:
            vals = [r[m] for r in rs if m in r]
            if vals:
                a = np.asarray(vals, dtype=float)
                s[m] = {
                    "mean": float(a.mean()),
                    "std": float(a.std()),
                    "min": float(a.min()),
                    "max": float(a.max()),
                }
        out.append(s)
    return out


def _cell(stat: dict | None, pct: bool = False) -> str:
    if stat is None:
        return "-"
    k = 100.0 if pct else 1.0
    return (
        f"{stat['mean'] * k:.1f} ± {stat['std'] * k:.1f}"
        if pct
        else f"{stat['mean']:.3f} ± {stat['std']:.3f}"
    )


def markdown(summary: list[dict]) -> str:
    """The privacy-utility table (mean ± std over seeds)."""
    has_ssim = any("inversion_ssim" in s for s in summary)
    head = "| variant | C | target ε | ε (train) | σ train / inference | accuracy % | label AUC norm | label AUC direction | inversion rel. MSE |"
    sep = "|---|---|---|---|---|---|---|---|---|"
    if has_ssim:
        head += " inversion SSIM |"
        sep += "---|"
    lines = [head, sep]
    for s in summary:
        eps = "∞" if math.isinf(s["target_epsilon"]) else f"{s['target_epsilon']:g}"
        got = "∞" if math.isinf(s["epsilon"]) else f"{s['epsilon']:.2f}"
        sig = f"{s['noise_multiplier']:.2f} / {s['inference_noise_multiplier']:.2f}"
        clip = "-" if math.isnan(s["clip_norm"]) else f"{s['clip_norm']:g}"
        line = (
            f"| {s['variant']} | {clip} | {eps} | {got} | {sig} | {_cell(s.get('accuracy'), True)} | "
            f"{_cell(s.get('norm_auc'))} | {_cell(s.get('direction_auc'))} | {_cell(s.get('inversion_rel_mse'))} |"
        )
        if has_ssim:
            line += f" {_cell(s.get('inversion_ssim'))} |"
        lines.append(line)
    return "\n".join(lines)


def plot_privacy_utility(summary: list[dict], path: str | Path, title: str = "") -> Path:
    """Accuracy vs epsilon per variant (mean, min-max band), no-DP as a line; label-leakage AUC
    (norm) beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in (
        (axes[0], "accuracy", "test accuracy"),
        (axes[1], "norm_auc", "label-leakage AUC (norm)"),
    ):
        curves = dict.fromkeys((s["variant"], str(s["clip_norm"])) for s in summary)
        multi_clip = len({s["clip_norm"] for s in summary if not math.isnan(s["clip_norm"])}) > 1
        for variant, clip in curves:
            pts = sorted(
                (
                    s
                    for s in summary
                    if (s["variant"], str(s["clip_norm"])) == (variant, clip) and metric in s
                ),
                key=lambda s: s["target_epsilon"],
            )
            if not pts:
                continue
            if math.isinf(pts[0]["target_epsilon"]):
                styles = ("--", ":", "-.")
                n_lines = sum(1 for line in ax.get_lines() if line.get_color() == "gray")
                ax.axhline(
                    pts[0][metric]["mean"], ls=styles[n_lines % 3], color="gray", label=variant
                )
                continue
            label_text = f"{variant} C={float(clip):g}" if multi_clip else variant
            x = [p["target_epsilon"] for p in pts]
            m = [p[metric]["mean"] for p in pts]
            ax.plot(x, m, marker="o", label=label_text)
            ax.fill_between(
                x, [p[metric]["min"] for p in pts], [p[metric]["max"] for p in pts], alpha=0.2
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("target ε (δ = 1e-5)")
        ax.set_ylabel(label)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
