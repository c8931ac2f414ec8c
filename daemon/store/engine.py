"""Engines for the two supported databases: PostgreSQL through psycopg 3, and SQLite."""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url

SQLITE_BEGIN: Final = "mailsyncd_sqlite_begin"
"""Execution option naming the SQLite ``BEGIN`` mode of a transaction (default DEFERRED).

Writers pass IMMEDIATE: a deferred transaction that reads and then writes can fail at once
with "database is locked" when another connection wrote in between, whatever busy_timeout
says, while IMMEDIATE waits for the write lock up front.
"""

_SQLITE_BEGIN_MODES: Final = frozenset({"DEFERRED", "IMMEDIATE", "EXCLUSIVE"})
SQLITE_BUSY_TIMEOUT_S: Final = 30.0

# Readable JSON text in SQLite; the store cleans lone surrogates, so this cannot fail.
_json_dumps = functools.partial(json.dumps, ensure_ascii=False)


def create_engine_for(url: str, *, pool_size: int = 10, max_overflow: int = 10) -> Engine:
    """Return an engine for a ``postgresql+psycopg://`` or ``sqlite://`` URL.

    Statement parameters are hidden from error messages: they may contain message data.
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend in {"postgresql", "postgres"}:
        return _postgresql_engine(parsed, pool_size=pool_size, max_overflow=max_overflow)
    if backend == "sqlite":
        return _sqlite_engine(parsed)
    raise ValueError(
        f"unsupported database {backend!r}: use postgresql+psycopg://... or sqlite:///PATH"
    )


def _postgresql_engine(url: URL, *, pool_size: int, max_overflow: int) -> Engine:
    if url.drivername in {"postgresql", "postgres"}:
        url = url.set(drivername="postgresql+psycopg")
    defaults: dict[str, Any] = {
        "connect_timeout": 10,
        "application_name": "mailsyncd",
        # Notice a dead server or a dropped NAT mapping within about a minute.
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    connect_args = {key: value for key, value in defaults.items() if key not in url.query}
    # Timestamps come back in UTC, so no session time zone can push one past year 9999.
    options = url.query.get("options")
    extra = options if isinstance(options, str) else ""
    connect_args["options"] = f"{extra} -c timezone=UTC".strip()
    return sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=30,
        pool_pre_ping=True,
        pool_recycle=1800,
        hide_parameters=True,
        json_serializer=_json_dumps,
        connect_args=connect_args,
    )


def _sqlite_engine(url: URL) -> Engine:
    database = url.database or ""
    in_memory = database in {"", ":memory:"} or "mode=memory" in database
    if not in_memory and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url,
        hide_parameters=True,
        json_serializer=_json_dumps,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S},
    )
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # sqlite3's own transaction handling starts transactions late and never for SELECT;
    # SQLAlchemy emits BEGIN itself instead (see _sqlite_on_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        _enable_wal(cursor)
        # With WAL, NORMAL survives a killed process; a power cut may lose the newest
        # transactions, checkpoint and rows together, which the next poll fetches again.
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _enable_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode = WAL``, retried while another connection holds the file.

    Turning a new file to WAL takes its exclusive lock, and when another connection is doing
    the same or migrating at that moment SQLite answers "database is locked" at once instead
    of waiting for busy_timeout (waiting could deadlock). Once the file is in WAL, it stays so.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
        else:
            return


def _sqlite_on_begin(connection: Connection) -> None:
    mode = connection.get_execution_options().get(SQLITE_BEGIN, "DEFERRED")
    if mode not in _SQLITE_BEGIN_MODES:
        raise ValueError(f"unknown SQLite BEGIN mode {mode!r}")
    connection.exec_driver_sql(f"BEGIN {mode}")
