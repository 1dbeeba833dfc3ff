"""Rosters carry each member's enrolment evidence from the signed audit log (issue 11).

The real engine under a SecAggPolicy, its ``secagg_identity_evidence`` hook built by
``EnrolmentEvidence`` over a real JSONL audit log written through the AuditTrail, and
real edge ``SecAggParticipant`` devices (Ed25519 identities, file stores, each with its
own ``PeerEvidenceVerifier`` pinned to the audit key). Every downlink and uplink step
goes through the SecAgg wire codec, as on MQTT.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedward.compliance import AuditLog, public_key_raw, verify_log
from fedward.coordinator import audit
from fedward.coordinator.engine import Engine
from fedward.coordinator.engine.planning import SubsetMode, SubsetPlanner
from fedward.coordinator.secagg import FillStep, SecAggPolicy
from fedward.coordinator.store.audit_trail import AuditTrail
from fedward.coordinator.store.enrolment_evidence import EnrolmentEvidence
from fedward.coordinator.strategies import FedBuff
from fedward.edge.peer_evidence import PeerCheck, PeerEvidenceRefused, PeerEvidenceVerifier
from fedward.edge.secagg import SecAggParticipant
from fedward.edge.secagg_store import SecAggStore
from fedward.privacy.secagg import (
    ClientStage,
    KeyAdvertisement,
    KeyRoster,
    MaskedInput,
    SecAggClient,
    ShareBundle,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
    wire,
)
from fedward.protocol.messages import SecAggPhase
from fedward.tinytrain.subsets import SubsetLadder

STUDY = "study-ev"
SHAPES = {"layer.weight": (4, 3), "layer.bias": (3,)}
BUFFER, DROPOUT, COHORT, TIMEOUT = 4, 0.34, 7, 30.0  # cohort 7, threshold 5
SCALE = float(1 << 16)
_DOWN = {
    SecAggPhase.ROSTER: KeyRoster,
    SecAggPhase.DELIVERY: ShareDelivery,
    SecAggPhase.UNMASK_REQUEST: UnmaskRequest,
}
_UP = {
    KeyAdvertisement: SecAggPhase.ADVERTISE,
    ShareBundle: SecAggPhase.SHARES,
    MaskedInput: SecAggPhase.MASKED_INPUT,
    UnmaskResponse: SecAggPhase.UNMASK_RESPONSE,
}


def wire_copy(message, cls):
    """The message as the receiver decodes it from the bytes that travel."""
    return wire.decode_message(wire.encode_message(message), cls)


class Coordinator:
    """A study's audit log with its devices' enrolments, and the engine using it."""

    def __init__(self, root: Path, devices: list[str], *, log_enrolment=None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        ticks = itertools.count(1_790_000_000)
        self.audit_key = Ed25519PrivateKey.generate()
        self.log = AuditLog.open(
            root / "audit.jsonl", signing_key=self.audit_key, clock=lambda: float(next(ticks))
        )
        self.trail = AuditTrail(self.log)
        self.identities = {d: Ed25519PrivateKey.generate() for d in devices}
        self.evidence = EnrolmentEvidence(
            log=self.log,
            study_id=STUDY,
            public_key_of=lambda d: public_key_raw(self.identities[d]),
            sign_tree_head=self.trail.sign_tree_head,
        )
        params = {n: np.zeros(s, np.float32) for n, s in SHAPES.items()}
        ladder = SubsetLadder({"layer": list(SHAPES)})
        self.engine = Engine(
            params=params,
            strategy=FedBuff(shapes=SHAPES, buffer_size=BUFFER),
            planner=SubsetPlanner(ladder, footprint_bytes=lambda s: 1, mode=SubsetMode.FULL),
            concurrency=1,
            rng=random.Random(0),
            secagg=SecAggPolicy(
                buffer_size=BUFFER,
                expected_dropout=DROPOUT,
                scale=SCALE,
                clip=4.0,
                phase_timeout_s=TIMEOUT,
            ),
            random_bytes=os.urandom,
            secagg_identity_keys=lambda d: self.identities[d].public_key(),
            secagg_identity_evidence=self.evidence,
        )
        self.trail.write(audit.task_declined("someone", "t-0"), study_id=STUDY)
        for device in devices:
            if log_enrolment is None or log_enrolment(device):
                key_sha256 = hashlib.sha256(public_key_raw(self.identities[device])).hexdigest()
                entry = audit.device_enrolment(
                    device_id=device,
                    device_class="phone",
                    memory_bytes=1 << 20,
                    key_sha256=key_sha256,
                    refusal=None,
                )
                self.trail.write(entry, study_id=STUDY)
            self.engine.enrol(device, device_class="phone", memory_bytes=1 << 20, now=0.0)


class Fleet:
    """Edge participants answering the engine's fill steps; ``tamper`` is the coordinator
    changing a roster after the engine built it (a malicious relay)."""

    def __init__(self, coord: Coordinator, root: Path, *, tamper=None) -> None:
        self.coord = coord
        self.root = root
        self.tamper = tamper
        self.now = 1.0
        self.members: dict[str, SecAggParticipant] = {}  # task id -> participant
        self.deltas: dict[str, dict[str, np.ndarray]] = {}
        self.refused: dict[str, str] = {}
        self.rosters: list[KeyRoster] = []
        self.merges: list = []
        self.aborted: list[str] = []
        self._rng = np.random.default_rng(3)  # update values (test data), never masks

    def open_fill(self) -> None:
        engine = self.coord.engine
        for order in engine.dispatch(now=self.now):
            device = order.device_id
            p = SecAggParticipant(
                params=engine.secagg_params(order),
                task_id=order.task_id,
                device_id=device,
                subset_names=order.subset.names,
                model_shapes=SHAPES,
                store=SecAggStore(self.root / device, device_id=device),
                signing_key=self.coord.identities[device],
                peer_evidence=PeerEvidenceVerifier(
                    audit_key=self.coord.audit_key.public_key(),
                    study_id=STUDY,
                    memory_path=self.root / device / "audit-head.json",
                ),
            )
            self.members[order.task_id] = p
            self.deltas[order.task_id] = {
                n: self._rng.normal(0.0, 0.3, SHAPES[n]).astype(np.float32)
                for n in order.subset.names
            }
        for task_id, p in self.members.items():
            self.send(task_id, p.advertise())
        for task_id, p in self.members.items():  # trained: masked now if already delivered
            if not p.awaiting_update:
                continue
            delta = self.deltas[task_id]
            energy = float(np.mean([np.mean(v.astype(np.float64) ** 2) for v in delta.values()]))
            masked = p.mask(delta, energy=energy)
            if masked is not None:
                self.send(task_id, masked)

    def send(self, task_id: str, message: object) -> None:
        p = self.members[task_id]
        step = self.coord.engine.secagg_receive(
            device_id=p.device_id,
            task_id=task_id,
            phase=_UP[type(message)],
            message=wire_copy(message, type(message)),
            now=self.now,
        )
        self.handle(step)

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.handle(self.coord.engine.secagg_tick(now=self.now))

    def handle(self, step: FillStep) -> None:
        self.merges.extend(step.merges)
        self.aborted.extend(step.aborted)
        for out in step.outbound:
            p = self.members[out.task_id]
            if out.phase is SecAggPhase.ABORT:
                p.on_abort()
                continue
            message = out.message
            if out.phase is SecAggPhase.ROSTER:
                if self.tamper is not None:
                    message = self.tamper(message)
                self.rosters.append(message)
            message = wire_copy(message, _DOWN[out.phase])
            answer: object | None
            if out.phase is SecAggPhase.ROSTER:
                try:
                    answer = p.on_roster(message)
                except PeerEvidenceRefused as exc:
                    self.refused[p.device_id] = str(exc)
                    continue
            elif out.phase is SecAggPhase.DELIVERY:
                answer = p.on_delivery(message)
            else:
                answer = p.on_unmask(message)
            if answer is not None:
                self.send(out.task_id, answer)

    def run(self) -> None:
        self.open_fill()
        for _ in range(4):
            self.tick(TIMEOUT + 1.0)


def devices() -> list[str]:
    return [f"dev-{i:02d}" for i in range(COHORT)]


@pytest.mark.parametrize("hook_set", ["at construction", "on the book after dispatch"])
def test_an_honest_roster_with_evidence_passes_and_the_fill_merges(tmp_path, hook_set) -> None:
    # Prepare (the service sets the hook on the engine's fill book once a study runs)
    coord = Coordinator(tmp_path / "coord", devices())
    fleet = Fleet(coord, tmp_path / "devices")
    base = {n: v.astype(np.float64) for n, v in coord.engine.params.items()}
    book = coord.engine.fills
    assert book is not None
    if hook_set != "at construction":
        book.identity_evidence = None
    # Execute
    if hook_set != "at construction":
        original = fleet.send

        def set_hook_once_dispatched(task_id: str, message: object) -> None:
            book.identity_evidence = coord.evidence
            original(task_id, message)

        fleet.send = set_hook_once_dispatched  # type: ignore[method-assign]
    fleet.run()
    # Assert: every roster member carried evidence; every device checked it and answered;
    # one merge of all seven equal to the plaintext mean (FedBuff, staleness 0)
    (roster,) = {wire.encode_message(r) for r in fleet.rosters}
    roster = wire.decode_message(roster, KeyRoster)
    assert len(roster.evidence) == len(roster.advertisements) == COHORT
    assert all(json.loads(e)["identity_key"] for e in roster.evidence)
    assert fleet.refused == {}
    assert all(p.peer_check is PeerCheck.CHECKED for p in fleet.members.values())
    assert len(fleet.merges) == 1 and len(fleet.merges[0].device_ids) == COHORT
    mean = {
        n: np.mean([d[n].astype(np.float64) for d in fleet.deltas.values()], axis=0) for n in SHAPES
    }
    for name in SHAPES:
        np.testing.assert_allclose(
            coord.engine.params[name], base[name] + mean[name], atol=4.0 / SCALE
        )
    head = coord.evidence.tree_head
    assert (
        head is not None
        and json.loads(roster.evidence[0])["tree_head"]["tree_size"] == head.tree_size
    )
    coord.log.close()
    assert verify_log(tmp_path / "coord" / "audit.jsonl", coord.audit_key.public_key()).ok


def test_a_swapped_member_key_is_refused_by_every_honest_device_and_nothing_merges(
    tmp_path,
) -> None:
    # Prepare: the coordinator relays a roster in which a Sybil advertises under a real
    # member's id (signed with the Sybil's own key for this session), with the evidence
    # the audit log gives for that id
    coord = Coordinator(tmp_path / "coord", devices())
    victim = "dev-03"
    sybil_key = Ed25519PrivateKey.generate()

    def swap(roster: KeyRoster) -> KeyRoster:
        some = next(p for p in fleet.members.values() if p.device_id == victim)
        sybil = SecAggClient(
            config=some.config, session=some.session, device_id=victim, signing_key=sybil_key
        )
        forged = sybil.advertise()
        advs = tuple(forged if a.device_id == victim else a for a in roster.advertisements)
        return dataclasses.replace(roster, advertisements=advs)

    fleet = Fleet(coord, tmp_path / "devices", tamper=swap)
    # Execute
    fleet.run()
    # Assert: every device refused the roster (the victim too), burnt its session, sent no
    # shares; the engine dropped them all at the phase timer and merged nothing
    assert set(fleet.refused) == set(devices())
    others = {d: r for d, r in fleet.refused.items() if d != victim}
    assert all("is not signed by its enrolled key" in r for r in others.values()), others
    assert "own advertisement" in fleet.refused[victim]
    assert all(p.stage is ClientStage.ABORTED for p in fleet.members.values())
    assert fleet.merges == [] and coord.engine.version == 0
    assert len(fleet.aborted) == 1 and not coord.engine.tasks


def test_a_member_without_an_enrolment_in_the_log_gets_no_evidence_and_the_roster_is_refused(
    tmp_path,
) -> None:
    # Prepare: the engine knows dev-05 (and its key) but the audit log holds no enrolment
    coord = Coordinator(tmp_path / "coord", devices(), log_enrolment=lambda d: d != "dev-05")
    fleet = Fleet(coord, tmp_path / "devices")
    # Execute
    fleet.run()
    # Assert: the hook gave empty evidence for it; every other device refused the roster
    (roster,) = {wire.encode_message(r) for r in fleet.rosters}
    roster = wire.decode_message(roster, KeyRoster)
    empty = [
        a.device_id for a, e in zip(roster.advertisements, roster.evidence, strict=True) if not e
    ]
    assert empty == ["dev-05"]
    assert set(fleet.refused) == set(devices()) - {"dev-05"}
    assert fleet.merges == [] and coord.engine.version == 0


def test_a_restored_fill_re_sends_its_roster_with_evidence(tmp_path) -> None:
    # Prepare: a fill in its SHARES phase (two members have not answered), through JSON
    # into a new engine with the same evidence hook
    coord = Coordinator(tmp_path / "coord", devices())
    fleet = Fleet(coord, tmp_path / "devices")
    held: list = []
    late = {"dev-00", "dev-01"}

    original = fleet.handle

    def hold_late_rosters(step: FillStep) -> None:
        keep = [o for o in step.outbound if o.phase is SecAggPhase.ROSTER and o.device_id in late]
        held.extend(keep)
        original(
            dataclasses.replace(step, outbound=tuple(o for o in step.outbound if o not in keep))
        )

    fleet.handle = hold_late_rosters  # type: ignore[method-assign]
    fleet.open_fill()
    state = json.loads(json.dumps(coord.engine.state_dict()))
    versions = {v: coord.engine.base_params(v) for v in coord.engine.live_versions()}
    # a restarted coordinator: a new engine on the same audit log, a new evidence builder
    twin_engine = Engine(
        params={n: np.zeros(s, np.float32) for n, s in SHAPES.items()},
        strategy=FedBuff(shapes=SHAPES, buffer_size=BUFFER),
        planner=coord.engine.planner,
        concurrency=1,
        rng=random.Random(1),
        secagg=coord.engine.fills.policy,
        random_bytes=os.urandom,
        secagg_identity_keys=lambda d: coord.identities[d].public_key(),
        secagg_identity_evidence=EnrolmentEvidence(
            log=coord.log,
            study_id=STUDY,
            public_key_of=lambda d: public_key_raw(coord.identities[d]),
            sign_tree_head=coord.trail.sign_tree_head,
        ),
    )
    twin_engine.load_state_dict(state, versions=versions)
    coord.engine = twin_engine
    fleet.handle = original  # type: ignore[method-assign]
    fleet.rosters.clear()
    # Execute: the restored fill's timer re-sends the roster to the two that did not answer
    fleet.tick(1.0)
    for _ in range(3):
        fleet.tick(TIMEOUT + 1.0)
    # Assert: re-sent with evidence, checked, and the fill merged all seven
    assert len(fleet.rosters) == 2 and all(len(r.evidence) == COHORT for r in fleet.rosters)
    assert fleet.refused == {} and len(fleet.merges) == 1
    assert len(fleet.merges[0].device_ids) == COHORT


@pytest.mark.parametrize("keep_heads", [0, 8])
def test_the_builder_moves_its_head_forward_and_proves_it_consistent(tmp_path, keep_heads) -> None:
    # Prepare
    coord = Coordinator(tmp_path / "coord", devices()[:3])
    builder = EnrolmentEvidence(
        log=coord.log,
        study_id=STUDY,
        public_key_of=lambda d: public_key_raw(coord.identities[d]),
        sign_tree_head=coord.trail.sign_tree_head,
        keep_heads=keep_heads,
    )
    first = json.loads(builder("dev-00"))
    late = Ed25519PrivateKey.generate()
    coord.identities["dev-late"] = late
    coord.trail.write(
        audit.device_enrolment(
            device_id="dev-late",
            device_class="phone",
            memory_bytes=1,
            key_sha256=hashlib.sha256(public_key_raw(late)).hexdigest(),
            refusal=None,
        ),
        study_id=STUDY,
    )
    # Execute
    again = json.loads(builder("dev-00"))  # still covered: same head
    newer = json.loads(builder("dev-late"))  # not covered: a new head is signed
    # Assert
    assert again["tree_head"] == first["tree_head"] and again["consistency"] == []
    assert newer["tree_head"]["tree_size"] > first["tree_head"]["tree_size"]
    proofs = newer["consistency"]
    if keep_heads:
        assert [p["old_size"] for p in proofs] == [first["tree_head"]["tree_size"]]
    else:
        assert proofs == []
    assert builder("nobody") == b""
