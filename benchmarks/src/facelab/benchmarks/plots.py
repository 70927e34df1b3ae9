"""The suites' PNG plots: ROC curves per method, accuracy against identity leakage, and the
method grids of inversion reconstructions (copied next to the report).

Figures use matplotlib's object API on an Agg canvas (no pyplot state, works headless).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facelab.core.errors import ShapeError


def roc_from_rates(fpr: Sequence[float], tpr: Sequence[float]) -> Any:
    """A core ``RocCurve`` from bare rates (a method that only reports its curve)."""
    from facelab.core.eval import RocCurve

    f = np.asarray(fpr, dtype=np.float64)
    t = np.asarray(tpr, dtype=np.float64)
    if f.shape != t.shape or f.ndim != 1 or f.size < 2:
        raise ShapeError(
            f"roc: expected fpr and tpr of the same length >= 2, got {f.shape}, {t.shape}"
        )
    order = np.lexsort((t, f))  # increasing FPR, then TPR: a drawable curve
    f, t = f[order], t[order]
    return RocCurve(fpr=f, tpr=t, thresholds=np.full(f.size, np.nan), n_genuine=0, n_impostor=0)


def plot_rocs(curves: Mapping[str, Any], path: str | Path, title: str) -> Path | None:
    """All curves in one figure (log FPR); None when there is nothing to draw."""
    from facelab.core.eval import plot_roc

    if not curves:
        return None
    lowest = min(
        (float(c.fpr[c.fpr > 0].min()) for c in curves.values() if (c.fpr > 0).any()), default=1e-3
    )
    lo = 10 ** math.floor(math.log10(max(lowest, 1e-6)))
    return plot_roc(dict(curves), path, title=title, fpr_range=(lo, 1.0), mark_fars=())


def plot_accuracy_vs_leakage(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    title: str,
    reference_leakage: Mapping[str, float] | None = None,
) -> Path | None:
    """One point per row with finite accuracy and identity leakage, labelled by method.

    ``reference_leakage``: named leakage levels drawn as vertical lines (e.g. the attack that
    outputs the mean image, which carries no information).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pts = [
        (float(r["attack_identity_leakage"]), float(r["accuracy"]), str(r["method"]))
        for r in rows
        if _finite(r.get("accuracy")) and _finite(r.get("attack_identity_leakage"))
    ]
    if not pts:
        return None
    fig = Figure(figsize=(7, 5))
    ax = fig.add_subplot(1, 1, 1)
    for i, (x, y, name) in enumerate(pts):
        ax.scatter([x], [y], s=36, color=f"C{i % 10}", zorder=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    for j, (name, x) in enumerate((reference_leakage or {}).items()):
        if _finite(x):
            ax.axvline(x, ls="--", lw=0.8, color="0.5", zorder=1)
            ax.annotate(
                name,
                (x, 0.02 + 0.05 * j),
                xycoords=("data", "axes fraction"),
                fontsize=7,
                color="0.4",
                rotation=90,
                ha="right",
            )
    ax.set_xlabel("identity leakage of the inversion attack (cosine, lower = more private)")
    ax.set_ylabel("verification accuracy (10-fold)")
    ax.set_title(title)
    ax.grid(True, ls="--", lw=0.5, alpha=0.6)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
    return path


def collect_grids(
    method: str, rows: Sequence[Mapping[str, Any]], workdir: Path, out: Path
) -> list[Path]:
    """Copy a method's reconstruction grids next to the report: the rows' ``grid`` entries,
    else every PNG the method wrote under its ``workdir``."""
    sources = [Path(r["grid"]) for r in rows if r.get("grid")]
    if not sources and workdir.is_dir():
        sources = sorted(workdir.rglob("*.png"))
    copied = []
    for i, src in enumerate(p for p in sources if p.is_file()):
        suffix = "" if i == 0 else f"_{i}"
        dst = out / f"grid_{_slug(method)}{suffix}.png"
        shutil.copyfile(src, dst)
        copied.append(dst)
    return copied


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name).strip("_") or "method"


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
