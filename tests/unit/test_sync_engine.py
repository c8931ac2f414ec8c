"""The sync engine over in-memory fakes of its ports: every SPEC rule of a folder poll."""

from __future__ import annotations

import datetime as dt

import pytest

from daemon.sync.engine import FolderJob, FolderResult, MailboxSync
from support.sync_fakes import T0, FakeClient, FakeServer, MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture
def world() -> tuple[FakeServer, MemoryStore, Clock, MailboxSync]:
    server, store, clock = FakeServer(), MemoryStore(), Clock()
    return server, store, clock, MailboxSync(store, batch_size=10, now=clock)


JOB = FolderJob(mailbox_id=1, folder="INBOX", full_scan_interval=900, backfill_days=None)


def _poll(world: tuple[FakeServer, MemoryStore, Clock, MailboxSync], job: FolderJob = JOB):
    server, store, _, sync = world
    return sync.sync_folder(FakeClient(server), job, store.folders.get(job.folder))


def test_first_sync_stores_everything_in_batches_with_checkpoint(world) -> None:
    server, store, _, _ = world
    server.append("INBOX", 25)
    result = _poll(world)
    assert (result.new, result.outcome) == (25, "success")
    assert [len(c) for c in server.fetch_calls] == [10, 10, 5]
    assert store.folders["INBOX"].last_uid == 25
    assert len(store.live(1)) == 25
    assert result.lag_seconds == []  # the initial sync is not "lag"


def test_idle_folder_fetches_nothing(world) -> None:
    server, _, _, _ = world
    server.append("INBOX", 3)
    _poll(world)
    server.fetch_calls.clear()
    result = _poll(world)
    assert (result.new, result.updated, result.deleted) == (0, 0, 0)
    assert server.fetch_calls == []


def test_new_messages_are_fetched_above_checkpoint_and_lag_recorded(world) -> None:
    server, _, _, _ = world
    server.append("INBOX", 3)
    _poll(world)
    server.append("INBOX", 2)
    server.fetch_calls.clear()
    result = _poll(world)
    assert result.new == 2
    assert server.fetch_calls == [[4, 5]]
    assert result.lag_seconds == [30.0, 30.0]


def test_flag_changes_and_expunges_appear_after_full_scan_interval(world) -> None:
    server, store, clock, _ = world
    server.append("INBOX", 4)
    _poll(world)
    msgs = server.folders["INBOX"][1]
    msgs[2] = ("\\Seen",)
    del msgs[3]
    clock.advance(60)
    assert (_poll(world).updated, _poll(world).deleted) == (0, 0)
    clock.advance(900)
    result = _poll(world)
    assert (result.updated, result.deleted) == (1, 1)
    assert store.stored_flags(1, 100) == {1: (), 2: ("\\Seen",), 4: ()}


def test_condstore_reports_flag_changes_on_every_poll(world) -> None:
    server, store, clock, _ = world
    server.condstore = True
    server.append("INBOX", 3)
    _poll(world)
    server.folders["INBOX"][1][1] = ("\\Flagged",)
    server.modseq += 1
    clock.advance(60)
    result = _poll(world)
    assert result.updated == 1
    assert store.folders["INBOX"].highest_modseq == server.modseq


def test_uidvalidity_change_voids_old_rows_and_resyncs(world) -> None:
    server, store, _, _ = world
    server.append("INBOX", 5)
    _poll(world)
    server.folders["INBOX"] = (200, {1: (), 2: ()})
    result = _poll(world)
    assert (result.deleted, result.new) == (5, 2)
    assert store.folders["INBOX"].uidvalidity == 200
    assert sorted(k for k in store.rows if store.rows[k]["deleted_at"] is None) == [
        (1, 200, 1),
        (1, 200, 2),
    ]


def test_vanished_folder_is_marked_once_and_skipped_until_scan_due(world) -> None:
    server, store, clock, _ = world
    server.append("INBOX", 2)
    _poll(world)
    del server.folders["INBOX"]
    result = _poll(world)
    assert (result.outcome, result.deleted) == ("missing", 2)
    clock.advance(60)
    assert _poll(world).outcome == "skipped"
    assert store.folders["INBOX"].vanished_at == T0
    server.folders["INBOX"] = (300, {1: ()})
    clock.advance(900)
    result = _poll(world)
    assert (result.outcome, result.new) == ("success", 1)
    assert store.folders["INBOX"].vanished_at is None


def test_connection_drop_mid_fetch_keeps_committed_batches_and_resumes(world) -> None:
    server, store, _, _ = world
    server.append("INBOX", 35)
    server.fail_fetch_after = 2
    with pytest.raises(ConnectionError):
        _poll(world)
    assert store.folders["INBOX"].last_uid == 20
    assert len(store.live(1)) == 20
    server.fail_fetch_after = None
    server.fetch_calls.clear()
    assert _poll(world).new == 15
    assert server.fetch_calls[0][0] == 21
    assert len(store.live(1)) == 35


def test_stop_request_ends_between_batches(world) -> None:
    server, store, clock, _ = world
    server.append("INBOX", 30)
    calls = iter([False, True])
    sync = MailboxSync(store, batch_size=10, now=clock, should_stop=lambda: next(calls, True))
    result = sync.sync_folder(FakeClient(server), JOB, None)
    assert result.outcome == "stopped"
    assert store.folders["INBOX"].last_uid == 10
    assert len(store.live(1)) == 10


def test_empty_folder_records_its_uidvalidity(world) -> None:
    server, store, _, _ = world
    server.folders["INBOX"] = (42, {})
    assert _poll(world).outcome == "success"
    assert store.folders["INBOX"].uidvalidity == 42


def test_a_failure_keeps_the_counts_of_batches_committed_before_it(world) -> None:
    server, _, _, sync = world
    server.append("INBOX", 35)
    server.fail_fetch_after = 2
    result = FolderResult("INBOX")
    with pytest.raises(ConnectionError):
        sync.sync_folder(FakeClient(server), JOB, None, result)
    assert result.new == 20
    assert result.duration >= 0
