"""``SqlStore``: the store adapter over SQLAlchemy Core, for PostgreSQL and SQLite.

Each method runs in its own connection and transaction, so one instance serves every thread.
Every write transaction is timed, from taking a connection to its commit or rollback, and its
seconds go to ``on_write`` (``Metrics.db_write``: ``mailsyncd_db_write_duration_seconds``).
Text is cleaned here once more before it is written (defence in depth: the database must never
be the reason a mailbox stalls).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, Row

from daemon.errors import REASONS, UnknownFolder
from daemon.status import MailboxStatus
from daemon.store import bulk
from daemon.store.engine import SQLITE_BEGIN
from daemon.store.leases import Fence, check_fence
from daemon.store.models import folders, mailbox_states, mailbox_status_view, mailboxes, messages
from daemon.store.translate import translate_errors
from daemon.sync.model import Checkpoint, FolderChanges, FolderState, MessageRecord
from daemon.sync.text import clean_text

UTC = dt.UTC

# Bound parameters per IN list; well under SQLite's and psycopg's limits.
_CHUNK: Final = 500


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one ``apply()`` changed: rows inserted, rows whose flags changed, rows deleted."""

    new: int = 0
    updated: int = 0
    deleted: int = 0


class SqlStore:
    """The store of mailboxes, folders with their checkpoints, and message rows."""

    def __init__(
        self,
        engine: Engine,
        *,
        on_write: Callable[[float], None] | None = None,
        bulk_copy: bool = True,
    ) -> None:
        """``on_write`` gets the seconds of every write transaction, committed or not;
        ``bulk_copy=False`` inserts new rows with executemany on PostgreSQL too."""
        self._engine = engine
        self._on_write = on_write
        dialect = engine.dialect.name
        if dialect not in {"postgresql", "sqlite"}:
            raise ValueError(f"unsupported database dialect {dialect!r}")
        self._bulk = bulk_copy and dialect == "postgresql"
        self._insert: Callable[[sa.Table], Any] = (
            postgresql.insert if dialect == "postgresql" else sqlite.insert
        )

    @property
    def engine(self) -> Engine:
        """The engine this store writes through (owned by the caller)."""
        return self._engine

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with translate_errors(), self._engine.connect() as connection, connection.begin():
            yield connection

    @contextmanager
    def _write(self, fence: Fence | None = None) -> Iterator[Connection]:
        """A write transaction; with ``fence``, one that holds the mailbox's lease throughout."""
        started = time.perf_counter()
        try:
            with translate_errors(), self._engine.connect() as connection:
                if connection.dialect.name == "sqlite":
                    connection.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
                with connection.begin():
                    if fence is not None:
                        check_fence(connection, fence)
                    yield connection
        finally:
            # A failed write is timed too: a slow timeout is what the histogram must show.
            if self._on_write is not None:
                self._on_write(time.perf_counter() - started)

    def ping(self) -> None:
        """Run ``SELECT 1``; raise :class:`~daemon.errors.DatabaseError` if that fails."""
        with self._read() as connection:
            connection.execute(sa.select(sa.literal(1))).one()

    def ensure_mailbox(self, address: str, tenant: str) -> int:
        """Return the id of the mailbox ``address`` (stored lower-case), creating it if new."""
        address = _required_text(address.strip().lower(), "address")
        tenant = _required_text(tenant, "tenant")
        with self._write() as connection:
            connection.execute(
                self._insert(mailboxes)
                .values(address=address, tenant=tenant, created_at=_utcnow())
                .on_conflict_do_nothing(index_elements=[mailboxes.c.address])
            )
            row = connection.execute(
                sa.select(mailboxes.c.id, mailboxes.c.tenant).where(mailboxes.c.address == address)
            ).one()
            if row.tenant != tenant:  # the configuration moved it to another tenant
                connection.execute(
                    sa.update(mailboxes).where(mailboxes.c.id == row.id).values(tenant=tenant)
                )
            return int(row.id)

    def save_statuses(self, statuses: Sequence[MailboxStatus]) -> None:
        """Upsert the status rows of ``statuses`` (view ``mailbox_status``) in ONE transaction.

        A mailbox without a ``mailboxes`` row gets one (a disabled mailbox is never polled, so
        nothing else creates it), and a mailbox's tenant follows the status, as it follows
        ``ensure_mailbox``. Of two statuses of one mailbox the last wins. Rows are written in
        address order, so two replicas saving overlapping sets wait for each other instead of
        deadlocking. Called every few seconds with up to thousands of rows, it costs a few
        statements whatever the count (5,000 rows: about 0.2 s on either database).
        """
        latest = {status.mailbox: status for status in statuses}
        if not latest:
            return
        addresses = sorted(latest)
        now = _utcnow()
        with self._write() as connection:
            ids = self._mailbox_ids(connection, addresses, latest, now)
            rows = [_status_row(ids[address], latest[address], now) for address in addresses]
            if connection.dialect.name == "postgresql":
                columns = {name: [row[name] for row in rows] for name in _STATUS_ROW}
                connection.execute(_PG_STATUS_UPSERT, columns)
            else:
                connection.execute(_SQLITE_STATUS_UPSERT, rows)

    def _mailbox_ids(
        self,
        connection: Connection,
        addresses: Sequence[str],
        latest: Mapping[str, MailboxStatus],
        now: dt.datetime,
    ) -> dict[str, int]:
        """The ``mailboxes`` id of each address: rows created where missing, tenants updated
        where the status names another one.

        Existing rows are read first rather than upserted blindly: nearly all exist, and an
        INSERT ... ON CONFLICT draws a value from the id sequence even when it conflicts, which
        thousands of rows every few seconds would run out of within weeks.
        """
        known = _mailbox_rows(connection, addresses)
        missing = [address for address in addresses if address not in known]
        if missing:
            connection.execute(
                self._insert(mailboxes).on_conflict_do_nothing(
                    index_elements=[mailboxes.c.address]
                ),
                [
                    {"address": address, "tenant": latest[address].tenant, "created_at": now}
                    for address in missing
                ],
            )
            known.update(_mailbox_rows(connection, missing))
        moved = [
            {"b_id": known[address][0], "b_tenant": latest[address].tenant}
            for address in addresses
            if known[address][1] != latest[address].tenant
        ]
        if moved:
            connection.execute(
                sa.update(mailboxes)
                .where(mailboxes.c.id == sa.bindparam("b_id"))
                .values(tenant=sa.bindparam("b_tenant")),
                moved,
            )
        return {address: known[address][0] for address in addresses}

    def load_statuses(self, mailboxes: Sequence[str] | None = None) -> list[MailboxStatus]:
        """Rows of the view ``mailbox_status``, sorted by address; with ``mailboxes``, only
        those addresses (any case; an address without a row is left out)."""
        view = mailbox_status_view
        with self._read() as connection:
            if mailboxes is None:
                rows = connection.execute(sa.select(view)).all()
            else:
                wanted = sorted({address.strip().lower() for address in mailboxes})
                rows = []
                for chunk in _chunks(wanted):
                    rows.extend(
                        connection.execute(sa.select(view).where(view.c.mailbox.in_(chunk)))
                    )
        # Sorted here: PostgreSQL's ORDER BY follows the database's collation, not code points.
        return sorted((_status(row) for row in rows), key=lambda status: status.mailbox)

    def folder_states(self, mailbox_id: int) -> dict[str, FolderState]:
        """Every folder of a mailbox known to the store, vanished ones included, by name."""
        with self._read() as connection:
            rows = connection.execute(
                sa.select(folders).where(folders.c.mailbox_id == mailbox_id)
            ).all()
        return {row.name: _folder_state(row) for row in rows}

    def ensure_folder(self, mailbox_id: int, name: str) -> FolderState:
        """Return the state of a folder, creating it if new.

        A folder marked vanished that is back is live again, with its checkpoint reset apart
        from UIDVALIDITY: the next poll fetches it whole and revives rows still on the server.
        """
        name = _required_text(name, "name")
        now = _utcnow()
        with self._write() as connection:
            connection.execute(
                self._insert(folders)
                .values(mailbox_id=mailbox_id, name=name, created_at=now, updated_at=now)
                .on_conflict_do_nothing(index_elements=[folders.c.mailbox_id, folders.c.name])
            )
            where = (folders.c.mailbox_id == mailbox_id) & (folders.c.name == name)
            row = connection.execute(sa.select(folders).where(where)).one()
            if row.vanished_at is not None:
                connection.execute(
                    sa.update(folders)
                    .where(folders.c.id == row.id)
                    .values(
                        vanished_at=None,
                        last_uid=0,
                        highest_modseq=None,
                        last_full_scan_at=None,
                        updated_at=now,
                    )
                )
                row = connection.execute(sa.select(folders).where(where)).one()
        return _folder_state(row)

    def stored_flags(self, folder_id: int, uidvalidity: int) -> dict[int, tuple[str, ...]]:
        """Flags of the live (not deleted) rows of a folder under one UIDVALIDITY, by UID."""
        with self._read() as connection:
            rows = connection.execute(
                sa.select(messages.c.uid, messages.c.flags).where(
                    messages.c.folder_id == folder_id,
                    messages.c.uidvalidity == uidvalidity,
                    messages.c.deleted_at.is_(None),
                )
            )
            return {int(uid): tuple(flags) for uid, flags in rows}

    def apply(
        self, changes: FolderChanges, now: dt.datetime, *, fence: Fence | None = None
    ) -> ApplyResult:
        """Write one batch of changes of a folder and its new checkpoint in ONE transaction.

        Idempotent: a message already stored for (folder, uidvalidity, uid) is not inserted
        again, only its flags are refreshed (and it is live again if it had been deleted), so
        replaying a batch after a crash changes nothing else. Counts are of rows really
        inserted, rows whose flags (or liveness) really changed, and rows newly deleted.
        A checkpoint without ``last_full_scan_at`` keeps the stored one. With ``fence``, the
        transaction first checks (and holds) the mailbox's lease: :class:`LeaseLost` when
        another replica holds it now, and nothing is written.
        """
        _require_aware(now)
        checkpoint = changes.checkpoint
        if checkpoint is not None and checkpoint.uidvalidity != changes.uidvalidity:
            raise ValueError("checkpoint UIDVALIDITY differs from the changes' UIDVALIDITY")
        rows = {
            record.uid: _message_row(record, changes.folder_id, changes.uidvalidity, now)
            for record in changes.new
        }
        with self._write(fence) as connection:
            new = updated = 0
            if rows:
                # Rows already stored (a batch replayed after a crash) are looked up first, so
                # that the new ones go in through the driver's executemany: one short prepared
                # statement, instead of a multi-row INSERT ... RETURNING whose SQL text (about
                # 17 parameters a row) the driver must convert again for every batch.
                stored = set(
                    connection.execute(
                        sa.select(messages.c.uid).where(
                            messages.c.folder_id == changes.folder_id,
                            messages.c.uidvalidity == changes.uidvalidity,
                            messages.c.uid.between(min(rows), max(rows)),
                        )
                    ).scalars()
                )
                fresh = [row for uid, row in rows.items() if uid not in stored]
                if fresh:
                    # Polls of one mailbox never overlap, so nothing else inserts these rows;
                    # DO NOTHING keeps a replay safe all the same.
                    stmt = self._insert(messages).on_conflict_do_nothing(
                        index_elements=[
                            messages.c.folder_id,
                            messages.c.uidvalidity,
                            messages.c.uid,
                        ]
                    )
                    if self._bulk:  # PostgreSQL: COPY into a staging table (bulk.py)
                        new = bulk.insert_rows(connection, fresh)
                    else:
                        connection.execute(stmt, fresh)
                        new = len(fresh)
                replayed = {uid: row["flags"] for uid, row in rows.items() if uid in stored}
                updated += _refresh_flags(connection, changes, replayed, now, revive=True)
            if changes.flag_updates:
                wanted = {uid: _flag_list(flags) for uid, flags in changes.flag_updates}
                updated += _refresh_flags(connection, changes, wanted, now, revive=False)
            deleted = _mark_deleted(connection, changes, now)
            if checkpoint is not None:
                _write_checkpoint(connection, changes.folder_id, checkpoint, now)
        return ApplyResult(new=new, updated=updated, deleted=deleted)

    def reset_folder(
        self, folder_id: int, uidvalidity: int, now: dt.datetime, *, fence: Fence | None = None
    ) -> int:
        """UIDVALIDITY changed: delete the folder's rows of other UIDVALIDITYs, reset its
        checkpoint to ``uidvalidity`` and nothing fetched. Returns the rows marked deleted."""
        _require_aware(now)
        with self._write(fence) as connection:
            marked = connection.execute(
                sa.update(messages)
                .where(
                    messages.c.folder_id == folder_id,
                    messages.c.uidvalidity != uidvalidity,
                    messages.c.deleted_at.is_(None),
                )
                .values(deleted_at=now, updated_at=now)
            ).rowcount
            done = connection.execute(
                sa.update(folders)
                .where(folders.c.id == folder_id)
                .values(
                    uidvalidity=uidvalidity,
                    last_uid=0,
                    highest_modseq=None,
                    last_full_scan_at=None,
                    updated_at=now,
                )
            ).rowcount
            if done != 1:
                raise UnknownFolder(folder_id)
            return int(marked)

    def mark_folder_vanished(
        self, folder_id: int, now: dt.datetime, *, fence: Fence | None = None
    ) -> int:
        """The folder is gone from the server: mark it and delete its live rows (returned)."""
        _require_aware(now)
        with self._write(fence) as connection:
            done = connection.execute(
                sa.update(folders)
                .where(folders.c.id == folder_id)
                .values(vanished_at=sa.func.coalesce(folders.c.vanished_at, now), updated_at=now)
            ).rowcount
            if done != 1:
                raise UnknownFolder(folder_id)
            marked = connection.execute(
                sa.update(messages)
                .where(messages.c.folder_id == folder_id, messages.c.deleted_at.is_(None))
                .values(deleted_at=now, updated_at=now)
            ).rowcount
            return int(marked)


_STATUS_ROW: Final = (
    "mailbox_id",
    *(column.name for column in mailbox_states.columns if column.name != "mailbox_id"),
)
"""Every column of ``mailbox_states``, the key first; the upserts set all but the key."""


def _pg_status_upsert() -> postgresql.Insert:
    """Status rows from one array per column, unnested side by side (psycopg adapts lists):
    one statement and one round trip for any number of rows."""
    arrays = [
        sa.bindparam(name, type_=postgresql.ARRAY(mailbox_states.c[name].type))
        for name in _STATUS_ROW
    ]
    source = sa.func.unnest(*arrays).table_valued(*_STATUS_ROW).render_derived()
    insert = postgresql.insert(mailbox_states).from_select(
        list(_STATUS_ROW), sa.select(*(source.c[name] for name in _STATUS_ROW))
    )
    return insert.on_conflict_do_update(
        index_elements=[mailbox_states.c.mailbox_id],
        set_=_status_updates(insert.excluded),
    )


def _sqlite_status_upsert() -> sqlite.Insert:
    """Status rows through executemany: SQLite runs in process, a row costs no round trip."""
    insert = sqlite.insert(mailbox_states)
    return insert.on_conflict_do_update(
        index_elements=[mailbox_states.c.mailbox_id],
        set_=_status_updates(insert.excluded),
    )


_KEPT_WHEN_UNKNOWN: Final = ("last_poll_at", "last_success_at")
"""A replica that took a mailbox over (or a restarted one) does not know these yet: a NULL
from it keeps the stored time."""


def _status_updates(excluded: Any) -> dict[str, Any]:
    return {
        name: (
            sa.func.coalesce(excluded[name], mailbox_states.c[name])
            if name in _KEPT_WHEN_UNKNOWN
            else excluded[name]
        )
        for name in _STATUS_ROW[1:]
    }


_PG_STATUS_UPSERT: Final = _pg_status_upsert()
_SQLITE_STATUS_UPSERT: Final = _sqlite_status_upsert()


def _status_row(mailbox_id: int, status: MailboxStatus, now: dt.datetime) -> dict[str, Any]:
    return {
        "mailbox_id": mailbox_id,
        "state": status.state,
        "owner": status.owner,
        "last_poll_at": status.last_poll_at,
        "last_success_at": status.last_success_at,
        "consecutive_failures": status.consecutive_failures,
        "last_error_reason": status.last_error_reason,
        "last_error": status.last_error,
        "hint": status.hint,
        "initial_sync_remaining": status.initial_sync_remaining,
        "idle": status.idle,
        "updated_at": now,
    }


def _mailbox_rows(connection: Connection, addresses: Sequence[str]) -> dict[str, tuple[int, str]]:
    """``address -> (id, tenant)`` of the addresses that have a ``mailboxes`` row."""
    columns = (mailboxes.c.address, mailboxes.c.id, mailboxes.c.tenant)
    if connection.dialect.name == "postgresql":
        # One array parameter: an IN list of hundreds of values is SQL text psycopg must
        # parse again for every distinct length.
        wanted = sa.bindparam("addresses", list(addresses), type_=postgresql.ARRAY(sa.Text))
        queries = [sa.select(*columns).where(mailboxes.c.address == sa.any_(wanted))]
    else:
        queries = [
            sa.select(*columns).where(mailboxes.c.address.in_(chunk))
            for chunk in _chunks(addresses)
        ]
    found: dict[str, tuple[int, str]] = {}
    for query in queries:
        found.update((row.address, (int(row.id), row.tenant)) for row in connection.execute(query))
    return found


def _status(row: Row[Any]) -> MailboxStatus:
    # A reason this version does not know (written by a newer one) reads as "other".
    reason = row.last_error_reason
    return MailboxStatus(
        mailbox=row.mailbox,
        tenant=row.tenant,
        state=row.state,
        owner=row.owner,
        last_poll_at=row.last_poll_at,
        last_success_at=row.last_success_at,
        consecutive_failures=int(row.consecutive_failures),
        last_error_reason=reason if reason is None or reason in REASONS else "other",
        last_error=row.last_error,
        hint=row.hint,
        initial_sync_remaining=int(row.initial_sync_remaining),
        idle=bool(row.idle),
    )


def _refresh_flags(
    connection: Connection,
    changes: FolderChanges,
    wanted: dict[int, list[str]],
    now: dt.datetime,
    *,
    revive: bool,
) -> int:
    """Set the flags of the rows in ``wanted`` that differ; return how many changed.

    With ``revive``, rows deleted earlier are live again (the server lists them as present);
    without it, deleted rows are left alone.
    """
    if not wanted:
        return 0
    changed: list[dict[str, Any]] = []
    for chunk in _chunks(sorted(wanted)):
        current = connection.execute(
            sa.select(messages.c.uid, messages.c.flags, messages.c.deleted_at).where(
                messages.c.folder_id == changes.folder_id,
                messages.c.uidvalidity == changes.uidvalidity,
                messages.c.uid.in_(chunk),
            )
        )
        for uid, flags, deleted_at in current:
            if deleted_at is not None and not revive:
                continue
            if deleted_at is not None or list(flags) != wanted[uid]:
                changed.append({"b_uid": uid, "b_flags": wanted[uid]})
    if changed:
        values: dict[str, Any] = {
            "flags": sa.bindparam("b_flags", type_=messages.c.flags.type),
            "updated_at": now,
        }
        if revive:
            values["deleted_at"] = None
        connection.execute(
            sa.update(messages)
            .where(
                messages.c.folder_id == changes.folder_id,
                messages.c.uidvalidity == changes.uidvalidity,
                messages.c.uid == sa.bindparam("b_uid"),
            )
            .values(values),
            changed,
        )
    return len(changed)


def _mark_deleted(connection: Connection, changes: FolderChanges, now: dt.datetime) -> int:
    deleted = 0
    for chunk in _chunks(sorted(set(changes.expunged))):
        deleted += connection.execute(
            sa.update(messages)
            .where(
                messages.c.folder_id == changes.folder_id,
                messages.c.uidvalidity == changes.uidvalidity,
                messages.c.uid.in_(chunk),
                messages.c.deleted_at.is_(None),
            )
            .values(deleted_at=now, updated_at=now)
        ).rowcount
    return deleted


def _write_checkpoint(
    connection: Connection, folder_id: int, checkpoint: Checkpoint, now: dt.datetime
) -> None:
    values: dict[str, Any] = {
        "uidvalidity": checkpoint.uidvalidity,
        "last_uid": checkpoint.last_uid,
        "highest_modseq": checkpoint.highest_modseq,
        "updated_at": now,
    }
    if checkpoint.last_full_scan_at is not None:
        values["last_full_scan_at"] = checkpoint.last_full_scan_at
    done = connection.execute(
        sa.update(folders).where(folders.c.id == folder_id).values(values)
    ).rowcount
    if done != 1:  # raising rolls the batch back with it
        raise UnknownFolder(folder_id)


def _message_row(
    record: MessageRecord, folder_id: int, uidvalidity: int, now: dt.datetime
) -> dict[str, Any]:
    return {
        "folder_id": folder_id,
        "uidvalidity": uidvalidity,
        "uid": record.uid,
        "message_id": clean_text(record.message_id),
        "subject": clean_text(record.subject),
        "from_address": clean_text(record.from_address),
        "to_addresses": _text_list(record.to_addresses),
        "cc_addresses": _text_list(record.cc_addresses),
        "in_reply_to": clean_text(record.in_reply_to),
        "references_hdr": clean_text(record.references),
        "sent_at": _representable(record.sent_at),
        "received_at": record.received_at,
        "size_bytes": record.size_bytes,
        "flags": _flag_list(record.flags),
        "first_seen_at": now,
        "updated_at": now,
        "deleted_at": None,
    }


def _text_list(values: Iterable[str | None]) -> list[str]:
    return [text for value in values if (text := clean_text(value)) is not None]


def _flag_list(flags: Iterable[str]) -> list[str]:
    """Cleaned flags, sorted and unique, without the session flag ``\\Recent``."""
    cleaned = {clean_text(str(flag)) or "" for flag in flags}
    return sorted(flag for flag in cleaned if flag and flag.lower() != "\\recent")


def _representable(value: dt.datetime | None) -> dt.datetime | None:
    """``sent_at`` as UTC; a Date without a zone is UTC, one past year 1..9999 in UTC is NULL."""
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return None


def _folder_state(row: Row[Any]) -> FolderState:
    return FolderState(
        folder_id=int(row.id),
        name=row.name,
        uidvalidity=row.uidvalidity,
        last_uid=int(row.last_uid),
        highest_modseq=row.highest_modseq,
        last_full_scan_at=row.last_full_scan_at,
        vanished_at=row.vanished_at,
    )


_T = TypeVar("_T")


def _chunks(values: Sequence[_T]) -> Iterator[Sequence[_T]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def _required_text(value: str, what: str) -> str:
    cleaned = clean_text(value)
    if not cleaned:
        raise ValueError(f"{what} must not be empty")
    return cleaned


def _require_aware(value: dt.datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("a timezone-aware datetime is required")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)
