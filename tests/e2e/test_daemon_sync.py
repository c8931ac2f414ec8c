"""`mailsyncd run` as a subprocess against Dovecot, the identity platform and real databases."""

from __future__ import annotations

import datetime as dt
import json
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from localenv.imap import FixtureImap
from localenv.seed import ANY_TEXT, OneOf, SeedMessage, hostile_messages, realistic_messages
from support.daemon import DaemonProcess, MailboxSpec, view_rows, wait_for

pytestmark = pytest.mark.slow


def _as_list(value: Any) -> list[Any]:
    return json.loads(value) if isinstance(value, str) else list(value)


def _as_utc(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)  # SQLite keeps UTC without an offset
    return value.astimezone(dt.UTC)


def assert_row_matches(row: dict[str, Any], message: SeedMessage) -> None:
    """Field by field, as the SPEC defines the view."""
    exp = message.expected
    label = message.label
    assert row["message_id"] == exp.message_id, label
    if isinstance(exp.subject, OneOf):
        if exp.subject is ANY_TEXT:
            assert row["subject"] is None or isinstance(row["subject"], str), label
            assert "\x00" not in (row["subject"] or ""), label
        else:
            assert exp.subject.matches(row["subject"]), (label, row["subject"])
    else:
        assert row["subject"] == exp.subject, label
    assert row["from_address"] == exp.from_address, label
    assert _as_list(row["to_addresses"]) == exp.to_addresses, label
    assert _as_list(row["cc_addresses"]) == exp.cc_addresses, label
    assert row["in_reply_to"] == exp.in_reply_to, label
    assert row["references"] == exp.references, label
    assert _as_utc(row["sent_at"]) == (exp.sent_at.astimezone(dt.UTC) if exp.sent_at else None), (
        label
    )
    assert _as_utc(row["received_at"]) == exp.received_at.astimezone(dt.UTC), label
    assert row["size_bytes"] == exp.size_bytes, label
    assert _as_list(row["flags"]) == exp.flags, label
    assert row["deleted_at"] is None, label
    assert _as_utc(row["first_seen_at"]) is not None, label


def _count(database_url: str, mailbox: str, live: bool = True) -> int:
    try:
        rows = view_rows(database_url, mailbox)
    except Exception:  # noqa: BLE001 - the schema may not exist yet while the daemon starts
        return 0
    return sum(1 for r in rows if not live or r["deleted_at"] is None)


def test_first_sync_matches_seeded_messages_field_by_field_and_follows_new_mail(
    database_url: str,
    mailsyncd: Callable[..., DaemonProcess],
    fixture_imap: Callable[[str], FixtureImap],
    new_mailbox: Callable[..., str],
) -> None:
    big = new_mailbox("contoso.test", "big")
    small = new_mailbox("contoso.test", "small")
    other = new_mailbox("fabrikam.test", "other")
    seeded: dict[tuple[str, str], list[SeedMessage]] = {
        (big, "INBOX"): list(realistic_messages(5000, seed=1, big_every=2500, max_size=2 << 20)),
        (small, "INBOX"): list(realistic_messages(40, seed=2)) + hostile_messages(),
        (small, "Sent Items"): list(realistic_messages(15, seed=3)),
        (other, "INBOX"): list(realistic_messages(60, seed=4)) + hostile_messages(),
    }
    for (mailbox, folder), messages in seeded.items():
        fixture_imap(mailbox).append(folder, messages)
    daemon = mailsyncd(
        database_url=database_url,
        mailboxes=[
            MailboxSpec(big),
            MailboxSpec(small, folders=("INBOX", "Sent Items")),
            MailboxSpec(other, tenant="fabrikam"),
        ],
        poll_interval="2s",
    )
    total = {
        m: sum(len(v) for (mm, _), v in seeded.items() if mm == m) for m in (big, small, other)
    }
    for mailbox, expected in total.items():
        wait_for(
            lambda m=mailbox, n=expected: _count(database_url, m) == n,
            timeout=180,
            what=f"{expected} rows of {mailbox}",
        )
    for (mailbox, folder), messages in seeded.items():
        rows = [r for r in view_rows(database_url, mailbox) if r["folder"] == folder]
        assert [r["uid"] for r in rows] == list(range(1, len(messages) + 1))
        assert len({r["uidvalidity"] for r in rows}) == 1
        for row, message in zip(rows, messages, strict=True):
            assert row["mailbox"] == mailbox
            assert_row_matches(row, message)

    # New mail appears within one poll interval (2 s) plus 5 s.
    arriving = list(realistic_messages(3, seed=99))
    fixture_imap(other).append("INBOX", arriving)
    appended = time.monotonic()
    wait_for(
        lambda: _count(database_url, other) == total[other] + 3,
        timeout=2 + 5,
        what="new messages",
    )
    assert time.monotonic() - appended < 7
    # The counter moves when the folder's poll ends, just after the rows are committed.
    wait_for(
        lambda: (
            daemon.metric("mailsyncd_messages_synced_total", change="new")
            == sum(total.values()) + 3
        ),
        timeout=10,
        what="messages_synced_total",
    )
    assert daemon.metric("mailsyncd_db_write_duration_seconds_count") >= 5000 / 500
    assert daemon.stop() == 0
    lines = daemon.log_lines()
    assert all({"level", "timestamp", "event"} <= line.keys() for line in lines)
    polls = [line for line in lines if line["event"] == "poll"]
    assert polls
    assert all(
        {"mailbox", "tenant", "folder", "duration_s", "new", "updated", "deleted", "outcome"}
        <= p.keys()
        for p in polls
    )


def test_flags_expunges_uidvalidity_change_and_vanished_folder(
    database_url: str,
    mailsyncd: Callable[..., DaemonProcess],
    fixture_imap: Callable[[str], FixtureImap],
    new_mailbox: Callable[..., str],
) -> None:
    mailbox = new_mailbox()
    imap = fixture_imap(mailbox)
    inbox_uids = imap.append("INBOX", realistic_messages(10, seed=5))
    archive_uids = imap.append("Archive", realistic_messages(4, seed=6))
    imap.append("Gone", realistic_messages(3, seed=7))
    daemon = mailsyncd(
        database_url=database_url,
        mailboxes=[MailboxSpec(mailbox, folders=("INBOX", "Archive", "Gone"))],
        poll_interval="1s",
        full_scan_interval="2s",
    )
    wait_for(lambda: _count(database_url, mailbox) == 17, timeout=60, what="first sync")

    imap.set_flags("INBOX", inbox_uids[:3], ["\\Seen", "\\Flagged"])
    imap.expunge("INBOX", inbox_uids[8:])
    imap.client.unselect_folder()
    old_validity = imap.uidvalidity("Archive")
    imap.delete_folder("Archive")
    new_archive = imap.append("Archive", realistic_messages(2, seed=8))
    imap.delete_folder("Gone")

    def settled() -> bool:
        rows = view_rows(database_url, mailbox)
        inbox = {r["uid"]: r for r in rows if r["folder"] == "INBOX"}
        archive = [r for r in rows if r["folder"] == "Archive"]
        gone = [r for r in rows if r["folder"] == "Gone"]
        return (
            all(_as_list(inbox[u]["flags"]) == ["\\Flagged", "\\Seen"] for u in inbox_uids[:3])
            and all(inbox[u]["deleted_at"] is not None for u in inbox_uids[8:])
            and all(inbox[u]["deleted_at"] is None for u in inbox_uids[:8])
            and all(
                r["deleted_at"] is not None for r in archive if r["uidvalidity"] == old_validity
            )
            and sorted(r["uid"] for r in archive if r["uidvalidity"] != old_validity) == new_archive
            and len(gone) == 3
            and all(r["deleted_at"] is not None for r in gone)
        )

    wait_for(settled, timeout=30, what="flags, expunges, resync and vanished folder")
    assert daemon.metric("mailsyncd_folders_missing") == 1
    # The vanished folder does not stop the others: new mail in INBOX still arrives.
    imap.append("INBOX", realistic_messages(1, seed=9))
    wait_for(lambda: _count(database_url, mailbox) == 8 + 1 + 2, timeout=15, what="new mail")
    assert archive_uids
    assert daemon.stop() == 0


def test_hostile_messages_never_stall_a_mailbox(
    make_sqlite_url: Callable[[], str],
    mailsyncd: Callable[..., DaemonProcess],
    fixture_imap: Callable[[str], FixtureImap],
    new_mailbox: Callable[..., str],
) -> None:
    database_url = make_sqlite_url()
    mailbox = new_mailbox()
    imap = fixture_imap(mailbox)
    imap.append("INBOX", hostile_messages())
    daemon = mailsyncd(database_url=database_url, mailboxes=[MailboxSpec(mailbox)])
    wait_for(lambda: _count(database_url, mailbox) == len(hostile_messages()), timeout=60)
    imap.append("INBOX", realistic_messages(2, seed=11))
    wait_for(lambda: _count(database_url, mailbox) == len(hostile_messages()) + 2, timeout=15)
    for row in view_rows(database_url, mailbox):
        for key in ("subject", "message_id", "from_address", "references", "in_reply_to"):
            value = row[key]
            assert value is None or ("\x00" not in value and len(value.encode()) <= 16384)
    assert daemon.stop() == 0


def _uids(database_url: str, mailbox: str) -> list[int]:
    return [r["uid"] for r in view_rows(database_url, mailbox)]


def test_kill_9_mid_initial_sync_then_restart_loses_and_duplicates_nothing(
    database_url: str,
    mailsyncd: Callable[..., DaemonProcess],
    fixture_imap: Callable[[str], FixtureImap],
    new_mailbox: Callable[..., str],
) -> None:
    mailbox = new_mailbox()
    fixture_imap(mailbox).append("INBOX", realistic_messages(5000, seed=12, big_every=0))
    spec = [MailboxSpec(mailbox)]
    first = mailsyncd(
        database_url=database_url, mailboxes=spec, extra={"limits": {"fetch_batch_size": 100}}
    )
    wait_for(lambda: 0 < _count(database_url, mailbox) < 5000, timeout=60, interval=0.02)
    first.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    first.proc.wait(10)  # type: ignore[union-attr]
    partial = _count(database_url, mailbox)
    assert 0 < partial < 5000
    second = mailsyncd(database_url=database_url, mailboxes=spec)
    wait_for(lambda: _count(database_url, mailbox) == 5000, timeout=120, what="catch-up")
    assert _uids(database_url, mailbox) == list(range(1, 5001))
    assert second.stop() == 0


def test_sigterm_during_sync_exits_0_quickly_with_consistent_checkpoint(
    database_url: str,
    mailsyncd: Callable[..., DaemonProcess],
    fixture_imap: Callable[[str], FixtureImap],
    new_mailbox: Callable[..., str],
) -> None:
    mailbox = new_mailbox()
    fixture_imap(mailbox).append("INBOX", realistic_messages(5000, seed=13, big_every=0))
    daemon = mailsyncd(
        database_url=database_url,
        mailboxes=[MailboxSpec(mailbox)],
        extra={"limits": {"fetch_batch_size": 100}},
    )
    wait_for(lambda: 0 < _count(database_url, mailbox) < 5000, timeout=60, interval=0.02)
    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM, timeout=30) == 0
    assert time.monotonic() - started < 10
    uids = _uids(database_url, mailbox)
    assert uids == list(range(1, len(uids) + 1))
    engine = sa.create_engine(database_url)
    with engine.connect() as connection:
        last_uid = connection.execute(sa.text("SELECT last_uid FROM folders")).scalar_one()
    engine.dispose()
    assert last_uid == len(uids)
