"""One JSON error shape for every failure: ``{"error": code, "detail": ...}``.

Why: clients (the CLI, dashboards, scripts) branch on a stable ``error`` code,
not on free text or on FastAPI's default shapes, which differ between
validation errors and HTTP errors. Malformed input is always 422, a missing
study/device/version 404, a lifecycle call in the wrong state 409, and an
unexpected failure a bare 500 without internals.
"""

from __future__ import annotations

import enum
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from fedward.coordinator.access import TokenError, TokenNotFound
from fedward.coordinator.errors import CoordinatorError
from fedward.coordinator.service import (
    DeviceNotFound,
    InvalidStudyId,
    InvalidTransition,
    ModelVersionNotFound,
    NoPrivacyPolicy,
    ServiceError,
    StudyExists,
    StudyNotFound,
)

log = logging.getLogger(__name__)


class ErrorCode(enum.StrEnum):
    VALIDATION_ERROR = "validation_error"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    BODY_TOO_LARGE = "body_too_large"
    TOO_MANY_FAILURES = "too_many_failures"
    TOKEN_NOT_FOUND = "token_not_found"
    NO_TREE_HEAD = "no_tree_head"
    NOT_IN_LOG = "not_in_log"
    MODEL_TOO_LARGE = "model_too_large"
    NOT_FOUND = "not_found"
    STUDY_NOT_FOUND = "study_not_found"
    DEVICE_NOT_FOUND = "device_not_found"
    MODEL_VERSION_NOT_FOUND = "model_version_not_found"
    NO_PRIVACY_POLICY = "no_privacy_policy"
    STUDY_EXISTS = "study_exists"
    INVALID_TRANSITION = "invalid_transition"
    ENROL_REFUSED = "enrol_refused"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    NOT_READY = "not_ready"
    HTTP_ERROR = "http_error"
    INTERNAL = "internal"


class ErrorBody(BaseModel):
    """The body of every error response."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorCode
    detail: Any = None


class ApiError(CoordinatorError):
    """Raise from a route to answer with ``status`` and an :class:`ErrorBody`."""

    def __init__(self, status: int, error: ErrorCode, detail: Any = None) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail


def error_response(
    status: int, error: ErrorCode, detail: Any = None, *, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = ErrorBody(error=error, detail=detail).model_dump(mode="json")
    return JSONResponse(status_code=status, content=body, headers=headers)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI documentation of the error responses a route can give."""
    descriptions = {
        401: "Missing, wrong, expired or revoked token",
        403: "The token's role may not call this route",
        404: "Study, device, model version, privacy policy, token, tree head or log entry "
        "not found",
        409: "Conflict with the study's current state",
        413: "Request body larger than the coordinator accepts",
        422: "Malformed input",
        429: "Too many failed logins from this source (see Retry-After)",
        503: "Not ready",
    }
    return {s: {"model": ErrorBody, "description": descriptions[s]} for s in statuses}


_SERVICE_ERRORS: tuple[tuple[type[ServiceError], int, ErrorCode], ...] = (
    (StudyNotFound, 404, ErrorCode.STUDY_NOT_FOUND),
    (DeviceNotFound, 404, ErrorCode.DEVICE_NOT_FOUND),
    (ModelVersionNotFound, 404, ErrorCode.MODEL_VERSION_NOT_FOUND),
    (NoPrivacyPolicy, 404, ErrorCode.NO_PRIVACY_POLICY),
    (StudyExists, 409, ErrorCode.STUDY_EXISTS),
    (InvalidTransition, 409, ErrorCode.INVALID_TRANSITION),
    (InvalidStudyId, 422, ErrorCode.VALIDATION_ERROR),
)

_HTTP_CODES = {
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    422: ErrorCode.VALIDATION_ERROR,
}


def _validation_detail(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Only location, message and type: the raw input and ``ctx`` may hold bytes or
    # exception objects that are not JSON, and echoing input back is not needed.
    return [
        {
            "loc": [str(part) for part in err.get("loc", ())],
            "msg": str(err.get("msg", "")),
            "type": str(err.get("type", "")),
        }
        for err in exc.errors()
    ]


def _allowed_methods(request: Request) -> list[str]:
    """Every method any route serves on this path (Starlette names only the first route's;
    the app's route table is flat, FastAPI's nested routers are not)."""
    table = getattr(request.app.state, "route_table", None)
    return table.allowed_methods(request.url.path) if table is not None else []


def install_error_handlers(app: FastAPI) -> None:
    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, RequestValidationError):
            raise exc
        return error_response(422, ErrorCode.VALIDATION_ERROR, _validation_detail(exc))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, StarletteHTTPException):
            raise exc
        if exc.status_code == 405:
            allow = ", ".join(_allowed_methods(request))
            return error_response(
                405, ErrorCode.METHOD_NOT_ALLOWED, exc.detail, headers={"Allow": allow}
            )
        if exc.status_code == 400:  # FastAPI could not even parse the body: malformed input
            return error_response(422, ErrorCode.VALIDATION_ERROR, exc.detail)
        code = _HTTP_CODES.get(exc.status_code, ErrorCode.HTTP_ERROR)
        return error_response(
            exc.status_code, code, exc.detail, headers=getattr(exc, "headers", None)
        )

    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, ApiError):
            raise exc
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.status, exc.error, exc.detail, headers=headers)

    async def on_service_error(_: Request, exc: Exception) -> JSONResponse:
        for cls, status, code in _SERVICE_ERRORS:
            if isinstance(exc, cls):
                return error_response(status, code, str(exc.args[0]) if exc.args else None)
        log.error("unmapped service error", exc_info=exc)
        return error_response(500, ErrorCode.INTERNAL)

    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error in the coordinator API", exc_info=exc)
        return error_response(500, ErrorCode.INTERNAL)

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(ApiError, on_api_error)

    async def on_token_error(_: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, TokenNotFound):
            return error_response(404, ErrorCode.TOKEN_NOT_FOUND, str(exc.args[0]))
        return error_response(422, ErrorCode.VALIDATION_ERROR, str(exc))

    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(TokenError, on_token_error)
    app.add_exception_handler(Exception, on_unexpected)
