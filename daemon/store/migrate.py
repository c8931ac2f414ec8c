"""Schema migrations, run programmatically and safely from several processes at once."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Final

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy.engine import Connection, Engine

from daemon.errors import DatabaseRejectedError
from daemon.store.engine import SQLITE_BEGIN
from daemon.store.translate import translate_errors

MIGRATIONS_DIR: Final = Path(__file__).resolve().with_name("migrations")

# Key of the PostgreSQL advisory lock held while migrating: "mailsync" read as a bigint.
PG_MIGRATION_LOCK_KEY: Final = int.from_bytes(b"mailsync", "big")

# Alembic installs its environment in a module-level proxy (alembic.context), so two threads
# of one process must not run it at the same time; the database lock covers other processes.
_alembic_in_process = threading.Lock()


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    # Config values go through ConfigParser interpolation: a "%" in the path must be doubled.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this version of mailsyncd knows."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migration revisions found in {MIGRATIONS_DIR}")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for a database never migrated."""
    with translate_errors(), engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def is_at_head(engine: Engine) -> bool:
    """Whether the database schema is exactly the one this version expects."""
    return current_revision(engine) == head_revision()


def migrate(engine: Engine) -> None:
    """Upgrade the database to the head revision; a no-op when it is there already.

    All revisions run in one transaction that first takes a database-wide lock
    (``pg_advisory_xact_lock`` in PostgreSQL, ``BEGIN EXCLUSIVE`` in SQLite), so replicas
    starting together migrate one after the other and the later ones find nothing to do.
    """
    with translate_errors(), engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            connection.execution_options(**{SQLITE_BEGIN: "EXCLUSIVE"})
        with connection.begin():
            if connection.dialect.name == "postgresql":
                connection.execute(sa.select(sa.func.pg_advisory_xact_lock(PG_MIGRATION_LOCK_KEY)))
            with _alembic_in_process:
                try:
                    command.upgrade(_config(connection), "head")
                except (CommandError, RevisionError) as exc:
                    # Typically a database migrated by a newer mailsyncd than this one.
                    raise DatabaseRejectedError(
                        f"cannot migrate the database schema: {exc}"
                    ) from exc
