"""The coordinator's REST API (FastAPI stays inside this package and the CLI).

``create_app(settings, *, service=None, clock=time.time)`` builds the app.
Every ``/v1`` call carries ``Authorization: Bearer <token>``; the token's role
(admin, researcher, auditor) must hold the permission the route declares
(``fedward.coordinator.access.roles.MATRIX``; docs/api.md prints it). Body
size, failed-login lockout, authentication and role are checked before the
body is read (:mod:`.access`)::

    POST /v1/studies                                create (body: {spec, study_id?})
    GET  /v1/studies                                list
    GET  /v1/studies/{id}                           one study
    GET  /v1/studies/{id}/status                    version, counters, devices, rejections
    GET  /v1/studies/{id}/privacy                   budget report (404 without a DP policy)
    POST /v1/studies/{id}/start|pause|resume|stop   lifecycle (409 in the wrong state)
    POST /v1/studies/{id}/evaluations               report an evaluator's accuracy (audited)
    POST /v1/studies/{id}/devices                   enrol (Enrol fields; 409 if refused)
    GET  /v1/studies/{id}/devices                   list
    POST /v1/studies/{id}/devices/{dev}/revoke      revoke
    POST /v1/studies/{id}/devices/{dev}/enrolment-secret   one-time enrolment secret
    GET  /v1/studies/{id}/models                    versions with lineage hashes
    GET  /v1/studies/{id}/models/{version}          ModelDownload frame (audited)
    GET  /v1/studies/{id}/models/{version}/lineage  ancestry and lineage records, re-verified
    POST /v1/tokens | GET /v1/tokens | POST /v1/tokens/{id}/revoke   API tokens (admin)
    GET  /v1/audit/events|tree-head|proofs/inclusion|proofs/consistency|public-key|export
    POST /v1/audit/tree-head                        a head signed now (auditor)

Probes without a token: ``/healthz``, ``/readyz`` (database reachable and at
the newest migration) and ``/metrics`` (Prometheus, a registry per app; study
ids only with a ``metrics:read`` token). Every error is
``{"error": code, "detail": ...}``.
"""

from .app import create_app

__all__ = ["create_app"]
