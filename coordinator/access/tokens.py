"""API tokens: issued with a role and an expiry, shown once, kept only as a hash.

A token reads ``fwt_<id>_<secret>``: the id (``tk-`` and 12 hex digits) is
public -- it is the caller's name in the audit log -- and the secret is 32
bytes from the OS CSPRNG. The database keeps the SHA-256 of the whole token,
never the token: a copy of the database (a backup, a replica) lets nobody
call the API. A plain hash suffices (no password hashing) because the secret
has 256 bits of entropy; a slow hash only helps guessable secrets.

Checking a token compares hashes with ``hmac.compare_digest``, and a token id
that does not exist costs the same comparison, so timing says nothing about
which ids exist. The settings' ``operator_token`` stays valid as the
bootstrap admin credential (id ``bootstrap``): it issues the first tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from fedward.coordinator.errors import CoordinatorError
from fedward.coordinator.store.models import ApiTokenRow
from fedward.coordinator.store.tokens import TokenRepository

from .roles import BOOTSTRAP_TOKEN_ID, Principal, Role

TOKEN_PREFIX = "fwt"
TOKEN_ID_PATTERN = r"^tk-[0-9a-f]{12}$"
_TOKEN_RE = re.compile(r"^fwt_(tk-[0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
MIN_LIFETIME_S = 60.0
MAX_LIFETIME_S = 366 * 24 * 3600.0
DEFAULT_LIFETIME_S = 30 * 24 * 3600.0
_DUMMY_HASH = hashlib.sha256(b"no such token").hexdigest()


class TokenError(CoordinatorError):
    """A token cannot be issued or revoked as asked."""


class TokenNotFound(TokenError, KeyError):
    """No token with that id."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True, kw_only=True)
class TokenInfo:
    """What anyone may see of a token (never its secret or hash)."""

    id: str
    role: Role
    name: str
    created_at: float
    created_by: str
    expires_at: float
    revoked_at: float | None
    revoked_by: str | None

    def state(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if now >= self.expires_at else "active"


@dataclass(frozen=True, kw_only=True)
class IssuedToken:
    info: TokenInfo
    token: str
    """The bearer token itself: shown once, at issue, never stored."""


def _info(row: ApiTokenRow) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        role=Role(row.role),
        name=row.name,
        created_at=row.created_at,
        created_by=row.created_by,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        revoked_by=row.revoked_by,
    )


class TokenStore:
    """Issue, revoke, list and check tokens (``clock``: POSIX seconds, injected)."""

    def __init__(
        self,
        repository: TokenRepository,
        *,
        clock: Callable[[], float],
        bootstrap_token: str | None = None,
    ) -> None:
        self._repo = repository
        self._clock = clock
        self._bootstrap = token_hash(bootstrap_token) if bootstrap_token else None

    def issue(
        self, *, role: Role, name: str, lifetime_s: float = DEFAULT_LIFETIME_S, by: str
    ) -> IssuedToken:
        if not isinstance(role, Role):
            raise TypeError("role must be a Role")
        if isinstance(lifetime_s, bool) or not MIN_LIFETIME_S <= lifetime_s <= MAX_LIFETIME_S:
            raise TokenError(
                f"a token lives between {MIN_LIFETIME_S:.0f} s and {MAX_LIFETIME_S:.0f} s"
            )
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}", name):
            raise TokenError("a token name is 1-64 characters of [A-Za-z0-9_.@-]")
        token_id = "tk-" + secrets.token_hex(6)
        token = f"{TOKEN_PREFIX}_{token_id}_{secrets.token_urlsafe(32)}"
        now = self._clock()
        row = ApiTokenRow(
            id=token_id,
            role=role.value,
            name=name,
            secret_sha256=token_hash(token),
            created_at=now,
            created_by=by,
            expires_at=now + float(lifetime_s),
            revoked_at=None,
            revoked_by=None,
        )
        self._repo.add(row)
        return IssuedToken(info=_info(row), token=token)

    def revoke(self, token_id: str, *, by: str) -> TokenInfo:
        row = self._repo.get(token_id)
        if row is None:
            raise TokenNotFound(f"no token {token_id!r}")
        self._repo.revoke(token_id, at=self._clock(), by=by)
        revoked = self._repo.get(token_id)
        if revoked is None:  # deleted in between: nothing is left to call with
            raise TokenNotFound(f"no token {token_id!r}")
        return _info(revoked)

    def now(self) -> float:
        return self._clock()

    def list(self) -> list[TokenInfo]:
        return [_info(r) for r in self._repo.all()]

    def get(self, token_id: str) -> TokenInfo:
        row = self._repo.get(token_id)
        if row is None:
            raise TokenNotFound(f"no token {token_id!r}")
        return _info(row)

    def authenticate(self, token: str) -> Principal | None:
        """The caller a bearer token names, or None (unknown, wrong, expired, revoked)."""
        given = token_hash(token)
        if self._bootstrap is not None and hmac.compare_digest(given, self._bootstrap):
            return Principal(token_id=BOOTSTRAP_TOKEN_ID, role=Role.ADMIN)
        match = _TOKEN_RE.fullmatch(token)
        row = self._repo.get(match.group(1)) if match else None
        expected = row.secret_sha256 if row is not None else _DUMMY_HASH
        if not hmac.compare_digest(given, expected) or row is None:
            return None
        if row.revoked_at is not None or self._clock() >= row.expires_at:
            return None
        return Principal(token_id=row.id, role=Role(row.role))

    @staticmethod
    def claimed_id(token: str) -> str | None:
        """The token id a (possibly wrong) token names, for the audit of a failure."""
        match = _TOKEN_RE.fullmatch(token)
        return match.group(1) if match else None
