"""SqlStore against real SQLite and PostgreSQL databases (a fresh one per test): message rows,
checkpoints, and the mailbox status rows behind the view ``mailbox_status``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from daemon.errors import (
    DatabaseError,
    DatabaseRejectedError,
    PermanentError,
    TransientError,
    UnknownFolder,
)
from daemon.status import MailboxStatus
from daemon.store.engine import create_engine_for
from daemon.store.migrate import migrate
from daemon.store.models import mailboxes, messages
from daemon.store.repository import ApplyResult, SqlStore
from daemon.sync.model import Checkpoint, FolderChanges, FolderState, MessageRecord
from support.status import healthy_status

UTC = dt.UTC
T0 = dt.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
T1 = T0 + dt.timedelta(minutes=1)
T2 = T0 + dt.timedelta(minutes=2)
EMOJI = "\U0001f600"
SPEC_VIEW_COLUMNS = [
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
]


@pytest.fixture
def engine(database_url: str, make_engine: Callable[[str], sa.Engine]) -> sa.Engine:
    engine = make_engine(database_url)
    migrate(engine)
    return engine


@pytest.fixture
def store(engine: sa.Engine) -> SqlStore:
    return SqlStore(engine)


@pytest.fixture
def folder(store: SqlStore) -> FolderState:
    mailbox_id = store.ensure_mailbox("Support@Contoso.com", "contoso")
    return store.ensure_folder(mailbox_id, "INBOX")


def record(uid: int, **changes: Any) -> MessageRecord:
    base = MessageRecord(
        uid=uid,
        message_id=f"m{uid}@example.com",
        subject=f"subject {uid}",
        from_address="alice@example.com",
        to_addresses=("bob@example.com", "carol@example.com"),
        cc_addresses=(),
        in_reply_to=None,
        references=None,
        sent_at=T0 - dt.timedelta(hours=1),
        received_at=T0,
        size_bytes=1000 + uid,
        flags=("\\Seen",),
    )
    return dataclasses.replace(base, **changes)


def batch(folder: FolderState, uidvalidity: int = 7, **fields: Any) -> FolderChanges:
    return FolderChanges(folder_id=folder.folder_id, uidvalidity=uidvalidity, **fields)


def rows(engine: sa.Engine, folder: FolderState) -> list[sa.Row[Any]]:
    """Message rows of a folder read through the models (typed: UTC datetimes, JSON lists)."""
    with engine.connect() as connection:
        query = sa.select(messages).where(messages.c.folder_id == folder.folder_id)
        return list(connection.execute(query.order_by(messages.c.uidvalidity, messages.c.uid)))


def view(engine: sa.Engine, sql: str = "SELECT * FROM message_metadata") -> list[sa.Row[Any]]:
    with engine.connect() as connection:
        return list(connection.execute(sa.text(sql)))


def state(store: SqlStore, folder: FolderState, mailbox: str = "support@contoso.com") -> Any:
    return store.folder_states(store.ensure_mailbox(mailbox, "contoso"))[folder.name]


def test_view_has_exactly_the_spec_columns_in_spec_order(engine: sa.Engine) -> None:
    with engine.connect() as connection:
        result = connection.execute(sa.text("SELECT * FROM message_metadata WHERE 1 = 0"))
        assert list(result.keys()) == SPEC_VIEW_COLUMNS


def test_view_shows_a_stored_message(store: SqlStore, folder: FolderState) -> None:
    store.apply(batch(folder, new=(record(5, in_reply_to="<a@b>", references="<a@b> <c@d>"),)), T1)

    [row] = view(store.engine)
    assert row.mailbox == "support@contoso.com"
    assert (row.folder, row.uidvalidity, row.uid) == ("INBOX", 7, 5)
    assert (row.message_id, row.subject) == ("m5@example.com", "subject 5")
    assert (row.in_reply_to, row.references) == ("<a@b>", "<a@b> <c@d>")
    assert row.size_bytes == 1005
    assert row.deleted_at is None


def test_mailbox_address_is_stored_lower_case_once(store: SqlStore) -> None:
    first = store.ensure_mailbox("Support@Contoso.COM", "contoso")
    assert store.ensure_mailbox("support@contoso.com", "contoso") == first
    with store.engine.connect() as connection:
        assert connection.scalar(sa.text("SELECT address FROM mailboxes")) == "support@contoso.com"


def test_ensure_folder_is_idempotent_and_starts_empty(store: SqlStore) -> None:
    mailbox_id = store.ensure_mailbox("a@example.com", "contoso")
    created = store.ensure_folder(mailbox_id, "Sent Items")
    assert store.ensure_folder(mailbox_id, "Sent Items") == created
    assert (created.uidvalidity, created.last_uid, created.highest_modseq) == (None, 0, None)
    assert store.folder_states(mailbox_id) == {"Sent Items": created}


def test_timestamps_come_back_timezone_aware_utc(store: SqlStore, folder: FolderState) -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    sent = dt.datetime(2024, 5, 1, 9, 30, tzinfo=plus_two)
    received = dt.datetime(2024, 5, 1, 3, 31, 5, 42, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    scanned = dt.datetime(2024, 5, 1, 14, 0, tzinfo=plus_two)
    checkpoint = Checkpoint(uidvalidity=7, last_uid=1, last_full_scan_at=scanned)
    store.apply(batch(folder, new=(record(1, sent_at=sent, received_at=received),)), T1)
    store.apply(batch(folder, checkpoint=checkpoint), T1)

    [row] = rows(store.engine, folder)
    for value, expected in [
        (row.sent_at, sent),
        (row.received_at, received),
        (row.first_seen_at, T1),
        (state(store, folder).last_full_scan_at, scanned),
    ]:
        assert value == expected
        assert value.tzinfo is UTC
    assert row.sent_at.hour == 7


def test_view_timestamps_are_utc(store: SqlStore, folder: FolderState) -> None:
    sent = dt.datetime(2024, 5, 1, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    store.apply(batch(folder, new=(record(1, sent_at=sent),)), T1)

    [(raw,)] = view(store.engine, "SELECT sent_at FROM message_metadata")
    if isinstance(raw, str):  # SQLite: UTC wall time as text
        assert raw.startswith("2024-05-01 07:30:00")
    else:  # PostgreSQL: timestamptz
        assert raw == sent


def test_sent_at_without_zone_is_utc_and_unrepresentable_is_null(
    store: SqlStore, folder: FolderState
) -> None:
    naive = dt.datetime(2024, 5, 1, 9, 30)  # noqa: DTZ001 - a Date header without a zone
    too_early = dt.datetime(1, 1, 1, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=5)))
    store.apply(batch(folder, new=(record(1, sent_at=naive), record(2, sent_at=too_early))), T1)

    first, second = rows(store.engine, folder)
    assert first.sent_at == naive.replace(tzinfo=UTC)
    assert second.sent_at is None


def test_json_columns_round_trip_as_arrays(store: SqlStore, folder: FolderState) -> None:
    to = ("zoë@example.com", "Bob@example.com", "a@example.com")  # header order, not sorted
    cc = ("ünïcode@exämple.com",)
    flags = ("\\Seen", "$Label1", "\\Answered", "\\Recent", "\\Seen")
    store.apply(batch(folder, new=(record(1, to_addresses=to, cc_addresses=cc, flags=flags),)), T1)

    [row] = rows(store.engine, folder)
    assert row.to_addresses == list(to)
    assert row.cc_addresses == list(cc)
    assert row.flags == ["$Label1", "\\Answered", "\\Seen"]
    assert store.stored_flags(folder.folder_id, 7) == {1: ("$Label1", "\\Answered", "\\Seen")}

    json_type = "jsonb_typeof" if store.engine.dialect.name == "postgresql" else "json_type"
    [types] = view(
        store.engine,
        f"SELECT {json_type}(to_addresses), {json_type}(cc_addresses), {json_type}(flags)"
        " FROM message_metadata",
    )
    assert tuple(types) == ("array", "array", "array")
    [(raw_to,)] = view(store.engine, "SELECT to_addresses FROM message_metadata")
    assert (json.loads(raw_to) if isinstance(raw_to, str) else raw_to) == list(to)


def test_empty_address_lists_are_empty_arrays(store: SqlStore, folder: FolderState) -> None:
    store.apply(batch(folder, new=(record(1, to_addresses=(), cc_addresses=()),)), T1)
    [row] = rows(store.engine, folder)
    assert (row.to_addresses, row.cc_addresses) == ([], [])


def test_applying_the_same_batch_twice_stores_one_row_and_counts_it_new_once(
    store: SqlStore, folder: FolderState
) -> None:
    changes = batch(
        folder,
        new=(record(1), record(2), record(3)),
        checkpoint=Checkpoint(uidvalidity=7, last_uid=3),
    )
    assert store.apply(changes, T1) == ApplyResult(new=3, updated=0, deleted=0)
    assert store.apply(changes, T2) == ApplyResult(new=0, updated=0, deleted=0)

    stored = rows(store.engine, folder)
    assert [row.uid for row in stored] == [1, 2, 3]
    assert all(row.first_seen_at == T1 and row.updated_at == T1 for row in stored)
    assert state(store, folder).last_uid == 3


def test_replayed_batch_only_refreshes_flags(store: SqlStore, folder: FolderState) -> None:
    store.apply(batch(folder, new=(record(1), record(2))), T1)
    replay = batch(folder, new=(record(1, flags=("\\Flagged",), subject="changed"), record(2)))

    assert store.apply(replay, T2) == ApplyResult(new=0, updated=1, deleted=0)
    first, second = rows(store.engine, folder)
    assert (first.flags, first.subject, first.updated_at) == (["\\Flagged"], "subject 1", T2)
    assert second.updated_at == T1


def test_duplicate_uids_within_one_batch_store_one_row(
    store: SqlStore, folder: FolderState
) -> None:
    result = store.apply(batch(folder, new=(record(1), record(1, flags=()))), T1)
    assert result.new == 1
    assert len(rows(store.engine, folder)) == 1


def test_large_batches_spanning_several_statements_are_counted_exactly(
    store: SqlStore, folder: FolderState
) -> None:
    uids = range(1, 2501)  # more rows than one INSERT or one IN list holds
    new = tuple(record(uid) for uid in uids)
    assert store.apply(batch(folder, new=new), T1) == ApplyResult(new=2500)

    replay = tuple(record(uid, flags=("\\Answered",) if uid % 2 else ("\\Seen",)) for uid in uids)
    assert store.apply(batch(folder, new=replay), T2) == ApplyResult(updated=1250)
    assert store.apply(batch(folder, expunged=tuple(uids)), T2) == ApplyResult(deleted=2500)
    assert store.stored_flags(folder.folder_id, 7) == {}


def test_checkpoint_moves_with_its_rows(store: SqlStore, folder: FolderState) -> None:
    checkpoint = Checkpoint(uidvalidity=7, last_uid=2, highest_modseq=99, last_full_scan_at=T1)
    store.apply(batch(folder, new=(record(1), record(2)), checkpoint=checkpoint), T1)

    current = state(store, folder)
    assert (current.uidvalidity, current.last_uid, current.highest_modseq) == (7, 2, 99)
    assert current.last_full_scan_at == T1
    assert len(rows(store.engine, folder)) == 2


def test_checkpoint_without_a_full_scan_keeps_the_last_full_scan_time(
    store: SqlStore, folder: FolderState
) -> None:
    store.apply(batch(folder, checkpoint=Checkpoint(7, 1, last_full_scan_at=T1)), T1)
    store.apply(batch(folder, checkpoint=Checkpoint(7, 5)), T2)
    current = state(store, folder)
    assert (current.last_uid, current.last_full_scan_at) == (5, T1)


def test_failed_apply_writes_neither_rows_nor_checkpoint(
    store: SqlStore, folder: FolderState
) -> None:
    store.apply(batch(folder, new=(record(1), record(2)), checkpoint=Checkpoint(7, 2)), T1)
    broken = record(5, received_at=None)  # violates NOT NULL after two good rows
    failing = batch(
        folder,
        new=(record(3), record(4), broken),
        flag_updates=((1, ("\\Flagged",)),),
        expunged=(2,),
        checkpoint=Checkpoint(7, 5, highest_modseq=10, last_full_scan_at=T2),
    )

    with pytest.raises(DatabaseRejectedError) as raised:
        store.apply(failing, T2)

    assert isinstance(raised.value, PermanentError)
    assert [(row.uid, row.flags, row.deleted_at) for row in rows(store.engine, folder)] == [
        (1, ["\\Seen"], None),
        (2, ["\\Seen"], None),
    ]
    current = state(store, folder)
    assert (current.last_uid, current.highest_modseq, current.last_full_scan_at) == (2, None, None)


def test_flag_updates_count_only_rows_whose_flags_changed(
    store: SqlStore, folder: FolderState
) -> None:
    store.apply(batch(folder, new=(record(1), record(2), record(3), record(4))), T1)
    store.apply(batch(folder, expunged=(4,)), T1)
    updates = (
        (1, ("\\Seen",)),  # unchanged
        (2, ("\\Seen", "\\Flagged")),  # changed
        (3, ("\\Recent", "\\Seen")),  # unchanged once \Recent is dropped
        (4, ()),  # deleted: left alone
        (99, ("\\Seen",)),  # not stored
    )

    assert store.apply(batch(folder, flag_updates=updates), T2).updated == 1
    assert store.stored_flags(folder.folder_id, 7) == {
        1: ("\\Seen",),
        2: ("\\Flagged", "\\Seen"),
        3: ("\\Seen",),
    }
    assert store.apply(batch(folder, flag_updates=updates), T2).updated == 0


def test_expunge_sets_deleted_at_once(store: SqlStore, folder: FolderState) -> None:
    store.apply(batch(folder, new=(record(1), record(2))), T0)

    assert store.apply(batch(folder, expunged=(1, 1, 50)), T1).deleted == 1
    assert store.apply(batch(folder, expunged=(1,)), T2).deleted == 0

    first, second = rows(store.engine, folder)
    assert (first.deleted_at, second.deleted_at) == (T1, None)
    assert store.stored_flags(folder.folder_id, 7) == {2: ("\\Seen",)}


def test_uidvalidity_change_deletes_old_rows_and_resets_the_checkpoint(
    store: SqlStore, folder: FolderState
) -> None:
    checkpoint = Checkpoint(7, 2, highest_modseq=5, last_full_scan_at=T0)
    store.apply(batch(folder, new=(record(1), record(2)), checkpoint=checkpoint), T0)
    store.apply(batch(folder, expunged=(2,)), T0)

    assert store.reset_folder(folder.folder_id, 8, T1) == 1

    current = state(store, folder)
    assert (current.uidvalidity, current.last_uid) == (8, 0)
    assert (current.highest_modseq, current.last_full_scan_at) == (None, None)
    assert store.stored_flags(folder.folder_id, 7) == {}
    # The same UIDs under the new UIDVALIDITY are other messages: new rows.
    assert store.apply(batch(folder, 8, new=(record(1), record(2))), T2).new == 2
    assert [(r.uidvalidity, r.uid, r.deleted_at) for r in rows(store.engine, folder)] == [
        (7, 1, T1),
        (7, 2, T0),
        (8, 1, None),
        (8, 2, None),
    ]


def test_vanished_folder_deletes_its_rows_and_comes_back_live(
    store: SqlStore, folder: FolderState
) -> None:
    store.apply(batch(folder, new=(record(1), record(2)), checkpoint=Checkpoint(7, 2)), T0)

    assert store.mark_folder_vanished(folder.folder_id, T1) == 2
    assert store.mark_folder_vanished(folder.folder_id, T2) == 0
    assert state(store, folder).vanished_at == T1
    assert all(row.deleted_at == T1 for row in rows(store.engine, folder))

    back = store.ensure_folder(store.ensure_mailbox("support@contoso.com", "x"), "INBOX")
    assert (back.vanished_at, back.uidvalidity, back.last_uid) == (None, 7, 0)
    # Fetched again from UID 1, the rows still on the server are live again; none duplicated.
    assert store.apply(batch(folder, new=(record(1),)), T2) == ApplyResult(0, 1, 0)
    assert [(row.uid, row.deleted_at) for row in rows(store.engine, folder)] == [
        (1, None),
        (2, T1),
    ]


def test_hostile_text_is_stored_cleaned(store: SqlStore, folder: FolderState) -> None:
    hostile = record(
        1,
        message_id="id\x00@example.com",
        subject="x" * 200_000,
        from_address="a\udc80b@example.com",
        to_addresses=("nul\x00@example.com", "\ud800@example.com"),
        cc_addresses=("a" * 16382 + EMOJI,),
        in_reply_to="a" * 16380 + EMOJI + "tail",
        references="\x00" * 10,
        flags=("\\Seen\x00", "$Bad\udfff"),
    )
    store.apply(batch(folder, new=(hostile,)), T1)

    [row] = rows(store.engine, folder)
    assert row.message_id == "id@example.com"
    assert row.subject == "x" * 16384
    assert row.from_address == "a\ufffdb@example.com"
    assert row.to_addresses == ["nul@example.com", "\ufffd@example.com"]
    assert row.cc_addresses == ["a" * 16382]
    assert row.in_reply_to == "a" * 16380 + EMOJI
    assert row.references_hdr == ""
    assert row.flags == ["$Bad\ufffd", "\\Seen"]


def test_error_messages_do_not_contain_statement_values(
    store: SqlStore, folder: FolderState
) -> None:
    sentinel = "SENTINEL-7f3a9c"
    poisoned = record(1, subject=sentinel, to_addresses=(sentinel,), received_at=None)

    with pytest.raises(DatabaseRejectedError) as raised:
        store.apply(batch(folder, new=(poisoned,)), T1)

    assert "received_at" in str(raised.value)
    assert sentinel not in "".join(traceback.format_exception(raised.value))


def test_unreachable_database_is_a_transient_database_error(tmp_path: Path) -> None:
    engine = create_engine_for("postgresql+psycopg://root@127.0.0.1:1/nothing")
    sqlite_engine = create_engine_for(f"sqlite:///{tmp_path}")  # a directory, not a file
    try:
        for unreachable in (engine, sqlite_engine):
            with pytest.raises(DatabaseError) as raised:
                SqlStore(unreachable).ping()
            assert isinstance(raised.value, TransientError)
            assert raised.value.reason == "database"
    finally:
        engine.dispose()
        sqlite_engine.dispose()


def test_ping_succeeds_on_a_live_database(store: SqlStore) -> None:
    store.ping()


def test_naive_now_is_refused(store: SqlStore, folder: FolderState) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        store.apply(batch(folder), dt.datetime(2024, 1, 1))  # noqa: DTZ001


def test_every_write_transaction_reports_a_positive_duration_to_on_write(
    engine: sa.Engine,
) -> None:
    durations: list[float] = []
    store = SqlStore(engine, on_write=durations.append)

    mailbox_id = store.ensure_mailbox("timed@example.com", "contoso")
    target = store.ensure_folder(mailbox_id, "INBOX")
    store.apply(batch(target, new=(record(1),), checkpoint=Checkpoint(7, 1)), T1)
    store.reset_folder(target.folder_id, 8, T1)
    store.mark_folder_vanished(target.folder_id, T2)

    assert len(durations) == 5
    assert all(seconds > 0 for seconds in durations)


def test_reads_do_not_report_to_on_write(engine: sa.Engine) -> None:
    durations: list[float] = []
    writer = SqlStore(engine)
    mailbox_id = writer.ensure_mailbox("read@example.com", "contoso")
    target = writer.ensure_folder(mailbox_id, "INBOX")
    writer.apply(batch(target, new=(record(1),), checkpoint=Checkpoint(7, 1)), T1)
    store = SqlStore(engine, on_write=durations.append)

    store.ping()
    assert store.folder_states(mailbox_id)
    assert store.stored_flags(target.folder_id, 7) == {1: ("\\Seen",)}

    assert durations == []


def test_a_write_that_fails_is_timed_too(engine: sa.Engine) -> None:
    durations: list[float] = []
    store = SqlStore(engine, on_write=durations.append)
    target = store.ensure_folder(store.ensure_mailbox("fail@example.com", "contoso"), "INBOX")
    durations.clear()

    with pytest.raises(DatabaseRejectedError):
        store.apply(batch(target, new=(record(1, received_at=None),)), T1)

    assert len(durations) == 1
    assert durations[0] > 0


def test_an_unknown_folder_id_is_a_permanent_database_error_that_writes_nothing(
    store: SqlStore, folder: FolderState
) -> None:
    store.apply(batch(folder, new=(record(1),), checkpoint=Checkpoint(7, 1)), T1)
    missing = folder.folder_id + 1000
    calls: list[Callable[[], object]] = [
        lambda: store.reset_folder(missing, 8, T2),
        lambda: store.mark_folder_vanished(missing, T2),
        lambda: store.apply(
            FolderChanges(folder_id=missing, uidvalidity=7, checkpoint=Checkpoint(7, 9)),
            T2,
        ),
    ]

    for call in calls:
        with pytest.raises(UnknownFolder) as raised:
            call()
        assert isinstance(raised.value, PermanentError)
        assert raised.value.reason == "database"
        assert raised.value.folder_id == missing
        assert str(missing) in str(raised.value)

    current = state(store, folder)
    assert (current.uidvalidity, current.last_uid, current.vanished_at) == (7, 1, None)
    assert [(row.uid, row.deleted_at) for row in rows(store.engine, folder)] == [(1, None)]


def test_concurrent_applies_from_many_threads_all_commit(store: SqlStore) -> None:
    mailbox_id = store.ensure_mailbox("busy@example.com", "contoso")
    targets = [store.ensure_folder(mailbox_id, f"F{i}") for i in range(6)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(targets))

    def work(target: FolderState) -> None:
        try:
            start.wait(timeout=30)
            for first in range(1, 201, 20):
                new = tuple(record(uid) for uid in range(first, first + 20))
                store.apply(batch(target, new=new, checkpoint=Checkpoint(7, first + 19)), T1)
                store.stored_flags(target.folder_id, 7)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    states = store.folder_states(mailbox_id)
    assert {name: s.last_uid for name, s in states.items()} == {t.name: 200 for t in targets}
    [(count,)] = view(store.engine, "SELECT count(*) FROM message_metadata")
    assert count == 6 * 200


# -- mailbox status ------------------------------------------------------------------------------


def mailbox_status(mailbox: str = "one@contoso.test", **changes: Any) -> MailboxStatus:
    return healthy_status(mailbox, polled=T1, succeeded=T0, **changes)


def test_statuses_round_trip_through_the_view(store: SqlStore) -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    failing = mailbox_status(
        "Zoë@Exämple.com",
        tenant="fabrikam",
        state="auth_failed",
        owner=f"pod-{EMOJI}",
        last_poll_at=dt.datetime(2024, 5, 1, 14, 0, 1, 5, tzinfo=plus_two),
        last_success_at=None,
        consecutive_failures=7,
        last_error_reason="auth",
        last_error=f"AUTHENTICATE failed: ünïcode {EMOJI}",
        hint="grant the app access to the mailbox",
        initial_sync_remaining=12345,
    )
    statuses = [mailbox_status("b@contoso.test"), failing, mailbox_status("a@contoso.test")]

    store.save_statuses(statuses)

    loaded = store.load_statuses()
    assert loaded == sorted(statuses, key=lambda s: s.mailbox)
    assert [s.mailbox for s in loaded] == ["a@contoso.test", "b@contoso.test", "zoë@exämple.com"]
    assert loaded[2].last_poll_at == dt.datetime(2024, 5, 1, 12, 0, 1, 5, tzinfo=UTC)
    assert all(s.last_poll_at is not None and s.last_poll_at.tzinfo is UTC for s in loaded)


def test_saving_again_overwrites_every_field(store: SqlStore) -> None:
    store.save_statuses(
        [
            mailbox_status(
                state="backoff",
                consecutive_failures=3,
                last_error_reason="connect",
                last_error="refused",
                hint="check the host",
                initial_sync_remaining=10,
            )
        ]
    )
    recovered = mailbox_status(owner="pod-b", last_poll_at=T2, last_success_at=T2)

    store.save_statuses([recovered])

    assert store.load_statuses() == [recovered]
    assert store.load_statuses()[0].last_error is None


def test_a_long_error_is_stored_capped_at_2_kib(store: SqlStore) -> None:
    store.save_statuses([mailbox_status(last_error="é" * 5000, hint="h" * 10_000)])

    [loaded] = store.load_statuses()
    assert loaded.last_error == "é" * 1024
    assert loaded.hint == "h" * 2048


def test_a_status_creates_the_mailbox_row_and_later_polls_reuse_it(store: SqlStore) -> None:
    store.save_statuses([mailbox_status("New@Contoso.test", state="disabled")])

    mailbox_id = store.ensure_mailbox("new@contoso.test", "contoso")
    with store.engine.connect() as connection:
        assert connection.execute(sa.select(mailboxes.c.id, mailboxes.c.address)).all() == [
            (mailbox_id, "new@contoso.test")
        ]
    assert [s.state for s in store.load_statuses()] == ["disabled"]


def test_the_tenant_follows_the_status_as_it_follows_ensure_mailbox(store: SqlStore) -> None:
    store.ensure_mailbox("one@contoso.test", "contoso")

    store.save_statuses([mailbox_status(tenant="fabrikam")])

    assert [s.tenant for s in store.load_statuses()] == ["fabrikam"]
    assert store.ensure_mailbox("one@contoso.test", "fabrikam") == store.ensure_mailbox(
        "ONE@contoso.test", "fabrikam"
    )


def test_the_last_of_two_statuses_of_one_mailbox_wins(store: SqlStore) -> None:
    store.save_statuses([mailbox_status(state="backoff"), mailbox_status(state="ok")])
    assert [s.state for s in store.load_statuses()] == ["ok"]


def test_load_statuses_filters_by_address_in_any_case(store: SqlStore) -> None:
    store.save_statuses([mailbox_status(f"m{i}@contoso.test") for i in range(5)])

    loaded = store.load_statuses(["M3@CONTOSO.test", "m1@contoso.test", "nobody@contoso.test"])

    assert [s.mailbox for s in loaded] == ["m1@contoso.test", "m3@contoso.test"]
    assert store.load_statuses([]) == []


def test_a_mailbox_without_a_status_is_not_in_the_view(store: SqlStore) -> None:
    store.ensure_mailbox("polled-never@contoso.test", "contoso")
    assert store.load_statuses() == []


def test_saving_nothing_writes_nothing(engine: sa.Engine) -> None:
    durations: list[float] = []
    SqlStore(engine, on_write=durations.append).save_statuses([])
    assert durations == []


def test_save_statuses_is_one_timed_write_and_load_is_not(engine: sa.Engine) -> None:
    durations: list[float] = []
    store = SqlStore(engine, on_write=durations.append)

    store.save_statuses([mailbox_status(f"m{i}@contoso.test") for i in range(3)])
    store.load_statuses()

    assert len(durations) == 1
    assert durations[0] > 0


def test_a_failed_save_writes_no_status_and_no_mailbox(store: SqlStore) -> None:
    broken = mailbox_status("broken@contoso.test")
    object.__setattr__(broken, "state", "sleeping")  # past the checks, into the CHECK

    with pytest.raises(DatabaseRejectedError, match=r"ck_mailbox_states_state|CHECK"):
        store.save_statuses([mailbox_status("fine@contoso.test"), broken])

    assert store.load_statuses() == []
    with store.engine.connect() as connection:
        assert connection.scalar(sa.select(sa.func.count()).select_from(mailboxes)) == 0


def test_thousands_of_statuses_take_a_few_statements_not_one_per_row(store: SqlStore) -> None:
    count = 5000
    statements: list[str] = []

    def record_statement(*args: Any) -> None:
        statements.append(args[2])

    sa.event.listen(store.engine, "before_cursor_execute", record_statement)
    try:
        store.save_statuses([mailbox_status(f"user{i:05d}@contoso.test") for i in range(count)])
        first = len(statements)
        statements.clear()
        store.save_statuses(
            [
                mailbox_status(f"user{i:05d}@contoso.test", consecutive_failures=i % 4)
                for i in range(count)
            ]
        )
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", record_statement)

    # SQLite reads the ids in IN lists of 500 and writes through one executemany each;
    # PostgreSQL reads and writes with one array each.
    assert first <= 2 * (count // 500) + 4
    assert len(statements) <= count // 500 + 2
    loaded = store.load_statuses()
    assert len(loaded) == count
    assert [s.consecutive_failures for s in loaded[:5]] == [0, 1, 2, 3, 0]


def test_concurrent_status_saves_and_polls_all_commit(store: SqlStore) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(3)
    addresses = [f"m{i:03d}@contoso.test" for i in range(200)]

    def save(owner: str) -> None:
        try:
            start.wait(timeout=30)
            for round_ in range(5):
                store.save_statuses(
                    [
                        mailbox_status(a, owner=owner, consecutive_failures=round_)
                        for a in reversed(addresses)
                    ]
                )
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    def poll() -> None:
        try:
            start.wait(timeout=30)
            for address in addresses[:50]:
                store.ensure_folder(store.ensure_mailbox(address, "contoso"), "INBOX")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [
        threading.Thread(target=save, args=("pod-a",)),
        threading.Thread(target=save, args=("pod-b",)),
        threading.Thread(target=poll),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    loaded = store.load_statuses()
    assert [s.mailbox for s in loaded] == addresses
    assert {s.consecutive_failures for s in loaded} == {4}
    assert len({s.owner for s in loaded}) == 1  # one whole transaction won, not a mix
