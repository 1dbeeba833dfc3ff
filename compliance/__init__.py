"""fedward compliance: tamper-evident audit log and model lineage.

Layering (floor 2): imports the standard library, pydantic, cryptography,
floor 0 (:mod:`fedward.errors`, :mod:`fedward.saved_state`) and, for budget
reports only, :mod:`fedward.privacy` (matplotlib only inside ``plot_budget``);
nothing from the coordinator, edge, protocol or simulation layers, so any of
them can audit without import cycles.

* :mod:`fedward.compliance.events`   typed audit events and the health-data guard
* :mod:`fedward.compliance.log`      :class:`AuditLog` (hash chain + RFC 9162 tree +
  signed tree heads)
* :mod:`fedward.compliance.verify`   :func:`verify_log` and its report
* :mod:`fedward.compliance.store`    JSONL and in-memory storage
* :mod:`fedward.compliance.proofs`   receipts, signed tree heads, inclusion/consistency
  proofs
* :mod:`fedward.compliance.merkle`   RFC 9162 Merkle tree (``merkle_reference``: slow
  check)
* :mod:`fedward.compliance.lineage`  :class:`ModelLineage`
* :mod:`fedward.compliance.keys`     Ed25519 key files (0600, refused if exposed)
* :mod:`fedward.compliance.reports`  privacy budget reports (JSON, PNG)
* :mod:`fedward.compliance.errors`   :class:`ComplianceError` and its subtree
"""

from fedward.compliance.errors import (
    AuditIntegrityError,
    AuditStoreBusy,
    ComplianceError,
    ForbiddenAuditContent,
    KeyFileError,
    LineageError,
    LineageStateError,
)
from fedward.compliance.events import (
    Actor,
    ActorKind,
    AuditAction,
    AuditEntry,
    AuditEvent,
    Outcome,
    check_details,
    privacy_details,
    sha256_hex,
)
from fedward.compliance.keys import (
    create_signing_key,
    load_or_create_signing_key,
    load_signing_key,
    public_key_from_raw,
    public_key_hex,
    public_key_raw,
)
from fedward.compliance.lineage import ModelLineage, ModelVersion
from fedward.compliance.log import AuditLog, AuditLogState
from fedward.compliance.proofs import AuditReceipt, ConsistencyProof, InclusionProof, SignedTreeHead
from fedward.compliance.store import AuditStore, JsonlAuditStore, MemoryAuditStore, TornTail
from fedward.compliance.verify import (
    AuditProblem,
    ProblemKind,
    VerificationReport,
    latest_tree_head,
    verify_log,
)

__all__ = [
    "Actor",
    "ActorKind",
    "AuditAction",
    "AuditEntry",
    "AuditEvent",
    "AuditIntegrityError",
    "AuditLog",
    "AuditLogState",
    "AuditProblem",
    "AuditReceipt",
    "AuditStore",
    "AuditStoreBusy",
    "ComplianceError",
    "ConsistencyProof",
    "ForbiddenAuditContent",
    "InclusionProof",
    "JsonlAuditStore",
    "KeyFileError",
    "LineageError",
    "LineageStateError",
    "MemoryAuditStore",
    "ModelLineage",
    "ModelVersion",
    "Outcome",
    "ProblemKind",
    "SignedTreeHead",
    "TornTail",
    "VerificationReport",
    "check_details",
    "create_signing_key",
    "latest_tree_head",
    "load_or_create_signing_key",
    "load_signing_key",
    "privacy_details",
    "public_key_from_raw",
    "public_key_hex",
    "public_key_raw",
    "sha256_hex",
    "verify_log",
]
