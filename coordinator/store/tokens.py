"""Reads and writes of the ``api_tokens`` table (the policy is in fedward.coordinator.access)."""

from __future__ import annotations

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import sessionmaker

from .models import ApiTokenRow


class TokenRepository:
    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def add(self, row: ApiTokenRow) -> None:
        with self._sessions.begin() as s:
            s.add(row)

    def get(self, token_id: str) -> ApiTokenRow | None:
        with self._sessions() as s:
            return s.get(ApiTokenRow, token_id)

    def all(self) -> list[ApiTokenRow]:
        with self._sessions() as s:
            return list(s.scalars(select(ApiTokenRow).order_by(ApiTokenRow.created_at)))

    def revoke(self, token_id: str, *, at: float, by: str) -> bool:
        """Mark a live token revoked; False if it does not exist or already was."""
        with self._sessions.begin() as s:
            result = s.execute(
                update(ApiTokenRow)
                .where(ApiTokenRow.id == token_id, ApiTokenRow.revoked_at.is_(None))
                .values(revoked_at=at, revoked_by=by)
            )
            return bool(getattr(result, "rowcount", 0))
