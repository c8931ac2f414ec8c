"""Mailbox status: table mailbox_states and the view mailbox_status (SPEC "Mailbox status").

Revision ID: 0002
Revises: 0001
Create Date: 2025-06-01

Frozen: this file states the schema as of this revision and does not import the models.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


VIEW_SQL = """\
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
        "mailbox_states",
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("last_poll_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "consecutive_failures", sa.Integer(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column("last_error_reason", sa.String(16), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("hint", sa.Text(), nullable=True),
        sa.Column(
            "initial_sync_remaining", sa.BigInteger(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "state IN ('ok', 'backoff', 'auth_failed', 'disabled', 'removed')",
            name="ck_mailbox_states_state",
        ),
        sa.ForeignKeyConstraint(
            ["mailbox_id"],
            ["mailboxes.id"],
            name="fk_mailbox_states_mailbox_id_mailboxes",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("mailbox_id", name="pk_mailbox_states"),
    )
    op.execute(VIEW_SQL)


def downgrade() -> None:
    op.execute("DROP VIEW mailbox_status")
    op.drop_table("mailbox_states")
