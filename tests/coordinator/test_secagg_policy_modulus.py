"""SecAggPolicy's ring Z_{2^b}: the least b that holds a full cohort's sum, ddp.bits under
distributed DP, or the study's pinned b (Prepare / Execute / Assert)."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from fedward.coordinator.secagg import SecAggPolicy, SecAggPolicyError
from fedward.coordinator.study_spec import SecAggSettings
from fedward.privacy.secagg import OverflowRisk
from fedward.privacy.secagg.ddp import DistributedDp
from fedward.simulation.scenario import PRESETS, Scenario


@pytest.mark.parametrize(
    ("buffer_size", "cohort", "bits"), [(5, 6, 22), (10, 12, 23), (80, 96, 26)]
)
def test_auto_picks_the_least_b_whose_cohort_sum_cannot_wrap(
    buffer_size: int, cohort: int, bits: int
) -> None:
    # Prepare: scale 2^16, clip 4: one coordinate reaches 2^18, a cohort m * 2^18
    policy = SecAggPolicy(buffer_size=buffer_size, expected_dropout=1 / 6, scale=2.0**16, clip=4.0)
    # Execute
    config = policy.config(threshold=policy.threshold)
    # Assert: 2^(b-1) - 1 holds m * 2^18 and 2^(b-2) - 1 does not; one bit less overflows
    assert (policy.cohort_size, config.modulus_bits) == (cohort, bits)
    assert (1 << (bits - 1)) - 1 >= cohort * 2**18 > (1 << (bits - 2)) - 1
    config.check_cohort(cohort)
    with pytest.raises(OverflowRisk):
        dataclasses.replace(config, modulus_bits=bits - 1).check_cohort(cohort)


def test_a_pinned_modulus_is_kept_or_refused_when_the_sum_could_wrap() -> None:
    # Prepare / Execute
    pinned = SecAggPolicy(buffer_size=5, expected_dropout=1 / 6, clip=4.0, modulus_bits=32)
    # Assert
    assert pinned.config(threshold=pinned.threshold).modulus_bits == 32
    with pytest.raises(SecAggPolicyError, match="cannot run"):
        SecAggPolicy(buffer_size=5, expected_dropout=1 / 6, clip=4.0, modulus_bits=21)
    for bad in (7, 65, True, 32.0):
        with pytest.raises(SecAggPolicyError, match="modulus_bits"):
            SecAggPolicy(buffer_size=5, modulus_bits=bad)  # type: ignore[arg-type]


def test_under_distributed_dp_the_ring_is_the_ddps_bits() -> None:
    # Prepare: a DDP whose scale the fill's 20 bits were sized for
    ddp = DistributedDp.for_fill(
        l2_clip=0.5,
        noise_multiplier=3.0,
        bits=20,
        threshold=5,
        max_colluders=1,
        cohort_size=6,
        d=55_060,
    )
    # Execute
    policy = SecAggPolicy(buffer_size=5, expected_dropout=1 / 6, ddp=ddp)
    config = policy.config(threshold=policy.threshold)
    # Assert: Z_{2^20} with the DDP's sum bound, weight 1 as the integer 1
    assert (config.modulus_bits, config.sum_bound) == (20, ddp.value_bound)
    assert (config.scale, config.clip, config.weight_bound) == (ddp.scale, ddp.coordinate_bound, 1)
    policy.check_vector(55_060)


def test_study_and_scenario_settings_take_none_or_8_to_64_bits() -> None:
    # Prepare / Execute: a study's settings (None: auto) and the simulator's scenario
    auto = SecAggSettings(modulus_bits=None, clip=4.0, expected_dropout=1 / 6)
    pinned = SecAggSettings(modulus_bits=23, clip=4.0, expected_dropout=1 / 6)
    policy = auto.policy(buffer_size=5)
    # Assert: auto gives the least b for a cohort of 6 (6 * 2^18 fits 22 bits)
    assert policy.modulus_bits is None
    assert policy.config(threshold=policy.threshold).modulus_bits == 22
    pinned_policy = pinned.policy(buffer_size=5)
    assert pinned_policy.config(threshold=pinned_policy.threshold).modulus_bits == 23
    assert PRESETS["quick"].model_copy(update={"secagg_modulus_bits": None}).secagg_cohort() == 6
    for bad in (7, 65, True):
        with pytest.raises(ValidationError):
            SecAggSettings(modulus_bits=bad)
        with pytest.raises(ValidationError):
            Scenario.model_validate({**PRESETS["quick"].model_dump(), "secagg_modulus_bits": bad})
