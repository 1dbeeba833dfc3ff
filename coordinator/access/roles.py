"""Roles of the REST API and the least-privilege matrix, as data.

Who uses the API (devices never do: they speak MQTT with their own keys):

* **auditor** examines: the audit log (events, signed tree heads, proofs, the
  public key, exports), privacy budgets and model lineage, read-only;
* **researcher** runs science: creates and steers studies, lists and downloads
  models, reports evaluations, reads budget reports and metrics;
* **admin** runs the deployment: devices (enrolment, revocation), API tokens
  and configuration, and may do what the other two do (it is the bootstrap
  credential of a fresh coordinator; issue researcher and auditor tokens for
  daily work and keep admin tokens few and short-lived).

Why a matrix of permissions rather than a role per route: a route declares
the one :class:`Permission` it needs, the matrix says which roles hold it, and
a test generated from the route table checks that every route declares one and
that no role can call a route its row does not list (docs/api.md prints it).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class Role(enum.StrEnum):
    ADMIN = "admin"
    RESEARCHER = "researcher"
    AUDITOR = "auditor"


class Permission(enum.StrEnum):
    STUDIES_READ = "studies:read"
    STUDIES_WRITE = "studies:write"  # create, start, pause, resume, stop
    MODELS_READ = "models:read"  # list versions, download a version (downloads are audited)
    EVALUATIONS_WRITE = "evaluations:write"
    BUDGETS_READ = "budgets:read"
    LINEAGE_READ = "lineage:read"
    METRICS_READ = "metrics:read"  # per-study Prometheus series (anonymous scrapes get totals)
    DEVICES_READ = "devices:read"
    DEVICES_WRITE = "devices:write"  # enrol, revoke, enrolment secrets
    TOKENS_READ = "tokens:read"
    TOKENS_WRITE = "tokens:write"  # issue, revoke
    AUDIT_READ = "audit:read"  # events, tree heads, proofs, public key, exports
    AUDIT_SIGN = "audit:sign"  # ask for a fresh signed tree head (adds no entry)


_AUDITOR = frozenset(
    {Permission.AUDIT_READ, Permission.AUDIT_SIGN, Permission.BUDGETS_READ, Permission.LINEAGE_READ}
)
_RESEARCHER = frozenset(
    {
        Permission.STUDIES_READ,
        Permission.STUDIES_WRITE,
        Permission.MODELS_READ,
        Permission.EVALUATIONS_WRITE,
        Permission.BUDGETS_READ,
        Permission.LINEAGE_READ,
        Permission.METRICS_READ,
    }
)
_ADMIN = frozenset(Permission)

MATRIX: Mapping[Role, frozenset[Permission]] = {
    Role.ADMIN: _ADMIN,
    Role.RESEARCHER: _RESEARCHER,
    Role.AUDITOR: _AUDITOR,
}
"""Which role holds which permission: the one source the API enforces."""


def allows(role: Role, permission: Permission) -> bool:
    return permission in MATRIX[role]


BOOTSTRAP_TOKEN_ID = "bootstrap"
"""Token id of the settings' ``operator_token`` (an admin credential)."""


@dataclass(frozen=True, kw_only=True)
class Principal:
    """Who is calling: the token's id and its role."""

    token_id: str
    role: Role

    @property
    def actor_id(self) -> str:
        """The audit log's actor id of this caller: ``<role>:<token id>``."""
        return f"{self.role.value}:{self.token_id}"

    def may(self, permission: Permission) -> bool:
        return allows(self.role, permission)
