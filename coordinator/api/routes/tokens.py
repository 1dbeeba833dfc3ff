"""API tokens (admin only): issue (the token is in this one answer), list, revoke."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status
from pydantic import BaseModel, ConfigDict, Field

from fedward.coordinator import audit
from fedward.coordinator.access import Role, TokenInfo
from fedward.coordinator.access.tokens import (
    DEFAULT_LIFETIME_S,
    MAX_LIFETIME_S,
    MIN_LIFETIME_S,
    TOKEN_ID_PATTERN,
)

from ..deps import ServiceDep, TokensDep, TokensRead, TokensWrite
from ..errors import responses
from ..schemas import NoCoercion

router = APIRouter(prefix="/tokens", tags=["tokens"], responses=responses(401, 403, 413, 422, 429))

TokenIdPath = Annotated[str, Path(pattern=TOKEN_ID_PATTERN, description="Token id")]


class TokenRequest(NoCoercion):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    role: Role
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")]
    """Who or what holds it (``alice``, ``prometheus``); kept with the token."""
    lifetime_s: Annotated[float, Field(ge=MIN_LIFETIME_S, le=MAX_LIFETIME_S)] = DEFAULT_LIFETIME_S


class TokenView(BaseModel):
    id: str
    role: Role
    name: str
    state: str
    created_at: float
    created_by: str
    expires_at: float
    revoked_at: float | None
    revoked_by: str | None


class IssuedTokenView(TokenView):
    token: str
    """The bearer token. Shown this once: only its hash is kept."""


def _view(info: TokenInfo, now: float) -> TokenView:
    return TokenView(
        id=info.id,
        role=info.role,
        name=info.name,
        state=info.state(now),
        created_at=info.created_at,
        created_by=info.created_by,
        expires_at=info.expires_at,
        revoked_at=info.revoked_at,
        revoked_by=info.revoked_by,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=IssuedTokenView,
    summary="Issue a token for a role (shown once)",
)
def issue(
    body: TokenRequest, tokens: TokensDep, service: ServiceDep, caller: TokensWrite
) -> IssuedTokenView:
    issued = tokens.issue(
        role=body.role, name=body.name, lifetime_s=body.lifetime_s, by=caller.actor_id
    )
    info = issued.info
    service.record_audit(
        audit.token_issued(
            by=caller.actor_id,
            token_id=info.id,
            role=info.role.value,
            name=info.name,
            expires_at=info.expires_at,
        )
    )
    view = _view(info, info.created_at)
    return IssuedTokenView(**view.model_dump(), token=issued.token)


@router.get("", response_model=list[TokenView], summary="List tokens (never their secrets)")
def list_tokens(tokens: TokensDep, _: TokensRead) -> list[TokenView]:
    now = tokens.now()
    return [_view(info, now) for info in tokens.list()]


@router.post(
    "/{token_id}/revoke",
    response_model=TokenView,
    responses=responses(404),
    summary="Revoke a token for good (takes effect on its next request)",
)
def revoke(
    token_id: TokenIdPath, tokens: TokensDep, service: ServiceDep, caller: TokensWrite
) -> TokenView:
    was_live = tokens.get(token_id).revoked_at is None  # 404 for an unknown id
    info = tokens.revoke(token_id, by=caller.actor_id)
    if was_live:  # revoking twice changes nothing and is not audited twice
        service.record_audit(
            audit.token_revoked(by=caller.actor_id, token_id=info.id, role=info.role.value)
        )
    return _view(info, tokens.now())
