"""Alembic migrations of the coordinator's database, run from code.

Why programmatic: the coordinator upgrades its own schema at start-up
(``upgrade_to_head``) and ``/readyz`` reports whether the database is at head,
so the migration scripts ship inside the package and need no ``alembic.ini``
on the operator's disk (one is included for the ``alembic`` command line:
``alembic -c coordinator/migrations/alembic.ini -x url=... history``).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from fedward.coordinator.errors import CoordinatorError
from fedward.coordinator.store.db import create_db_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent


class MigrationsMissing(CoordinatorError):
    """The package holds no migration scripts: an incomplete install of fedward."""


def alembic_config(url: str | None = None, *, connection: Connection | None = None) -> Config:
    """An Alembic config for our scripts; ``connection`` is reused if given."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser interpolation: a literal "%" in a password must be doubled.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise MigrationsMissing(
            f"no migration scripts in {MIGRATIONS_DIR / 'versions'}: this install of fedward "
            "is incomplete (its wheel ships them); reinstall fedward"
        )
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def is_at_head(engine: Engine) -> bool:
    return current_revision(engine) == head_revision()


def upgrade_to_head(url_or_engine: str | Engine) -> None:
    """Bring the database at ``url_or_engine`` to the newest schema (idempotent)."""
    engine = create_db_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(connection=conn), "head")
    finally:
        if isinstance(url_or_engine, str):
            engine.dispose()
