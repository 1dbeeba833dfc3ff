"""Skellam mechanism accounting: the RDP bound against an exact reference and the Gaussian limit."""

from __future__ import annotations

import math

import numpy as np
import pytest
from opacus.accountants.analysis import rdp as opacus_rdp

from fedward.privacy.secagg.ddp import DistributedDp, padded_length
from fedward.privacy.skellam import (
    SKELLAM_ORDERS,
    SkellamStep,
    epsilon,
    gaussian_rdp,
    rdp_to_epsilon,
    skellam_rdp,
)


def test_fixed_values_of_the_bound() -> None:
    # alpha = 2, Delta_1 = Delta_2 = 1, mu = 10:
    #   2 * 1 / 20 + min((3 * 1 + 6) / (4 * 100), 3 / 20) = 0.1 + min(0.0225, 0.15) = 0.1225
    assert skellam_rdp(2, l1_sensitivity=1, l2_sensitivity=1, variance=10) == pytest.approx(0.1225)
    # alpha = 8, Delta_1 = 40, Delta_2 = 4, mu = 2: the second branch of the min is smaller:
    #   8 * 16 / 4 + min((15 * 16 + 240) / 16, 120 / 4) = 32 + min(30, 30) = 62
    assert skellam_rdp(8, l1_sensitivity=40, l2_sensitivity=4, variance=2) == pytest.approx(62.0)
    # a fractional order is bounded by the next integer order
    assert skellam_rdp(2.5, l1_sensitivity=1, l2_sensitivity=1, variance=10) == skellam_rdp(
        3, l1_sensitivity=1, l2_sensitivity=1, variance=10
    )


def _log_poisson(lam: float, k: int) -> float:
    return k * math.log(lam) - lam - math.lgamma(k + 1)


def _log_skellam_pmf(mu: float, k_max: int) -> dict[int, float]:
    """log P(X = k), X = Poisson(mu/2) - Poisson(mu/2), by direct convolution (slow, exact)."""
    lam = mu / 2.0
    j_max = int(lam + 40 * math.sqrt(lam) + 60)
    logs = [_log_poisson(lam, j) for j in range(j_max + k_max + 1)]
    table = {}
    for k in range(-k_max, k_max + 1):
        terms = [logs[j + abs(k)] + logs[j] for j in range(j_max)]
        top = max(terms)
        table[k] = top + math.log(sum(math.exp(t - top) for t in terms))
    return table


def _exact_renyi(mu: float, shift: int, alpha: int) -> float:
    """D_alpha(Sk(mu) + shift || Sk(mu)), one dimension, summed over the support."""
    k_max = int(30 * math.sqrt(mu) + 60)
    log_p = _log_skellam_pmf(mu, k_max + shift)
    terms = [alpha * log_p[k - shift] + (1 - alpha) * log_p[k] for k in range(-k_max, k_max)]
    top = max(terms)
    return (top + math.log(sum(math.exp(t - top) for t in terms))) / (alpha - 1)


@pytest.mark.parametrize("mu", [4.0, 20.0, 100.0])
@pytest.mark.parametrize("shift", [1, 3])
@pytest.mark.parametrize("alpha", [2, 4, 8, 16])
def test_the_bound_holds_against_the_exact_renyi_divergence(
    mu: float, shift: int, alpha: int
) -> None:
    # Prepare: a one-dimensional shift, so Delta_1 = Delta_2 = shift
    exact = _exact_renyi(mu, shift, alpha)
    # Execute
    bound = skellam_rdp(alpha, l1_sensitivity=shift, l2_sensitivity=shift, variance=mu)
    # Assert: an upper bound, and a sharp one once the noise is not tiny (measured <= 1.06x)
    assert exact <= bound
    if mu >= 100:
        assert bound <= 1.1 * exact


def test_the_bound_tends_to_the_gaussian_as_the_variance_grows() -> None:
    for alpha in (2, 10, 64):
        for mu in (1e6, 1e9, 1e12):
            sk = skellam_rdp(alpha, l1_sensitivity=300.0, l2_sensitivity=30.0, variance=mu)
            gauss = gaussian_rdp(alpha, l2_sensitivity=30.0, variance=mu)
            assert gauss <= sk <= gauss + 3 * 300.0 / (2 * mu)  # the min's second branch
        assert skellam_rdp(
            alpha, l1_sensitivity=300.0, l2_sensitivity=30.0, variance=1e12
        ) == pytest.approx(gaussian_rdp(alpha, l2_sensitivity=30.0, variance=1e12), rel=1e-9)


def test_conversion_matches_opacus() -> None:
    # Prepare: an arbitrary RDP curve
    orders = [1.5, 2.0, 4.0, 8.0, 16.0, 32.0]
    curve = [0.3 * a for a in orders]
    # Execute
    ours = rdp_to_epsilon(orders, curve, delta=1e-5)
    theirs, _ = opacus_rdp.get_privacy_spent(orders=orders, rdp=curve, delta=1e-5)
    # Assert
    assert ours == pytest.approx(float(theirs), rel=1e-12)


def test_composition_over_fills_adds_rdp() -> None:
    # Prepare
    one = SkellamStep(l1_sensitivity=900.0, l2_sensitivity=100.0, variance=4e4)
    # Execute
    ten_steps = epsilon([one.with_steps(10)], delta=1e-6)
    ten_copies = epsilon([one] * 10, delta=1e-6)
    curve = sum(one.rdp(SKELLAM_ORDERS) for _ in range(10))
    # Assert
    assert ten_steps == pytest.approx(ten_copies, rel=1e-12)
    assert ten_steps == pytest.approx(rdp_to_epsilon(SKELLAM_ORDERS, curve, delta=1e-6))
    assert epsilon([one], delta=1e-6) < ten_steps < 10 * epsilon([one], delta=1e-6)
    assert epsilon([], delta=1e-6) == 0.0


def test_a_fine_scale_costs_what_the_gaussian_of_the_same_noise_multiplier_costs() -> None:
    # Prepare: d = 100k, z = 1 over 50 honest survivors, a scale that fits 100 devices in 18 bits
    ddp = DistributedDp.largest_scale(
        l2_clip=1.0, noise_multiplier=1.0, bits=18, min_survivors=50, cohort_size=100, d=100_000
    )
    # Execute
    sk = ddp.epsilon(100_000, fills=50, delta=1e-5)
    orders = np.asarray(SKELLAM_ORDERS, dtype=np.float64)
    gauss_curve = opacus_rdp.compute_rdp(q=1.0, noise_multiplier=1.0, steps=50, orders=orders)
    gauss = rdp_to_epsilon(orders, gauss_curve, delta=1e-5)
    # Assert: Skellam is the costlier (rounding raises the sensitivity, discreteness adds a
    # term), by 0.05% here (measured): at this scale the discreteness is negligible
    assert gauss < sk <= 1.005 * gauss
    d1, d2 = ddp.sensitivities(100_000)
    assert d2 > ddp.l2_clip * ddp.scale and d1 == pytest.approx(
        d2 * math.sqrt(padded_length(100_000))
    )


def test_invalid_steps_are_refused() -> None:
    with pytest.raises(ValueError):
        SkellamStep(l1_sensitivity=1.0, l2_sensitivity=2.0, variance=1.0)  # l1 < l2
    with pytest.raises(ValueError):
        SkellamStep(l1_sensitivity=1.0, l2_sensitivity=1.0, variance=0.0)
    with pytest.raises(ValueError):
        SkellamStep(l1_sensitivity=1.0, l2_sensitivity=1.0, variance=1.0, steps=0)
    with pytest.raises(ValueError):
        skellam_rdp(1.0, l1_sensitivity=1, l2_sensitivity=1, variance=1)
