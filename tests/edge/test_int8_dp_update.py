"""A DP device's int8 update: rounding is post-processing and opens no side channel.

The header a DP device sends carries no loss, sample count or energy (they are
computed outside the mechanism); int8 encoding adds only the per-tensor scales,
which are functions of the noised delta. The coordinator's ingest accepts the
frame and sees the decoded delta. (This replaces a 21 s simulated DP study with
the same assertion at the unit level: the simulator builds its frames with these
same functions, ``Study._arrive``.)
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from fedward.coordinator.engine.ingest import decode_update
from fedward.edge.local import DPSpend, LocalOutcome
from fedward.edge.updates import encode_update, privacy_report, update_header
from fedward.protocol.messages import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Accountant,
    UpdateEncoding,
    decode_frame,
)
from fedward.protocol.quantised import dequantise_int8


def _dp_outcome(seed: int) -> LocalOutcome:
    rng = np.random.default_rng(seed)  # test data only
    delta = {
        "head.weight": rng.normal(0, 0.02, (4, 24)).astype(np.float32),
        "head.bias": rng.normal(0, 0.02, 4).astype(np.float32),
    }
    return LocalOutcome(
        task_id="t0000007",
        delta=delta,
        num_samples=42,
        steps=8,
        mean_loss=0.731,
        update_energy=float(np.mean(np.concatenate([v.ravel() for v in delta.values()]) ** 2)),
        dp=DPSpend(
            noise_multiplier=1.5,
            sample_rate=0.25,
            steps=8,
            max_grad_norm=1.0,
            accountant_state={},
        ),
    )


@pytest.mark.parametrize("seed", range(3))
def test_a_dp_int8_frame_holds_no_side_statistic_and_is_accepted(seed: int) -> None:
    # Prepare
    outcome = _dp_outcome(seed)
    report = privacy_report(outcome, accountant=Accountant.RDP, epsilon=0.9, delta=1e-5)
    header = update_header(
        outcome, device_id="dev-07", subset_id="s1", base_version=3, privacy=report
    )
    # Execute
    frame = encode_update(
        header,
        outcome,
        max_bytes=DEFAULT_MAX_MESSAGE_BYTES,
        encoding=UpdateEncoding.INT8,
        rounding_key=os.urandom(32),
    )
    sent, words = decode_frame(frame, max_bytes=DEFAULT_MAX_MESSAGE_BYTES)
    incoming = decode_update(
        frame,
        max_bytes=DEFAULT_MAX_MESSAGE_BYTES,
        encoding=UpdateEncoding.INT8,
        max_abs=1e3,
        max_coordinates=sum(v.size for v in outcome.delta.values()),
    )
    # Assert: nothing computed from the data outside the mechanism; only scales added
    assert sent.train_loss is None and sent.num_samples is None and sent.update_energy is None
    assert sent.model_dump(exclude={"scales"}) == header.model_dump(exclude={"scales"})
    assert set(sent.scales or {}) == set(outcome.delta)
    assert all(w.dtype == np.int8 for w in words.values())
    # ... and ingest accepts it, merging the decoded delta within one rounding step
    decoded = dequantise_int8(words, sent.scales)
    for name, value in outcome.delta.items():
        np.testing.assert_array_equal(incoming.update.delta[name], decoded[name])
        assert np.max(np.abs(decoded[name] - value)) <= sent.scales[name] * (1 + 1e-6)
