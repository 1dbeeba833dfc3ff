"""Dependencies of the routes: the service, and the operator's bearer token.

The token is compared with ``hmac.compare_digest`` on bytes, so the time a
wrong guess takes says nothing about how much of it was right.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fedward.coordinator.service import StudyService

from .errors import ApiError, ErrorCode

_bearer = HTTPBearer(auto_error=False, description="Operator API token")


def get_service(request: Request) -> StudyService:
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise ApiError(503, ErrorCode.NOT_READY, "the study service is not running")
    return service


def require_operator(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The operator's identity for the audit log, or 401."""
    expected: bytes = request.app.state.operator_token
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiError(401, ErrorCode.UNAUTHORIZED, "missing bearer token")
    given = credentials.credentials.encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(given, expected):
        raise ApiError(401, ErrorCode.UNAUTHORIZED, "invalid bearer token")
    return "operator"


ServiceDep = Annotated[StudyService, Depends(get_service)]
OperatorDep = Annotated[str, Depends(require_operator)]
