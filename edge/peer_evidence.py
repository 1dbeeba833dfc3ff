"""The device's check of its cohort peers' identity keys against the signed audit log.

Why: in secure aggregation every key advertisement reaches a device through
the coordinator. If the device believed whatever identity key the coordinator
named, the coordinator would be the only PKI: it could put a Sybil's keys in
a roster under a real member's id (or swap a member's keys), hold the secrets
behind them and, with the shares it collects, strip that member's pairwise
masks (issue 11). So a device checks each peer's key against something the
coordinator cannot rewrite without leaving a trace: the study's enrolment
records in the signed audit log, which auditors verify.

With each ROSTER the coordinator attaches, per advertised member, evidence
(``fedward.coordinator.store.enrolment_evidence`` builds it; the format is
written there): the member's identity key, its DEVICE_ENROLLED entry (the exact
log line), the entry's RFC 9162 inclusion proof, a signed tree head covering
it and consistency proofs from earlier heads. The device accepts a roster only
if, for every peer:

1. the tree head's signature verifies with the **audit key the device was
   provisioned with** (``AgentSettings.audit_public_key``, set by the operator:
   the coordinator cannot change it, unlike a key it hands out at enrolment);
2. the inclusion proof recomputes that head's root from the entry's leaf hash;
3. the entry is canonical and is a successful enrolment of *that device id* in
   *this study* whose ``key_sha256`` is the SHA-256 of the key in the evidence;
4. the advertisement's Ed25519 signature (over the session context and both
   X25519 keys) verifies with that key;
5. the key is the one this device saw for that peer before, if it saw one
   (keys are pinned per peer: an id never enrols twice with two keys);
6. the tree head is not older than the largest one this device has seen, a
   head of the same size has the same root, and a larger head comes with a
   consistency proof from the remembered one when the coordinator has one.

Anything else refuses the whole roster (:class:`PeerEvidenceRefused`): the
device aborts its part of the fill and the coordinator drops it at the phase
timer. What this does not stop, and who does: the coordinator holds the audit
key, so it *can* append a forged enrolment, but then the forgery sits in the log
auditors verify (an id enrolled twice with two keys is an auditor's finding);
it can show a device a forked log (split view) that the device cannot tell
from the real one when it has no earlier head to compare with, or when a head
arrives without a proof from the one it remembers (counted as ``unproven``,
not refused, since the coordinator cannot know which head each device saw):
only auditors comparing the heads devices saw with the heads they verify
(gossip) rule that out. A revoked device's enrolment stays in the log: keeping
revoked devices out of cohorts is the coordinator's job, and the colluder
bound ``c`` of the threshold covers members that are not honest.

The remembered head and the peer pins live in one small file per study
(atomic, fsynced, checksummed), written before the roster is answered.
"""

from __future__ import annotations

import enum
import hashlib
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from fedward.compliance import (
    AuditAction,
    AuditEntry,
    ConsistencyProof,
    InclusionProof,
    Outcome,
    SignedTreeHead,
    merkle,
)
from fedward.compliance.events import canonical_json
from fedward.errors import EdgeError, SavedStateError
from fedward.privacy.secagg import KeyAdvertisement, KeyRoster
from fedward.privacy.secagg.crypto import advertisement_payload
from fedward.saved_state import open_checked, seal_checked

from .durable import replace_durably

__all__ = [
    "EVIDENCE_FORMAT",
    "HEAD_MEMORY_KIND",
    "PeerCheck",
    "PeerEvidenceRefused",
    "PeerEvidenceVerifier",
    "RosterCheck",
    "audit_key_from_hex",
]

EVIDENCE_FORMAT = "fedward.enrolment-evidence/v1"
"""Must equal ``fedward.coordinator.store.enrolment_evidence.EVIDENCE_FORMAT`` (the
layers do not import each other; a test checks both agree)."""

HEAD_MEMORY_KIND = "fedward.edge.peer_evidence.memory"
HEAD_MEMORY_VERSION = 1
_MEMORY_KEYS = frozenset({"study_id", "audit_key", "tree_size", "root_hash", "peers"})
_EVIDENCE_KEYS = frozenset(
    {"format", "identity_key", "entry", "inclusion", "tree_head", "consistency"}
)

_MAX_CONSISTENCY = 64


class PeerEvidenceRefused(EdgeError):
    """A roster whose peer keys the audit log does not vouch for: the device leaves the fill."""


class HeadMemoryUnreadable(SavedStateError):
    """The remembered tree head file is unreadable or of another study or audit key."""


class PeerCheck(enum.Enum):
    """What a device knows about the identity keys in the roster it answered."""

    CHECKED = "checked"  # every peer's key proven by the signed audit log
    UNCHECKED = "unchecked"  # no audit key pinned on this device: peer keys taken on trust


@dataclass(frozen=True)
class RosterCheck:
    """The outcome of a roster that passed: each peer's identity key (raw 32 bytes), the
    largest tree head seen now, and whether a larger head arrived without a consistency
    proof from the one remembered (possible split view, see the module doc)."""

    keys: Mapping[str, bytes]
    tree_size: int
    unproven_head: bool


def audit_key_from_hex(text: str) -> Ed25519PublicKey:
    """The audit log's Ed25519 public key from its 64 hex characters."""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise PeerEvidenceRefused("the audit public key must be 64 hex characters") from None
    if len(raw) != 32:
        raise PeerEvidenceRefused("the audit public key must be 32 bytes (64 hex characters)")
    return Ed25519PublicKey.from_public_bytes(raw)


@dataclass(frozen=True)
class _Evidence:
    key: bytes
    entry: AuditEntry
    head: SignedTreeHead
    consistency: tuple[ConsistencyProof, ...]


class PeerEvidenceVerifier:
    """Checks rosters of one study against the audit key the device was provisioned with.

    ``memory_path``: where the largest tree head seen and the peer pins are kept
    (None: in memory only, forgotten at restart).
    """

    def __init__(
        self, *, audit_key: Ed25519PublicKey, study_id: str, memory_path: Path | None = None
    ) -> None:
        self.audit_key = audit_key
        self.study_id = study_id
        self.memory_path = memory_path
        self._audit_key_hex = audit_key.public_bytes_raw().hex()
        self._lock = threading.Lock()
        self._head: tuple[int, str] | None = None  # (tree size, root hash hex)
        self._peers: dict[str, str] = {}  # device id -> key sha256 it was seen with
        self.unproven_heads = 0  # larger heads taken without a consistency proof
        if memory_path is not None:
            self._load()

    @property
    def tree_head(self) -> tuple[int, str] | None:
        """(size, root hex) of the largest tree head this device has accepted."""
        with self._lock:
            return self._head

    # -- the check ---------------------------------------------------------------
    def check_roster(self, roster: KeyRoster, *, context: bytes, own_device_id: str) -> RosterCheck:
        """Every peer of ``roster`` proven by the audit log, or PeerEvidenceRefused.

        ``context``: the session context (``crypto.session_context``) the
        advertisements are signed over. Remembers the new head and pins before it
        returns (so a crash after answering cannot forget them).
        """
        advs = tuple(roster.advertisements)
        evidence = tuple(roster.evidence)
        if len(evidence) != len(advs):
            raise PeerEvidenceRefused(
                f"the roster carries {len(evidence)} identity evidence items for "
                f"{len(advs)} members: peer keys cannot be checked against the audit log"
            )
        with self._lock:
            keys: dict[str, bytes] = {}
            heads: dict[tuple[int, str], SignedTreeHead] = {}
            proofs: list[ConsistencyProof] = []
            pins: dict[str, str] = {}
            for adv, blob in zip(advs, evidence, strict=True):
                if adv.device_id == own_device_id:
                    continue  # the client checks its own advertisement byte for byte
                ev = self._peer(adv, blob, context=context, heads=heads)
                keys[adv.device_id] = ev.key
                pins[adv.device_id] = hashlib.sha256(ev.key).hexdigest()
                proofs.extend(ev.consistency)
            head, unproven = self._fresh(heads, proofs)
            self._remember(head, pins)
            if unproven:
                self.unproven_heads += 1
            return RosterCheck(keys=keys, tree_size=head[0] if head else 0, unproven_head=unproven)

    def _peer(
        self,
        adv: KeyAdvertisement,
        blob: bytes,
        *,
        context: bytes,
        heads: dict[tuple[int, str], SignedTreeHead],
    ) -> _Evidence:
        device = adv.device_id
        ev = _parse(blob, device)
        head = ev.head
        named = (head.tree_size, head.root_hash)
        if named not in heads:  # one signature check per distinct head in a roster
            if not head.verify_signature(self.audit_key):
                raise PeerEvidenceRefused(
                    f"the tree head in {device!r}'s evidence is not signed by this device's "
                    "audit key"
                )
            heads[named] = head
        elif heads[named] != head:
            if not head.verify_signature(self.audit_key):
                raise PeerEvidenceRefused(f"a tree head in {device!r}'s evidence is not signed")
        entry = ev.entry
        if not is_enrolment(entry, study_id=self.study_id, device_id=device):
            raise PeerEvidenceRefused(
                f"the audit entry in {device!r}'s evidence is not a successful enrolment of "
                f"{device!r} in study {self.study_id!r}"
            )
        key_sha256 = hashlib.sha256(ev.key).hexdigest()
        if entry.details.get("key_sha256") != key_sha256:
            raise PeerEvidenceRefused(
                f"{device!r} enrolled with another key than the one its evidence names"
            )
        pinned = self._peers.get(device)
        if pinned is not None and pinned != key_sha256:
            raise PeerEvidenceRefused(
                f"{device!r} was seen with another identity key before: an id enrols once"
            )
        if not adv.signature:
            raise PeerEvidenceRefused(f"the advertisement of {device!r} is not signed")
        payload = advertisement_payload(context, device, adv.enc_public_key, adv.mask_public_key)
        try:
            Ed25519PublicKey.from_public_bytes(ev.key).verify(adv.signature, payload)
        except InvalidSignature:
            raise PeerEvidenceRefused(
                f"the advertisement of {device!r} is not signed by its enrolled key"
            ) from None
        return ev

    def _fresh(
        self, heads: Mapping[tuple[int, str], SignedTreeHead], proofs: Sequence[ConsistencyProof]
    ) -> tuple[tuple[int, str] | None, bool]:
        """The largest head after checking every roster head, smallest first, against the
        one known before it (the remembered head to begin with); whether a step up had no
        consistency proof."""
        known = self._head
        unproven = False
        for size, root in sorted(heads):
            if known is None:
                known = (size, root)
                continue
            if size < known[0]:
                raise PeerEvidenceRefused(
                    f"a tree head of {size} entries is older than the {known[0]} this device "
                    "has seen: the coordinator is showing it a rolled-back log"
                )
            if size == known[0]:
                if root != known[1]:
                    raise PeerEvidenceRefused(
                        f"two tree heads of {size} entries with different roots: a forked log"
                    )
                continue
            offered = [
                p
                for p in proofs
                if (p.old_size, p.old_root, p.new_size, p.new_root) == (*known, size, root)
            ]
            if offered:
                if not any(p.verify() for p in offered):
                    raise PeerEvidenceRefused(
                        f"the log of {size} entries is not consistent with the one of "
                        f"{known[0]} entries this device has seen: a forked or rewritten log"
                    )
            else:
                unproven = True
            known = (size, root)
        return known, unproven

    # -- memory --------------------------------------------------------------------
    def _remember(self, head: tuple[int, str] | None, pins: Mapping[str, str]) -> None:
        changed = head != self._head or any(self._peers.get(d) != k for d, k in pins.items())
        if not changed:
            return
        peers = {**self._peers, **pins}
        if self.memory_path is not None:
            self._write(head, peers)
        self._head, self._peers = head, peers

    def _write(self, head: tuple[int, str] | None, peers: Mapping[str, str]) -> None:
        path = self.memory_path
        if path is None:
            return
        content = {
            "study_id": self.study_id,
            "audit_key": self._audit_key_hex,
            "tree_size": head[0] if head else 0,
            "root_hash": head[1] if head else "",
            "peers": dict(sorted(peers.items())),
        }
        data = json.dumps(seal_checked(HEAD_MEMORY_KIND, HEAD_MEMORY_VERSION, content)).encode()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        replace_durably(path, data)

    def _load(self) -> None:
        path = self.memory_path
        if path is None or not path.exists():
            return
        try:
            content = open_checked(
                json.loads(path.read_bytes()),
                kind=HEAD_MEMORY_KIND,
                format_version=HEAD_MEMORY_VERSION,
                keys=_MEMORY_KEYS,
                error=HeadMemoryUnreadable,
            )
        except (ValueError, HeadMemoryUnreadable) as exc:
            # Refuse to start rather than forget: a device that forgot its head would
            # accept a rolled-back log again.
            raise PeerEvidenceRefused(
                f"the remembered tree head {path} is unusable: {exc}"
            ) from None
        if content["study_id"] != self.study_id or content["audit_key"] != self._audit_key_hex:
            raise PeerEvidenceRefused(
                f"the remembered tree head {path} belongs to another study or audit key"
            )
        size, root, peers = content["tree_size"], content["root_hash"], content["peers"]
        if type(size) is not int or size < 0 or not isinstance(root, str):
            raise PeerEvidenceRefused(f"the remembered tree head {path} is malformed")
        if not isinstance(peers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in peers.items()
        ):
            raise PeerEvidenceRefused(f"the remembered peer keys in {path} are malformed")
        self._head = (size, root) if size > 0 else None
        self._peers = dict(peers)


def is_enrolment(entry: AuditEntry, *, study_id: str, device_id: str) -> bool:
    """A successful DEVICE_ENROLLED entry of ``device_id`` in ``study_id`` naming a key."""
    details = entry.details
    return (
        entry.action is AuditAction.DEVICE_ENROLLED
        and entry.outcome is Outcome.SUCCESS
        and entry.study_id == study_id
        and details.get("device_id") == device_id
        and isinstance(details.get("key_sha256"), str)
        and "step" not in details  # an operator's "secret_issued" record is no enrolment
    )


def _parse(blob: bytes, device: str) -> _Evidence:
    """The evidence's parts, each checked for shape, the inclusion proof verified."""
    try:
        body = json.loads(bytes(blob).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise PeerEvidenceRefused(f"no readable identity evidence for {device!r}") from None
    if not isinstance(body, dict) or set(body) != _EVIDENCE_KEYS:
        raise PeerEvidenceRefused(f"the identity evidence of {device!r} is malformed")
    if body["format"] != EVIDENCE_FORMAT:
        raise PeerEvidenceRefused(f"the identity evidence of {device!r} has another format")
    try:
        key = bytes.fromhex(body["identity_key"])
        line = str(body["entry"]).encode("utf-8")
        # The models are strict: parse each part as the JSON it is, as the log's own
        # verifier does (lists for tuples, timestamps as text).
        proof = InclusionProof.model_validate_json(json.dumps(body["inclusion"]))
        head = SignedTreeHead.model_validate_json(json.dumps(body["tree_head"]))
        raw_proofs: Any = body["consistency"]
        if not isinstance(raw_proofs, list) or len(raw_proofs) > _MAX_CONSISTENCY:
            raise ValueError(f"consistency must be a list of at most {_MAX_CONSISTENCY} proofs")
        consistency = tuple(ConsistencyProof.model_validate_json(json.dumps(p)) for p in raw_proofs)
        entry = AuditEntry.model_validate_json(line)
    except (TypeError, ValueError, ValidationError) as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise PeerEvidenceRefused(
            f"the identity evidence of {device!r} is malformed: {detail}"
        ) from None
    if len(key) != 32:
        raise PeerEvidenceRefused(f"the identity key in {device!r}'s evidence is not 32 bytes")
    if canonical_json(entry.model_dump(mode="json")) != line:
        raise PeerEvidenceRefused(f"the audit entry in {device!r}'s evidence is not canonical")
    if (
        proof.seq != entry.seq
        or proof.leaf_hash != merkle.leaf_hash(line).hex()
        or (proof.tree_size, proof.root_hash) != (head.tree_size, head.root_hash)
        or not proof.verify()
    ):
        raise PeerEvidenceRefused(
            f"the inclusion proof in {device!r}'s evidence does not put its enrolment entry "
            "under the signed tree head"
        )
    return _Evidence(key=key, entry=entry, head=head, consistency=consistency)
