"""The FastAPI app factory (no module-level app: settings are passed in).

``create_app(settings)`` opens its own :class:`StudyService` at start-up
(migrating the database) and closes it at shutdown; pass ``service=`` to share
one with the MQTT bridge or a test, in which case the caller closes it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from fedward.coordinator.api.metrics import metrics_registry
from fedward.coordinator.service import StudyService
from fedward.coordinator.settings import CoordinatorSettings

from .errors import install_error_handlers
from .routes import devices, models, probes, studies


def create_app(settings: CoordinatorSettings, *, service: StudyService | None = None) -> FastAPI:
    owned = service is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if app.state.service is None:
            app.state.service = StudyService.open(settings)
        try:
            yield
        finally:
            if owned and app.state.service is not None:
                app.state.service.close()
                app.state.service = None

    app = FastAPI(
        title="fedward coordinator",
        version="1",
        summary="Operator API of a fedward federated-learning coordinator.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.operator_token = settings.operator_token.get_secret_value().encode("utf-8")
    app.state.metrics = metrics_registry(lambda: app.state.service)
    install_error_handlers(app)
    for router in (studies.router, devices.router, models.router):
        app.include_router(router, prefix="/v1")
    app.include_router(probes.router)
    return app
