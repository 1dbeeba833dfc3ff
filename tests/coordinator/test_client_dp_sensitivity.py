"""Issue 9 item 5: the client-level DP merge is calibrated to 2C/K, measured on buffers.

Neighbouring buffers: the buffer is always refilled to K, so when one device
is absent (or its data differ) its slot holds another update. The test builds
such pairs, computes ``||mean(D) - mean(D')||`` over all tensors with the
strategy's own (noiseless) merge, and checks the bound the noise is scaled to.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedward.coordinator.errors import RejectReason, UpdateRejected
from fedward.coordinator.strategies import ClientLevelDP, ClientUpdate
from fedward.privacy.central import seeded_normal

SHAPES = {"w": (6,), "b": (2,)}
CLIP, K = 1.0, 10


def _strategy() -> ClientLevelDP:
    return ClientLevelDP(
        shapes=SHAPES,
        buffer_size=K,
        clip_norm=CLIP,
        noise_multiplier=1.0,
        random_normal=seeded_normal(0),
    )


def _update(device: str, delta: dict[str, np.ndarray]) -> ClientUpdate:
    return ClientUpdate(
        device_id=device,
        task_id=f"task-{device}",
        base_version=0,
        subset_id="s",
        delta={n: v.astype(np.float32) for n, v in delta.items()},
        num_samples=1,
    )


def _mean(updates: list[ClientUpdate]) -> dict[str, np.ndarray]:
    strategy = _strategy()
    for update in updates:
        strategy.accept(update, server_version=0)
    mean, _ = strategy.clipped_mean(list(strategy._buffer))
    return mean


def _distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    names = set(a) | set(b)
    return float(
        np.sqrt(
            sum(
                np.sum((a.get(n, np.zeros(SHAPES[n])) - b.get(n, np.zeros(SHAPES[n]))) ** 2)
                for n in names
            )
        )
    )


def _random_delta(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {n: rng.normal(scale=5.0, size=shape) for n, shape in SHAPES.items()}


def test_a_refilled_slot_moves_the_mean_by_up_to_2c_over_k():
    # Prepare: K-1 shared updates; device i's update, or (i absent) device j's in its slot,
    # both at the clip bound and opposite: the worst case
    rng = np.random.default_rng(0)
    shared = [_update(f"d{n}", _random_delta(rng)) for n in range(K - 1)]
    direction = _random_delta(rng)
    present = _update("di", direction)
    refill = _update("dj", {n: -v for n, v in direction.items()})

    # Execute
    distance = _distance(_mean([*shared, present]), _mean([*shared, refill]))

    # Assert: 2C/K (0.200 here), twice the C/K (0.100) the merge used to be noised for
    assert distance == pytest.approx(2 * CLIP / K, rel=1e-5)
    assert distance > 1.9 * CLIP / K
    assert _strategy().sensitivity(K) == pytest.approx(distance, rel=1e-5)


def test_no_neighbouring_pair_exceeds_the_bound_even_with_partial_subsets():
    # Prepare: random neighbouring pairs, some updates training only part of the model
    rng = np.random.default_rng(1)
    worst = 0.0
    for _ in range(300):
        updates = []
        for n in range(K + 1):
            delta = _random_delta(rng)
            if rng.random() < 0.3:
                delta.pop("b")
            updates.append(_update(f"d{n}", delta))
        d, d_prime = updates[:K], updates[: K - 1] + updates[K:]

        # Execute
        worst = max(worst, _distance(_mean(d), _mean(d_prime)))

    # Assert
    assert worst <= 2 * CLIP / K * (1 + 1e-6)


def test_the_noise_is_z_times_the_measured_sensitivity():
    # Prepare: K zero updates so the merge is pure noise; many coordinates
    shapes = {"w": (40_000,)}
    strategy = ClientLevelDP(
        shapes=shapes,
        buffer_size=K,
        clip_norm=CLIP,
        noise_multiplier=1.3,
        random_normal=seeded_normal(2),
    )
    for n in range(K):
        strategy.accept(_update(f"d{n}", {"w": np.zeros(40_000)}), server_version=0)

    # Execute
    merged = strategy.aggregate({"w": np.zeros(40_000, dtype=np.float32)}, server_version=0)

    # Assert
    assert np.std(merged.params["w"]) == pytest.approx(1.3 * 2 * CLIP / K, rel=0.02)


def test_a_second_update_of_the_same_device_in_one_merge_is_refused():
    # Prepare
    strategy = _strategy()
    strategy.accept(_update("d0", _random_delta(np.random.default_rng(3))), server_version=0)
    again = ClientUpdate(
        device_id="d0",
        task_id="task-d0-second",
        base_version=0,
        subset_id="s",
        delta={n: np.zeros(s, np.float32) for n, s in SHAPES.items()},
        num_samples=1,
    )

    # Execute / Assert: with two slots its share of the mean would be 4C/K
    with pytest.raises(UpdateRejected) as refused:
        strategy.accept(again, server_version=0)
    assert refused.value.reason is RejectReason.DUPLICATE


def test_the_accounted_epsilon_is_that_of_the_calibrated_noise():
    # Prepare: the figures, z = 1, 300 merges at q = 0.02, delta 1e-5
    from fedward.privacy.accounting import Accountant, epsilon_for
    from fedward.privacy.central import client_level_step, patient_level_step

    def eps(step):
        return epsilon_for([step], delta=1e-5, accountant=Accountant.RDP)

    step = client_level_step(noise_multiplier=1.0, cohort_size=2, population=100, merges=300)
    # the old C/K noise against a 2C/K sensitivity was multiplier z / 2
    halved = client_level_step(noise_multiplier=0.5, cohort_size=2, population=100, merges=300)

    # Execute / Assert: what the merge now delivers, and what it delivered before
    assert eps(step) == pytest.approx(2.6, abs=0.1)
    assert eps(halved) == pytest.approx(16.5, abs=0.2)
    # per patient, without amplification: six merges holding its update
    assert eps(patient_level_step(noise_multiplier=1.0, participations=6)) > eps(step)
