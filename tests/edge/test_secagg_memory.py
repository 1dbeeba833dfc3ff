"""Masking memory on the device: within the wearable's budget, flat in the cohort size.

Peak bytes from tracemalloc (numpy reports its buffers to it) around the one
call that masks: deterministic for fixed shapes, so a test can assert it; how
long masking takes is a benchmark's business (bench/), not a test's.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from fedward.coordinator.study_spec import build_planner
from fedward.protocol.messages import DeviceClass
from fedward.simulation.profiles import DEFAULT_PROFILES
from fedward.simulation.scenario import PRESETS, StrategyRun
from fedward.tinytrain.models import build_model, param_shapes
from tests.edge.secagg_helpers import make_fill


def wearable_subset() -> tuple[dict[str, tuple[int, ...]], tuple[str, ...], int]:
    spec = PRESETS["full"].study_spec(StrategyRun.FTTE)
    budget = DEFAULT_PROFILES[DeviceClass.WEARABLE].memory_bytes
    subset = build_planner(spec).largest_fitting(budget)
    shapes = param_shapes(build_model(spec.model_settings(), seed=0))
    return shapes, tuple(subset.names), budget


def masking_peak(tmp_path, *, n: int, bits: int = 32) -> tuple[int, int]:
    """(peak bytes of one device's mask call, update length) in a cohort of ``n``."""
    shapes, subset, _ = wearable_subset()
    fill = make_fill(
        tmp_path, n=n, threshold=n // 2 + 2, shapes=shapes, subset=subset, modulus_bits=bits
    )
    for p in fill.members.values():
        fill.server.receive_advertisement(p.advertise())
    roster = fill.server.close_advertisements()
    for p in fill.members.values():
        fill.server.receive_share_bundle(p.on_roster(roster))
    deliveries = fill.server.close_shares()
    device = fill.cohort[0]
    member = fill.members[device]
    assert member.on_delivery(deliveries[device]) is None
    rng = np.random.default_rng(0)  # test data only
    delta = {name: rng.normal(0, 0.01, shapes[name]).astype(np.float32) for name in subset}
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        masked = member.mask(delta, energy=1e-4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert masked is not None
    return peak - before, fill.server.session.vector_length


@pytest.mark.slow
@pytest.mark.parametrize("bits", [32, 24])  # 24: the least b holding 30 devices' sum
def test_masking_the_wearables_update_stays_within_its_budget_whatever_the_cohort(
    tmp_path, bits: int
) -> None:
    # Prepare / Execute: the wearable's subset (the planner's), cohorts of 10 and 30
    _, _, budget = wearable_subset()
    peak10, d = masking_peak(tmp_path / "n10", n=10, bits=bits)
    peak30, _ = masking_peak(tmp_path / "n30", n=30, bits=bits)
    # Assert: masking leaves at least half the wearable's budget for the model it holds
    # (measured 306 / 302 KiB of 640 KiB with 2,048-word chunks; 627 / 623 KiB with
    # 8,192), and flat in n: 20 more peers add far less than one 4-byte stream of the
    # whole update each (20 * 4 d)
    assert peak10 <= budget // 2 and peak30 <= budget // 2
    assert peak30 - peak10 < 4 * d
