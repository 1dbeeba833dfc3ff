"""Int8 deltas at ingest: what the study asks for is what it merges, and nothing out of bounds."""

from __future__ import annotations

import numpy as np
import pytest

from fedward.coordinator.errors import RejectReason
from fedward.coordinator.service import StudyService
from fedward.coordinator.settings import CoordinatorSettings
from fedward.coordinator.study_spec import StudySpec
from fedward.protocol.codec import decode_tensors
from fedward.protocol.messages import (
    AckStatus,
    DeviceClass,
    Enrol,
    Update,
    UpdateEncoding,
    encode_frame,
    update_energy,
)
from fedward.protocol.quantised import MAX_SCALE, dequantise_int8, quantise_int8
from fedward.tinytrain.models import build_model, param_shapes
from tests.live.live_helpers import TINY_SPEC
from tests.wire.update_frames import update_frame

INT8_SPEC = TINY_SPEC.model_copy(update={"update_encoding": UpdateEncoding.INT8, "buffer_size": 1})


def _service(tmp_path, spec: StudySpec) -> StudyService:
    svc = StudyService.open(
        CoordinatorSettings(
            database_url=f"sqlite:///{tmp_path / 'c.db'}",
            data_dir=tmp_path / "data",
            operator_token="wire-int8-3e2d1c0b9a",
        ),
        seed=0,
    )
    svc.create_study(spec, study_id="s")
    for i in range(2):
        enrol = Enrol(
            device_id=f"d{i}",
            study_id="s",
            device_class=DeviceClass.GATEWAY,
            memory_bytes=64 << 20,
            public_key=bytes([i + 1]) * 32,
        )
        assert svc.enrol("s", enrol).accepted
    svc.start("s")
    return svc


@pytest.fixture
def int8_study(tmp_path):
    svc = _service(tmp_path, INT8_SPEC)
    yield svc
    svc.close()


@pytest.fixture
def float_study(tmp_path):
    svc = _service(tmp_path, TINY_SPEC)
    yield svc
    svc.close()


def _delta(task) -> dict[str, np.ndarray]:
    shapes = param_shapes(build_model(TINY_SPEC.model_settings(), seed=0))
    rng = np.random.default_rng(0)
    return {
        n: (rng.standard_normal(shapes[n]) * 1e-2).astype(np.float32) for n in task.subset_names
    }


def _int8_frame(task, *, key=b"k" * 32):
    words, scales = quantise_int8(_delta(task), rounding_key=key)
    energy = update_energy(dequantise_int8(words, scales))
    return words, scales, update_frame(task, words, scales=scales, energy=energy)


def _header(task, scales, energy=None) -> Update:
    return Update(
        task_id=task.task_id,
        device_id=task.device_id,
        base_model_version=task.model_version,
        subset_id=task.subset_id,
        num_samples=16,
        update_energy=energy,
        scales=scales,
    )


def _model(service):
    return decode_tensors(service.model_blob("s", service.status("s").model_version))


def test_an_int8_study_tells_its_devices_and_merges_the_decoded_delta(int8_study):
    # Prepare
    task = int8_study.dispatch("s")[0].task
    before = _model(int8_study)
    words, scales, frame = _int8_frame(task)
    # Execute
    ack = int8_study.submit_update("s", frame)
    # Assert: buffer of one, plain SGD at server_lr 1: the model moved by exactly q x s
    assert task.update_encoding is UpdateEncoding.INT8
    assert ack.status is AckStatus.MERGED
    after = _model(int8_study)
    decoded = dequantise_int8(words, scales)
    for name in task.subset_names:
        np.testing.assert_allclose(after[name] - before[name], decoded[name], rtol=1e-5, atol=1e-7)


def test_a_float32_delta_to_an_int8_study_is_refused_and_counted(int8_study):
    task = int8_study.dispatch("s")[0].task
    ack = int8_study.submit_update("s", update_frame(task, _delta(task)))
    assert ack.status is AckStatus.REJECTED and ack.reason == RejectReason.MALFORMED.value
    assert int8_study.status("s").rejections[RejectReason.MALFORMED] == 1
    assert int8_study.status("s").updates_accepted == 0


def test_an_int8_delta_to_a_float32_study_is_refused(float_study):
    task = float_study.dispatch("s")[0].task
    _, _, frame = _int8_frame(task)
    ack = float_study.submit_update("s", frame)
    assert ack.status is AckStatus.REJECTED
    assert float_study.status("s").rejections[RejectReason.MALFORMED] == 1


@pytest.mark.parametrize("attack", ["word_minus_128", "scale_overflows", "energy_under_reported"])
def test_forged_int8_updates_are_refused_and_leave_the_model_as_it_was(int8_study, attack):
    # Prepare: one fault per frame (an energy-free header, so only the fault can refuse it)
    task = int8_study.dispatch("s")[0].task
    before = _model(int8_study)
    words, scales, _ = _int8_frame(task)
    first = next(iter(words))
    energy = None
    if attack == "word_minus_128":
        words[first] = words[first].copy()
        words[first].flat[0] = -128
    elif attack == "scale_overflows":  # 127 x scale is infinite in float32
        scales[first] = 3.0e38
    else:  # the energy term would see a tenth of what it merges
        energy = update_energy(dequantise_int8(words, scales)) / 10
    # Execute
    ack = int8_study.submit_update("s", encode_frame(_header(task, scales, energy), words))
    # Assert
    assert ack.status is AckStatus.REJECTED and ack.reason == RejectReason.MALFORMED.value
    assert int8_study.status("s").rejections[RejectReason.MALFORMED] == 1
    after = _model(int8_study)
    assert all(np.array_equal(before[n], after[n]) for n in before)


@pytest.mark.parametrize("encoding", ["int8", "float32"])
def test_a_delta_at_float32s_limit_is_refused_before_it_can_overflow_the_model(tmp_path, encoding):
    # Prepare: every word 127 at the largest scale (3.4e38), or float32 3e38: finite, but a
    # weighted sum of such updates overflowed the merged model to inf before this bound
    spec = INT8_SPEC if encoding == "int8" else TINY_SPEC.model_copy(update={"buffer_size": 1})
    svc = _service(tmp_path, spec)
    try:
        task = svc.dispatch("s")[0].task
        before = _model(svc)
        shapes = param_shapes(build_model(TINY_SPEC.model_settings(), seed=0))
        if encoding == "int8":
            words = {n: np.full(shapes[n], 127, np.int8) for n in task.subset_names}
            frame = encode_frame(_header(task, dict.fromkeys(words, MAX_SCALE)), words)
        else:
            big = {n: np.full(shapes[n], 3e38, np.float32) for n in task.subset_names}
            frame = encode_frame(_header(task, None), big)
        # Execute
        ack = svc.submit_update("s", frame)
        # Assert
        assert ack.status is AckStatus.REJECTED and ack.reason == RejectReason.OUT_OF_RANGE.value
        assert svc.status("s").rejections[RejectReason.OUT_OF_RANGE] == 1
        after = _model(svc)
        assert all(np.array_equal(before[n], after[n]) for n in before)
    finally:
        svc.close()


def test_a_scale_that_is_no_float32_and_more_words_than_the_model_are_refused(int8_study):
    # Prepare
    task = int8_study.dispatch("s")[0].task
    words, scales, _ = _int8_frame(task)
    first = next(iter(words))
    odd = encode_frame(_header(task, {**scales, first: 1e-45}), words)
    huge_words = {first: np.zeros(10**6, np.int8)}  # far more than the tiny model holds
    huge = encode_frame(_header(task, {first: 1.0}), huge_words)
    # Execute
    acks = [int8_study.submit_update("s", f) for f in (odd, huge)]
    # Assert
    assert [a.reason for a in acks] == [RejectReason.MALFORMED.value] * 2
    assert int8_study.status("s").rejections[RejectReason.MALFORMED] == 2


def test_int8_is_refused_with_secure_aggregation():
    with pytest.raises(ValueError, match="update_encoding int8"):
        StudySpec.model_validate(
            {**INT8_SPEC.model_dump(mode="json"), "buffer_size": 2, "secagg": {"enabled": True}}
        )
