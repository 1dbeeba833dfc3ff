"""The coordinator's REST API (FastAPI stays inside this package and the CLI).

``create_app(settings, *, service=None)`` builds the app. Operator endpoints
(``Authorization: Bearer <token>``) live under ``/v1``::

    POST /v1/studies                                create (body: {spec, study_id?})
    GET  /v1/studies                                list
    GET  /v1/studies/{id}                           one study
    GET  /v1/studies/{id}/status                    version, counters, devices, rejections
    GET  /v1/studies/{id}/privacy                   budget report (404 without a DP policy)
    POST /v1/studies/{id}/start|pause|resume|stop   lifecycle (409 in the wrong state)
    POST /v1/studies/{id}/evaluations               report an evaluator's accuracy
    POST /v1/studies/{id}/devices                   enrol (Enrol fields; 409 if refused)
    GET  /v1/studies/{id}/devices                   list
    POST /v1/studies/{id}/devices/{dev}/revoke      revoke
    GET  /v1/studies/{id}/models                    versions with lineage hashes
    GET  /v1/studies/{id}/models/{version}          ModelDownload frame (octet-stream)

Probes without a token: ``/healthz``, ``/readyz`` (database reachable and at
the newest migration) and ``/metrics`` (Prometheus, a registry per app).
Every error is ``{"error": code, "detail": ...}``.
"""

from .app import create_app

__all__ = ["create_app"]
