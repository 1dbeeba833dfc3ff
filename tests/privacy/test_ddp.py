"""Distributed DP inside SecAgg: clip, rotate, round, Skellam shares; exact integers, no numpy RNG."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedward.privacy.secagg import (
    ClientInput,
    ConfigError,
    DropPoint,
    OverflowRisk,
    SecAggConfig,
    SecAggSession,
    digest_index_set,
    run_local_round,
)
from fedward.privacy.secagg import ddp as ddp_module
from fedward.privacy.secagg.ddp import (
    MAX_OVERFLOW_PROBABILITY,
    DistributedDp,
    noise_uniforms,
    padded_length,
    poisson,
    prepare,
    recover,
    rotate,
    unrotate,
)


def det_random(seed: bytes) -> Callable[[int], bytes]:
    """Deterministic bytes for reproducible tests (never for real noise)."""
    counter = itertools.count()
    return lambda n: hashlib.shake_256(seed + next(counter).to_bytes(8, "big")).digest(n)


SEED = bytes(range(32))  # the public session seed (a session id)


def a_ddp(**kw: object) -> DistributedDp:
    base: dict[str, object] = {
        "l2_clip": 1.0,
        "noise_multiplier": 1.0,
        "bits": 20,
        "scale": 2.0**12,
        "min_survivors": 3,
    }
    return DistributedDp(**{**base, **kw})  # type: ignore[arg-type]


def sylvester(n: int) -> np.ndarray:
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


# -- rotation ------------------------------------------------------------------------------


def test_padded_length_is_the_next_power_of_two() -> None:
    assert [padded_length(d) for d in (1, 2, 3, 4, 5, 1000, 1024, 1025)] == [
        1,
        2,
        4,
        4,
        8,
        1024,
        1024,
        2048,
    ]
    with pytest.raises(ConfigError):
        padded_length(0)


def test_rotation_is_the_orthonormal_randomized_hadamard_and_inverts() -> None:
    # Prepare
    x = np.arange(1.0, 7.0)  # d = 6, padded to 8
    # Execute
    y = rotate(x, session_seed=SEED)
    back = unrotate(y, session_seed=SEED, d=6)
    # Assert: y = H D x / sqrt(8) with D = diag(+-1) (recovered from y itself), norm kept
    signs = sylvester(8) @ y / math.sqrt(8) / np.concatenate([x, [0.0, 0.0]])[:8].clip(1e-300)
    assert np.allclose(np.abs(signs[:6]), 1.0)
    assert np.isclose(np.linalg.norm(y), np.linalg.norm(x))
    assert np.allclose(back, x, atol=1e-12)
    # another session seed gives another rotation
    assert not np.allclose(rotate(x, session_seed=b"other-seed"), y)


# -- prepare / recover ---------------------------------------------------------------------


def test_prepared_values_are_exact_multiples_of_one_over_scale_within_the_bound() -> None:
    # Prepare
    ddp = a_ddp()
    x = np.linspace(-3.0, 3.0, 1000)  # norm far above the clip
    # Execute
    y = prepare(x, ddp=ddp, session_seed=SEED, random_bytes=det_random(b"p"))
    # Assert
    assert y.shape == (1024,)
    integers = y * ddp.scale
    assert np.array_equal(integers, np.rint(integers))
    assert float(np.max(np.abs(y))) <= ddp.coordinate_bound


def test_prepare_clips_to_l2_and_recover_undoes_rotation_and_scale() -> None:
    # Prepare: almost no noise, so what comes back is the clipped vector up to rounding
    ddp = a_ddp(noise_multiplier=1e-6, scale=2.0**20, min_survivors=1)
    rng = np.random.default_rng(1)  # test data only
    x = rng.normal(size=300)
    # Execute
    y = prepare(x, ddp=ddp, session_seed=SEED, random_bytes=det_random(b"c"))
    back = recover(y, ddp=ddp, session_seed=SEED, d=300)
    # Assert: the clipped direction, within the rounding (<= 1/scale per rotated coordinate)
    clipped = x * (ddp.l2_clip / np.linalg.norm(x))
    assert np.linalg.norm(back - clipped) <= math.sqrt(padded_length(300)) / ddp.scale


def ddp_config(ddp: DistributedDp, *, packed: bool, **kw: int) -> SecAggConfig:
    """The SecAgg config of a DDP fill: in Z_{2^ddp.bits} (packed) or in 32-bit words."""
    if packed:
        return SecAggConfig(**{**ddp.secagg_config_fields(), **kw})  # type: ignore[arg-type]
    return SecAggConfig(scale=ddp.scale, clip=ddp.coordinate_bound, **kw)  # type: ignore[arg-type]


def secagg_round(
    ddp: DistributedDp, updates: dict[str, np.ndarray], *, drop: str | None, packed: bool = True
) -> tuple[np.ndarray, int]:
    """Every device prepares its update, SecAgg sums them, the server recovers the sum."""
    d = len(next(iter(updates.values())))
    big_d = padded_length(d)
    config = ddp_config(ddp, packed=packed, threshold=4, max_colluders=1)
    session = SecAggSession(
        session_id=SEED,
        round_index=1,
        cohort=tuple(updates),
        vector_length=big_d,
        index_set_digest=digest_index_set(range(d), model_size=d),
    )
    ddp.check_secagg(config, session=session, d=d)
    inputs = {
        dev: ClientInput(
            update=prepare(
                u, ddp=ddp, session_seed=session.session_id, random_bytes=det_random(dev.encode())
            ),
            weight=1.0,
            counts=(1,),
        )
        for dev, u in updates.items()
    }
    drops = {drop: DropPoint.BEFORE_INPUT} if drop else {}
    out = run_local_round(
        config=config, session=session, inputs=inputs, drops=drops, random_bytes=det_random(b"s")
    )
    summed = recover(out.result.weighted_sum, ddp=ddp, session_seed=SEED, d=d)
    return summed, len(out.result.survivors)


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("drop", [None, "d3"])
def test_round_trip_gives_the_clipped_mean_within_rounding_and_noise(
    drop: str | None, packed: bool
) -> None:
    # Prepare: 5 devices (t = 4, one colluder allowed, so min_survivors = 3 honest)
    ddp = a_ddp()
    d = 1024  # = padded length: Parseval makes the error's mean square a sum of i.i.d. terms
    rng = np.random.default_rng(7)  # test data only
    updates = {f"d{i}": rng.normal(0.0, 0.1, d) * (1 + i) for i in range(5)}

    # Execute
    summed, survivors = secagg_round(ddp, updates, drop=drop, packed=packed)

    # Assert: error = (noise + rounding) rotated back; its per-coordinate variance is
    # survivors * local_variance / scale^2 plus at most survivors / (4 scale^2) of rounding
    kept = [u for dev, u in updates.items() if dev != drop]
    clipped = sum(u * min(1.0, ddp.l2_clip / np.linalg.norm(u)) for u in kept)
    error = summed - clipped
    noise_var = survivors * ddp.local_variance / ddp.scale**2
    rounding_var = survivors / 4.0 / ddp.scale**2
    band = 5.0 * math.sqrt(2.0 / d)
    mean_square = float(np.mean(error**2))
    assert noise_var * (1 - band) <= mean_square <= (noise_var + rounding_var) * (1 + band)
    assert abs(float(np.mean(error))) <= 5.0 * math.sqrt((noise_var + rounding_var) / d)
    assert survivors == (5 if drop is None else 4)
    # the mean the server merges: sum / survivors, close to the clipped mean
    mean_error = np.abs(summed / survivors - clipped / survivors)
    assert float(np.max(mean_error)) <= 6.0 * math.sqrt(noise_var + rounding_var) / survivors


def test_the_noise_of_min_survivors_devices_has_the_calibrated_variance() -> None:
    # Prepare: zero updates, so each prepared vector is its Skellam share exactly
    ddp = a_ddp(noise_multiplier=0.8, scale=2.0**10, min_survivors=4)
    d = 1 << 14
    zero = np.zeros(d)

    # Execute
    shares = [
        prepare(zero, ddp=ddp, session_seed=SEED, random_bytes=det_random(bytes([i]))) * ddp.scale
        for i in range(ddp.min_survivors)
    ]
    total = np.sum(shares, axis=0)

    # Assert: integers; variance of the sum = (z * clip * scale)^2 within 5 sigma of its
    # estimator (Skellam's excess kurtosis 1/mu is negligible here); mean 0
    assert np.array_equal(total, np.rint(total))
    target = ddp.central_variance
    assert math.isclose(target, (0.8 * 1.0 * 2.0**10) ** 2)
    empirical = float(np.var(total))
    assert abs(empirical / target - 1.0) <= 5.0 * math.sqrt(2.0 / d)
    assert abs(float(np.mean(total))) <= 5.0 * math.sqrt(target / d)
    # the shares are independent across devices: different keys, no common noise
    assert abs(float(np.corrcoef(shares[0], shares[1])[0, 1])) <= 5.0 / math.sqrt(d)


# -- the Poisson sampler -------------------------------------------------------------------


def chi_square_critical(df: int, z: float = 4.75) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (z = 4.75: p = 1e-6)."""
    return df * (1.0 - 2.0 / (9.0 * df) + z * math.sqrt(2.0 / (9.0 * df))) ** 3


def poisson_pmf(lam: float, k: np.ndarray) -> np.ndarray:
    return np.exp(k * math.log(lam) - lam - np.array([math.lgamma(v + 1.0) for v in k]))


@pytest.mark.parametrize("lam", [0.3, 4.0, 9.99, 10.0, 37.5, 2500.0, 1.0e6])
def test_poisson_sampler_matches_mean_variance_and_pmf(lam: float) -> None:
    # Prepare
    n = 200_000
    uniforms = noise_uniforms(det_random(f"poisson-{lam}".encode()))

    # Execute
    draws = poisson(lam, n, uniforms=uniforms)

    # Assert: moments within 5 standard errors
    assert draws.dtype == np.int64 and int(draws.min()) >= 0
    assert abs(float(draws.mean()) - lam) <= 5.0 * math.sqrt(lam / n)
    var_se = math.sqrt((2.0 * lam * lam + lam) / n)
    assert abs(float(draws.var()) - lam) <= 5.0 * var_se
    # chi-square against the exact pmf, adjacent values merged until each bin expects >= 5
    lo, hi = int(draws.min()), int(draws.max())
    ks = np.arange(max(0, int(lam - 12 * math.sqrt(lam)) - 12), int(lam + 12 * math.sqrt(lam)) + 40)
    assert ks[0] <= lo and hi <= ks[-1]
    expected = poisson_pmf(lam, ks.astype(np.float64)) * n
    observed = np.bincount(draws - ks[0], minlength=len(ks)).astype(np.float64)
    bins_e, bins_o, acc_e, acc_o = [], [], 0.0, 0.0
    for e, o in zip(expected, observed, strict=True):
        acc_e, acc_o = acc_e + e, acc_o + o
        if acc_e >= 5.0:
            bins_e.append(acc_e)
            bins_o.append(acc_o)
            acc_e, acc_o = 0.0, 0.0
    bins_e[-1] += acc_e
    bins_o[-1] += acc_o
    e_arr, o_arr = np.array(bins_e), np.array(bins_o)
    statistic = float(np.sum((o_arr - e_arr) ** 2 / e_arr))
    assert statistic <= chi_square_critical(len(e_arr) - 1)


def test_skellam_shares_are_symmetric_integers() -> None:
    uniforms = noise_uniforms(det_random(b"sk"))
    draws = ddp_module.skellam(50.0, 40_000, uniforms=uniforms)
    assert draws.dtype == np.int64
    assert abs(float(draws.mean())) <= 5.0 * math.sqrt(50.0 / 40_000)
    assert abs(float(draws.var()) - 50.0) <= 5.0 * math.sqrt((2.0 * 50.0**2 + 50.0) / 40_000)


# -- configuration ---------------------------------------------------------------------------


def test_a_config_whose_bits_cannot_hold_the_sum_is_refused() -> None:
    # Prepare: 16 bits, a fine scale, 100 devices: the clipped signal alone can reach
    # 100 * 1.0 * 2^16 per coordinate
    ddp = a_ddp(bits=16, scale=2.0**16, min_survivors=50)
    # Execute / Assert
    assert ddp.overflow_probability(cohort_size=100, d=100_000) > MAX_OVERFLOW_PROBABILITY
    with pytest.raises(OverflowRisk, match="16-bit range"):
        ddp.check_cohort(cohort_size=100, d=100_000)
    with pytest.raises(ConfigError, match="min_survivors"):
        ddp.check_cohort(cohort_size=10, d=100_000)


def test_largest_scale_fits_and_the_next_does_not() -> None:
    # Execute
    ddp = DistributedDp.largest_scale(
        l2_clip=1.0, noise_multiplier=1.0, bits=18, min_survivors=50, cohort_size=100, d=100_000
    )
    # Assert
    ddp.check_cohort(cohort_size=100, d=100_000)
    finer = a_ddp(bits=18, scale=ddp.scale * 2, min_survivors=50)
    with pytest.raises(OverflowRisk):
        finer.check_cohort(cohort_size=100, d=100_000)
    # the SecAgg config it implies fits a 32-bit modulus for the cohort
    SecAggConfig(
        threshold=51, scale=ddp.scale, clip=ddp.coordinate_bound, max_colluders=1
    ).check_cohort(100)


@pytest.mark.parametrize(
    "edit",
    [
        {"scale": 3000.0},  # not a power of two
        {"scale": 0.0},
        {"bits": 4},
        {"bits": 16.0},
        {"l2_clip": -1.0},
        {"noise_multiplier": 0.0},
        {"min_survivors": 0},
        {"rounding_beta": 1.0},
    ],
)
def test_invalid_configs_are_refused(edit: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        a_ddp(**edit)


def test_plain_form_round_trips_and_is_strict() -> None:
    ddp = a_ddp()
    assert DistributedDp.from_plain(ddp.to_plain()) == ddp
    with pytest.raises(ConfigError):
        DistributedDp.from_plain({**ddp.to_plain(), "extra": 1})
    with pytest.raises(ConfigError):
        DistributedDp.from_plain({**ddp.to_plain(), "bits": "20"})


# -- no numpy RNG ------------------------------------------------------------------------------


def test_no_numpy_or_stdlib_rng_in_secagg_or_skellam_sources() -> None:
    # Prepare: the privacy package sources that draw masks, keys or noise
    root = Path(ddp_module.__file__).resolve().parent
    sources = sorted(root.glob("*.py")) + sorted(root.parent.glob("skellam.py"))
    pattern = re.compile(r"np\.random|numpy\.random|default_rng|^\s*(import|from)\s+random\b", re.M)
    # Execute
    offenders = [p.name for p in sources if pattern.search(p.read_text())]
    # Assert
    assert len(sources) > 10 and offenders == []


@pytest.mark.parametrize("packed", [True, False])
def test_secagg_sums_prepared_vectors_exactly(packed: bool) -> None:
    # Prepare: three devices' prepared vectors and the SecAgg config the ddp implies
    ddp = a_ddp(min_survivors=2)
    rng = np.random.default_rng(3)  # test data only
    prepared = {
        f"d{i}": prepare(
            rng.normal(size=100), ddp=ddp, session_seed=SEED, random_bytes=det_random(bytes([i]))
        )
        for i in range(3)
    }
    config = ddp_config(ddp, packed=packed, threshold=3, max_colluders=0)
    session = SecAggSession(
        session_id=SEED,
        round_index=0,
        cohort=tuple(prepared),
        vector_length=padded_length(100),
        index_set_digest=digest_index_set(range(100), model_size=100),
    )
    inputs = {d: ClientInput(update=v, weight=1.0, counts=(1,)) for d, v in prepared.items()}
    # Execute
    out = run_local_round(config=config, session=session, inputs=inputs)
    # Assert: SecAgg's stochastic rounding has nothing to round: the sum is exact, in
    # 20-bit words as in 32-bit ones (the DDP's sum fits its bits)
    exact = np.sum([v * ddp.scale for v in prepared.values()], axis=0)
    assert np.array_equal(out.result.weighted_sum * ddp.scale, exact)
    assert out.result.weight_sum == 3.0
    assert config.modulus_bits == (ddp.bits if packed else 32)


def test_for_fill_counts_honest_survivors_only() -> None:
    # Execute: t = 7 of 12 with one colluder
    ddp = DistributedDp.for_fill(
        l2_clip=0.5,
        noise_multiplier=1.1,
        bits=17,
        threshold=7,
        max_colluders=1,
        cohort_size=12,
        d=5000,
    )
    # Assert: the noise of 6 honest devices carries the whole target variance
    assert ddp.min_survivors == 6
    assert ddp.local_variance * 6 == pytest.approx((1.1 * 0.5 * ddp.scale) ** 2)
    ddp.check_cohort(cohort_size=12, d=5000)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"scale": 2.0**11}, "scale"),
        ({"clip": 1.0}, "clip"),
        ({"threshold": 3}, "honest"),
        ({"max_weight": 0.5}, "max_weight"),
    ],
)
def test_a_secagg_config_that_breaks_the_ddp_is_refused(
    edit: dict[str, object], match: str
) -> None:
    # Prepare: 5 devices, t = 4, c = 1: at most 3 honest shares are guaranteed
    ddp = a_ddp(min_survivors=3)
    base: dict[str, object] = {
        "threshold": 4,
        "scale": ddp.scale,
        "clip": ddp.coordinate_bound,
        "max_colluders": 1,
    }
    session = SecAggSession(
        session_id=SEED,
        round_index=0,
        cohort=tuple(f"d{i}" for i in range(5)),
        vector_length=padded_length(100),
        index_set_digest=digest_index_set(range(100), model_size=100),
    )
    good = SecAggConfig(**base)  # type: ignore[arg-type]
    ddp.check_secagg(good, session=session, d=100)
    if "threshold" in edit:
        edit = {**edit, "max_colluders": 1, "min_cohort": 3}
    bad = SecAggConfig(**{**base, **edit})  # type: ignore[arg-type]
    # Execute / Assert
    with pytest.raises(ConfigError, match=match):
        ddp.check_secagg(bad, session=session, d=100)
    with pytest.raises(ConfigError, match="padded_length"):
        ddp.check_secagg(good, session=session, d=1000)


def test_a_ddp_fill_runs_in_its_bits_and_its_sum_bound_is_the_ddps() -> None:
    # Prepare: the fields a DDP fill's SecAgg config takes from the DDP
    ddp = a_ddp(min_survivors=3)
    session = SecAggSession(
        session_id=SEED,
        round_index=0,
        cohort=tuple(f"d{i}" for i in range(5)),
        vector_length=padded_length(100),
        index_set_digest=digest_index_set(range(100), model_size=100),
    )
    config = ddp_config(ddp, packed=True, threshold=4, max_colluders=1)
    # Execute / Assert: Z_{2^20}, held by the DDP's own overflow bound (n * clip * scale
    # would need 23 bits), and the sum bound is the DDP's value_bound, never a tighter one
    assert (config.modulus_bits, config.sum_bound) == (20, (1 << 19) - 1)
    config.check_cohort(5)
    ddp.check_secagg(config, session=session, d=100)
    with pytest.raises(OverflowRisk):
        dataclasses.replace(config, sum_bound=None).check_cohort(5)
    other = dataclasses.replace(config, sum_bound=config.value_bound + 1, modulus_bits=21)
    with pytest.raises(ConfigError, match="sum_bound"):
        ddp.check_secagg(other, session=session, d=100)
