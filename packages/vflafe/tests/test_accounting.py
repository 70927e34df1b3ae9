import math

import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from facelab.core.errors import FacelabTypeError, RangeError, UnknownNameError
from facelab.vflafe import BudgetError, embedding_epsilon, embedding_noise_for, epsilon, noise_for

# the references below call opacus directly, which warns (see accounting._quiet)
pytestmark = [
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha"),
]

CASES = [(1.0, 1), (2.0, 10), (4.0, 30), (0.8, 5)]
DELTA = 1e-5


def _opacus_by_steps(kind, sigma, q, steps):
    """opacus driven the way DP-SGD drives it: one ``step`` per release."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = RDPAccountant() if kind == "rdp" else PRVAccountant()
    for _ in range(steps):
        acc.step(noise_multiplier=sigma, sample_rate=q)
    return acc.get_epsilon(delta=DELTA)


def _exact_gaussian_epsilon(sigma, steps, delta=DELTA):
    """Exact (epsilon, delta) of ``steps`` Gaussian mechanisms with sensitivity 1 and noise
    ``sigma``: their composition is one Gaussian with noise sigma / sqrt(steps) (Balle & Wang
    2018, Theorem 8: delta(eps) = Phi(1/(2s) - eps s) - e^eps Phi(-1/(2s) - eps s))."""
    s = sigma / math.sqrt(steps)

    def gap(eps):
        return norm.cdf(0.5 / s - eps * s) - math.exp(eps) * norm.cdf(-0.5 / s - eps * s) - delta

    return brentq(gap, 0.0, 500.0)


@pytest.mark.parametrize(("sigma", "steps"), CASES)
@pytest.mark.parametrize("kind", ["rdp", "prv"])
def test_epsilon_is_opacus(kind, sigma, steps):
    got = epsilon(
        noise_multiplier=sigma, sample_rate=1.0, steps=steps, delta=DELTA, accountant=kind
    )
    assert got == pytest.approx(_opacus_by_steps(kind, sigma, 1.0, steps), rel=1e-9)


def test_subsampled_epsilon_is_opacus():
    got = epsilon(noise_multiplier=1.1, sample_rate=0.01, steps=300, delta=DELTA)
    assert got == pytest.approx(_opacus_by_steps("rdp", 1.1, 0.01, 300), rel=1e-9)


@pytest.mark.parametrize(("sigma", "steps"), CASES)
def test_epsilon_against_dp_accounting_and_the_exact_value(sigma, steps):
    """Google's dp-accounting as the independent check: its RDP accountant on the same orders
    must agree to 1e-9 (same bound); its PLD accountant and opacus' PRV both approximate the
    exact epsilon from above within 1 %; RDP is an upper bound on the exact value."""
    import dp_accounting
    from dp_accounting import pld, rdp
    from opacus.accountants import RDPAccountant

    event = dp_accounting.GaussianDpEvent(sigma)
    r = rdp.RdpAccountant(orders=RDPAccountant.DEFAULT_ALPHAS)
    r.compose(event, steps)
    p = pld.PLDAccountant()
    p.compose(event, steps)
    ours_rdp = epsilon(noise_multiplier=sigma, sample_rate=1.0, steps=steps, delta=DELTA)
    ours_prv = epsilon(
        noise_multiplier=sigma, sample_rate=1.0, steps=steps, delta=DELTA, accountant="prv"
    )
    exact = _exact_gaussian_epsilon(sigma, steps)
    assert ours_rdp == pytest.approx(r.get_epsilon(DELTA), rel=1e-9)
    assert ours_prv == pytest.approx(p.get_epsilon(DELTA), rel=0.01)
    assert ours_prv == pytest.approx(exact, rel=0.01)
    assert ours_rdp >= exact


def test_embedding_epsilon_uses_the_sensitivity_of_the_relation():
    """Replacing a row moves the clipped embedding by up to 2C: the mechanism with multiplier
    sigma is the sensitivity-1 Gaussian with sigma / 2."""
    for sigma, n in CASES:
        rep = embedding_epsilon(noise_multiplier=sigma, releases=n, delta=DELTA)
        zero = embedding_epsilon(
            noise_multiplier=sigma, releases=n, delta=DELTA, relation="zero-out"
        )
        assert rep == epsilon(noise_multiplier=sigma / 2, sample_rate=1.0, steps=n, delta=DELTA)
        assert zero == epsilon(noise_multiplier=sigma, sample_rate=1.0, steps=n, delta=DELTA)
        assert rep > zero
    assert embedding_epsilon(noise_multiplier=0.0, releases=3, delta=DELTA) == math.inf


@pytest.mark.parametrize("target", [1.0, 8.0])
def test_noise_for_reaches_the_target(target):
    sigma = embedding_noise_for(target_epsilon=target, delta=DELTA, releases=10)
    eps = embedding_epsilon(noise_multiplier=sigma, releases=10, delta=DELTA)
    assert target - 0.02 <= eps <= target  # opacus bisects to within 0.01 below the target
    # more releases need more noise
    assert embedding_noise_for(target_epsilon=target, delta=DELTA, releases=20) > sigma
    assert noise_for(
        target_epsilon=target, delta=DELTA, sample_rate=1.0, steps=10
    ) == pytest.approx(sigma / 2)


def test_unreachable_and_bad_budgets():
    with pytest.raises(BudgetError, match="cannot be reached"):
        noise_for(target_epsilon=1e-9, delta=DELTA, sample_rate=1.0, steps=10)
    with pytest.raises(RangeError, match="target_epsilon"):
        noise_for(target_epsilon=0.0, delta=DELTA, sample_rate=1.0, steps=10)
    with pytest.raises(RangeError, match="delta"):
        epsilon(noise_multiplier=1.0, sample_rate=1.0, steps=1, delta=1.5)
    with pytest.raises(RangeError, match="sample_rate"):
        epsilon(noise_multiplier=1.0, sample_rate=0.0, steps=1, delta=DELTA)
    with pytest.raises(RangeError, match="noise_multiplier"):
        epsilon(noise_multiplier=-1.0, sample_rate=1.0, steps=1, delta=DELTA)
    with pytest.raises(RangeError, match="steps"):
        epsilon(noise_multiplier=1.0, sample_rate=1.0, steps=0, delta=DELTA)
    with pytest.raises(FacelabTypeError, match="steps"):
        epsilon(noise_multiplier=1.0, sample_rate=1.0, steps=2.5, delta=DELTA)
    with pytest.raises(UnknownNameError, match="accountant"):
        epsilon(noise_multiplier=1.0, sample_rate=1.0, steps=1, delta=DELTA, accountant="gdp")
    with pytest.raises(UnknownNameError, match="relation"):
        embedding_epsilon(noise_multiplier=1.0, releases=1, delta=DELTA, relation="add")
    with pytest.raises(TypeError):
        epsilon(1.0, 1.0, 1, DELTA)  # keyword-only
