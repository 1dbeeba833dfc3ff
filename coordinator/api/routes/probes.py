"""Unauthenticated probes: liveness, readiness and Prometheus metrics.

``/healthz`` says only that the process answers; ``/readyz`` that the database
answers and its schema is at the newest migration (a coordinator on an old
schema must not take traffic); ``/metrics`` exposes counters, never data:
summed over studies without a token, per study (ids as labels) with a token
that holds ``metrics:read`` (a wrong token is 401 and counts as a failed login).
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fedward.coordinator.access import Permission, Principal
from fedward.coordinator.migrations import is_at_head

from ..errors import ApiError, ErrorCode, responses
from ..schemas import Health

log = logging.getLogger(__name__)
router = APIRouter(tags=["probes"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses=responses(503),
    summary="Database reachable and migrated to head",
)
def readyz(request: Request) -> Health:
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise ApiError(503, ErrorCode.NOT_READY, "the study service is not running")
    try:
        service.repository.ping()
        at_head = is_at_head(service.repository.engine)
    except Exception as exc:
        log.warning("readiness check failed: %r", exc)
        raise ApiError(503, ErrorCode.NOT_READY, "database unreachable") from None
    if not at_head:
        raise ApiError(503, ErrorCode.NOT_READY, "database schema is not at the newest migration")
    return Health(status="ready")


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}},
        **responses(401, 429),
    },
    summary="Prometheus metrics (per study with a metrics:read token, totals without)",
)
def metrics(request: Request) -> Response:
    principal = getattr(request.state, "principal", None)  # set by the access middleware
    allowed = isinstance(principal, Principal) and principal.may(Permission.METRICS_READ)
    registry = request.app.state.metrics if allowed else request.app.state.public_metrics
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
