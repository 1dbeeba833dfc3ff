"""A device checks its SecAgg peers' identity keys against the signed audit log (issue 11).

Real parts throughout: Ed25519 identities signing real SecAgg advertisements, a
real JSONL audit log (RFC 9162 tree, signed heads) written through the
coordinator's AuditTrail and enrolment records, the coordinator's evidence
builder, and the device's verifier with its memory file on disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedward.compliance import AuditLog, public_key_raw, verify_log
from fedward.coordinator import audit
from fedward.coordinator.store.audit_trail import AuditTrail
from fedward.coordinator.store.enrolment_evidence import (
    EVIDENCE_FORMAT,
    EnrolmentEvidence,
    enrolment_conflicts,
)
from fedward.edge import peer_evidence
from fedward.edge.peer_evidence import (
    PeerCheck,
    PeerEvidenceRefused,
    PeerEvidenceVerifier,
    RosterCheck,
)
from fedward.edge.secagg import SecAggParticipant
from fedward.edge.secagg_store import SecAggStore
from fedward.privacy.secagg import (
    ClientStage,
    KeyRoster,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    SecAggSession,
    wire,
)
from fedward.privacy.secagg.crypto import session_context
from fedward.protocol.transport import ErrorPolicy, InMemoryBroker, InMemoryTransport
from tests.edge.secagg_helpers import SHAPES, SUBSET, make_params
from tests.live.live_helpers import make_agent, random_dataset
from tests.live.secagg_helpers import SECAGG_SPEC

STUDY = "study-1"
COHORT = ("dev-a", "dev-b", "dev-c", "dev-d")
ME = "dev-a"


class World:
    """A coordinator's audit log with enrolled devices, and the devices' identities."""

    def __init__(self, root: Path, *, audit_key: Ed25519PrivateKey | None = None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        ticks = itertools.count(1_790_000_000)
        self.audit_key = audit_key or Ed25519PrivateKey.generate()
        self.log = AuditLog.open(
            root / "audit.jsonl", signing_key=self.audit_key, clock=lambda: float(next(ticks))
        )
        self.trail = AuditTrail(self.log)
        self.identities: dict[str, Ed25519PrivateKey] = {}

    def enrol(self, device: str, key: Ed25519PrivateKey, *, study: str = STUDY) -> None:
        self.identities.setdefault(device, key)
        entry = audit.device_enrolment(
            device_id=device,
            device_class="phone",
            memory_bytes=1 << 20,
            key_sha256=hashlib.sha256(public_key_raw(key)).hexdigest(),
            refusal=None,
        )
        self.trail.write(entry, study_id=study)

    def noise(self, count: int) -> None:
        """Other decisions between enrolments (the log is not only enrolments)."""
        for i in range(count):
            self.trail.write(audit.task_declined(f"other-{i}", f"task-{i}"), study_id=STUDY)

    def builder(self, *, study: str = STUDY) -> EnrolmentEvidence:
        return EnrolmentEvidence(
            log=self.log,
            study_id=study,
            public_key_of=lambda d: public_key_raw(self.identities[d]),
            sign_tree_head=self.trail.sign_tree_head,
        )


def enrolled_world(root: Path, **kw) -> World:
    world = World(root, **kw)
    world.noise(3)
    for device in COHORT:
        world.enrol(device, Ed25519PrivateKey.generate())
        world.noise(2)
    return world


@dataclasses.dataclass
class Round:
    config: SecAggConfig
    session: SecAggSession
    clients: dict[str, SecAggClient]
    roster: KeyRoster  # as the server closed it, no evidence

    @property
    def context(self) -> bytes:
        return session_context(self.session, self.config)


def secagg_round(world: World) -> Round:
    config = SecAggConfig(threshold=3, scale=2.0**12, clip=4.0)
    session = SecAggSession(
        session_id=b"s" * 32,
        round_index=1,
        cohort=COHORT,
        vector_length=4,
        index_set_digest=hashlib.sha256(b"index set").digest(),
    )
    server = SecAggServer(config=config, session=session)
    clients = {
        d: SecAggClient(
            config=config, session=session, device_id=d, signing_key=world.identities[d]
        )
        for d in COHORT
    }
    for client in clients.values():
        server.receive_advertisement(client.advertise())
    return Round(config, session, clients, server.close_advertisements())


def with_evidence(roster: KeyRoster, builder: EnrolmentEvidence) -> KeyRoster:
    evidence = tuple(builder(a.device_id) for a in roster.advertisements)
    return dataclasses.replace(roster, evidence=evidence)


def edit(roster: KeyRoster, device: str, change) -> KeyRoster:
    """The roster with ``device``'s evidence JSON changed by ``change(body)``."""
    items = list(roster.evidence)
    i = [a.device_id for a in roster.advertisements].index(device)
    body = json.loads(items[i])
    change(body)
    items[i] = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return dataclasses.replace(roster, evidence=tuple(items))


def verifier(world: World, path: Path | None = None) -> PeerEvidenceVerifier:
    return PeerEvidenceVerifier(
        audit_key=world.audit_key.public_key(), study_id=STUDY, memory_path=path
    )


def test_an_honest_roster_with_evidence_passes_through_the_wire(tmp_path) -> None:
    # Prepare: four enrolled devices, their advertisements and the coordinator's evidence
    world = enrolled_world(tmp_path / "coord")
    rnd = secagg_round(world)
    sent = wire.encode_message(with_evidence(rnd.roster, world.builder()))
    memory = tmp_path / "dev-a" / "audit-head.json"
    # Execute: the device decodes the roster frame and checks it
    roster = wire.decode_message(sent, KeyRoster)
    check = verifier(world, memory).check_roster(roster, context=rnd.context, own_device_id=ME)
    # Assert: every peer's key is its enrolled identity; the head is remembered on disk
    assert isinstance(check, RosterCheck) and not check.unproven_head
    assert dict(check.keys) == {d: public_key_raw(world.identities[d]) for d in COHORT[1:]}
    assert (
        json.loads(roster.evidence[1])["format"] == EVIDENCE_FORMAT == peer_evidence.EVIDENCE_FORMAT
    )
    head = world.log.latest_tree_head
    assert head is not None and check.tree_size == head.tree_size
    assert verifier(world, memory).tree_head == (head.tree_size, head.root_hash)
    assert len(roster.evidence) == len(roster.advertisements)


def test_a_roster_without_evidence_is_refused_by_a_device_with_an_audit_key(tmp_path) -> None:
    # Prepare
    world = enrolled_world(tmp_path)
    rnd = secagg_round(world)
    # Execute / Assert: no evidence at all, and an empty item for one member
    with pytest.raises(PeerEvidenceRefused, match="0 identity evidence items for 4"):
        verifier(world).check_roster(rnd.roster, context=rnd.context, own_device_id=ME)
    roster = with_evidence(rnd.roster, world.builder())
    blank = dataclasses.replace(roster, evidence=(roster.evidence[0], b"", *roster.evidence[2:]))
    with pytest.raises(PeerEvidenceRefused, match="no readable identity evidence for 'dev-b'"):
        verifier(world).check_roster(blank, context=rnd.context, own_device_id=ME)


def sybil_roster(world: World, rnd: Round, *, victim: str) -> tuple[KeyRoster, Ed25519PrivateKey]:
    """The coordinator's swap: the victim's advertisement replaced by a Sybil's, signed
    with the Sybil's own identity key for this very session."""
    sybil_key = Ed25519PrivateKey.generate()
    sybil = SecAggClient(
        config=rnd.config, session=rnd.session, device_id=victim, signing_key=sybil_key
    )
    forged = sybil.advertise()
    advs = tuple(forged if a.device_id == victim else a for a in rnd.roster.advertisements)
    return dataclasses.replace(rnd.roster, advertisements=advs), sybil_key


def test_a_sybil_under_a_real_members_id_is_refused_with_its_evidence(tmp_path) -> None:
    # Prepare: the Sybil's advertisement with the victim's real evidence
    world = enrolled_world(tmp_path)
    rnd = secagg_round(world)
    roster, _ = sybil_roster(world, rnd, victim="dev-b")
    roster = with_evidence(roster, world.builder())
    # Execute / Assert: the victim's enrolled key did not sign the Sybil's keys
    with pytest.raises(PeerEvidenceRefused, match="'dev-b' is not signed by its enrolled key"):
        verifier(world).check_roster(roster, context=rnd.context, own_device_id=ME)


def test_a_sybil_key_named_in_the_victims_evidence_is_refused(tmp_path) -> None:
    # Prepare: the coordinator names the Sybil's key in the victim's (genuine) enrolment proof
    world = enrolled_world(tmp_path)
    rnd = secagg_round(world)
    roster, sybil_key = sybil_roster(world, rnd, victim="dev-b")
    roster = with_evidence(roster, world.builder())
    roster = edit(roster, "dev-b", lambda b: b.update(identity_key=public_key_raw(sybil_key).hex()))
    # Execute / Assert
    with pytest.raises(PeerEvidenceRefused, match="'dev-b' enrolled with another key"):
        verifier(world).check_roster(roster, context=rnd.context, own_device_id=ME)


def test_evidence_signed_by_another_audit_key_is_refused(tmp_path) -> None:
    # Prepare: a second log with the same enrolments, signed with another key
    world = enrolled_world(tmp_path / "real")
    other = World(tmp_path / "other")
    for device in COHORT:
        other.enrol(device, world.identities[device])
    rnd = secagg_round(world)
    roster = with_evidence(rnd.roster, other.builder())
    # Execute / Assert
    with pytest.raises(PeerEvidenceRefused, match="not signed by this device's audit key"):
        verifier(world).check_roster(roster, context=rnd.context, own_device_id=ME)


def _flip_first_path_hash(body: dict) -> None:
    path = body["inclusion"]["path"]
    path[0] = ("0" if path[0][0] != "0" else "1") + path[0][1:]


def _rewrite_key_hash(body: dict) -> None:
    entry = json.loads(body["entry"])
    entry["details"]["key_sha256"] = "ab" * 32
    body["entry"] = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize(
    "forgery",
    [_flip_first_path_hash, _rewrite_key_hash],
    ids=["a proof path hash changed", "the entry rewritten"],
)
def test_a_forged_inclusion_proof_is_refused(tmp_path, forgery) -> None:
    # Prepare
    world = enrolled_world(tmp_path)
    rnd = secagg_round(world)
    roster = edit(with_evidence(rnd.roster, world.builder()), "dev-c", forgery)
    # Execute / Assert
    with pytest.raises(PeerEvidenceRefused, match="inclusion proof in 'dev-c'"):
        verifier(world).check_roster(roster, context=rnd.context, own_device_id=ME)


def test_an_enrolment_of_another_study_is_refused(tmp_path) -> None:
    # Prepare: dev-b is enrolled, with its real key, in another study of the same log only
    world = World(tmp_path)
    for device in COHORT:
        world.enrol(
            device, Ed25519PrivateKey.generate(), study="study-2" if device == "dev-b" else STUDY
        )
    rnd = secagg_round(world)
    builders = {STUDY: world.builder(), "study-2": world.builder(study="study-2")}
    evidence = tuple(
        builders["study-2" if a.device_id == "dev-b" else STUDY](a.device_id)
        for a in rnd.roster.advertisements
    )
    roster = dataclasses.replace(rnd.roster, evidence=evidence)
    # Execute / Assert
    assert world.builder()("dev-b") == b""  # the coordinator's own builder has none to give
    with pytest.raises(PeerEvidenceRefused, match="not a successful enrolment of 'dev-b' in study"):
        verifier(world).check_roster(roster, context=rnd.context, own_device_id=ME)


def test_another_devices_enrolment_is_refused(tmp_path) -> None:
    # Prepare: dev-c's genuine evidence offered for dev-b
    world = enrolled_world(tmp_path)
    rnd = secagg_round(world)
    roster = with_evidence(rnd.roster, world.builder())
    items = list(roster.evidence)
    items[1] = items[2]
    roster = dataclasses.replace(roster, evidence=tuple(items))
    # Execute / Assert
    with pytest.raises(PeerEvidenceRefused, match="not a successful enrolment of 'dev-b'"):
        verifier(world).check_roster(roster, context=rnd.context, own_device_id=ME)


def test_an_older_tree_head_than_one_seen_is_refused_also_after_a_restart(tmp_path) -> None:
    # Prepare: evidence under the first head; later the log grows and a new head is signed
    world = enrolled_world(tmp_path / "coord")
    rnd = secagg_round(world)
    old = with_evidence(rnd.roster, world.builder())
    world.noise(5)
    world.trail.sign_tree_head()
    new = with_evidence(rnd.roster, world.builder())
    memory = tmp_path / "device" / "audit-head.json"
    device = verifier(world, memory)
    device.check_roster(new, context=rnd.context, own_device_id=ME)
    # Execute / Assert: the rolled-back head is refused, by this verifier and by one
    # rebuilt from its memory file (a restarted device)
    with pytest.raises(PeerEvidenceRefused, match="older than the"):
        device.check_roster(old, context=rnd.context, own_device_id=ME)
    with pytest.raises(PeerEvidenceRefused, match="older than the"):
        verifier(world, memory).check_roster(old, context=rnd.context, own_device_id=ME)


def test_a_forked_log_is_refused_a_grown_one_is_proven_consistent(tmp_path) -> None:
    # Prepare: one builder whose head moves on (a newly enrolled member), and a fork:
    # the same audit key signing a different log of the same size
    world = enrolled_world(tmp_path / "coord")
    rnd = secagg_round(world)
    builder = world.builder()
    first = with_evidence(rnd.roster, builder)
    device = verifier(world)
    device.check_roster(first, context=rnd.context, own_device_id=ME)
    world.noise(4)
    world.enrol("dev-e", Ed25519PrivateKey.generate())
    builder("dev-e")  # not covered by the old head: the builder signs a new one
    grown = with_evidence(rnd.roster, builder)
    fork = World(tmp_path / "fork", audit_key=world.audit_key)
    for device_id in COHORT:
        fork.enrol(device_id, world.identities[device_id])
    first_size = json.loads(first.evidence[1])["tree_head"]["tree_size"]
    fork.noise(first_size - len(COHORT))
    forked = with_evidence(rnd.roster, fork.builder())
    # Execute
    proven = device.check_roster(grown, context=rnd.context, own_device_id=ME)
    # Assert: the grown head came with a consistency proof from the one seen; the fork
    # (same size as that first head, other root) is refused by a device that saw it
    assert not proven.unproven_head and device.unproven_heads == 0
    assert json.loads(grown.evidence[1])["consistency"][0]["old_size"] == first_size
    again = verifier(world)
    again.check_roster(first, context=rnd.context, own_device_id=ME)
    assert json.loads(forked.evidence[1])["tree_head"]["tree_size"] == first_size
    with pytest.raises(PeerEvidenceRefused, match="different roots: a forked log"):
        again.check_roster(forked, context=rnd.context, own_device_id=ME)


def test_a_grown_head_without_a_proof_is_taken_but_counted_unproven(tmp_path) -> None:
    # Prepare: a device that saw an early head, then evidence from a fresh builder (a
    # restarted coordinator) that knows no earlier head to prove from
    world = enrolled_world(tmp_path)
    rnd = secagg_round(world)
    device = verifier(world)
    device.check_roster(
        with_evidence(rnd.roster, world.builder()), context=rnd.context, own_device_id=ME
    )
    world.noise(3)
    world.trail.sign_tree_head()
    # Execute
    check = device.check_roster(
        with_evidence(rnd.roster, world.builder()), context=rnd.context, own_device_id=ME
    )
    # Assert
    assert check.unproven_head and device.unproven_heads == 1


def test_a_peer_seen_with_one_key_is_refused_with_another(tmp_path) -> None:
    # Prepare: the coordinator forges a second enrolment of dev-b (Sybil key) in its own log:
    # the evidence then verifies, but a device that saw dev-b's key before refuses it
    world = enrolled_world(tmp_path / "coord")
    rnd = secagg_round(world)
    memory = tmp_path / "device" / "audit-head.json"
    verifier(world, memory).check_roster(
        with_evidence(rnd.roster, world.builder()), context=rnd.context, own_device_id=ME
    )
    roster, sybil_key = sybil_roster(world, rnd, victim="dev-b")
    forger = World(tmp_path / "forger", audit_key=world.audit_key)
    for device in COHORT:
        forger.enrol(device, sybil_key if device == "dev-b" else world.identities[device])
    forged = with_evidence(roster, forger.builder())
    # Execute / Assert: a fresh device accepts the forgery (it is in a log auditors check);
    # the device that pinned dev-b's key refuses it, also after a restart
    verifier(forger).check_roster(forged, context=rnd.context, own_device_id=ME)
    with pytest.raises(PeerEvidenceRefused, match="seen with another identity key"):
        verifier(world, memory).check_roster(forged, context=rnd.context, own_device_id=ME)


def test_an_auditor_finds_the_forged_enrolment_the_swap_needs(tmp_path) -> None:
    # Prepare: the coordinator's log, then the forged second enrolment of dev-b it needs
    # to make a Sybil's key pass every device that never saw dev-b before
    world = enrolled_world(tmp_path)
    clean = enrolment_conflicts(world.log.entries_newest_first())
    world.enrol("dev-b", Ed25519PrivateKey.generate())
    world.trail.sign_tree_head()
    # Execute
    found = enrolment_conflicts(world.log.entries_newest_first())
    # Assert: nothing in the honest log; the forgery named with both entries; the log
    # itself still verifies (the forgery is signed, and on the record)
    assert clean == {}
    assert list(found) == [(STUDY, "dev-b")] and len(found[(STUDY, "dev-b")]) == 2
    world.log.close()
    assert verify_log(tmp_path / "audit.jsonl", world.audit_key.public_key()).ok


# -- the participant and the agent ---------------------------------------------------------


def participants(world: World, root: Path, *, checked: bool) -> dict[str, SecAggParticipant]:
    params = make_params(COHORT, threshold=3)
    out = {}
    for device in COHORT:
        out[device] = SecAggParticipant(
            params=params,
            task_id=f"task-{device}",
            device_id=device,
            subset_names=SUBSET,
            model_shapes=SHAPES,
            store=SecAggStore(root / device, device_id=device),
            signing_key=world.identities[device],
            peer_evidence=verifier(world, root / device / "head.json") if checked else None,
        )
    return out


def test_participants_answer_an_honest_roster_and_leave_a_swapped_one(tmp_path) -> None:
    # Prepare: two fills of the same four devices; in the second the coordinator swapped
    # dev-b's keys for a Sybil's
    world = enrolled_world(tmp_path / "coord")
    honest = participants(world, tmp_path / "fill-1", checked=True)
    swapped = participants(world, tmp_path / "fill-2", checked=True)
    rosters = []
    for members in (honest, swapped):
        params = members[ME].params
        server = SecAggServer(
            config=SecAggConfig.from_plain(params.config),
            session=SecAggSession.from_plain(params.session),
        )
        for p in members.values():
            server.receive_advertisement(p.advertise())
        rosters.append(server.close_advertisements())
    sybil = SecAggClient(
        config=swapped[ME].config,
        session=swapped[ME].session,
        device_id="dev-b",
        signing_key=Ed25519PrivateKey.generate(),
    )
    forged = sybil.advertise()
    advs = tuple(forged if a.device_id == "dev-b" else a for a in rosters[1].advertisements)
    rosters[1] = dataclasses.replace(rosters[1], advertisements=advs)
    builder = world.builder()
    honest_roster, swapped_roster = (with_evidence(r, builder) for r in rosters)
    # Execute
    bundles = {d: p.on_roster(honest_roster) for d, p in honest.items()}
    refusals = {}
    for device, p in swapped.items():
        with pytest.raises(PeerEvidenceRefused) as caught:
            p.on_roster(swapped_roster)
        refusals[device] = str(caught.value)
    # Assert: the honest fill goes on (same bundle for a re-sent roster with other evidence);
    # every device of the swapped one refuses and burns its session
    assert all(p.peer_check is PeerCheck.CHECKED for p in honest.values())
    assert all(p.stage is ClientStage.SHARED for p in honest.values())
    resent = dataclasses.replace(honest_roster, evidence=())
    assert honest["dev-c"].on_roster(resent) == bundles["dev-c"]
    assert all(p.stage is ClientStage.ABORTED for p in swapped.values())
    assert "not signed by its enrolled key" in refusals["dev-c"]
    # dev-b itself leaves too: its id stands for the Sybil's keys in the roster
    assert "does not carry this device's own advertisement" in refusals["dev-b"]
    assert set(refusals) == set(COHORT)


def test_a_participant_without_an_audit_key_says_peer_keys_are_unchecked(tmp_path) -> None:
    # Prepare
    world = enrolled_world(tmp_path / "coord")
    members = participants(world, tmp_path / "fill", checked=False)
    params = members[ME].params
    server = SecAggServer(
        config=SecAggConfig.from_plain(params.config),
        session=SecAggSession.from_plain(params.session),
    )
    for p in members.values():
        server.receive_advertisement(p.advertise())
    roster = server.close_advertisements()
    # Execute
    for p in members.values():
        p.on_roster(roster)
    # Assert: answered, and each says its peers' keys were not checked (no silent pass)
    assert [p.peer_check for p in members.values()] == [PeerCheck.UNCHECKED] * len(COHORT)


def test_an_agent_without_an_audit_key_logs_that_peer_keys_are_unchecked(tmp_path, caplog) -> None:
    # Prepare
    broker = InMemoryBroker()
    key_hex = public_key_raw(Ed25519PrivateKey.generate()).hex()

    def agent(name: str, **overrides):
        return make_agent(
            transport=InMemoryTransport(broker, client_id=name, error_policy=ErrorPolicy.LOG),
            study_id=STUDY,
            device_id=name,
            state_dir=tmp_path / name,
            spec=SECAGG_SPEC,
            dataset=random_dataset(SECAGG_SPEC, seed=0),
            seed=0,
            **overrides,
        )

    # Execute
    with caplog.at_level(logging.WARNING, logger="fedward.edge.agent"):
        unchecked = agent("dev-u")
        checked = agent("dev-k", audit_public_key=key_hex)
    # Assert
    assert not unchecked.peer_keys_checked and checked.peer_keys_checked
    warnings = [r.getMessage() for r in caplog.records if "UNCHECKED" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("dev-u:")
    assert checked.peer_evidence is not None and checked.peer_evidence.study_id == STUDY


# -- the whole live path: StudyService + bridge + agents over the in-memory broker ---------


@pytest.mark.slow
def test_agents_provisioned_with_the_audit_key_check_every_roster_and_fills_merge(
    tmp_path,
) -> None:
    # Prepare: the real coordinator (its service binds an EnrolmentEvidence to each
    # secure-aggregation study) and eight agents holding its audit public key
    from fedward.coordinator.mqtt.bridge import StudyBridge
    from fedward.coordinator.service import StudyService
    from fedward.coordinator.settings import CoordinatorSettings
    from fedward.edge.agent import AUDIT_HEAD_PREFIX
    from tests.live.live_helpers import wait_until

    study = "s-evidence"
    broker = InMemoryBroker()
    service = StudyService.open(
        CoordinatorSettings(
            database_url=f"sqlite:///{tmp_path / 'coordinator.db'}",
            data_dir=tmp_path / "coordinator",
            operator_token="peer-evidence-tests-5e4d3c2b1a",
        ),
        seed=0,
    )
    service.create_study(SECAGG_SPEC, study_id=study)
    service.start(study)
    coord = InMemoryTransport(broker, client_id="coordinator", error_policy=ErrorPolicy.LOG)
    bridge = StudyBridge(
        service,
        coord,
        study_id=study,
        dispatch_interval_s=0.1,
        timeout_interval_s=0.5,
        on_reject=service.transport_rejected,
    )
    bridge.start()
    coord.connect()
    audit_key = public_key_raw(service.audit_public_key).hex()
    agents = []
    try:
        for i in range(8):
            device = f"dev{i:02d}"
            agent = make_agent(
                transport=InMemoryTransport(broker, client_id=device, error_policy=ErrorPolicy.LOG),
                study_id=study,
                device_id=device,
                state_dir=tmp_path / device,
                spec=SECAGG_SPEC,
                dataset=random_dataset(SECAGG_SPEC, seed=i),
                seed=i,
                audit_public_key=audit_key,
            )
            agent.start()
            agents.append(agent)
        for agent in agents:
            agent.wait_enrolled(10)
        # Execute
        merged = wait_until(lambda: service.status(study).merges >= 2, timeout=120)
        # Assert: fills merged; every roster an agent answered was checked, none refused;
        # each agent remembers the audit tree head it last accepted
        assert merged, (service.secagg_stats(study), [a.stats for a in agents])
        answered = [a for a in agents if a.stats.secagg_sent["shares"] > 0]
        assert len(answered) >= 4
        assert all(a.stats.rosters_refused == 0 for a in agents), [a.stats for a in agents]
        assert all(a.stats.rosters_unchecked == 0 for a in agents)
        for agent in answered:
            assert agent.peer_evidence is not None and agent.peer_evidence.tree_head is not None
            assert (agent.settings.state_dir / f"{AUDIT_HEAD_PREFIX}{study}.json").exists()
    finally:
        for agent in agents:
            agent.stop()
        bridge.stop()
        service.close()
