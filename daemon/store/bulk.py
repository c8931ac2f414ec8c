"""New message rows into PostgreSQL with ``COPY``: the hot path of an initial sync.

``executemany`` of an ``INSERT`` costs SQLAlchemy's parameter processing, psycopg's adaptation
and one statement execution per row. Here a batch goes in as one ``COPY`` into a temporary
staging table (text format: psycopg formats each row in C) and one
``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` into ``messages``, inside the caller's
transaction, so the rows still commit with the checkpoint that covers them. The rows are the
ones ``SqlStore`` builds for any database; only the way they travel differs, so what lands in
``message_metadata`` is the same.

The staging table lives as long as the database session (one per pooled connection) and is
emptied at every commit (``ON COMMIT DELETE ROWS``); ``insert_rows`` is called at most once per
transaction.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import psycopg
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

COLUMNS: Final = (
    "folder_id",
    "uidvalidity",
    "uid",
    "message_id",
    "subject",
    "from_address",
    "to_addresses",
    "cc_addresses",
    "in_reply_to",
    "references_hdr",
    "sent_at",
    "received_at",
    "size_bytes",
    "flags",
    "first_seen_at",
    "updated_at",
    "deleted_at",
)
"""The columns of ``messages`` a new row sets (all but ``id``), in staging-table order."""

_JSON: Final = frozenset({"to_addresses", "cc_addresses", "flags"})
_TIMES: Final = frozenset({"sent_at", "received_at", "first_seen_at", "updated_at", "deleted_at"})
_TYPES: Final = {
    "folder_id": "integer",
    "uidvalidity": "bigint",
    "uid": "bigint",
    "size_bytes": "bigint",
    **dict.fromkeys(_TIMES, "timestamptz"),
}
STAGING: Final = "mailsyncd_staged_messages"

# JSON travels as text and becomes jsonb in the INSERT: psycopg would otherwise have to be
# told, per column, that a str is a JSON document and not a JSON string.
_CREATE: Final = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGING} ("
    + ", ".join(f"{name} {_TYPES.get(name, 'text')}" for name in COLUMNS)
    + ") ON COMMIT DELETE ROWS"
)
_COPY: Final = f"COPY {STAGING} ({', '.join(COLUMNS)}) FROM STDIN"
_INSERT: Final = (
    f"INSERT INTO messages ({', '.join(COLUMNS)}) SELECT "  # noqa: S608 - names are constants
    + ", ".join(f"{name}::jsonb" if name in _JSON else name for name in COLUMNS)
    + f" FROM {STAGING} ON CONFLICT (folder_id, uidvalidity, uid) DO NOTHING"
)
# Characters a JSON string must escape; a list without them is joined by hand.
_JSON_ESCAPE: Final = re.compile(r'["\\\x00-\x1f]')
_dumps: Final = functools.partial(json.dumps, ensure_ascii=False)


def insert_rows(connection: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert ``rows`` (dicts with every key of ``COLUMNS``), skipping any already stored;
    return how many were inserted. PostgreSQL only; runs in the caller's transaction."""
    if not rows:
        return 0
    connection.exec_driver_sql(_CREATE)
    cursor = connection.connection.cursor()
    try:
        with cursor.copy(_COPY) as copy:
            for row in rows:
                copy.write_row(_values(row))
    except psycopg.Error as exc:
        raise sa_exc.DBAPIError.instance(
            _COPY, None, exc, psycopg.Error, hide_parameters=True, dialect=connection.dialect
        ) from exc
    finally:
        cursor.close()
    return int(connection.exec_driver_sql(_INSERT).rowcount)


def _values(row: Mapping[str, Any]) -> tuple[Any, ...]:
    to_addresses, cc_addresses, flags = row["to_addresses"], row["cc_addresses"], row["flags"]
    return (
        row["folder_id"],
        row["uidvalidity"],
        row["uid"],
        row["message_id"],
        row["subject"],
        row["from_address"],
        json_list(to_addresses),
        json_list(cc_addresses),
        row["in_reply_to"],
        row["references_hdr"],
        row["sent_at"],  # made UTC by the store, as are the times of the apply below
        _aware(row["received_at"]),
        row["size_bytes"],
        _flags_json(tuple(flags)),
        row["first_seen_at"],
        row["updated_at"],
        row["deleted_at"],
    )


def json_list(values: Sequence[str]) -> str:
    """A JSON array of strings (the same document ``json.dumps`` writes)."""
    if not values:
        return "[]"
    if _JSON_ESCAPE.search("".join(values)) is None:
        return '["' + '", "'.join(values) + '"]'
    return _dumps(list(values))


@functools.lru_cache(maxsize=256)
def _flags_json(flags: tuple[str, ...]) -> str:
    # Cached: a mailbox has a handful of distinct flag sets.
    return json_list(flags)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    # As the UTCDateTime column type: a naive time is refused, never guessed at.
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise ValueError("naive datetime given where a timezone-aware one is required")
    return value
