"""The sync engine over in-memory fakes of its ports: every SPEC rule of a folder poll."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import pytest

from daemon.errors import FolderMissing
from daemon.sync.algorithm import ServerFolder
from daemon.sync.engine import FolderJob, FolderResult, MailboxSync
from daemon.sync.model import Flags, FolderChanges, FolderState, MessageRecord

T0 = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


def _record(uid: int, flags: Flags = ()) -> MessageRecord:
    return MessageRecord(
        uid=uid,
        message_id=f"m{uid}@x",
        subject=f"s{uid}",
        from_address=None,
        to_addresses=(),
        cc_addresses=(),
        in_reply_to=None,
        references=None,
        sent_at=None,
        received_at=T0 - dt.timedelta(seconds=30),
        size_bytes=100,
        flags=flags,
    )


@dataclass
class FakeServer:
    """A folder on an IMAP server: uidvalidity and {uid: flags}."""

    folders: dict[str, tuple[int, dict[int, Flags]]] = field(default_factory=dict)
    condstore: bool = False
    modseq: int = 1
    fetch_calls: list[list[int]] = field(default_factory=list)
    fail_fetch_after: int | None = None

    def append(self, folder: str, count: int, flags: Flags = ()) -> None:
        _, msgs = self.folders.setdefault(folder, (100, {}))
        start = max(msgs, default=0) + 1
        for uid in range(start, start + count):
            msgs[uid] = flags
        self.modseq += 1


class FakeClient:
    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.current = ""

    @property
    def condstore(self) -> bool:
        return self.server.condstore

    def examine(self, folder: str) -> ServerFolder:
        if folder not in self.server.folders:
            raise FolderMissing(f"no folder {folder}", folder=folder)
        self.current = folder
        validity, msgs = self.server.folders[folder]
        return ServerFolder(
            uidvalidity=validity,
            uidnext=max(msgs, default=0) + 1,
            highest_modseq=self.server.modseq if self.server.condstore else None,
            exists=len(msgs),
        )

    def _msgs(self) -> dict[int, Flags]:
        return self.server.folders[self.current][1]

    def uids_from(self, uid: int) -> list[int]:
        msgs = self._msgs()
        found = [u for u in msgs if u >= uid]
        # Like real servers: n:* includes the highest UID even when n is above it.
        return found or ([max(msgs)] if msgs else [])

    def uids_since(self, uid: int, since: dt.date) -> list[int]:
        return self.uids_from(uid)

    def fetch_records(self, uids: Sequence[int]) -> list[MessageRecord]:
        self.server.fetch_calls.append(list(uids))
        limit = self.server.fail_fetch_after
        if limit is not None and len(self.server.fetch_calls) > limit:
            raise ConnectionError("dropped mid-fetch")
        msgs = self._msgs()
        return [_record(u, msgs[u]) for u in uids if u in msgs]

    def fetch_all_flags(self) -> Mapping[int, Flags]:
        return dict(self._msgs())

    def fetch_flags_changed_since(self, modseq: int) -> Mapping[int, Flags]:
        return dict(self._msgs())


@dataclass
class Counts:
    new: int = 0
    updated: int = 0
    deleted: int = 0


class MemoryStore:
    """Transactions are trivially atomic: each apply() is one dict update."""

    def __init__(self) -> None:
        self.folders: dict[str, FolderState] = {}
        self.rows: dict[tuple[int, int, int], dict[str, object]] = {}

    def ensure_folder(self, mailbox_id: int, name: str) -> FolderState:
        state = self.folders.get(name)
        if state is None:
            state = FolderState(folder_id=len(self.folders) + 1, name=name)
        elif state.vanished_at is not None:
            state = replace(state, vanished_at=None)
        self.folders[name] = state
        return state

    def _by_id(self, folder_id: int) -> FolderState:
        return next(s for s in self.folders.values() if s.folder_id == folder_id)

    def folder_states(self, mailbox_id: int) -> dict[str, FolderState]:
        return dict(self.folders)

    def live(self, folder_id: int) -> dict[int, dict[str, object]]:
        return {
            k[2]: v for k, v in self.rows.items() if k[0] == folder_id and v["deleted_at"] is None
        }

    def stored_flags(self, folder_id: int, uidvalidity: int) -> dict[int, Flags]:
        return {
            k[2]: v["flags"]  # type: ignore[misc]
            for k, v in self.rows.items()
            if k[0] == folder_id and k[1] == uidvalidity and v["deleted_at"] is None
        }

    def apply(self, changes: FolderChanges, now: dt.datetime) -> Counts:
        counts = Counts()
        for record in changes.new:
            key = (changes.folder_id, changes.uidvalidity, record.uid)
            if key not in self.rows:
                self.rows[key] = {"flags": record.flags, "deleted_at": None}
                counts.new += 1
        for uid, flags in changes.flag_updates:
            row = self.rows[(changes.folder_id, changes.uidvalidity, uid)]
            if row["flags"] != flags:
                row["flags"] = flags
                counts.updated += 1
        for uid in changes.expunged:
            row = self.rows[(changes.folder_id, changes.uidvalidity, uid)]
            if row["deleted_at"] is None:
                row["deleted_at"] = now
                counts.deleted += 1
        if changes.checkpoint is not None:
            state = self._by_id(changes.folder_id)
            cp = changes.checkpoint
            self.folders[state.name] = replace(
                state,
                uidvalidity=cp.uidvalidity,
                last_uid=cp.last_uid,
                highest_modseq=cp.highest_modseq,
                last_full_scan_at=cp.last_full_scan_at,
            )
        return counts

    def reset_folder(self, folder_id: int, uidvalidity: int, now: dt.datetime) -> int:
        marked = 0
        for key, row in self.rows.items():
            if key[0] == folder_id and key[1] != uidvalidity and row["deleted_at"] is None:
                row["deleted_at"] = now
                marked += 1
        state = self._by_id(folder_id)
        self.folders[state.name] = replace(
            state,
            uidvalidity=uidvalidity,
            last_uid=0,
            highest_modseq=None,
            last_full_scan_at=None,
        )
        return marked

    def mark_folder_vanished(self, folder_id: int, now: dt.datetime) -> int:
        marked = 0
        for key, row in self.rows.items():
            if key[0] == folder_id and row["deleted_at"] is None:
                row["deleted_at"] = now
                marked += 1
        state = self._by_id(folder_id)
        self.folders[state.name] = replace(state, vanished_at=now)
        return marked


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
