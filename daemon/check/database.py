"""The optional ``database`` step of ``mailsyncd check``, and loading a configuration whose
database URL is not available here.

``check`` needs no database (SPEC "Command line"): on an administrator's workstation the
variable named by ``database.url_env`` is usually unset, and that must not stop the check.
When the URL is available the step connects and compares the schema revision with the one this
version expects, so that the whole path of the daemon is diagnosed. It never creates anything:
a SQLite file that does not exist is reported, not made, and nothing is migrated.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from daemon.check.model import Finding
from daemon.check.network import StepTimeout, bounded
from daemon.config import CONFIG_ENV_VAR, Config
from daemon.errors import MailsyncError

PLACEHOLDER_URL: Final = "sqlite://"
"""Stands in for an unset ``database.url_env`` variable while the file is validated."""


@dataclass(frozen=True, slots=True)
class DatabaseSource:
    """Where the database URL comes from, and the variable that is unset if it is not here."""

    unset_variable: str | None = None

    @property
    def available(self) -> bool:
        """Whether the configuration's database URL is the real one."""
        return self.unset_variable is None


def environ_for_check(
    path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None
) -> tuple[Mapping[str, str], DatabaseSource]:
    """The environment to load ``path`` with, and whether the database URL is available.

    When ``database.url_env`` names a variable that is unset or empty, a placeholder URL stands
    in for it, so that the rest of the file is validated as ``run`` would validate it; the
    ``database`` step then reports the variable instead of connecting.
    """
    env = os.environ if environ is None else environ
    file = path if path is not None else env.get(CONFIG_ENV_VAR)
    if not file:
        return env, DatabaseSource()
    try:
        data = yaml.safe_load(Path(file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return env, DatabaseSource()  # the loader reports it with its own words
    database = data.get("database") if isinstance(data, dict) else None
    name = database.get("url_env") if isinstance(database, dict) else None
    if not isinstance(name, str) or not name or (env.get(name) or "").strip():
        return env, DatabaseSource()
    return {**env, name: PLACEHOLDER_URL}, DatabaseSource(unset_variable=name)


def check_database(config: Config, source: DatabaseSource, timeout: float) -> Finding | None:
    """The ``database`` step: None when the URL is not available here (the step is skipped)."""
    if not source.available:
        return None
    url = config.database_url
    try:
        parsed = make_url(url)
    except ArgumentError:
        return Finding.failed(
            "the database URL does not parse",
            cause="database.url (or its variable) is not a SQLAlchemy URL",
            fix="use postgresql+psycopg://USER@HOST/DB or sqlite:////PATH/mailsyncd.db",
        )
    shown = parsed.render_as_string(hide_password=True)
    missing = _missing_sqlite_file(parsed.get_backend_name(), parsed.database)
    if missing is not None:
        return Finding.passed(
            f"{shown}: the SQLite file {missing} does not exist yet; mailsyncd run (or "
            "mailsyncd migrate) creates it and its schema",
            database=shown,
        )
    try:
        revision, head = bounded(lambda: _revisions(url), timeout)
    except StepTimeout as exc:
        return Finding.failed(
            f"{shown}: {exc}",
            cause="the database server does not answer (host, port or a firewall)",
            fix="check the host and port of the database URL and that this host reaches it",
            database=shown,
        )
    except ValueError as exc:
        return Finding.failed(
            f"{shown}: {exc}",
            cause="mailsyncd stores into PostgreSQL (through psycopg 3) or SQLite only",
            fix="use postgresql+psycopg://USER@HOST/DB or sqlite:////PATH/mailsyncd.db",
            database=shown,
        )
    except MailsyncError as exc:
        return Finding.failed(
            f"{shown}: cannot read the schema revision: {exc}",
            cause="the database cannot be reached, or refuses this role or its password",
            fix="check the database URL (role, password, host, database name) and that the "
            "role may connect (PostgreSQL: CONNECT on the database, pg_hba.conf)",
            database=shown,
        )
    data = {"database": shown, "revision": revision, "head": head}
    if revision == head:
        return Finding.passed(f"{shown}: schema at head ({head})", **data)
    if revision is None:
        return Finding.passed(
            f"{shown}: reachable, no mailsyncd schema yet; mailsyncd run (or mailsyncd "
            "migrate) creates it",
            **data,
        )
    return Finding.failed(
        f"{shown}: schema at revision {revision}, this mailsyncd expects {head}",
        cause="the schema is older than this version (or was migrated by a newer one); "
        "/readyz stays 503 until they match",
        fix="run mailsyncd migrate -c FILE (mailsyncd run does it at start unless --no-migrate)"
        "; if the database is newer, run the newer mailsyncd",
        **data,
    )


def _revisions(url: str) -> tuple[str | None, str]:
    # Imported here: the check's other steps never load SQLAlchemy's drivers or Alembic.
    from daemon.store.engine import create_engine_for  # noqa: PLC0415
    from daemon.store.migrate import current_revision, head_revision  # noqa: PLC0415

    engine = create_engine_for(url, pool_size=1, max_overflow=0)
    try:
        return current_revision(engine), head_revision()
    finally:
        engine.dispose()


def _missing_sqlite_file(backend: str, database: str | None) -> str | None:
    """The path of a SQLite database file that does not exist (opening it would create it)."""
    name = database or ""
    if backend != "sqlite" or name in {"", ":memory:"} or name.startswith("file:"):
        return None
    return None if Path(name).expanduser().exists() else name
