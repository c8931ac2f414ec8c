"""The one place where SQLAlchemy and driver errors become mailsyncd errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import exc as sa_exc

from daemon.errors import DatabaseError, DatabaseRejectedError

# Errors of the connection or the server's momentary state: worth a retry.
_TRANSIENT = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.InternalError)


@contextmanager
def translate_errors() -> Iterator[None]:
    """Raise :class:`DatabaseError` (transient) or :class:`DatabaseRejectedError` (permanent).

    Messages name what failed and where (SQLSTATE, constraint, column), never a value:
    PostgreSQL's DETAIL ("Failing row contains (...)") repeats the row, message data included,
    so a statement error is not chained either.
    """
    try:
        yield
    except sa_exc.TimeoutError as exc:  # connection pool exhausted
        raise DatabaseError("database connection pool timed out") from exc
    except sa_exc.DBAPIError as exc:
        message = describe(exc)
        if isinstance(exc, _TRANSIENT) or exc.connection_invalidated:
            raise DatabaseError(message) from exc
        raise DatabaseRejectedError(message) from None


def describe(exc: sa_exc.DBAPIError) -> str:
    """A one-line description of a driver error that holds no statement parameters."""
    orig = exc.orig
    kind = type(orig).__name__ if orig is not None else type(exc).__name__
    diag = getattr(orig, "diag", None)
    if diag is not None and getattr(diag, "message_primary", None):
        # psycopg: DETAIL is left out; the primary message names objects, not values, except
        # for data exceptions (class 22: "invalid input syntax for type json: ...").
        sqlstate = getattr(orig, "sqlstate", None) or "?"
        primary = "" if isinstance(exc, sa_exc.DataError) else f": {diag.message_primary}"
        parts = [f"{kind} [{sqlstate}]{primary}"]
        for label in ("table_name", "column_name", "constraint_name"):
            value = getattr(diag, label, None)
            if value:
                parts.append(f"{label.removesuffix('_name')}={value}")
        return "database error: " + ", ".join(parts)
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        # Connection failures (both drivers) and SQLite's messages carry no values.
        first_line = str(orig).splitlines()[0] if str(orig) else ""
        return f"database error: {kind}: {first_line}"
    if orig is not None and type(orig).__module__.startswith("sqlite3"):
        # SQLite's messages name the constraint and columns, never the values.
        return f"database error: {kind}: {orig}"
    return f"database error: {kind}"
