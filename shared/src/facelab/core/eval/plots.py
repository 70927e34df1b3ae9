"""ROC and DET plots written as PNG files.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend
switch), so plotting works headless and does not disturb a notebook's backend. Curves with
millions of points are thinned to a few thousand (log-spaced in FPR, keeping the upper
envelope) before drawing; the data themselves are untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from facelab.core.errors import FacelabTypeError, ShapeError
from facelab.core.eval.metrics import RocCurve

_MAX_POINTS = 4000


def _as_curves(curves: RocCurve | Mapping[str, RocCurve]) -> dict[str, RocCurve]:
    if isinstance(curves, RocCurve):
        return {"": curves}
    if not isinstance(curves, Mapping) or not curves:
        raise FacelabTypeError(
            "curves: expected a RocCurve or a non-empty {name: RocCurve} mapping, got "
            f"{type(curves).__name__}"
        )
    for name, c in curves.items():
        if not isinstance(c, RocCurve):
            raise FacelabTypeError(f"curves[{name!r}]: expected a RocCurve, got {type(c).__name__}")
    return dict(curves)


def thin(fpr: np.ndarray, tpr: np.ndarray, max_points: int = _MAX_POINTS) -> np.ndarray:
    """Indices of at most ~``max_points`` ROC points, log-spaced in FPR, each run's last point
    (the highest TPR at that FPR) kept so the drawn curve is the true upper envelope."""
    n = fpr.size
    if n <= max_points:
        return np.arange(n)
    positive = fpr[fpr > 0]
    lo = positive.min() if positive.size else 1e-12
    grid = np.concatenate([[0.0], np.geomspace(lo, 1.0, max_points - 2)])
    idx = np.searchsorted(fpr, grid, side="right") - 1
    return np.unique(np.concatenate([idx[idx >= 0], [0, n - 1]]))


def _save(fig, path: str | Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
    return path


def plot_roc(
    curves: RocCurve | Mapping[str, RocCurve],
    path: str | Path,
    *,
    title: str = "ROC",
    log_fpr: bool = True,
    fpr_range: Sequence[float] = (1e-6, 1.0),
    mark_fars: Sequence[float] = (),
) -> Path:
    """TPR against FPR (log FPR axis by default) for one or several curves; returns the path."""
    from matplotlib.figure import Figure

    cs = _as_curves(curves)
    if len(fpr_range) != 2 or not 0 <= fpr_range[0] < fpr_range[1] <= 1:
        raise ShapeError(f"fpr_range: expected (lo, hi) with 0 <= lo < hi <= 1, got {fpr_range}")
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for name, c in cs.items():
        i = thin(c.fpr, c.tpr)
        label = f"{name} (AUC {100 * c.auc:.2f}%)" if name else f"AUC {100 * c.auc:.2f}%"
        ax.plot(c.fpr[i], c.tpr[i], lw=1.2, label=label)
        for f in mark_fars:
            j = c.operating_index(f)
            ax.plot([c.fpr[j]], [c.tpr[j]], "o", ms=3, color="k")
    if log_fpr:
        ax.set_xscale("log")
        ax.set_xlim(max(fpr_range[0], 1e-12), fpr_range[1])
    else:
        ax.set_xlim(*fpr_range)
    ax.set_ylim(0.0, 1.0)
    ax.grid(True, which="both", ls="--", lw=0.5, alpha=0.6)
    ax.set_xlabel("False accept rate (FPR)")
    ax.set_ylabel("True accept rate (TPR)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


_DET_TICKS = (1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5)


def _probit(p: np.ndarray) -> np.ndarray:
    return torch.special.ndtri(torch.from_numpy(np.asarray(p, dtype=np.float64))).numpy()


def plot_det(
    curves: RocCurve | Mapping[str, RocCurve],
    path: str | Path,
    *,
    title: str = "DET",
    rate_range: Sequence[float] = (1e-5, 0.5),
) -> Path:
    """Detection error trade-off: FNMR against FMR on normal-deviate (probit) axes.

    Points whose FMR or FNMR is outside ``rate_range`` (including the 0 and 1 ends, which lie
    at infinity on probit axes) are not drawn.
    """
    from matplotlib.figure import Figure

    cs = _as_curves(curves)
    lo, hi = rate_range
    if not 0 < lo < hi < 1:
        raise ShapeError(f"rate_range: expected (lo, hi) with 0 < lo < hi < 1, got {rate_range}")
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot(1, 1, 1)
    for name, c in cs.items():
        i = thin(c.fpr, c.tpr)
        fmr, fnmr = c.fpr[i], 1.0 - c.tpr[i]
        keep = (fmr >= lo) & (fmr <= hi) & (fnmr >= lo) & (fnmr <= hi)
        e, _thr = c.eer()
        label = f"{name} (EER {100 * e:.2f}%)" if name else f"EER {100 * e:.2f}%"
        ax.plot(_probit(fmr[keep]), _probit(fnmr[keep]), lw=1.2, label=label)
    ticks = [t for t in _DET_TICKS if lo <= t <= hi]
    pos = _probit(np.array(ticks))
    labels = [f"{100 * t:g}%" for t in ticks]
    ax.set_xticks(pos, labels)
    ax.set_yticks(pos, labels)
    lim = _probit(np.array([lo, hi]))
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.plot(lim, lim, ls=":", lw=0.8, color="grey")  # the EER line FMR = FNMR
    ax.grid(True, ls="--", lw=0.5, alpha=0.6)
    ax.set_xlabel("False match rate (FMR)")
    ax.set_ylabel("False non-match rate (FNMR)")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)
