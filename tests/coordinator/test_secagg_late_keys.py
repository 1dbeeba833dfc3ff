"""A fill restored before the service attached its enrolled-key lookup still checks
every advertisement: keys that appear later are bound at the next advertisement or
timer, after every advertisement already held is checked; one that fails aborts."""

from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedward.coordinator.engine import EngineEvent, EventKind
from fedward.privacy.secagg import SecAggClient
from fedward.protocol.messages import SecAggPhase
from tests.coordinator.test_secagg_engine import (
    COHORT,
    Fleet,
    enrol,
    make_engine,
    open_fill,
    versions_of,
)

KEYS = {f"dev-{i:02d}": Ed25519PrivateKey.generate() for i in range(COHORT)}


def _signed(fleet: Fleet, *, unsigned: set[str] = frozenset()) -> None:
    for member in fleet.members.values():
        device = member.order.device_id
        member.client = SecAggClient(
            config=member.client.config,
            session=member.client.session,
            device_id=device,
            signing_key=None if device in unsigned else KEYS[device],
        )


def _restored_without_keys(advertised: list[str], *, unsigned: set[str]):
    """A fill whose first members advertised to a keyless engine, restored keyless."""
    engine = make_engine()
    enrol(engine, COHORT)
    fleet = Fleet(engine)
    open_fill(engine, fleet)
    _signed(fleet, unsigned=unsigned)
    for member in fleet.members.values():
        if member.order.device_id in advertised:
            fleet.send(member, SecAggPhase.ADVERTISE, member.client.advertise())
    state = json.loads(json.dumps(engine.state_dict()))
    events: list[EngineEvent] = []
    twin = make_engine(seed=5, events=events)
    twin.load_state_dict(state, versions=versions_of(engine))
    fleet.engine = twin
    return twin, fleet, events


def test_keys_attached_after_a_restore_check_the_advertisements_already_held():
    # Prepare: two members advertised unsigned before the restart
    twin, fleet, events = _restored_without_keys(["dev-00", "dev-01"], unsigned={"dev-00"})
    # Execute: the service attaches its lookup; the fill's timer runs
    twin.fills.identity_keys = lambda d: KEYS[d].public_key()
    fleet.tick(1.0)
    # Assert: the unchecked advertisement aborts the fill, nothing is merged
    aborted = [e for e in events if e.kind is EventKind.FILL_ABORTED]
    assert len(aborted) == 1 and aborted[0].details["reason"] == "unchecked_advertisement"
    assert not fleet.merges and not twin.tasks


def test_keys_attached_after_a_restore_refuse_later_unsigned_advertisements():
    # Prepare: restored before anyone advertised; one member will advertise unsigned
    twin, fleet, events = _restored_without_keys([], unsigned={"dev-03"})
    twin.fills.identity_keys = lambda d: KEYS[d].public_key()
    # Execute
    fleet.run()
    # Assert: the unsigned one refused and dropped, the signed rest merge
    refused = [e for e in events if e.kind is EventKind.FILL_REFUSED]
    assert [(e.details["device_id"], e.details["reason"]) for e in refused] == [
        ("dev-03", "protocol_violation")
    ]
    assert len(fleet.merges) == 1 and "dev-03" not in fleet.merges[0].device_ids
