"""The FastAPI app factory (no module-level app: settings are passed in).

``create_app(settings)`` opens its own :class:`StudyService` at start-up
(migrating the database) and closes it at shutdown; pass ``service=`` to share
one with the MQTT bridge or a test, in which case the caller closes it.

What wraps every request (:mod:`.access`): the body limit, the failed-login
limiter, token authentication and the route's permission, all before the body
is read. Tokens live in the service's database (:mod:`fedward.coordinator.access`);
the settings' ``operator_token`` is the bootstrap admin credential.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from fedward.compliance.query import AuditReader
from fedward.coordinator.access import AuthFailureLimiter, TokenStore
from fedward.coordinator.api.metrics import metrics_registry
from fedward.coordinator.service import StudyService
from fedward.coordinator.settings import CoordinatorSettings
from fedward.coordinator.store.tokens import TokenRepository

from .access import AccessMiddleware, RouteTable, flush_failures
from .errors import install_error_handlers
from .routes import audit, devices, models, probes, studies, tokens


def create_app(
    settings: CoordinatorSettings,
    *,
    service: StudyService | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """``clock`` (POSIX seconds) decides token expiry and the failed-login intervals."""
    owned = service is None

    def attach(svc: StudyService) -> None:
        app.state.service = svc
        app.state.tokens = TokenStore(
            TokenRepository(svc.repository.engine),
            clock=clock,
            bootstrap_token=settings.operator_token.get_secret_value(),
        )
        app.state.audit_reader = AuditReader(
            settings.audit_log_path, public_key=svc.audit_public_key
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if app.state.service is None:
            attach(StudyService.open(settings))
        try:
            yield
        finally:
            if app.state.service is not None:
                flush_failures(app, everything=True)
            if owned and app.state.service is not None:
                app.state.service.close()
                app.state.service = None
                app.state.tokens = None
                app.state.audit_reader = None

    app = FastAPI(
        title="fedward coordinator",
        version="1",
        summary="REST API of a fedward federated-learning coordinator (roles: admin, "
        "researcher, auditor).",
        lifespan=lifespan,
    )
    app.state.service = None
    app.state.tokens = None
    app.state.audit_reader = None
    app.state.settings = settings
    app.state.clock = clock
    app.state.api_counters = {}
    app.state.auth_limiter = AuthFailureLimiter(
        max_failures=settings.auth_max_failures,
        interval_s=settings.auth_interval_s,
        lockout_s=settings.auth_lockout_s,
    )
    if service is not None:
        attach(service)
    counters = app.state.api_counters
    app.state.metrics = metrics_registry(
        lambda: app.state.service, per_study=True, api_counters=counters
    )
    app.state.public_metrics = metrics_registry(
        lambda: app.state.service, per_study=False, api_counters=counters
    )
    install_error_handlers(app)
    mounts = [
        ("/v1", router)
        for router in (studies.router, devices.router, models.router, tokens.router, audit.router)
    ]
    mounts.append(("", probes.router))
    for prefix, router in mounts:
        app.include_router(router, prefix=prefix)
    app.state.route_table = RouteTable(mounts)
    app.add_middleware(AccessMiddleware, max_body_bytes=settings.max_body_bytes, clock=clock)
    return app
