"""Client-level DP helpers: clipping, central noise, distributed noise shares."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedward.privacy.accounting import MechanismStep
from fedward.privacy.central import (
    add_central_noise,
    client_level_step,
    clip_update,
    distributed_noise_share,
    seeded_normal,
    update_norm,
)


def ones(shape: tuple[int, ...]) -> np.ndarray:
    return np.ones(shape)


def test_clip_scales_large_update_to_max_norm():
    # Prepare
    delta = {"a": np.full((3, 4), 2.0, dtype=np.float32), "b": np.full(5, -1.0, dtype=np.float32)}
    original = math.sqrt(12 * 4 + 5)

    # Execute
    clipped, norm = clip_update(delta, max_norm=1.5)

    # Assert
    assert norm == pytest.approx(original)
    assert update_norm(clipped) == pytest.approx(1.5, rel=1e-6)
    assert clipped["a"].dtype == np.float32
    np.testing.assert_allclose(clipped["a"] / delta["a"], 1.5 / original, rtol=1e-6)
    assert delta["a"][0, 0] == 2.0  # input untouched


def test_clip_leaves_small_and_zero_updates_unchanged():
    # Prepare
    small = {"a": np.array([0.3, 0.4])}
    zero = {"a": np.zeros(3)}

    # Execute
    clipped_small, norm_small = clip_update(small, max_norm=1.0)
    clipped_zero, norm_zero = clip_update(zero, max_norm=1.0)

    # Assert
    np.testing.assert_array_equal(clipped_small["a"], small["a"])
    assert norm_small == pytest.approx(0.5)
    assert norm_zero == 0.0 and not clipped_zero["a"].any()


@pytest.mark.parametrize("max_norm", [0.0, -1.0, math.inf, math.nan])
def test_clip_rejects_bad_max_norm(max_norm):
    with pytest.raises(ValueError):
        clip_update({"a": np.ones(2)}, max_norm=max_norm)


def test_clip_rejects_non_finite_updates():
    with pytest.raises(ValueError, match="non-finite"):
        clip_update({"a": np.array([1.0, np.nan])}, max_norm=1.0)


def test_central_noise_uses_injected_rng_and_scales_by_sigma_c_over_n():
    # Prepare
    aggregate = {"w": np.zeros((2, 3), dtype=np.float32), "b": np.full(2, 1.0, dtype=np.float32)}

    # Execute
    noisy = add_central_noise(
        aggregate, noise_multiplier=2.0, max_norm=0.5, num_clients=4, random_normal=ones
    )

    # Assert: std = 2.0 * 0.5 / 4 = 0.25, and the "noise" was all ones
    np.testing.assert_allclose(noisy["w"], 0.25)
    np.testing.assert_allclose(noisy["b"], 1.25)
    assert noisy["w"].dtype == np.float32


def test_central_noise_has_the_right_spread():
    # Prepare
    aggregate = {"w": np.zeros(200_000)}

    # Execute
    noisy = add_central_noise(
        aggregate,
        noise_multiplier=1.2,
        max_norm=2.0,
        num_clients=10,
        random_normal=seeded_normal(3),
    )

    # Assert
    assert np.std(noisy["w"]) == pytest.approx(1.2 * 2.0 / 10, rel=0.01)


def test_default_rng_is_fresh_entropy_not_the_global_rng():
    # Prepare
    aggregate = {"w": np.zeros(16)}
    np.random.seed(0)
    global_state = np.random.get_state()[1].copy()

    # Execute
    first = add_central_noise(aggregate, noise_multiplier=1.0, max_norm=1.0, num_clients=1)
    second = add_central_noise(aggregate, noise_multiplier=1.0, max_norm=1.0, num_clients=1)

    # Assert
    assert not np.array_equal(first["w"], second["w"])
    np.testing.assert_array_equal(np.random.get_state()[1], global_state)


def test_distributed_shares_sum_to_central_noise_level():
    # Prepare
    cohort, shape = 16, (50_000,)

    # Execute
    total = sum(
        distributed_noise_share(
            shape,
            noise_multiplier=1.5,
            max_norm=1.0,
            cohort_size=cohort,
            random_normal=seeded_normal(100 + i),
        )
        for i in range(cohort)
    )

    # Assert
    assert np.std(total) == pytest.approx(1.5, rel=0.02)


def test_distributed_share_scaling_and_shape_check():
    # Execute
    share = distributed_noise_share(
        (2, 2), noise_multiplier=2.0, max_norm=3.0, cohort_size=9, random_normal=ones
    )

    # Assert: 2 * 3 / sqrt(9) = 2
    np.testing.assert_allclose(share, 2.0)
    with pytest.raises(ValueError, match="shape"):
        distributed_noise_share(
            (2, 2),
            noise_multiplier=1.0,
            max_norm=1.0,
            cohort_size=1,
            random_normal=lambda shape: np.ones(3),
        )
    with pytest.raises(ValueError):
        distributed_noise_share(
            (2,), noise_multiplier=1.0, max_norm=1.0, cohort_size=0, random_normal=ones
        )


def test_client_level_step_uses_cohort_over_population():
    # Execute
    step = client_level_step(noise_multiplier=1.0, cohort_size=50, population=1000, merges=20)

    # Assert
    assert step == MechanismStep(noise_multiplier=1.0, sample_rate=0.05, steps=20)
    with pytest.raises(ValueError):
        client_level_step(noise_multiplier=1.0, cohort_size=20, population=10, merges=1)
