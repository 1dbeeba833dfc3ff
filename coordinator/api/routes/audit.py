"""The audit API (auditor role): events, signed tree heads, proofs, the public key, exports.

Everything here is read from the log's files by
:class:`fedward.compliance.query.AuditReader`, which never writes; the one
call that changes anything, ``POST /v1/audit/tree-head``, asks the log to
sign a head over what it holds now (an entry-free act: no audit record is
added). An auditor verifies all of it offline with the public key alone
(``fedward audit check``): a head's signature, each event's leaf against an
inclusion proof, and a head held from before against a consistency proof.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from fedward.compliance import ActorKind, AuditAction, Outcome, SignedTreeHead, public_key_raw
from fedward.compliance.proofs import ConsistencyProof, InclusionProof
from fedward.compliance.query import MAX_PAGE, EventFilter, ProofRangeError
from fedward.coordinator.service import STUDY_ID_PATTERN

from ..deps import AuditRead, AuditReaderDep, AuditSign, ServiceDep
from ..errors import ApiError, ErrorCode, responses

router = APIRouter(prefix="/audit", tags=["audit"], responses=responses(401, 403, 413, 422, 429))

NDJSON = "application/x-ndjson"
_SIZE = Query(ge=0, le=2**62)
_ACTOR_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"
RFC3339 = (
    r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d"
    r"(\.\d{1,6})?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)$"
)
_TIME = Query(
    pattern=RFC3339,
    description="RFC 3339 with a zone, e.g. 2026-12-01T09:00:00Z",
    json_schema_extra={"format": "date-time"},
)


class AuditEvent(BaseModel):
    leaf_hash: str
    """RFC 9162 leaf hash of the entry's canonical JSON (what the proofs commit to)."""
    entry: dict[str, Any]
    """The entry as stored (seq, ts, actor, action, outcome, study_id, details, prev_hash)."""


class AuditEventPage(BaseModel):
    events: list[AuditEvent]
    tree_size: int
    next_after_seq: int | None
    """Give it as ``after_seq`` for the next page (None: nothing more yet)."""


class PublicKeyView(BaseModel):
    algorithm: str = "Ed25519"
    public_key_hex: str
    """The raw 32-byte key as hex (``fedward audit verify --public-key``)."""


def _range_error(exc: ProofRangeError) -> ApiError:
    # Well-formed, but the log does not hold it (yet): not found, like a missing version.
    return ApiError(404, ErrorCode.NOT_IN_LOG, str(exc))


@router.get("/events", response_model=AuditEventPage, summary="Audit events, filtered, paged")
def events(
    reader: AuditReaderDep,
    _: AuditRead,
    study_id: Annotated[str | None, Query(pattern=STUDY_ID_PATTERN)] = None,
    action: AuditAction | None = None,
    outcome: Outcome | None = None,
    actor_kind: ActorKind | None = None,
    actor_id: Annotated[str | None, Query(pattern=_ACTOR_ID)] = None,
    since: Annotated[str | None, _TIME] = None,
    until: Annotated[str | None, _TIME] = None,
    after_seq: Annotated[int, Query(ge=-1, le=2**62)] = -1,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> AuditEventPage:
    try:  # text, not datetime: FastAPI would read "-2206" as seconds since 1970
        start, end = (datetime.fromisoformat(t) if t else None for t in (since, until))
    except ValueError:
        raise ApiError(422, ErrorCode.VALIDATION_ERROR, "since/until: not a valid time") from None
    where = EventFilter(
        study_id=study_id,
        action=action.value if action else None,
        outcome=outcome.value if outcome else None,
        actor_kind=actor_kind.value if actor_kind else None,
        actor_id=actor_id,
        since=start,
        until=end,
    )
    page = reader.events(where, after_seq=after_seq, limit=limit)
    return AuditEventPage(
        events=[AuditEvent(**e) for e in page.events],
        tree_size=page.tree_size,
        next_after_seq=page.next_after_seq,
    )


@router.get(
    "/tree-head",
    response_model=SignedTreeHead,
    responses=responses(404),
    summary="The latest signed tree head (verified against the log before it is served)",
)
def tree_head(reader: AuditReaderDep, _: AuditRead) -> SignedTreeHead:
    head = reader.latest_head()
    if head is None:
        raise ApiError(404, ErrorCode.NO_TREE_HEAD, "the log has no signed tree head yet")
    return head


@router.post(
    "/tree-head",
    response_model=SignedTreeHead,
    summary="Sign a tree head over the log as it is now, and return it",
)
def sign_tree_head(service: ServiceDep, reader: AuditReaderDep, _: AuditSign) -> SignedTreeHead:
    head = service.sign_audit_head()
    reader.refresh()
    return head


@router.get(
    "/proofs/inclusion",
    response_model=InclusionProof,
    responses=responses(404),
    summary="Proof that entry seq is in the tree of tree_size entries (default: now)",
)
def inclusion(
    reader: AuditReaderDep,
    _: AuditRead,
    seq: Annotated[int, _SIZE],
    tree_size: Annotated[int | None, _SIZE] = None,
) -> InclusionProof:
    try:
        return reader.inclusion(seq=seq, tree_size=tree_size)
    except ProofRangeError as exc:
        raise _range_error(exc) from None


@router.get(
    "/proofs/consistency",
    response_model=ConsistencyProof,
    responses=responses(404),
    summary="Proof that the log of old_size entries is a prefix of the log of new_size",
)
def consistency(
    reader: AuditReaderDep,
    _: AuditRead,
    old_size: Annotated[int, _SIZE],
    new_size: Annotated[int | None, _SIZE] = None,
) -> ConsistencyProof:
    try:
        return reader.consistency(old_size=old_size, new_size=new_size)
    except ProofRangeError as exc:
        raise _range_error(exc) from None


@router.get("/public-key", response_model=PublicKeyView, summary="The log's Ed25519 public key")
def public_key(reader: AuditReaderDep, _: AuditRead) -> PublicKeyView:
    return PublicKeyView(public_key_hex=public_key_raw(reader.public_key).hex())


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={200: {"content": {NDJSON: {"schema": {"type": "string"}}}}, **responses(404)},
    summary="The entry lines up to tree_size (default: all), as fedward audit verify reads them",
)
def export_entries(
    reader: AuditReaderDep, _: AuditRead, tree_size: Annotated[int | None, _SIZE] = None
) -> StreamingResponse:
    try:
        lines = list(reader.export_entries(tree_size=tree_size))
    except ProofRangeError as exc:
        raise _range_error(exc) from None
    return StreamingResponse(
        iter(lines),
        media_type=NDJSON,
        headers={"Content-Disposition": 'attachment; filename="coordinator.jsonl"'},
    )


@router.get(
    "/export/tree-heads",
    response_class=StreamingResponse,
    responses={200: {"content": {NDJSON: {"schema": {"type": "string"}}}}},
    summary="The verified signed tree heads (the .sth file beside an export)",
)
def export_tree_heads(reader: AuditReaderDep, _: AuditRead) -> StreamingResponse:
    return StreamingResponse(
        iter(list(reader.export_tree_heads())),
        media_type=NDJSON,
        headers={"Content-Disposition": 'attachment; filename="coordinator.jsonl.sth"'},
    )
