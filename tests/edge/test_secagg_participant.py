"""SecAggParticipant: the device's own floors, its weight and counts, signed advertisements."""

from __future__ import annotations

import math

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedward.edge.secagg import (
    SecAggFloors,
    SecAggParticipant,
    SecAggRefused,
    device_weight,
    energy_histogram,
)
from fedward.edge.secagg_store import SecAggStore
from fedward.privacy.secagg import (
    ClientStage,
    ConfigError,
    ProtocolViolation,
    SecAggConfig,
    SecAggServer,
    SecAggSession,
    StateError,
)
from fedward.privacy.secagg.layout import VectorLayout
from fedward.protocol.messages import SecAggWeighting
from tests.edge.secagg_helpers import (
    SHAPES,
    SUBSET,
    Fill,
    deltas,
    make_fill,
    make_params,
    run_to_masked,
)

COHORT5 = tuple(f"dev-{i}" for i in range(5))


def participant(tmp_path, params, *, device="dev-0", subset=SUBSET, floors=None, **kw):
    return SecAggParticipant(
        params=params,
        task_id="task-1",
        device_id=device,
        subset_names=subset,
        model_shapes=SHAPES,
        store=SecAggStore(tmp_path / device, device_id=device),
        floors=floors,
        **kw,
    )


def test_a_cohort_under_the_devices_own_floor_is_refused(tmp_path) -> None:
    # Prepare: the config allows 3 members, this device demands 5
    params = make_params(COHORT5[:4], threshold=4, min_cohort=3)
    # Execute / Assert
    with pytest.raises(SecAggRefused, match="below this device's floor 5"):
        participant(tmp_path, params, floors=SecAggFloors(min_cohort=5))
    assert participant(tmp_path, params, floors=SecAggFloors(min_cohort=4)).stage is (
        ClientStage.NEW
    )


def test_a_threshold_under_the_colluder_floor_is_refused_whatever_the_config_claims(
    tmp_path,
) -> None:
    # Prepare: n = 5, the config claims no colluders (t = 3 = floor(5/2) + 1 passes its check)
    params = make_params(COHORT5, threshold=3, max_colluders=0, min_cohort=2)
    # Execute / Assert: the device assumes one colluder: t >= floor((5 + 1)/2) + 1 = 4
    with pytest.raises(SecAggRefused, match="threshold 3 < 4"):
        participant(tmp_path, params, floors=SecAggFloors(max_colluders=1))
    # with two assumed colluders even t = 4 is short: floor(7/2) + 1 = 4, c + 2 = 4 -> ok; c=3 -> 5
    with pytest.raises(SecAggRefused, match="threshold 4 < 5"):
        participant(
            tmp_path,
            make_params(COHORT5, threshold=4, max_colluders=0, min_cohort=2),
            floors=SecAggFloors(min_cohort=5, max_colluders=3),
        )
    assert participant(
        tmp_path, make_params(COHORT5, threshold=4), floors=SecAggFloors(max_colluders=1)
    )


def test_an_index_set_other_than_the_tasks_subset_is_refused(tmp_path) -> None:
    # Prepare: the fill names the digest of another subset than the task trains
    params = make_params(COHORT5, threshold=4, subset=("a.weight", "c.weight"))
    # Execute / Assert
    with pytest.raises(SecAggRefused, match="index-set digest"):
        participant(tmp_path, params, subset=SUBSET)


def test_count_words_must_match_the_energy_bins(tmp_path) -> None:
    # Prepare: two edges need three count words; the config carries one
    params = make_params(COHORT5, threshold=4)
    params = params.model_copy(update={"energy_bins": (-5.0, -1.0)})
    # Execute / Assert
    with pytest.raises(SecAggRefused, match="count words"):
        participant(tmp_path, params)


def test_a_device_not_in_the_cohort_is_refused(tmp_path) -> None:
    params = make_params(COHORT5, threshold=4)
    with pytest.raises(SecAggRefused, match="not in the fill's cohort"):
        participant(tmp_path, params, device="dev-9")


def test_device_weight_is_ftte_energy_damping_from_public_numbers() -> None:
    # Assert: the documented formula, 1 without a reference
    assert device_weight(5.0, reference=None, tolerance=10.0, beta=1.0) == 1.0
    assert device_weight(5.0, reference=1.0, tolerance=10.0, beta=1.0) == 1.0
    assert device_weight(30.0, reference=1.0, tolerance=10.0, beta=1.0) == pytest.approx(1 / 21)
    assert device_weight(30.0, reference=2.0, tolerance=10.0, beta=0.5) == pytest.approx(
        1 / (1 + 0.5 * 5)
    )
    with pytest.raises(ConfigError):
        device_weight(math.nan, reference=1.0, tolerance=10.0, beta=1.0)


def test_energy_histogram_is_one_hot_over_log_energy() -> None:
    edges = (-4.0, -2.0, 0.0)
    assert energy_histogram(0.0, edges=edges) == (1, 0, 0, 0)
    assert energy_histogram(math.exp(-3.0), edges=edges) == (0, 1, 0, 0)
    assert energy_histogram(math.exp(-2.0), edges=edges) == (0, 0, 1, 0)
    assert energy_histogram(5.0, edges=edges) == (0, 0, 0, 1)
    assert energy_histogram(5.0, edges=()) == (1,)


def test_the_fill_sums_weighted_clipped_updates_and_the_energy_histogram(tmp_path) -> None:
    # Prepare: a reference and an L2 bound; device energies differ
    edges = (-6.0, -3.0, 0.0)
    weighting = SecAggWeighting(
        energy_reference=0.01, energy_tolerance=2.0, energy_beta=1.0, norm_bound=1.5
    )
    fill = make_fill(tmp_path, energy_bins=edges, weighting=weighting)
    updates = deltas(7, fill.cohort)
    energies = dict(zip(fill.cohort, (0.001, 0.01, 0.05, 0.08, 2.0), strict=True))
    for p in fill.members.values():
        fill.server.receive_advertisement(p.advertise())
    roster = fill.server.close_advertisements()
    for p in fill.members.values():
        fill.server.receive_share_bundle(p.on_roster(roster))
    deliveries = fill.server.close_shares()
    # Execute: trained before the delivery arrives (mask returns None, delivery masks)
    for dev, p in fill.members.items():
        assert p.mask(updates[dev], energy=energies[dev]) is None
        fill.server.receive_masked_input(p.on_delivery(deliveries[dev]))
    request = fill.server.close_masked_inputs()
    for p in fill.members.values():
        fill.server.receive_unmask_response(p.on_unmask(request))
    result = fill.server.finalize()
    # Assert: the plain computation of the same weights
    layout = VectorLayout.for_subset(SHAPES, SUBSET)
    expected, weights, hist = np.zeros(layout.vector_length), [], np.zeros(4, dtype=int)
    for dev in fill.cohort:
        v = layout.flatten(updates[dev])
        norm = np.linalg.norm(v)
        factor = min(1.0, 1.5 / norm)
        q = energies[dev] * factor**2
        w = 1.0 / (1.0 + max(0.0, q / 0.01 - 2.0))
        expected += w * v * factor
        weights.append(w)
        hist += np.array(energy_histogram(q, edges=edges))
    assert np.max(np.abs(result.weighted_sum - expected)) <= 5 / 2.0**16
    assert result.weight_sum == pytest.approx(sum(weights), abs=5 / 2.0**16)
    assert result.count_sums == tuple(int(h) for h in hist)
    assert min(weights) < 0.5  # the energetic device really was damped


def test_signed_advertisements_are_checked_against_known_identities(tmp_path) -> None:
    # Prepare: every member signs; dev-1 holds a different (enrolment) key for dev-4
    params = make_params(COHORT5, threshold=4)
    keys = {d: Ed25519PrivateKey.generate() for d in COHORT5}
    identities = {d: k.public_key() for d, k in keys.items()}
    views = {d: identities for d in COHORT5}
    views["dev-1"] = {**identities, "dev-4": Ed25519PrivateKey.generate().public_key()}
    members = {
        d: participant(tmp_path, params, device=d, signing_key=keys[d], identity_keys=views[d])
        for d in COHORT5
    }
    server = SecAggServer(
        config=SecAggConfig.from_plain(params.config),
        session=SecAggSession.from_plain(params.session),
    )
    for p in members.values():
        server.receive_advertisement(p.advertise())
    roster = server.close_advertisements()
    # Execute / Assert: signed; accepted where the keys match, refused by dev-1 over dev-4
    assert all(len(a.signature) == 64 for a in roster.advertisements)
    assert members["dev-0"].on_roster(roster)
    with pytest.raises(ProtocolViolation, match="bad signature on the advertisement of 'dev-4'"):
        members["dev-1"].on_roster(roster)
    assert members["dev-1"].stage is ClientStage.ADVERTISED  # nothing shared


def test_a_repeated_delivery_gets_the_same_masked_input_and_another_is_refused(tmp_path) -> None:
    # Prepare
    fill: Fill = make_fill(tmp_path)
    run_to_masked(fill, deltas(9, fill.cohort))
    dev = fill.cohort[0]
    p = fill.members[dev]
    delivery = fill.server.deliveries()[dev]
    first = p.last_released()
    # Execute / Assert
    assert p.on_delivery(delivery) == first
    other = fill.server.deliveries()[fill.cohort[1]]
    with pytest.raises(ProtocolViolation):
        p.on_delivery(other)
    with pytest.raises(StateError, match="one input per session"):
        p.mask(deltas(10, (dev,))[dev], energy=0.1)


def ddp_fill(tmp_path, *, n: int = 5, threshold: int = 4, noise_multiplier: float = 0.5):
    from fedward.privacy.secagg import ddp as ddp_module

    layout = VectorLayout.for_subset(SHAPES, SUBSET)
    d = layout.vector_length
    ddp = ddp_module.DistributedDp.for_fill(
        l2_clip=1.0,
        noise_multiplier=noise_multiplier,
        bits=20,
        threshold=threshold,
        max_colluders=1,
        cohort_size=n,
        d=d,
    )
    config = SecAggConfig(
        threshold=threshold, scale=ddp.scale, clip=ddp.coordinate_bound, max_colluders=1
    )
    cohort = tuple(f"dev-{i}" for i in range(n))
    session = SecAggSession(
        session_id=bytes(range(32)),
        round_index=1,
        cohort=cohort,
        vector_length=ddp_module.padded_length(d),
        index_set_digest=layout.digest,
    )
    params = make_params(cohort, threshold=threshold).model_copy(
        update={"config": config.to_plain(), "session": session.to_plain(), "ddp": ddp.to_plain()}
    )
    return params, ddp, config, session, layout


def test_under_distributed_dp_the_device_masks_its_prepared_update_at_weight_one(tmp_path) -> None:
    # Prepare: a DDP fill; updates far above the L2 clip
    from fedward.privacy.secagg import ddp as ddp_module

    params, ddp, config, session, layout = ddp_fill(tmp_path)
    server = SecAggServer(config=config, session=session)
    members = {d: participant(tmp_path, params, device=d) for d in session.cohort}
    updates = deltas(5, session.cohort)
    for p in members.values():
        server.receive_advertisement(p.advertise())
    roster = server.close_advertisements()
    for p in members.values():
        server.receive_share_bundle(p.on_roster(roster))
    deliveries = server.close_shares()
    # Execute
    for dev, p in members.items():
        p.on_delivery(deliveries[dev])
        server.receive_masked_input(p.mask(updates[dev], energy=0.1))
    request = server.close_masked_inputs()
    for p in members.values():
        server.receive_unmask_response(p.on_unmask(request))
    result = server.finalize()
    recovered = ddp_module.recover(
        result.weighted_sum, ddp=ddp, session_seed=session.session_id, d=layout.vector_length
    )
    # Assert: weight 1 each, one constant count word each; the sum is the sum of the
    # L2-clipped updates plus noise of stddev about z * clip = 0.5 per coordinate
    assert result.weight_sum == pytest.approx(5.0)
    assert result.count_sums == (5,)
    clipped = []
    for dev in session.cohort:
        v = layout.flatten(updates[dev])
        clipped.append(v * min(1.0, 1.0 / np.linalg.norm(v)))
    error = recovered - np.sum(clipped, axis=0)
    assert 0.2 < float(np.std(error)) < 1.0
    assert abs(float(np.mean(error))) < 0.5


def test_a_ddp_fill_whose_threshold_leaves_too_few_honest_survivors_is_refused(tmp_path) -> None:
    # Prepare: the DDP noise is calibrated for 3 honest survivors (t = 4, c = 1) but this
    # device assumes two colluders: only 2 honest shares could be in a released sum
    params, *_ = ddp_fill(tmp_path)
    # Execute / Assert
    with pytest.raises(SecAggRefused, match="min_survivors"):
        participant(tmp_path, params, floors=SecAggFloors(min_cohort=4, max_colluders=2))


def test_an_energy_histogram_under_distributed_dp_is_refused(tmp_path) -> None:
    # Prepare: a DDP fill that also asks for a masked energy histogram (three count words)
    params, ddp, config, session, layout = ddp_fill(tmp_path)
    histogram_config = SecAggConfig(**{**config.to_plain(), "count_words": 3})
    params = params.model_copy(
        update={"config": histogram_config.to_plain(), "energy_bins": (-4.0, -1.0)}
    )
    # Execute / Assert: outside the DDP noise, so the device will not send it
    with pytest.raises(SecAggRefused, match="outside the DP noise"):
        participant(tmp_path, params)
