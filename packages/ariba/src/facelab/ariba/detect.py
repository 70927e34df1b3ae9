"""The ARIBA detector: fragment-wise anomaly detection across a round's client updates.

Only the abstract of ARIBA is public; the steps it names are (1) cut each update into fragment
vectors, (2) pre-process them, (3) run unsupervised anomaly detection per fragment position
across clients, (4) count each client's outlying fragments and prune the clients with the most.
Everything below that level of detail is our design:

* pre-processing: for fragment ``f`` of client ``c`` with vector ``x_cf``, two features relative
  to the other clients' same fragment: magnitude ``log(|x_cf| / median_c |x_cf|)`` and
  orientation ``cos(x_cf, m_f)`` with ``m_f`` the coordinate-wise median of the clients' ``x_f``
  (a robust consensus direction: up to half the clients may deviate without moving it far);
* detector (default ``"robust_z"``): per fragment position and feature, the modified z-score of
  Iglewicz and Hoaglin ``0.6745 (v - median) / MAD`` across clients (when MAD is 0, the
  mean-absolute-deviation form ``(v - median) / (1.2533 MeanAD)``; when that is 0 too, 0). A
  fragment is an outlier when its magnitude z is above ``z_threshold`` (a backdoor enlarges the
  change it makes) or its orientation z is below ``-z_threshold`` (it points away from the
  consensus); ``magnitude_side="both"`` also flags unusually small fragments;
* ``"isolation_forest"`` / ``"local_outlier_factor"`` (scikit-learn): the per-position robust z
  features of all the (client, fragment) pairs of one tensor, pooled, go to one detector per
  tensor (one fit per fragment position would be thousands of fits per round); its outliers
  count when they lie on the anomalous side of a feature;
* decision: a client's count is its number of outlying fragments. Benign clients collect a few
  by chance; a client is pruned when its count passes ``median + count_z * scale`` of the
  round's counts (``scale = max(1.4826 MAD, sqrt(median), 1)``: the Poisson-like spread of
  chance counts as a floor) and is at least ``min_fraction`` of all fragments; at most
  ``num_prune`` such clients, the most outlying first, ties broken by index. A benign round
  prunes few or none.

A client whose update holds NaN or Inf is always excluded and reported on its own (outside
``num_prune``); the statistics are computed over the finite clients only, so one broken update
poisons neither the medians nor the aggregate. With fewer than three finite clients there is
no majority to compare against and nothing is pruned for anomaly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from facelab.ariba._checks import checks_deferred
from facelab.ariba.fragments import FragmentConfig, stack_fragments
from facelab.core.errors import FacelabTypeError, RangeError

DETECTORS = ("robust_z", "isolation_forest", "local_outlier_factor")
# modified z-score constants (Iglewicz & Hoaglin 1993; the MeanAD fallback as IBM SPSS uses it)
_MAD_K = 0.6745
_MEANAD_K = 1.253314
_MAD_SIGMA = 1.4826


@dataclass(frozen=True)
class DetectorConfig:
    """The detector's knobs (defaults are ours: the paper's abstract gives none)."""

    fragments: FragmentConfig = field(default_factory=FragmentConfig)
    detector: Literal["robust_z", "isolation_forest", "local_outlier_factor"] = "robust_z"
    features: tuple[str, ...] = ("magnitude", "orientation")
    z_threshold: float = 2.5
    magnitude_side: Literal["upper", "both"] = "upper"
    count_z: float = 3.0
    min_fraction: float = 0.05
    lof_neighbors: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if not checks_deferred():
            self.validate()

    def validate(self) -> None:
        """Raise a FacelabError on a bad value (see ``_checks``)."""
        if self.detector not in DETECTORS:
            raise RangeError(f"detector: expected one of {DETECTORS}, got {self.detector!r}")
        feats = tuple(self.features)
        object.__setattr__(self, "features", feats)
        if not feats or any(f not in ("magnitude", "orientation") for f in feats):
            raise RangeError(
                "features: expected a non-empty subset of ('magnitude', 'orientation'), "
                f"got {feats!r}"
            )
        if self.magnitude_side not in ("upper", "both"):
            raise RangeError(
                f"magnitude_side: expected 'upper' or 'both', got {self.magnitude_side!r}"
            )
        for name in ("z_threshold", "count_z"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise RangeError(f"{name}: expected a finite number > 0, got {v!r}")
        if not (0.0 <= self.min_fraction <= 1.0):
            raise RangeError(f"min_fraction: expected a value in [0, 1], got {self.min_fraction!r}")
        if self.lof_neighbors < 1:
            raise RangeError(f"lof_neighbors: expected >= 1, got {self.lof_neighbors!r}")


@dataclass
class Detection:
    """What the detector found in one round.

    ``excluded`` = ``nonfinite`` + ``pruned``: the clients to leave out of the aggregate.
    ``counts[c]`` is client ``c``'s number of outlying fragments (-1 for a non-finite client);
    ``threshold`` the count a client had to pass; ``total_fragments`` the fragments per client.
    """

    pruned: list[int]
    nonfinite: list[int]
    counts: list[int]
    threshold: float
    total_fragments: int
    layer_counts: dict[str, list[int]] = field(default_factory=dict)

    @property
    def excluded(self) -> list[int]:
        return [*self.nonfinite, *self.pruned]


# ------------------------------------------------------------------------------ statistics


def median0(x: torch.Tensor) -> torch.Tensor:
    """Median over dim 0 (the mean of the two middle values for an even count, as numpy).
    Clients go to the last, contiguous dimension first: sorting short contiguous rows is
    about twice as fast as selecting along a strided first dimension."""
    n = x.shape[0]
    s = torch.sort(x.movedim(0, -1).contiguous(), dim=-1).values
    if n % 2:
        return s[..., n // 2]
    return (s[..., n // 2 - 1] + s[..., n // 2]) / 2


def robust_z(v: torch.Tensor) -> torch.Tensor:
    """Modified z-scores over dim 0 (clients), one per column (fragment position)."""
    med = median0(v)
    dev = (v - med).abs()
    mad = median0(dev)
    mean_ad = dev.mean(dim=0)
    z_mad = _MAD_K * (v - med) / mad.clamp_min(torch.finfo(v.dtype).tiny)
    z_mean = (v - med) / (_MEANAD_K * mean_ad).clamp_min(torch.finfo(v.dtype).tiny)
    z = torch.where(mad > 0, z_mad, torch.where(mean_ad > 0, z_mean, torch.zeros_like(v)))
    return z


def fragment_features(group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Magnitude and orientation features of a group ``(clients, fragments, length)``:
    ``log(|x_cf| / median_c |x_cf|)`` and ``cos(x_cf, coordinate-wise median of x_f)``, each
    ``(clients, fragments)``."""
    tiny = torch.finfo(group.dtype).tiny
    norms = torch.linalg.vector_norm(group, dim=2)  # (C, F)
    med_norm = median0(norms)  # (F,)
    magnitude = torch.log((norms + tiny) / (med_norm + tiny))
    center = median0(group)  # (F, L)
    center_norm = torch.linalg.vector_norm(center, dim=1)  # (F,)
    dots = torch.einsum("cfl,fl->cf", group, center)
    orientation = dots / (norms * center_norm).clamp_min(tiny)
    return magnitude, orientation


def _flag_robust_z(
    z_mag: torch.Tensor | None, z_ori: torch.Tensor | None, cfg: DetectorConfig
) -> torch.Tensor:
    flags = None
    t = cfg.z_threshold
    if z_mag is not None:
        flags = (z_mag.abs() > t) if cfg.magnitude_side == "both" else (z_mag > t)
    if z_ori is not None:
        f = z_ori < -t
        flags = f if flags is None else flags | f
    assert flags is not None
    return flags


def _flag_sklearn(
    z_mag: torch.Tensor | None, z_ori: torch.Tensor | None, cfg: DetectorConfig
) -> torch.Tensor:
    feats = [z for z in (z_mag, z_ori) if z is not None]
    c, f = feats[0].shape
    points = torch.stack(feats, dim=-1).reshape(c * f, len(feats)).cpu().double().numpy()
    if c * f < 3:
        return torch.zeros(c, f, dtype=torch.bool, device=feats[0].device)
    if cfg.detector == "isolation_forest":
        from sklearn.ensemble import IsolationForest

        pred = IsolationForest(random_state=cfg.seed).fit_predict(points)
    else:
        from sklearn.neighbors import LocalOutlierFactor

        k = min(cfg.lof_neighbors, c * f - 1)
        pred = LocalOutlierFactor(n_neighbors=k).fit_predict(points)
    out = torch.from_numpy(pred == -1).reshape(c, f).to(feats[0].device)
    side = torch.zeros_like(out)
    if z_mag is not None:
        side |= (z_mag.abs() > 0) if cfg.magnitude_side == "both" else (z_mag > 0)
    if z_ori is not None:
        side |= z_ori < 0
    return out & side


def outlier_flags(group: torch.Tensor, cfg: DetectorConfig) -> torch.Tensor:
    """Which fragments of a finite group ``(clients, fragments, length)`` are outliers:
    a boolean ``(clients, fragments)``."""
    magnitude, orientation = fragment_features(group)
    z_mag = robust_z(magnitude) if "magnitude" in cfg.features else None
    z_ori = robust_z(orientation) if "orientation" in cfg.features else None
    if cfg.detector == "robust_z":
        return _flag_robust_z(z_mag, z_ori, cfg)
    return _flag_sklearn(z_mag, z_ori, cfg)


def count_threshold(counts: torch.Tensor, cfg: DetectorConfig, total: int) -> float:
    """The outlier count a client must pass to be pruned (see the module docstring)."""
    c = counts.double()
    med = float(median0(c))
    mad = float(median0((c - med).abs()))
    scale = max(_MAD_SIGMA * mad, math.sqrt(max(med, 0.0)), 1.0)
    return max(med + cfg.count_z * scale, cfg.min_fraction * total)


# ------------------------------------------------------------------------------ the API


def _check_num_prune(num_prune: Any, n: int) -> int:
    if isinstance(num_prune, bool) or not isinstance(num_prune, int | np.integer):
        raise FacelabTypeError(f"num_prune: expected an integer, got {type(num_prune).__name__}")
    if num_prune < 0 or num_prune >= n:
        raise RangeError(
            f"num_prune: expected 0 <= num_prune < number of clients ({n}) so that at least "
            f"one update is aggregated, got {num_prune}"
        )
    return int(num_prune)


def _finite_clients(groups: Mapping[str, torch.Tensor]) -> torch.Tensor:
    ok = None
    for g in groups.values():
        fin = torch.isfinite(g).flatten(1).all(dim=1)
        ok = fin if ok is None else ok & fin
    assert ok is not None
    return ok


def analyze(
    updates: Sequence[Mapping[str, Any]],
    num_prune: int,
    config: DetectorConfig | None = None,
    device: torch.device | str | None = None,
) -> Detection:
    """Run the detector on one round's updates (each a client's delta from the global model,
    name -> tensor); see the module docstring. ``num_prune`` bounds the anomaly pruning; it
    must be below the number of clients."""
    cfg = config or DetectorConfig()
    if not isinstance(cfg, DetectorConfig):
        raise FacelabTypeError(f"config: expected a DetectorConfig, got {type(cfg).__name__}")
    groups = stack_fragments(updates, cfg.fragments, device=device)
    n = len(updates)
    k = _check_num_prune(num_prune, n)
    finite = _finite_clients(groups)
    keep = torch.nonzero(finite).flatten()
    nonfinite = torch.nonzero(~finite).flatten().tolist()
    total = sum(g.shape[1] for g in groups.values())
    counts = torch.full((n,), -1, dtype=torch.long)
    layer_counts: dict[str, list[int]] = {}
    if keep.numel() < 3:
        counts[keep.cpu()] = 0
        return Detection([], nonfinite, counts.tolist(), math.inf, total, layer_counts)

    running = torch.zeros(keep.numel(), dtype=torch.long, device=keep.device)
    for name, g in groups.items():
        sub = g if len(nonfinite) == 0 else g.index_select(0, keep.to(g.device))
        per_client = outlier_flags(sub, cfg).sum(dim=1)
        running = running + per_client.to(running.device)
        layer_counts[name] = per_client.tolist()
    counts[keep.cpu()] = running.cpu()
    pruned, threshold = prune_by_counts(running.tolist(), keep.tolist(), k, cfg, total)
    return Detection(pruned, nonfinite, counts.tolist(), threshold, total, layer_counts)


def prune_by_counts(
    counts: Sequence[float],
    clients: Sequence[int],
    num_prune: int,
    config: DetectorConfig,
    total: int,
) -> tuple[list[int], float]:
    """The decision step: ``clients[i]`` has outlier count ``counts[i]``; returns the clients
    over the threshold (at most ``num_prune``, largest count first, ties by client index) and
    the threshold. Counts may be fractional (the strategy's per-node moving average)."""
    if len(counts) < 3:
        return [], math.inf
    threshold = count_threshold(torch.tensor(counts, dtype=torch.float64), config, total)
    over = [(float(c), int(i)) for c, i in zip(counts, clients) if c > threshold]
    over.sort(key=lambda ci: (-ci[0], ci[1]))
    return [i for _, i in over[:num_prune]], threshold


def detect(
    updates: Sequence[Mapping[str, Any]],
    num_prune: int,
    config: DetectorConfig | None = None,
) -> list[int]:
    """The clients to leave out of this round's aggregate: those with NaN/Inf in their update
    (always, not counted in ``num_prune``), then at most ``num_prune`` clients whose outlier
    count passes the threshold, most outlying first (ties by index). ``analyze`` returns the
    two lists apart and the counts."""
    return analyze(updates, num_prune, config).excluded


def norm_detect(
    updates: Sequence[Mapping[str, Any]], num_prune: int, z_threshold: float = 3.5
) -> Detection:
    """Whole-update norm detection (the baseline a norm-bounded attack is built to evade):
    clients whose update norm has a robust z above ``z_threshold``, at most ``num_prune``,
    largest first; non-finite clients excluded as in ``analyze``."""
    groups = stack_fragments(updates, FragmentConfig("tensor"))
    n = len(updates)
    k = _check_num_prune(num_prune, n)
    finite = _finite_clients(groups)
    keep = torch.nonzero(finite).flatten()
    nonfinite = torch.nonzero(~finite).flatten().tolist()
    sq = sum(
        torch.linalg.vector_norm(g.index_select(0, keep), dim=(1, 2)).double() ** 2
        for g in groups.values()
    )
    norms = torch.sqrt(sq)
    flags = [0] * n
    if keep.numel() >= 3:
        z = robust_z(norms.unsqueeze(1)).squeeze(1)
        over = [(float(zz), int(i)) for zz, i in zip(z.tolist(), keep.tolist()) if zz > z_threshold]
        over.sort(key=lambda zi: (-zi[0], zi[1]))
        pruned = [i for _, i in over[:k]]
    else:
        pruned = []
    for i in pruned:
        flags[i] = 1
    for i in nonfinite:
        flags[i] = -1
    return Detection(pruned, nonfinite, flags, z_threshold, 1)
