"""Evidence, from the signed audit log, of which identity key each device enrolled with.

Why: in secure aggregation the coordinator relays every key advertisement, so
without a second source it is the only PKI: it could put a Sybil's keys in a
roster under a real member's id (or swap a member's keys) and learn that
member's pairwise masks. The audit log is that second source. Each successful
enrolment is a DEVICE_ENROLLED entry holding the device id, the study and the
SHA-256 of the device's Ed25519 public key (``fedward.coordinator.audit
.device_enrolment``); the log is an RFC 9162 Merkle tree whose heads are signed
with the audit key, and auditors verify it. A roster member's *evidence* is::

    canonical JSON {
      "format": "fedward.enrolment-evidence/v1",
      "identity_key": hex of the 32-byte Ed25519 public key,
      "entry": the entry's exact log line (the Merkle leaf),
      "inclusion": InclusionProof of the entry in the head's tree,
      "tree_head": SignedTreeHead over that tree,
      "consistency": [ConsistencyProof from each earlier head handed out here]
    }

The device (``fedward.edge.peer_evidence``) checks the head's signature with
the audit key it was provisioned with, the proof, that the entry is this
study's successful enrolment of that device id with that key, and the
advertisement's signature with the key. To swap a member's key the coordinator
must then append a forged enrolment to the log it signs and auditors verify;
to hide it from them it must show devices a different tree (split view), which
the consistency proofs let each device catch against the heads it has seen
before, and which only auditors comparing heads (gossip) rule out completely.

The builder keeps one *evidence head*: the newest signed head, or a new one
signed when a member's enrolment is not covered yet (``sign_tree_head`` must
make the log durable first, as ``AuditTrail.sign_tree_head`` does: a head must
never cover entries a crash could lose). Heads it handed out before stay
remembered (``keep_heads``), and each evidence carries consistency proofs from
them to the current head.

Cost: the log is scanned once, then only its new entries (newest first, parsed
until the last one already indexed); an evidence is about 2-3 KB (the proof
holds log2(n) hashes).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from fedward.compliance import (
    AuditAction,
    AuditEntry,
    AuditLog,
    ComplianceError,
    Outcome,
    SignedTreeHead,
    merkle,
    sha256_hex,
)
from fedward.compliance.events import canonical_json

__all__ = ["EVIDENCE_FORMAT", "EnrolmentEvidence", "enrolment_conflicts", "is_enrolment_of"]

log = logging.getLogger(__name__)

EVIDENCE_FORMAT = "fedward.enrolment-evidence/v1"
"""The ``format`` field of every evidence (``fedward.edge.peer_evidence`` reads it)."""

PublicKeyOf = Callable[[str], bytes | None]
"""device id -> the 32-byte Ed25519 public key it enrolled with (None: unknown)."""


def is_enrolment_of(entry: AuditEntry, *, study_id: str) -> bool:
    """True for a successful DEVICE_ENROLLED entry of ``study_id`` that names a key."""
    details = entry.details
    return (
        entry.action is AuditAction.DEVICE_ENROLLED
        and entry.outcome is Outcome.SUCCESS
        and entry.study_id == study_id
        and isinstance(details.get("device_id"), str)
        and isinstance(details.get("key_sha256"), str)
        and "step" not in details  # an operator's "secret_issued" record is not an enrolment
    )


def enrolment_conflicts(entries: Iterable[AuditEntry]) -> dict[tuple[str, str], list[int]]:
    """The auditor's check behind the evidence: (study, device id) -> the seqs of its
    successful enrolments, for every id enrolled with more than one key.

    The service never enrols an id twice with two keys (a second key is refused as
    impersonation), so any hit is a forged enrolment: the trace a coordinator leaves
    when it slips a Sybil's key into a roster under a member's id.
    """
    keys: dict[tuple[str, str], dict[str, int]] = {}
    for entry in entries:
        if entry.study_id is None or not is_enrolment_of(entry, study_id=entry.study_id):
            continue
        named = (entry.study_id, str(entry.details["device_id"]))
        keys.setdefault(named, {}).setdefault(str(entry.details["key_sha256"]), entry.seq)
    return {
        named: sorted(by_key.values()) for named, by_key in sorted(keys.items()) if len(by_key) > 1
    }


class EnrolmentEvidence:
    """``__call__(device_id) -> bytes``: the evidence of one member of ``study_id``.

    The Engine's ``secagg_identity_evidence`` hook. Returns ``b""`` when no
    evidence can be built (no enrolment entry, a key that is not the enrolled
    one, a broken log): the members then refuse the roster, never accept it
    unchecked.
    """

    def __init__(
        self,
        *,
        log: AuditLog,
        study_id: str,
        public_key_of: PublicKeyOf,
        sign_tree_head: Callable[[], SignedTreeHead] | None = None,
        keep_heads: int = 8,
    ) -> None:
        if keep_heads < 0:
            raise ValueError(f"keep_heads must be >= 0, got {keep_heads}")
        self._log = log
        self.study_id = study_id
        self._public_key_of = public_key_of
        self._sign = sign_tree_head if sign_tree_head is not None else self._sign_durably
        self._lock = threading.Lock()
        self._index: dict[str, tuple[int, bytes, str]] = {}  # device -> (seq, line, key hash)
        self._scanned = 0  # entries below this seq are indexed
        self._head: SignedTreeHead | None = None
        self._earlier: deque[SignedTreeHead] = deque(maxlen=keep_heads)
        self._consistency: dict[int, dict[str, Any]] = {}  # old size -> proof to self._head

    def _sign_durably(self) -> SignedTreeHead:
        self._log.sync()
        return self._log.sign_tree_head()

    def __call__(self, device_id: str) -> bytes:
        try:
            with self._lock:
                return self._evidence(device_id)
        except (ComplianceError, OSError, ValueError) as exc:
            log.error("no enrolment evidence for %s in %s: %s", device_id, self.study_id, exc)
            return b""

    @property
    def tree_head(self) -> SignedTreeHead | None:
        """The head the evidence is currently built against."""
        with self._lock:
            return self._head

    # -- internals -----------------------------------------------------------------
    def _evidence(self, device_id: str) -> bytes:
        found = self._index.get(device_id)
        if found is None:
            self._scan()
            found = self._index.get(device_id)
        if found is None:
            log.error("%s has no enrolment of %s in the audit log", self.study_id, device_id)
            return b""
        seq, line, key_sha256 = found
        key = self._public_key_of(device_id)
        if key is None or sha256_hex(bytes(key)) != key_sha256:
            log.error("the key of %s is not the one its enrolment entry names", device_id)
            return b""
        head = self._head_covering(seq)
        proof = self._log.prove_inclusion(seq=seq, tree_size=head.tree_size)
        if proof.root_hash != head.root_hash or proof.leaf_hash != merkle.leaf_hash(line).hex():
            raise ComplianceError(f"the log does not prove entry {seq} under its own tree head")
        body = {
            "format": EVIDENCE_FORMAT,
            "identity_key": bytes(key).hex(),
            "entry": line.decode("utf-8"),
            "inclusion": proof.model_dump(mode="json"),
            "tree_head": head.model_dump(mode="json"),
            "consistency": [self._consistency[h.tree_size] for h in self._earlier],
        }
        return canonical_json(body)

    def _scan(self) -> None:
        """Index the enrolments appended since the last scan (first one per device wins)."""
        new: list[AuditEntry] = []
        for entry in self._log.entries_newest_first():
            if entry.seq < self._scanned:
                break
            new.append(entry)
        for entry in reversed(new):
            if is_enrolment_of(entry, study_id=self.study_id):
                device = str(entry.details["device_id"])
                line = canonical_json(entry.model_dump(mode="json"))
                self._index.setdefault(device, (entry.seq, line, str(entry.details["key_sha256"])))
        if new:
            self._scanned = new[0].seq + 1

    def _head_covering(self, seq: int) -> SignedTreeHead:
        """The evidence head, moved to the log's newest signed head, signed anew if it
        does not cover ``seq`` yet."""
        latest = self._log.latest_tree_head
        if latest is None or latest.tree_size <= seq:
            latest = self._sign()
        if self._head is None or latest.tree_size > self._head.tree_size:
            self._move_to(latest)
            return latest
        return self._head

    def _move_to(self, head: SignedTreeHead) -> None:
        if self._head is not None and self._earlier.maxlen != 0:
            self._earlier.append(self._head)
        self._head = head
        self._consistency = {}
        for earlier in self._earlier:
            proof = self._log.prove_consistency(old_size=earlier.tree_size, new_size=head.tree_size)
            self._consistency[earlier.tree_size] = proof.model_dump(mode="json")
