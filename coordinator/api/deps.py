"""Dependencies of the routes: the service, the audit reader, and the caller.

Each route takes its caller as one of the aliases below, which names the one
:class:`~fedward.coordinator.access.Permission` the route needs; the access
middleware (:mod:`.access`) has already refused, before the body was read, a
caller whose role lacks it, and the dependency checks again.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from fedward.compliance.query import AuditReader
from fedward.coordinator.access import Permission, Principal, TokenStore
from fedward.coordinator.service import StudyService

from .access import requires
from .errors import ApiError, ErrorCode


def get_service(request: Request) -> StudyService:
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise ApiError(503, ErrorCode.NOT_READY, "the study service is not running")
    return service


def get_tokens(request: Request) -> TokenStore:
    tokens = getattr(request.app.state, "tokens", None)
    if tokens is None:
        raise ApiError(503, ErrorCode.NOT_READY, "the study service is not running")
    return tokens


def get_audit_reader(request: Request) -> AuditReader:
    reader = getattr(request.app.state, "audit_reader", None)
    if reader is None:
        raise ApiError(503, ErrorCode.NOT_READY, "the study service is not running")
    return reader


ServiceDep = Annotated[StudyService, Depends(get_service)]
TokensDep = Annotated[TokenStore, Depends(get_tokens)]
AuditReaderDep = Annotated[AuditReader, Depends(get_audit_reader)]

StudiesRead = Annotated[Principal, requires(Permission.STUDIES_READ)]
StudiesWrite = Annotated[Principal, requires(Permission.STUDIES_WRITE)]
ModelsRead = Annotated[Principal, requires(Permission.MODELS_READ)]
EvaluationsWrite = Annotated[Principal, requires(Permission.EVALUATIONS_WRITE)]
BudgetsRead = Annotated[Principal, requires(Permission.BUDGETS_READ)]
LineageRead = Annotated[Principal, requires(Permission.LINEAGE_READ)]
DevicesRead = Annotated[Principal, requires(Permission.DEVICES_READ)]
DevicesWrite = Annotated[Principal, requires(Permission.DEVICES_WRITE)]
TokensRead = Annotated[Principal, requires(Permission.TOKENS_READ)]
TokensWrite = Annotated[Principal, requires(Permission.TOKENS_WRITE)]
AuditRead = Annotated[Principal, requires(Permission.AUDIT_READ)]
AuditSign = Annotated[Principal, requires(Permission.AUDIT_SIGN)]
