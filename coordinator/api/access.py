"""Limits before work: body size, rate limit, authentication and role, in that order,
before a route reads or parses anything.

Why a middleware and not only route dependencies: FastAPI reads and parses a
request body *before* it resolves a route's dependencies, so a token check in
a dependency runs after a 500 MB body has been read (the issue measured 2.5 s
and 1.45 GB for a 401). Here, for every ``/v1`` request:

1. a ``Content-Length`` above ``max_body_bytes`` is 413 at once; a body
   without one is read only up to the limit (413 beyond);
2. a source locked out for failed logins is 429 with ``Retry-After``;
3. the bearer token must name a live token (401 otherwise, counted per
   source; the limiter decides what is audited);
4. the route it calls must declare a :class:`Permission` its role holds
   (403 otherwise, audited under the caller);

and only then is the body read (still bounded) and handed to the route.
``/metrics`` authenticates when a token is given (per-study series) and
answers totals without one. Routes take their caller through
:func:`requires`, which checks the permission once more and names it in the
route table (tests/coordinator/test_api_roles.py walks that table).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fedward.coordinator import audit
from fedward.coordinator.access import (
    AuthFailureLimiter,
    FailureReport,
    Permission,
    Principal,
    TokenStore,
)

from .errors import ApiError, ErrorCode, error_response

_bearer = HTTPBearer(auto_error=False, description="API token (admin, researcher or auditor)")
OPTIONAL_AUTH_PATHS = frozenset({"/metrics"})


class RoleCheck:
    """A route's declared permission (a FastAPI dependency returning the caller)."""

    def __init__(self, permission: Permission) -> None:
        self.permission = permission

    def __call__(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        principal = getattr(request.state, "principal", None)
        if not isinstance(principal, Principal):
            raise ApiError(401, ErrorCode.UNAUTHORIZED, "missing bearer token")
        if not principal.may(self.permission):
            raise ApiError(403, ErrorCode.FORBIDDEN, f"needs {self.permission.value}")
        return principal


def requires(permission: Permission) -> Any:
    """``Annotated[Principal, requires(Permission.X)]``: the caller, allowed to do X."""
    return Depends(RoleCheck(permission))


def route_permissions(route: APIRoute) -> set[Permission]:
    """Every permission a route declares (the route table's view; one is expected)."""
    found: set[Permission] = set()
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        if isinstance(dep.call, RoleCheck):
            found.add(dep.call.permission)
        stack.extend(dep.dependencies)
    return found


@dataclass(frozen=True)
class RouteEntry:
    """One operation of the API as the access checks see it."""

    path: str
    """The full path template (``/v1/studies/{study_id}``)."""
    methods: frozenset[str]
    permissions: frozenset[Permission]
    route: APIRoute
    regex: re.Pattern[str]


class RouteTable:
    """Every route the app serves, flattened from its routers with their prefixes.

    Why our own table: FastAPI keeps included routers nested (``app.routes`` holds
    wrappers, not the routes), so neither the permission lookup before the body
    is read nor the ``Allow`` header of a 405 can rely on walking ``app.routes``.
    """

    def __init__(self, mounts: list[tuple[str, APIRouter]]) -> None:
        entries: list[RouteEntry] = []
        for prefix, router in mounts:
            for route in router.routes:
                if not isinstance(route, APIRoute):
                    continue
                path = prefix + route.path
                regex, _, _ = compile_path(path)
                entries.append(
                    RouteEntry(
                        path=path,
                        methods=frozenset(route.methods or ()),
                        permissions=frozenset(route_permissions(route)),
                        route=route,
                        regex=regex,
                    )
                )
        self.entries = tuple(entries)

    def match(self, path: str, method: str) -> RouteEntry | None:
        for entry in self.entries:
            if method in entry.methods and entry.regex.match(path):
                return entry
        return None

    def allowed_methods(self, path: str) -> list[str]:
        methods: set[str] = set()
        for entry in self.entries:
            if entry.regex.match(path):
                methods |= entry.methods
        if "GET" in methods:
            methods.add("HEAD")
        return sorted(methods)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


class AccessMiddleware:
    """The checks above; state (tokens, limiter, service) is read from ``app.state``."""

    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await self._refuse(scope, receive, send, 413, ErrorCode.BODY_TOO_LARGE)
            return
        path: str = scope.get("path", "")
        if path == "/v1" or path.startswith("/v1/") or path in OPTIONAL_AUTH_PATHS:
            refusal = await self._authorize(scope, optional=path in OPTIONAL_AUTH_PATHS)
            if refusal is not None:
                status, code, detail, headers = refusal
                await self._refuse(scope, receive, send, status, code, detail, headers)
                return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                await self._refuse(scope, receive, send, 413, ErrorCode.BODY_TOO_LARGE)
                return
        await self.app(scope, _replay(bytes(body), receive), send)

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        code: ErrorCode,
        detail: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if status == 413:
            detail = f"request bodies are limited to {self.max_body} bytes"
            headers = {"Connection": "close"}
        response = error_response(status, code, detail, headers=headers)
        await response(scope, receive, send)

    async def _authorize(
        self, scope: Scope, *, optional: bool
    ) -> tuple[int, ErrorCode, str, dict[str, str] | None] | None:
        app = scope["app"]
        tokens: TokenStore | None = getattr(app.state, "tokens", None)
        limiter: AuthFailureLimiter = app.state.auth_limiter
        if tokens is None:
            return 503, ErrorCode.NOT_READY, "the study service is not running", None
        client = scope.get("client")
        source = str(client[0]) if client else "unknown"
        now = self.clock()
        due = limiter.sweep(now=now)
        if due:
            await run_in_threadpool(_audit_failures, app, due)
        wait = limiter.retry_after(source, now=now)
        if wait is not None:
            _count(app, "locked_out")
            retry = {"Retry-After": str(max(1, math.ceil(wait)))}
            return 429, ErrorCode.TOO_MANY_FAILURES, "too many failed logins", retry
        raw = _header(scope, b"authorization")
        challenge = {"WWW-Authenticate": "Bearer"}
        if raw is None:
            if optional:
                return None
            return 401, ErrorCode.UNAUTHORIZED, "missing bearer token", challenge
        text = raw.decode("latin-1")
        scheme, _, token = text.partition(" ")
        token = token.strip()
        principal = None
        if scheme.lower() == "bearer" and token:
            principal = await run_in_threadpool(tokens.authenticate, token)
        if principal is None:
            claimed = TokenStore.claimed_id(token) if token else None
            reports = limiter.failure(source, now=now, claimed_token_id=claimed)
            _count(app, "auth_failures")
            if reports:
                await run_in_threadpool(_audit_failures, app, reports)
            return 401, ErrorCode.UNAUTHORIZED, "invalid bearer token", challenge
        scope.setdefault("state", {})["principal"] = principal
        table: RouteTable = app.state.route_table
        route = table.match(scope.get("path", ""), str(scope.get("method", "")))
        if route is None:
            return None  # 404 or 405 from the router, to an authenticated caller only
        needed = route.permissions
        if needed and not all(principal.may(p) for p in needed):
            names = ",".join(sorted(p.value for p in needed))
            _count(app, "access_denied")
            entry = audit.api_access_denied(
                by=principal.actor_id,
                permission=names,
                method=str(scope.get("method", "")),
                route=route.path,
            )
            await run_in_threadpool(_record, app, entry)
            return 403, ErrorCode.FORBIDDEN, f"role {principal.role.value} may not {names}", None
        return None


def _count(app: Any, name: str) -> None:
    counters: dict[str, int] = app.state.api_counters
    counters[name] = counters.get(name, 0) + 1


def _record(app: Any, entry: audit.AuditRecord) -> None:
    service = getattr(app.state, "service", None)
    if service is not None:
        service.record_audit(entry)


def _audit_failures(app: Any, reports: list[FailureReport]) -> None:
    for report in reports:
        _record(
            app,
            audit.api_auth_failed(
                source=report.source,
                note=report.note.value,
                failures=report.failures,
                since=report.since,
                claimed_token_id=report.claimed_token_id,
            ),
        )


def flush_failures(app: Any, *, everything: bool = False) -> None:
    """Write the summaries of failure intervals that are over (at shutdown: all)."""
    limiter: AuthFailureLimiter = app.state.auth_limiter
    reports = limiter.flush(now=app.state.clock(), everything=everything)
    if reports:
        _audit_failures(app, reports)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # http.disconnect, when the client goes

    return replay
