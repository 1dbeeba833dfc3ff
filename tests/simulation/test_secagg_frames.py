"""The simulator's SecAgg frames and PRG cost model (Prepare / Execute / Assert)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fedward.privacy.secagg import (
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    SecAggSession,
)
from fedward.privacy.secagg.wire import encode_message
from fedward.protocol.messages import (
    DeviceClass,
    SecAggMessage,
    SecAggPhase,
    encode_frame,
    secagg_frame_tensors,
)
from fedward.simulation.profiles import DEFAULT_PROFILES, SimDevice
from fedward.simulation.secagg import (
    PrgCalibration,
    masking_prg_bytes,
    one_way_down_s,
    one_way_up_s,
    phase_frame,
    read_frame,
    unmasking_prg_bytes,
)

D = 300


def _one_instance() -> tuple[dict[SecAggPhase, object], SecAggSession]:
    """Every phase message of one real 4-device instance (device d0's where per device)."""
    config = SecAggConfig(threshold=3, scale=1024.0, clip=2.0, count_words=3, max_count=1)
    session = SecAggSession(
        session_id=os.urandom(32),
        round_index=0,
        cohort=("d0", "d1", "d2", "d3"),
        vector_length=D,
        index_set_digest=os.urandom(32),
    )
    server = SecAggServer(config=config, session=session)
    clients = {d: SecAggClient(config=config, session=session, device_id=d) for d in session.cohort}
    adverts = {d: c.advertise() for d, c in clients.items()}
    for a in adverts.values():
        server.receive_advertisement(a)
    roster = server.close_advertisements()
    bundles = {d: c.share_keys(roster) for d, c in clients.items()}
    for b in bundles.values():
        server.receive_share_bundle(b)
    deliveries = server.close_shares()
    update = np.linspace(-1, 1, D)
    masked = {
        d: c.mask_input(deliveries[d], update=update, weight=1.0, counts=(1, 0, 1))
        for d, c in clients.items()
    }
    for m in masked.values():
        server.receive_masked_input(m)
    request = server.close_masked_inputs()
    response = clients["d0"].unmask(request)
    return {
        SecAggPhase.ADVERTISE: adverts["d0"],
        SecAggPhase.ROSTER: roster,
        SecAggPhase.SHARES: bundles["d0"],
        SecAggPhase.DELIVERY: deliveries["d0"],
        SecAggPhase.MASKED_INPUT: masked["d0"],
        SecAggPhase.UNMASK_REQUEST: request,
        SecAggPhase.UNMASK_RESPONSE: response,
        SecAggPhase.ABORT: None,
    }, session


@pytest.fixture(scope="module")
def instance():
    return _one_instance()


IDS = {"study_id": "s1", "device_id": "d0", "task_id": "t0000001", "fill_id": "f1"}


@pytest.mark.parametrize("phase", list(SecAggPhase))
def test_each_phase_frame_is_the_real_encoding_and_reads_back(instance, phase) -> None:
    # Prepare
    messages, session = instance
    message = messages[phase]
    header = SecAggMessage(phase=phase, **IDS)
    if phase is SecAggPhase.MASKED_INPUT:
        tensors = secagg_frame_tensors(phase, words=np.frombuffer(message.data, dtype="<u4"))
    elif phase is SecAggPhase.ABORT:
        tensors = {}
    else:
        tensors = secagg_frame_tensors(phase, body=encode_message(message))
    expected = encode_frame(header, tensors or None)
    # Execute
    frame = phase_frame(phase=phase, message=message, **IDS)
    read_header, read_message = read_frame(frame, session=session)
    # Assert: the counted bytes are those of the frame that travels, and it decodes to the
    # same message (what the receiving side judges)
    assert frame == expected
    assert read_header.phase is phase and read_header.device_id == "d0"
    assert read_message == message


def test_masked_words_travel_as_binary_not_hex(instance) -> None:
    # Prepare
    messages, session = instance
    masked = messages[SecAggPhase.MASKED_INPUT]
    words = session.total_words(SecAggConfig(threshold=3, scale=1024.0, clip=2.0, count_words=3))
    # Execute
    frame = phase_frame(phase=SecAggPhase.MASKED_INPUT, message=masked, **IDS)
    # Assert: 4 bytes per word plus a header of a few hundred bytes (hex would double it)
    assert len(masked.data) == 4 * words
    assert 4 * words < len(frame) < 4 * words + 600


def test_prg_time_scales_with_class_compute_and_straggling() -> None:
    # Prepare: a machine 100x a wearable's FLOP/s
    wearable = DEFAULT_PROFILES[DeviceClass.WEARABLE]
    calib = PrgCalibration(chacha_bytes_per_s=1e9, machine_flops_per_s=100 * wearable.flops_per_s)
    fast = SimDevice(device_id="a", index=0, profile=wearable, slowdown=1.0)
    slow = SimDevice(device_id="b", index=1, profile=wearable, slowdown=8.0)
    prg = masking_prg_bytes(peers=11, total_words=14_081, vector_length=14_068, word_bytes=4)
    # Execute
    here = prg / 1e9
    fast_s, slow_s = calib.device_s(fast, prg), calib.device_s(slow, prg)
    # Assert: 12 streams of the masked words plus one rounding uniform per coordinate
    assert prg == 12 * 14_081 * 4 + 4 * 14_068
    assert fast_s == pytest.approx(100 * here)
    assert slow_s == pytest.approx(8 * fast_s)
    assert calib.server_s(prg) == pytest.approx(here)


def test_server_unmask_keystream_counts_self_masks_and_dropped_pairs() -> None:
    # Execute
    none = unmasking_prg_bytes(survivors=10, dropped=0, total_words=100, word_bytes=4)
    two = unmasking_prg_bytes(survivors=10, dropped=2, total_words=100, word_bytes=4)
    # Assert: each survivor's self mask, each dropped device's mask with every survivor
    assert none == 10 * 100 * 4
    assert two == (10 + 20) * 100 * 4


def test_one_way_link_time_is_half_the_round_trip_plus_bytes_over_the_link() -> None:
    # Prepare
    phone = DEFAULT_PROFILES[DeviceClass.PHONE]
    device = SimDevice(device_id="p", index=0, profile=phone, slowdown=2.0)
    # Execute / Assert
    assert one_way_up_s(device, 1000) == pytest.approx(phone.rtt_s / 2 + 2000 / phone.uplink_bps)
    assert one_way_down_s(device, 1000) == pytest.approx(
        phone.rtt_s / 2 + 2000 / phone.downlink_bps
    )


def test_measured_calibration_is_positive_and_finite() -> None:
    # Execute
    calib = PrgCalibration.measure(seconds=0.02)
    # Assert
    assert 1e6 < calib.chacha_bytes_per_s < 1e12
    assert 1e6 < calib.machine_flops_per_s < 1e13
