"""Bounded ingest: what even an authenticated device cannot make the coordinator merge."""

from __future__ import annotations

import numpy as np
import pytest

from fedward.coordinator.errors import RejectReason
from fedward.coordinator.service import StudyService
from fedward.coordinator.settings import CoordinatorSettings
from fedward.protocol.chunking import Reassembler, split_message
from fedward.protocol.codec import decode_tensors
from fedward.protocol.messages import (
    AckStatus,
    DeviceClass,
    Enrol,
    update_energy,
)
from fedward.tinytrain.models import build_model, param_shapes
from tests.live.live_helpers import TINY_SPEC
from tests.wire.update_frames import update_frame


@pytest.fixture
def service(tmp_path):
    svc = StudyService.open(
        CoordinatorSettings(
            database_url=f"sqlite:///{tmp_path / 'c.db'}",
            data_dir=tmp_path / "data",
            operator_token="wire-ingest-8d7c6b5a4f",
        ),
        seed=0,
    )
    svc.create_study(TINY_SPEC, study_id="s")
    for i in range(3):
        key = bytes([i + 1]) * 32
        ack = svc.enrol(
            "s",
            Enrol(
                device_id=f"d{i}",
                study_id="s",
                device_class=DeviceClass.GATEWAY,
                memory_bytes=64 << 20,
                public_key=key,
            ),
        )
        assert ack.accepted
    svc.start("s")
    yield svc
    svc.close()


def _update(task, tensors, *, num_samples=16) -> bytes:
    # energy over float64 copies: the bool/int deltas of the dtype test have no float square
    energy = update_energy({n: t.astype(np.float64) for n, t in tensors.items()})
    return update_frame(task, tensors, num_samples=num_samples, energy=energy)


def _model(service):
    return decode_tensors(service.model_blob("s", service.status("s").model_version))


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32, np.bool_, np.uint8])
def test_a_delta_of_another_dtype_is_refused(service, dtype):
    # Prepare
    task = service.dispatch("s")[0].task
    shapes = param_shapes(build_model(TINY_SPEC.model_settings(), seed=0))
    tensors = {n: np.ones(shapes[n], dtype=dtype) for n in task.subset_names}
    # Execute
    ack = service.submit_update("s", _update(task, tensors))
    # Assert
    assert ack.status is AckStatus.REJECTED and ack.reason == RejectReason.MALFORMED.value
    assert service.status("s").updates_accepted == 0


def test_a_huge_sample_count_buys_no_merge_weight(service):
    # Prepare: every device claims 10**15 samples with a large delta, 77 times over
    shapes = param_shapes(build_model(TINY_SPEC.model_settings(), seed=0))
    before = _model(service)
    acks = []
    # Execute
    for _ in range(26):
        for out in service.dispatch("s"):
            task = out.task
            tensors = {n: np.full(shapes[n], 3.0, np.float32) for n in task.subset_names}
            acks.append(service.submit_update("s", _update(task, tensors, num_samples=10**15)))
    # Assert: refused as a bad sample count; the model is exactly what it was
    assert len(acks) >= 77
    assert {a.reason for a in acks} == {RejectReason.BAD_SAMPLE_COUNT.value}
    assert service.status("s").rejections[RejectReason.BAD_SAMPLE_COUNT] == len(acks)
    after = _model(service)
    assert all(np.array_equal(before[n], after[n]) for n in before)


def test_a_count_at_the_declared_cap_is_accepted(service):
    # Prepare
    task = service.dispatch("s")[0].task
    shapes = param_shapes(build_model(TINY_SPEC.model_settings(), seed=0))
    tensors = {n: np.full(shapes[n], 1e-3, np.float32) for n in task.subset_names}
    cap = TINY_SPEC.max_samples_per_update
    # Execute
    ack = service.submit_update("s", _update(task, tensors, num_samples=cap))
    # Assert
    assert ack.status is not AckStatus.REJECTED


def test_huge_announced_chunks_do_not_block_other_senders():
    # Prepare: four 100-byte chunks announcing 16 MiB each (the measured attack)
    reassembler = Reassembler()
    for i in range(4):
        chunk = split_message(b"x" * (16 << 20), max_chunk_bytes=200)[0]
        reassembler.feed(f"attacker-{i}", chunk)
    genuine = np.random.default_rng(0).bytes(1 << 20)
    # Execute: a genuine 1 MiB chunked message from another sender
    whole = [
        reassembler.feed("genuine", c) for c in split_message(genuine, max_chunk_bytes=64 << 10)
    ]
    # Assert: it completes; only the bytes actually received are held for the attackers
    assert whole[-1] == genuine
    assert reassembler.reserved_bytes < 4 * 200


def test_a_sender_over_its_byte_budget_only_loses_its_own_messages():
    # Prepare
    reassembler = Reassembler(max_message_bytes=4000, max_sender_bytes=5000)
    first = split_message(b"a" * 3000, max_chunk_bytes=1000)
    second = split_message(b"b" * 3000, max_chunk_bytes=1000)
    other = split_message(b"o" * 3000, max_chunk_bytes=1000)
    reassembler.feed("other", other[0])
    for chunk in first[:-1]:
        reassembler.feed("greedy", chunk)
    # Execute: the greedy sender's second message pushes it over its budget
    for chunk in second[:-1]:
        reassembler.feed("greedy", chunk)
    # Assert: its stalest message went, the other sender's message still completes
    assert [reassembler.feed("greedy", c) for c in first[-1:]] == [None]
    assert [reassembler.feed("other", c) for c in other[1:]][-1] == b"o" * 3000
