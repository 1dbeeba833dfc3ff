"""The buffer's weighted mean sums in float64: large finite float32 updates cannot make it inf."""

from __future__ import annotations

import numpy as np

from fedward.coordinator.strategies.base import ClientUpdate, weighted_mean


def _update(i: int, value: float) -> ClientUpdate:
    return ClientUpdate(
        device_id=f"d{i}",
        task_id=f"t{i}",
        base_version=0,
        subset_id="s",
        delta={"w": np.full(3, value, np.float32)},
        num_samples=16,
        update_energy=None,
    )


def test_a_weighted_sum_beyond_float32_still_gives_the_finite_mean():
    # Prepare: 16 x 3e38 overflows float32, not float64
    updates = [_update(i, 3e38) for i in range(2)]
    # Execute
    means, coverage = weighted_mean(updates, [16.0, 16.0])
    # Assert
    assert np.all(np.isfinite(means["w"]))
    np.testing.assert_allclose(means["w"], 3e38, rtol=1e-6)
    assert coverage == {"w": 2}
