"""Who may do what on the REST API: roles, the permission matrix, tokens, and the
failed-authentication limiter.

* :mod:`fedward.coordinator.access.roles`    Role, Permission, MATRIX (data), Principal
* :mod:`fedward.coordinator.access.tokens`   TokenStore: issue, revoke, expire, check (hashes only)
* :mod:`fedward.coordinator.access.limiter`  AuthFailureLimiter: per-source counts, lockout, audit

The API (``fedward.coordinator.api``) enforces it; ``fedward tokens`` manages tokens
from the host.
"""

from .limiter import AuthFailureLimiter, FailureNote, FailureReport
from .roles import BOOTSTRAP_TOKEN_ID, MATRIX, Permission, Principal, Role, allows
from .tokens import IssuedToken, TokenError, TokenInfo, TokenNotFound, TokenStore

__all__ = [
    "BOOTSTRAP_TOKEN_ID",
    "MATRIX",
    "AuthFailureLimiter",
    "FailureNote",
    "FailureReport",
    "IssuedToken",
    "Permission",
    "Principal",
    "Role",
    "TokenError",
    "TokenInfo",
    "TokenNotFound",
    "TokenStore",
    "allows",
]
