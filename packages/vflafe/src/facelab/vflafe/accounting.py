"""Privacy accounting for released embeddings, through opacus' accountants.

Two layers:

* ``epsilon`` / ``noise_for`` are opacus itself (keyword-only): the Gaussian mechanism with
  noise multiplier ``sigma`` = noise std / L2 sensitivity, Poisson sampling rate ``q``, composed
  over ``steps`` releases; RDP by default, PRV as an option.
* ``embedding_epsilon`` / ``embedding_noise_for`` apply them to VFL embedding releases.

What one release is, and the neighbouring relation
---------------------------------------------------
A *release* of a sample is one privatized embedding row of it leaving a passive party: one per
training epoch (every sample sits in exactly one batch per epoch) plus one per inference pass
that includes the sample. The active party chooses the batches and knows which sample ids each
holds, so there is no amplification by subsampling: every release is accounted with
``sample_rate = 1`` and ``steps = releases``. Releases of different samples in the same epoch
touch disjoint rows (parallel composition).

Neighbouring datasets differ in one passive party's feature row of one sample (``"replace"``):
the clipped embedding row can move anywhere in the ball of radius C, an L2 sensitivity of 2C,
so the mechanism's effective noise multiplier is ``noise_multiplier / 2``. ``"zero-out"``
(the row is replaced by a fixed null embedding, sensitivity C, the convention of DP-SGD's
add/remove accounting) is available and reports the smaller epsilon of the same noise.
"""

from __future__ import annotations

import functools
import math
import warnings
from contextlib import contextmanager
from typing import Literal

from facelab.core.errors import FacelabTypeError, RangeError, UnknownNameError
from facelab.vflafe.errors import BudgetError

__all__ = [
    "ACCOUNTANTS",
    "RELATIONS",
    "SENSITIVITY",
    "embedding_epsilon",
    "embedding_noise_for",
    "epsilon",
    "noise_for",
]

Accountant = Literal["rdp", "prv"]
Relation = Literal["replace", "zero-out"]
ACCOUNTANTS = ("rdp", "prv")
RELATIONS = ("replace", "zero-out")
# L2 sensitivity of one clipped row, in units of the clip norm
SENSITIVITY = {"replace": 2.0, "zero-out": 1.0}


def _number(name: str, value: object, lo: float, hi: float, lo_open: bool, hi_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FacelabTypeError(f"{name}: expected a number, got {type(value).__name__} {value!r}")
    v = float(value)
    ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        span = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise RangeError(f"{name}: expected a finite number in {span}, got {value!r}")
    return v


def _steps(value: object, name: str = "steps") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FacelabTypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise RangeError(f"{name}: expected an int >= 1, got {value}")
    return value


@contextmanager
def _quiet():
    """opacus warns that the best RDP order is the largest one (the bound is loose for a few
    releases at small sigma: use accountant='prv' there) and PRV divides by log(1 - q) = -inf at
    q = 1 (harmless); neither helps a user of these functions."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="opacus")
        yield


def _accountant(name: object):
    from opacus.accountants import PRVAccountant, RDPAccountant

    if name == "rdp":
        return RDPAccountant()
    if name == "prv":
        return PRVAccountant()
    raise UnknownNameError(f"accountant: expected one of {list(ACCOUNTANTS)}, got {name!r}")


def _relation(name: object) -> float:
    if name not in SENSITIVITY:
        raise UnknownNameError(f"relation: expected one of {list(RELATIONS)}, got {name!r}")
    return SENSITIVITY[name]  # type: ignore[index]


def epsilon(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: Accountant = "rdp",
) -> float:
    """Epsilon of ``steps`` compositions of the (subsampled) Gaussian mechanism, from opacus.

    ``noise_multiplier`` is noise std / L2 sensitivity; ``0`` means no noise and returns
    ``math.inf``.
    """
    sigma = _number("noise_multiplier", noise_multiplier, 0.0, math.inf, False, True)
    q = _number("sample_rate", sample_rate, 0.0, 1.0, True, False)
    n = _steps(steps)
    d = _number("delta", delta, 0.0, 1.0, True, True)
    acc = _accountant(accountant)
    if sigma == 0.0:
        return math.inf
    acc.history = [(sigma, q, n)]  # what acc.step() would build after n equal steps
    with _quiet():
        return float(acc.get_epsilon(delta=d))


def noise_for(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: Accountant = "rdp",
    epsilon_tolerance: float = 0.01,
) -> float:
    """The smallest noise multiplier (within opacus' bisection tolerance) whose epsilon after
    ``steps`` releases is at most ``target_epsilon``: opacus' ``get_noise_multiplier``.

    Raises ``BudgetError`` when no noise multiplier up to opacus' limit (1e6) reaches the target.
    """
    eps = _number("target_epsilon", target_epsilon, 0.0, math.inf, True, True)
    d = _number("delta", delta, 0.0, 1.0, True, True)
    q = _number("sample_rate", sample_rate, 0.0, 1.0, True, False)
    n = _steps(steps)
    tol = _number("epsilon_tolerance", epsilon_tolerance, 0.0, math.inf, True, True)
    _accountant(accountant)  # name check
    return _solve(eps, d, q, n, accountant, tol)


@functools.lru_cache(maxsize=256)
def _solve(eps: float, d: float, q: float, n: int, accountant: str, tol: float) -> float:
    """opacus' bisection (seconds for PRV or tiny sigmas), cached: a pure function."""
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with _quiet():
            sigma = get_noise_multiplier(
                target_epsilon=eps,
                target_delta=d,
                sample_rate=q,
                steps=n,
                accountant=accountant,
                epsilon_tolerance=tol,
            )
        return float(sigma)
    except ValueError as exc:
        raise BudgetError(
            f"target_epsilon: {eps:g} at delta {d:g} after {n} steps (sample rate {q:g}) cannot be "
            f"reached with any noise multiplier up to 1e6 ({exc}); raise the target epsilon or "
            "delta, or release fewer times"
        ) from exc


def embedding_epsilon(
    *,
    noise_multiplier: float,
    releases: int,
    delta: float,
    relation: Relation = "replace",
    accountant: Accountant = "rdp",
) -> float:
    """Epsilon of one sample's feature row after ``releases`` privatized embeddings of it
    (``privatize(..., noise_multiplier=...)``, noise std ``noise_multiplier * clip_norm``),
    under the neighbouring ``relation`` (see the module docstring)."""
    sigma = _number("noise_multiplier", noise_multiplier, 0.0, math.inf, False, True)
    sens = _relation(relation)
    n = _steps(releases, "releases")
    return epsilon(
        noise_multiplier=sigma / sens, sample_rate=1.0, steps=n, delta=delta, accountant=accountant
    )


def embedding_noise_for(
    *,
    target_epsilon: float,
    delta: float,
    releases: int,
    relation: Relation = "replace",
    accountant: Accountant = "rdp",
    epsilon_tolerance: float = 0.01,
) -> float:
    """The ``noise_multiplier`` to give ``privatize`` so that ``releases`` releases of a sample
    cost at most ``target_epsilon`` (BudgetError when unreachable)."""
    sens = _relation(relation)
    n = _steps(releases, "releases")
    return sens * noise_for(
        target_epsilon=target_epsilon,
        delta=delta,
        sample_rate=1.0,
        steps=n,
        accountant=accountant,
        epsilon_tolerance=epsilon_tolerance,
    )
