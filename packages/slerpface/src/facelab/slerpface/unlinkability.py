"""Unlinkability after Gomez-Barrero et al., "General framework to evaluate unlinkability in
biometric template protection systems", IEEE TIFS 13(6), 2018.

Mated scores: linkage scores between templates of the *same* subject protected with different
keys; non-mated: different subjects (different keys). With the score densities ``p(s|H_m)``,
``p(s|H_nm)`` estimated by histograms on common bins, ``LR(s) = p(s|H_m) / p(s|H_nm)`` and the
prior ratio ``omega = P(H_m) / P(H_nm)`` (1 by default):

    local   D(s) = 2 * omega LR(s) / (1 + omega LR(s)) - 1   where omega LR(s) > 1, else 0
    global  D_sys = integral of D(s) p(s|H_m) ds

D(s) = 1 where only mated scores occur (p(s|H_nm) = 0) and 0 where no mated score occurs.
D_sys is in [0, 1]: 0 = fully unlinkable, 1 = fully linkable. The integral is a trapezoid over
the bin centres and the default bin count ``min(len(mated) / 10, 100)``, as in the authors'
reference script. The histogram estimate has a small positive bias on finite samples (noise
makes LR > 1 in some bins even for identical distributions).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facelab.core.errors import RangeError, ShapeError


@dataclass(frozen=True)
class Unlinkability:
    """Result: ``d_sys``, and per bin the centres, ``d_local`` and both score densities."""

    d_sys: float
    bin_centers: np.ndarray
    d_local: np.ndarray
    mated_density: np.ndarray
    nonmated_density: np.ndarray
    omega: float


def _scores(x: object, name: str) -> np.ndarray:
    a = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, float)
    a = a.reshape(-1)
    if a.size < 2:
        raise ShapeError(f"{name}: expected at least 2 scores, got {a.size}")
    if not np.isfinite(a).all():
        raise RangeError(
            f"{name}: expected finite scores, got {int((~np.isfinite(a)).sum())} NaN/Inf"
        )
    return a


def unlinkability(
    mated: object, nonmated: object, omega: float = 1.0, bins: int | None = None
) -> Unlinkability:
    """Local ``D(s)`` and global ``D_sys`` from mated and non-mated linkage scores."""
    m = _scores(mated, "mated")
    nm = _scores(nonmated, "nonmated")
    if not (omega > 0 and np.isfinite(omega)):
        raise RangeError(f"omega: expected a positive finite prior ratio, got {omega}")
    n_bins = bins if bins is not None else max(2, min(m.size // 10, 100))
    if not isinstance(n_bins, int) or n_bins < 2:
        raise RangeError(f"bins: expected an integer >= 2, got {bins!r}")
    lo, hi = min(m.min(), nm.min()), max(m.max(), nm.max())
    if hi <= lo:  # every score identical: indistinguishable
        hi = lo + 1.0
    edges = np.linspace(lo, hi, n_bins + 1)
    centers = (edges[1:] + edges[:-1]) / 2
    y_m = np.histogram(m, bins=edges, density=True)[0]
    y_nm = np.histogram(nm, bins=edges, density=True)[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        lr = omega * y_m / y_nm
        d = np.where(lr > 1, 2 * lr / (1 + lr) - 1, 0.0)
    d = np.where(y_nm == 0, 1.0, d)
    d = np.where(y_m == 0, 0.0, d)
    f = d * y_m
    d_sys = float(np.sum((f[1:] + f[:-1]) / 2 * np.diff(centers)))  # trapezoid
    return Unlinkability(d_sys, centers, d, y_m, y_nm, float(omega))


def plot_unlinkability(
    result: Unlinkability,
    path: str | Path,
    title: str = "Unlinkability",
) -> Path:
    """Score densities (histograms) and ``D(s)`` on a twin axis, saved as an image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    width = result.bin_centers[1] - result.bin_centers[0]
    ax.bar(
        result.bin_centers,
        result.mated_density,
        width=width,
        alpha=0.5,
        label="mated",
        color="tab:green",
    )
    ax.bar(
        result.bin_centers,
        result.nonmated_density,
        width=width,
        alpha=0.5,
        label="non-mated",
        color="tab:red",
    )
    ax.set_xlabel("linkage score")
    ax.set_ylabel("probability density")
    ax2 = ax.twinx()
    ax2.plot(
        result.bin_centers,
        result.d_local,
        color="tab:blue",
        lw=2,
        label="$D_{\\leftrightarrow}(s)$",
    )
    ax2.set_ylim(0, 1.1)
    ax2.set_ylabel("$D_{\\leftrightarrow}(s)$")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left")
    ax.set_title(f"{title}: $D_{{sys}}$ = {result.d_sys:.3f}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
