"""Linkability attacks on stored SlerpFace templates: what an attacker holding two template
databases (no keys) can use to tell whether two templates come from one person.

Each attack is a linkage function of two batches of stored templates (``{"templates": (n, m,
d)}``, row-aligned) returning one score per pair, higher = more likely the same person:

- ``cosine``: cosine of the two stored vectors (the paper's unlinkability analysis);
- ``aligned``: the groups of the two templates matched optimally first (Hungarian assignment on
  the ``m x m`` cosines between groups), then the mean cosine of the matched groups -- the
  attack against any hidden group order;
- ``norms``: cosine of the vectors of group norms (the paper format stores the attention
  weights there);
- ``sorted_norms``: the same on sorted norms (survives any group order);
- ``zeros``: Pearson correlation of the per-group counts of zero coordinates (the dropout
  count follows the weights' rank: groups below the median weight drop more);
- ``zero_histogram``: minus the L1 distance of the histograms of those counts (survives any
  group order).

``linkability`` enrolls the first two images of every identity under independent keys and
reports, per attack, ``D_sys`` (Gomez-Barrero et al. 2018) with a permutation null: the same
estimator on the same pooled scores with the mated / non-mated labels shuffled, same sample
sizes -- what ``D_sys`` of an unlinkable system measures as at this sample size (its mean and
95th percentile).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from facelab.core.errors import FormatError, RangeError, UnknownNameError
from facelab.slerpface.baselines import TemplateProtector, link_group_norms
from facelab.slerpface.unlinkability import unlinkability

Stored = dict[str, torch.Tensor]
LinkFn = Callable[[Stored, Stored], torch.Tensor]


def _groups(x: Stored, name: str) -> torch.Tensor:
    if not isinstance(x, dict) or "templates" not in x or x["templates"].dim() != 3:
        keys = sorted(x) if isinstance(x, dict) else type(x).__name__
        raise FormatError(
            f"{name}: expected stored group templates (n, m, d) under 'templates', got {keys}"
        )
    return x["templates"]


def _pair(a: Stored, b: Stored) -> tuple[torch.Tensor, torch.Tensor]:
    ga, gb = _groups(a, "a"), _groups(b, "b")
    if ga.shape != gb.shape:
        raise FormatError(
            f"stored templates differ in shape: {tuple(ga.shape)} vs {tuple(gb.shape)}"
        )
    dt = torch.float64 if ga.dtype == torch.float64 else torch.float32
    return ga.to(dt), gb.to(dt)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=-1)


def link_cosine(a: Stored, b: Stored) -> torch.Tensor:
    """Cosine of the two stored vectors."""
    ga, gb = _pair(a, b)
    return _cosine(ga, gb)


def _unit_groups(g: torch.Tensor) -> torch.Tensor:
    n = torch.linalg.vector_norm(g, dim=-1, keepdim=True)
    return g / n.clamp_min(torch.finfo(g.dtype).tiny)


def group_cosines(a: Stored, b: Stored) -> torch.Tensor:
    """``(n, m, m)``: cosine of group i of ``a`` with group j of ``b`` (0 for a zero group)."""
    ga, gb = _pair(a, b)
    return torch.bmm(_unit_groups(ga), _unit_groups(gb).transpose(1, 2))


def link_aligned(a: Stored, b: Stored) -> torch.Tensor:
    """Mean cosine of the groups matched by the optimal one-to-one assignment (Hungarian
    algorithm, scipy's ``linear_sum_assignment``) on the group cosines: the best any group
    order can be undone without the key. One assignment per pair (a Python loop over pairs:
    scipy has no batched solver)."""
    s = group_cosines(a, b)
    sn = s.double().cpu().numpy()
    out = np.empty(sn.shape[0])
    for i, mat in enumerate(sn):
        r, c = linear_sum_assignment(mat, maximize=True)
        out[i] = mat[r, c].mean()
    return torch.from_numpy(out).to(s.dtype)


def group_norms(x: Stored, name: str = "stored") -> torch.Tensor:
    """``(n, m)`` norms of the stored groups."""
    g = _groups(x, name)
    dt = torch.float64 if g.dtype == torch.float64 else torch.float32
    return torch.linalg.vector_norm(g.to(dt), dim=-1)


def link_sorted_norms(a: Stored, b: Stored) -> torch.Tensor:
    """Cosine of the sorted group-norm vectors (whatever order the groups are stored in)."""
    na, nb = group_norms(a, "a"), group_norms(b, "b")
    if na.shape != nb.shape:
        raise FormatError(
            f"stored templates differ in shape: {tuple(na.shape)} vs {tuple(nb.shape)}"
        )
    return _cosine(na.sort(dim=-1).values, nb.sort(dim=-1).values)


def zero_counts(x: Stored, name: str = "stored") -> torch.Tensor:
    """``(n, m)`` int64: coordinates of each stored group that are exactly 0 (dropped)."""
    return (_groups(x, name) == 0).sum(-1)


def link_zero_counts(a: Stored, b: Stored) -> torch.Tensor:
    """Pearson correlation of the per-group zero counts (0 where one of them is constant)."""
    ca, cb = zero_counts(a, "a").double(), zero_counts(b, "b").double()
    if ca.shape != cb.shape:
        raise FormatError(
            f"stored templates differ in shape: {tuple(ca.shape)} vs {tuple(cb.shape)}"
        )
    ca = ca - ca.mean(-1, keepdim=True)
    cb = cb - cb.mean(-1, keepdim=True)
    den = (ca.square().sum(-1) * cb.square().sum(-1)).sqrt()
    return torch.where(den > 0, (ca * cb).sum(-1) / den.clamp_min(1e-300), 0.0)


def link_zero_histogram(a: Stored, b: Stored) -> torch.Tensor:
    """Minus the L1 distance of the histograms of zero counts, over ``2 m`` (in [-1, 0])."""
    ga, gb = _groups(a, "a"), _groups(b, "b")
    if ga.shape != gb.shape:
        raise FormatError(
            f"stored templates differ in shape: {tuple(ga.shape)} vs {tuple(gb.shape)}"
        )
    d = ga.shape[-1]
    ha = torch.nn.functional.one_hot(zero_counts(a), d + 1).sum(1)
    hb = torch.nn.functional.one_hot(zero_counts(b), d + 1).sum(1)
    return -(ha - hb).abs().sum(-1).double() / (2 * ga.shape[1])


#: every attack, in report order
ATTACKS: dict[str, LinkFn] = {
    "cosine": link_cosine,
    "aligned": link_aligned,
    "norms": link_group_norms,
    "sorted_norms": link_sorted_norms,
    "zeros": link_zero_counts,
    "zero_histogram": link_zero_histogram,
}


def get_attacks(names: Sequence[str] | None = None) -> dict[str, LinkFn]:
    """The named attacks (all when ``None``)."""
    if names is None:
        return dict(ATTACKS)
    unknown = [n for n in names if n not in ATTACKS]
    if unknown or not names:
        raise UnknownNameError(
            f"attacks: expected a non-empty selection of {list(ATTACKS)}, got {list(names)}"
        )
    return {n: ATTACKS[n] for n in names}


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def linkage_scores(
    prot: TemplateProtector,
    templates: torch.Tensor,
    weights: torch.Tensor,
    labels: torch.Tensor,
    links: dict[str, LinkFn],
    seed: int | None = None,
    nonmated_shifts: Sequence[int] = (1, 2, 3),
    chunk: int = 4096,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Mated and non-mated linkage scores of each linkage function, on one enrollment: the first
    two images of every identity, each protected under its own key (A and B); mated = A_i vs
    B_i, non-mated = A_i vs B_(i+s) for each shift s."""
    lab = labels.numpy()
    ids, first = np.unique(lab, return_index=True)
    counts = np.bincount(np.searchsorted(ids, lab))
    keep = counts >= 2
    if keep.sum() < 3:
        raise RangeError("unlinkability: need at least 3 identities with 2 or more images")
    a_idx = torch.as_tensor(first[keep])
    b_idx = a_idx + 1  # samples of an identity are contiguous in toyfaces / make_pairs order
    if not bool((labels[b_idx] == labels[a_idx]).all()):
        raise RangeError("unlinkability: expected the images of an identity to be contiguous")
    n, m, d = templates[a_idx].shape
    ka = prot.new_keys(n, m, d, seed=None if seed is None else seed + 1)
    kb = prot.new_keys(n, m, d, seed=None if seed is None else seed + 2)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    mated: dict[str, list[torch.Tensor]] = {k: [] for k in links}
    nonmated: dict[str, list[torch.Tensor]] = {k: [] for k in links}
    shifts = [s % n for s in nonmated_shifts if s % n]
    for sl in _chunks(n, chunk):
        ga = prot.enroll(templates[a_idx[sl]], weights[a_idx[sl]], ka[sl], generator=gen)
        gb = prot.enroll(templates[b_idx[sl]], weights[b_idx[sl]], kb[sl], generator=gen)
        for name, link in links.items():
            mated[name].append(link(ga, gb))
        for s in shifts:
            rows = (torch.arange(sl.start, sl.stop) + s) % n
            gs = prot.enroll(templates[b_idx[rows]], weights[b_idx[rows]], kb[rows], generator=gen)
            for name, link in links.items():
                nonmated[name].append(link(ga, gs))
    return {k: (torch.cat(mated[k]).double(), torch.cat(nonmated[k]).double()) for k in links}


@dataclass(frozen=True)
class Linkage:
    """``D_sys`` of one attack and its permutation null (mean and 95th percentile over
    ``rounds`` relabelings of the pooled scores)."""

    attack: str
    d_sys: float
    null_mean: float
    null_q95: float
    mated: int
    nonmated: int

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            "attack": self.attack,
            "d_sys": self.d_sys,
            "null_mean": self.null_mean,
            "null_q95": self.null_q95,
            "mated": self.mated,
            "nonmated": self.nonmated,
        }


def permutation_null(
    mated: torch.Tensor | np.ndarray,
    nonmated: torch.Tensor | np.ndarray,
    omega: float = 1.0,
    rounds: int = 50,
    seed: int = 0,
) -> np.ndarray:
    """``D_sys`` of ``rounds`` random splits of the pooled scores into groups of the mated and
    non-mated sizes: its distribution when the two score sets do not differ."""
    if not isinstance(rounds, int) or rounds < 1:
        raise RangeError(f"rounds: expected a positive integer, got {rounds!r}")
    m = np.asarray(mated, dtype=np.float64).reshape(-1)
    nm = np.asarray(nonmated, dtype=np.float64).reshape(-1)
    pooled = np.concatenate([m, nm])
    rng = np.random.default_rng(seed)
    out = np.empty(rounds)
    for r in range(rounds):
        p = rng.permutation(pooled.size)
        out[r] = unlinkability(pooled[p[: m.size]], pooled[p[m.size :]], omega=omega).d_sys
    return out


def linkage(
    attack: str,
    mated: torch.Tensor,
    nonmated: torch.Tensor,
    omega: float = 1.0,
    rounds: int = 50,
    seed: int = 0,
) -> Linkage:
    """``D_sys`` of mated vs non-mated linkage scores with its permutation null."""
    d = unlinkability(mated, nonmated, omega=omega).d_sys
    null = permutation_null(mated, nonmated, omega, rounds, seed)
    return Linkage(
        attack,
        d,
        float(null.mean()),
        float(np.quantile(null, 0.95)),
        int(np.asarray(mated).size),
        int(np.asarray(nonmated).size),
    )


def linkability(
    prot: TemplateProtector,
    templates: torch.Tensor,
    weights: torch.Tensor,
    labels: torch.Tensor,
    attacks: Sequence[str] | None = None,
    *,
    seed: int | None = 0,
    omega: float = 1.0,
    rounds: int = 50,
) -> dict[str, Linkage]:
    """Every attack (``attacks``: names from ``ATTACKS``, all by default) on one enrollment of
    ``prot``'s stored templates: ``{attack: Linkage}``. The group attacks need a protector that
    stores group templates (SlerpFace in either format, unprotected)."""
    if not prot.group_templates:
        raise FormatError(
            f"linkability: {prot.method!r} does not store group templates; these attacks need "
            "(n, m, d) groups"
        )
    links = get_attacks(attacks)
    scores = linkage_scores(prot, templates, weights, labels, links, seed)
    null_seed = 0 if seed is None else seed
    return {
        name: linkage(name, *scores[name], omega=omega, rounds=rounds, seed=null_seed)
        for name in links
    }
