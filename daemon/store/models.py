"""Tables of the store (SQLAlchemy Core), shared by the repository and the migration test.

The public read surfaces are the views ``message_metadata`` and ``mailbox_status`` (created by
the migrations); these tables are internal and free to change with a new migration.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect

from daemon.status import STATUS_STATES

UTC = dt.UTC

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(sa.TypeDecorator[dt.datetime]):
    """A point in time: ``timestamptz`` in PostgreSQL, naive UTC text in SQLite.

    Python sees timezone-aware UTC datetimes on both; a naive datetime is refused rather than
    guessed at.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime given where a timezone-aware one is required")
        value = value.astimezone(UTC)
        # SQLite has no time zone type: store UTC wall time, which also sorts correctly.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:  # noqa: ARG002
        if value is None:
            return None
        if not isinstance(value, dt.datetime):
            raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def json_type() -> sa.types.TypeEngine[Any]:
    """JSON text in SQLite, ``jsonb`` in PostgreSQL."""
    return sa.JSON().with_variant(JSONB(), "postgresql")


def big_id_type() -> sa.types.TypeEngine[int]:
    """``bigint`` key; in SQLite ``INTEGER`` so that the column is the auto-incrementing rowid."""
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

mailboxes = sa.Table(
    "mailboxes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("address", sa.String(320), nullable=False, unique=True),
    sa.Column("tenant", sa.String(200), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

folders = sa.Table(
    "folders",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "mailbox_id",
        sa.Integer,
        sa.ForeignKey("mailboxes.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("uidvalidity", sa.BigInteger, nullable=True),
    sa.Column("last_uid", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("highest_modseq", sa.BigInteger, nullable=True),
    sa.Column("last_full_scan_at", UTCDateTime, nullable=True),
    sa.Column("vanished_at", UTCDateTime, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("mailbox_id", "name"),
)

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", big_id_type(), primary_key=True),
    sa.Column(
        "folder_id",
        sa.Integer,
        sa.ForeignKey("folders.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("uidvalidity", sa.BigInteger, nullable=False),
    sa.Column("uid", sa.BigInteger, nullable=False),
    sa.Column("message_id", sa.Text, nullable=True),
    sa.Column("subject", sa.Text, nullable=True),
    sa.Column("from_address", sa.Text, nullable=True),
    sa.Column("to_addresses", json_type(), nullable=False),
    sa.Column("cc_addresses", json_type(), nullable=False),
    sa.Column("in_reply_to", sa.Text, nullable=True),
    # REFERENCES is a reserved word; the view exposes the column as "references".
    sa.Column("references_hdr", sa.Text, nullable=True),
    sa.Column("sent_at", UTCDateTime, nullable=True),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("flags", json_type(), nullable=False),
    sa.Column("first_seen_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("deleted_at", UTCDateTime, nullable=True),
    # The identity of a message copy: never stored twice (SPEC "Guarantees").
    sa.UniqueConstraint("folder_id", "uidvalidity", "uid"),
    # The live rows of a folder: stored_flags(), expunge and UIDVALIDITY resets.
    sa.Index(
        "ix_messages_live",
        "folder_id",
        "uidvalidity",
        "uid",
        postgresql_where=sa.text("deleted_at IS NULL"),
        sqlite_where=sa.text("deleted_at IS NULL"),
    ),
)

VIEW_NAME = "message_metadata"

# The columns of the view, in the SPEC's order; the migrations create it.
VIEW_COLUMNS: tuple[str, ...] = (
    "mailbox",
    "folder",
    "uidvalidity",
    "uid",
    "message_id",
    "subject",
    "from_address",
    "to_addresses",
    "cc_addresses",
    "in_reply_to",
    "references",
    "sent_at",
    "received_at",
    "size_bytes",
    "flags",
    "first_seen_at",
    "deleted_at",
)

# -- mailbox status (SPEC "Mailbox status") ---------------------------------------------------

# The runtime state of a mailbox, one row per mailbox that a replica has reported on; the
# address and tenant come from ``mailboxes``, so a reported mailbox always has a row there.
mailbox_states = sa.Table(
    "mailbox_states",
    metadata,
    sa.Column(
        "mailbox_id",
        sa.Integer,
        sa.ForeignKey("mailboxes.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("owner", sa.String(255), nullable=True),
    sa.Column("last_poll_at", UTCDateTime, nullable=True),
    sa.Column("last_success_at", UTCDateTime, nullable=True),
    sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("last_error_reason", sa.String(16), nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("hint", sa.Text, nullable=True),
    sa.Column("initial_sync_remaining", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("idle", sa.Boolean, nullable=False, server_default=sa.false()),
    # When a replica last wrote the row: tells a stale row (its owner gone) from a quiet one.
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.CheckConstraint(
        "state IN (" + ", ".join(f"'{state}'" for state in STATUS_STATES) + ")", name="state"
    ),
)

# -- replicas and leases (SPEC "Replicas"; used on PostgreSQL) ----------------------------------

# One row per replica: its heartbeat. Live while ``expires_at`` (database time) is ahead.
replicas = sa.Table(
    "mailsyncd_replicas",
    metadata,
    sa.Column("replica", sa.String(255), primary_key=True),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("heartbeat_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("mailboxes", sa.Integer, nullable=False, server_default=sa.text("0")),
)

# One row per configured mailbox: who holds it until when, and the fencing token that every
# acquisition increments (a write for the mailbox checks it in its own transaction).
mailbox_leases = sa.Table(
    "mailbox_leases",
    metadata,
    sa.Column("mailbox", sa.String(320), primary_key=True),
    sa.Column("owner", sa.String(255), nullable=True, index=True),
    sa.Column("token", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("expires_at", UTCDateTime, nullable=True),
)

STATUS_VIEW_NAME = "mailbox_status"

# The view as a selectable with the columns' types, so reads get UTC datetimes on both
# databases. Not part of ``metadata``: the migrations create the view, autogenerate ignores it.
mailbox_status_view = sa.table(
    STATUS_VIEW_NAME,
    sa.column("mailbox", sa.String),
    sa.column("tenant", sa.String),
    sa.column("state", sa.String),
    sa.column("owner", sa.String),
    sa.column("last_poll_at", UTCDateTime),
    sa.column("last_success_at", UTCDateTime),
    sa.column("consecutive_failures", sa.Integer),
    sa.column("last_error_reason", sa.String),
    sa.column("last_error", sa.Text),
    sa.column("hint", sa.Text),
    sa.column("initial_sync_remaining", sa.BigInteger),
    sa.column("idle", sa.Boolean),
)
