"""Initial schema: mailboxes, folders with their checkpoint, messages, view message_metadata.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Frozen: this file states the schema as of this revision and does not import the models.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


VIEW_SQL = """\
CREATE VIEW message_metadata AS
SELECT
    mb.address AS mailbox,
    f.name AS folder,
    m.uidvalidity AS uidvalidity,
    m.uid AS uid,
    m.message_id AS message_id,
    m.subject AS subject,
    m.from_address AS from_address,
    m.to_addresses AS to_addresses,
    m.cc_addresses AS cc_addresses,
    m.in_reply_to AS in_reply_to,
    m.references_hdr AS "references",
    m.sent_at AS sent_at,
    m.received_at AS received_at,
    m.size_bytes AS size_bytes,
    m.flags AS flags,
    m.first_seen_at AS first_seen_at,
    m.deleted_at AS deleted_at
FROM messages AS m
JOIN folders AS f ON f.id = m.folder_id
JOIN mailboxes AS mb ON mb.id = f.mailbox_id
"""


def upgrade() -> None:
    op.create_table(
        "mailboxes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_mailboxes"),
        sa.UniqueConstraint("address", name="uq_mailboxes_address"),
    )
    op.create_table(
        "folders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=True),
        sa.Column("last_uid", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("highest_modseq", sa.BigInteger(), nullable=True),
        sa.Column("last_full_scan_at", _timestamp(), nullable=True),
        sa.Column("vanished_at", _timestamp(), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.ForeignKeyConstraint(
            ["mailbox_id"],
            ["mailboxes.id"],
            name="fk_folders_mailbox_id_mailboxes",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_folders"),
        sa.UniqueConstraint("mailbox_id", "name", name="uq_folders_mailbox_id_name"),
    )
    op.create_table(
        "messages",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
        ),
        sa.Column("folder_id", sa.Integer(), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("message_id", sa.Text(), nullable=True),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("from_address", sa.Text(), nullable=True),
        sa.Column("to_addresses", _json(), nullable=False),
        sa.Column("cc_addresses", _json(), nullable=False),
        sa.Column("in_reply_to", sa.Text(), nullable=True),
        sa.Column("references_hdr", sa.Text(), nullable=True),
        sa.Column("sent_at", _timestamp(), nullable=True),
        sa.Column("received_at", _timestamp(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("flags", _json(), nullable=False),
        sa.Column("first_seen_at", _timestamp(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.Column("deleted_at", _timestamp(), nullable=True),
        sa.ForeignKeyConstraint(
            ["folder_id"],
            ["folders.id"],
            name="fk_messages_folder_id_folders",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
        sa.UniqueConstraint(
            "folder_id", "uidvalidity", "uid", name="uq_messages_folder_id_uidvalidity_uid"
        ),
    )
    op.create_index(
        "ix_messages_live",
        "messages",
        ["folder_id", "uidvalidity", "uid"],
        postgresql_where=sa.text("deleted_at IS NULL"),
        sqlite_where=sa.text("deleted_at IS NULL"),
    )
    op.execute(VIEW_SQL)


def downgrade() -> None:
    op.execute("DROP VIEW message_metadata")
    op.drop_index("ix_messages_live", table_name="messages")
    op.drop_table("messages")
    op.drop_table("folders")
    op.drop_table("mailboxes")
