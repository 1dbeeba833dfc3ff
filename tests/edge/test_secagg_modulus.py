"""The device in a fill over Z_{2^b}: it masks b bits per word and checks b itself."""

from __future__ import annotations

import numpy as np
import pytest

from fedward.edge.secagg import SecAggFloors, SecAggParticipant, SecAggRefused
from fedward.edge.secagg_store import SecAggStore
from fedward.privacy.secagg import ConfigError, SecAggConfig, smallest_modulus_bits
from fedward.privacy.secagg.layout import VectorLayout
from tests.edge.secagg_helpers import SHAPES, SUBSET, deltas, make_fill, make_params

COHORT5 = tuple(f"dev-{i}" for i in range(5))


def smallest_bits() -> int:
    """The least b for the helper's encoding (scale 2^16, clip 4) in a cohort of 5: 22."""
    config = SecAggConfig.from_plain(make_params(COHORT5, threshold=4).config)
    return smallest_modulus_bits(config, cohort_size=5)


def participant(tmp_path, params, *, floors=None) -> SecAggParticipant:
    return SecAggParticipant(
        params=params,
        task_id="task-1",
        device_id="dev-0",
        subset_names=SUBSET,
        model_shapes=SHAPES,
        store=SecAggStore(tmp_path / "dev-0", device_id="dev-0"),
        floors=floors,
    )


def test_a_fill_in_the_smallest_ring_sums_as_one_in_32_bit_words(tmp_path) -> None:
    # Prepare: the same updates in a fill at 32 bits and one at the least b that fits
    bits = smallest_bits()
    updates = deltas(11, COHORT5)
    results, sizes = {}, {}
    for width in (32, bits):
        fill = make_fill(tmp_path / str(width), modulus_bits=width)
        for p in fill.members.values():
            fill.server.receive_advertisement(p.advertise())
        roster = fill.server.close_advertisements()
        for p in fill.members.values():
            fill.server.receive_share_bundle(p.on_roster(roster))
        deliveries = fill.server.close_shares()
        # Execute: every device masks; dev-4 drops after sharing its keys
        for dev, p in fill.members.items():
            assert p.on_delivery(deliveries[dev]) is None
            masked = p.mask(updates[dev], energy=0.1)
            sizes[width] = len(masked.data)
            if dev != "dev-4":
                fill.server.receive_masked_input(masked)
        request = fill.server.close_masked_inputs()
        for dev, p in fill.members.items():
            if dev != "dev-4":
                fill.server.receive_unmask_response(p.on_unmask(request))
        results[width] = fill.server.finalize()
    # Assert: 22 bits per word on the wire, and the survivors' sum within rounding of
    # their clipped updates (each device rounds stochastically: one step per device)
    layout = VectorLayout.for_subset(SHAPES, SUBSET)
    words = layout.vector_length + 2
    assert bits == 22
    assert (sizes[32], sizes[bits]) == (4 * words, -(-words * bits // 8))
    expected = sum(layout.flatten(updates[d]) for d in COHORT5[:4])
    for result in results.values():
        assert result.survivors == COHORT5[:4]
        assert np.max(np.abs(result.weighted_sum - expected)) <= 4 / 2.0**16
        assert result.weight_sum == 4.0 and result.count_sums == (4,)


def test_a_ring_below_the_devices_floor_is_refused(tmp_path) -> None:
    # Prepare
    params = make_params(COHORT5, threshold=4, modulus_bits=smallest_bits())
    # Execute / Assert
    with pytest.raises(SecAggRefused, match="floor 24"):
        participant(tmp_path / "a", params, floors=SecAggFloors(min_modulus_bits=24))
    assert participant(tmp_path / "b", params, floors=SecAggFloors(min_modulus_bits=22))


def test_a_ring_that_cannot_hold_the_cohorts_sum_is_refused(tmp_path) -> None:
    # Prepare: one input fits 21 bits (2^18), five of them do not
    params = make_params(COHORT5, threshold=4, modulus_bits=smallest_bits() - 1)
    # Execute / Assert
    with pytest.raises(SecAggRefused, match="cannot hold its cohort's sum"):
        participant(tmp_path, params)


def test_a_sum_bound_outside_distributed_dp_is_refused(tmp_path) -> None:
    # Prepare: a coordinator claiming the sum stays within one input's bound
    params = make_params(COHORT5, threshold=4, modulus_bits=20, sum_bound=1 << 18)
    # Execute / Assert
    with pytest.raises(SecAggRefused, match="distributed DP"):
        participant(tmp_path, params)


@pytest.mark.parametrize("bits", [7, 65, True, 22.0])
def test_a_floor_outside_8_to_64_bits_is_refused(bits: object) -> None:
    with pytest.raises(ConfigError, match="min_modulus_bits"):
        SecAggFloors(min_modulus_bits=bits)  # type: ignore[arg-type]
