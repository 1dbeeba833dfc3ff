"""The simulator's secagg rows in the ring the policy picks (secagg_modulus_bits None): every
fill merges its survivors' plaintext mean, and masked inputs travel b bits per word."""

from __future__ import annotations

from typing import Any

import pytest

from fedward.coordinator.engine import EventKind
from fedward.protocol.messages import SecAggPhase
from fedward.simulation.scenario import StrategyRun
from fedward.simulation.secagg import phase_frame, read_frame
from tests.simulation.test_secagg_study import _check_every_fill_merge, _run, _scenario


@pytest.fixture(scope="module", params=[StrategyRun.FTTE_SECAGG, StrategyRun.FTTE_SECAGG_DDP])
def packed(request) -> dict[str, Any]:
    return _run(_scenario(secagg_modulus_bits=None), request.param)


def test_fills_in_the_least_ring_merge_the_plaintext_mean_and_send_b_bits_per_word(
    packed,
) -> None:
    # Prepare
    study, result = packed["study"], packed["result"]
    policy = study.engine.fills.policy
    config = policy.config(threshold=policy.threshold)
    bits = config.modulus_bits
    masked = []
    # Execute: every masked input frame, read at the fill's b and encoded again
    for kind, payload in packed["frames"]:
        if kind != "sa_up":
            continue
        task_id, frame = payload
        member = study.fills.members[task_id]
        header, message = read_frame(frame, session=member.session, modulus_bits=bits)
        if header.phase is not SecAggPhase.MASKED_INPUT:
            continue
        again = phase_frame(
            study_id=header.study_id,
            device_id=header.device_id,
            task_id=header.task_id,
            fill_id=header.fill_id,
            phase=header.phase,
            message=message,
            modulus_bits=bits,
        )
        assert again == frame
        masked.append((len(frame), len(message.data), member.session.total_words(config)))
    # Assert: b is the ddp's bits under DDP, else below 32; each input ceil(words * b / 8)
    # bytes plus its header; every fill merged, and without DDP noise each merge is its
    # survivors' plaintext merge (DDP sums in 20 bits: tests/privacy/test_ddp.py)
    merged = [e for e in packed["events"] if e.kind is EventKind.FILL_MERGED]
    assert result.merges == len(merged) > 0
    assert masked and all(data == -(-words * bits // 8) for _, data, words in masked)
    assert all(data < size < data + 600 for size, data, _ in masked)
    if policy.ddp is not None:
        assert bits == policy.ddp.bits == 20
        assert config.sum_bound == policy.ddp.value_bound
    else:
        assert bits < 32 and config.sum_bound is None
        assert _check_every_fill_merge(packed) == len(merged)
