"""Replicas and mailbox leases (SPEC "Replicas"), and whether a mailbox is in IMAP IDLE.

Tables mailsyncd_replicas and mailbox_leases; column mailbox_states.idle, shown by the view.

The ``mailbox_status`` view takes ``owner`` from a live lease on PostgreSQL, so it names the
replica that holds the mailbox now even when the one that last wrote its status is gone. SQLite
runs one replica and has no leases: its view stays as it was.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

Frozen: this file states the schema as of this revision and does not import the models.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

LEASED_VIEW_SQL = """\
CREATE VIEW mailbox_status AS
SELECT
    mb.address AS mailbox,
    mb.tenant AS tenant,
    s.state AS state,
    CASE
        WHEN s.state = 'removed' THEN NULL
        WHEN l.mailbox IS NULL THEN s.owner
        WHEN l.expires_at > now() THEN l.owner
    END AS owner,
    s.last_poll_at AS last_poll_at,
    s.last_success_at AS last_success_at,
    s.consecutive_failures AS consecutive_failures,
    s.last_error_reason AS last_error_reason,
    s.last_error AS last_error,
    s.hint AS hint,
    s.initial_sync_remaining AS initial_sync_remaining,
    s.idle AS idle
FROM mailbox_states AS s
JOIN mailboxes AS mb ON mb.id = s.mailbox_id
LEFT JOIN mailbox_leases AS l ON l.mailbox = mb.address
"""
"""PostgreSQL: ``owner`` is the live lease's holder (NULL while no replica holds it)."""

SQLITE_VIEW_SQL = """\
CREATE VIEW mailbox_status AS
SELECT
    mb.address AS mailbox,
    mb.tenant AS tenant,
    s.state AS state,
    s.owner AS owner,
    s.last_poll_at AS last_poll_at,
    s.last_success_at AS last_success_at,
    s.consecutive_failures AS consecutive_failures,
    s.last_error_reason AS last_error_reason,
    s.last_error AS last_error,
    s.hint AS hint,
    s.initial_sync_remaining AS initial_sync_remaining,
    s.idle AS idle
FROM mailbox_states AS s
JOIN mailboxes AS mb ON mb.id = s.mailbox_id
"""
"""SQLite runs one replica and has no leases: ``owner`` is the one the replica wrote."""

PLAIN_VIEW_SQL = """\
CREATE VIEW mailbox_status AS
SELECT
    mb.address AS mailbox,
    mb.tenant AS tenant,
    s.state AS state,
    s.owner AS owner,
    s.last_poll_at AS last_poll_at,
    s.last_success_at AS last_success_at,
    s.consecutive_failures AS consecutive_failures,
    s.last_error_reason AS last_error_reason,
    s.last_error AS last_error,
    s.hint AS hint,
    s.initial_sync_remaining AS initial_sync_remaining
FROM mailbox_states AS s
JOIN mailboxes AS mb ON mb.id = s.mailbox_id
"""


def upgrade() -> None:
    op.create_table(
        "mailsyncd_replicas",
        sa.Column("replica", sa.String(255), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("mailboxes", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("replica", name="pk_mailsyncd_replicas"),
    )
    op.create_table(
        "mailbox_leases",
        sa.Column("mailbox", sa.String(320), nullable=False),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("token", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("mailbox", name="pk_mailbox_leases"),
    )
    op.create_index("ix_mailbox_leases_owner", "mailbox_leases", ["owner"])
    op.execute("DROP VIEW mailbox_status")
    op.add_column(
        "mailbox_states",
        sa.Column("idle", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.execute(LEASED_VIEW_SQL if postgresql else SQLITE_VIEW_SQL)


def downgrade() -> None:
    op.execute("DROP VIEW mailbox_status")
    with op.batch_alter_table("mailbox_states") as batch:
        batch.drop_column("idle")
    op.execute(PLAIN_VIEW_SQL)
    op.drop_index("ix_mailbox_leases_owner", table_name="mailbox_leases")
    op.drop_table("mailbox_leases")
    op.drop_table("mailsyncd_replicas")
