"""Leases on a real PostgreSQL: fair shares, takeover, hand-back, fenced writes, the status view."""

from __future__ import annotations

import datetime as dt
import random
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import pytest
import sqlalchemy as sa

from daemon.config import MailboxSettings
from daemon.errors import LeaseLost
from daemon.logging import get_logger
from daemon.runtime.leases import LeaseKeeper, fair_share, safety_margin
from daemon.status import MailboxStatus
from daemon.store.leases import Fence, FencedStore, LeaseStore
from daemon.store.migrate import migrate
from daemon.store.repository import SqlStore
from daemon.sync.model import Checkpoint, FolderChanges, MessageRecord
from support.status import healthy_status

UTC = dt.UTC
TTL = 30.0


@pytest.fixture
def engine(make_pg_url: Callable[[], str], make_engine: Callable[[str], sa.Engine]) -> sa.Engine:
    engine = make_engine(make_pg_url())
    migrate(engine)
    return engine


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Recorder:
    """Stands for Runtime.reconcile: what the keeper asked to run, and what it handed over."""

    running: list[str] = field(default_factory=list)
    handed_over: list[str] = field(default_factory=list)

    def __call__(self, wanted: Iterable[MailboxSettings], handed_over: Sequence[str]) -> None:
        self.running = [m.address for m in wanted]
        self.handed_over.extend(handed_over)


def settings(address: str) -> MailboxSettings:
    return MailboxSettings(
        address=address,
        tenant="contoso",
        poll_interval=60.0,
        full_scan_interval=900.0,
        folders=("INBOX",),
        backfill_days=None,
        enabled=True,
    )


MAILBOXES = [settings(f"user{i:02}@contoso.test") for i in range(30)]


def keeper(
    engine: sa.Engine, name: str, clock: FakeClock | None = None, ttl: float = TTL
) -> tuple[LeaseKeeper, Recorder]:
    recorder = Recorder()
    instance = LeaseKeeper(
        store=LeaseStore(engine, statement_timeout=5.0),
        replica=name,
        version="test",
        ttl=ttl,
        reconcile=recorder,
        log=get_logger("test"),
        monotonic=clock or FakeClock(),
        rng=random.Random(7),
    )
    instance.set_mailboxes(MAILBOXES)
    return instance, recorder


def rounds(*keepers: LeaseKeeper, times: int = 8) -> None:
    for _ in range(times):
        for instance in keepers:
            instance.round()


def owners(engine: sa.Engine) -> dict[str, str | None]:
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT mailbox, owner FROM mailbox_leases"))
        return {str(m): o for m, o in rows}


def test_fair_share_adds_up_to_every_mailbox() -> None:
    for n in range(12):
        for r in range(1, 5):
            replicas = [f"r{i}" for i in range(r)]
            shares = [fair_share(n, replicas, me) for me in replicas]
            assert sum(shares) == n
            assert max(shares) - min(shares) <= 1
    assert fair_share(10, ["a", "b"], "c") == 0


def test_three_replicas_split_thirty_mailboxes_ten_each_and_each_has_one_owner(
    engine: sa.Engine,
) -> None:
    (a, ra), (b, rb), (c, rc) = (keeper(engine, name) for name in "abc")
    a.round()  # alone at first: it starts taking everything, a third per round
    assert len(ra.running) == 10
    rounds(a, b, c)
    assert sorted(len(r.running) for r in (ra, rb, rc)) == [10, 10, 10]
    everyone = ra.running + rb.running + rc.running
    assert sorted(everyone) == sorted(m.address for m in MAILBOXES)  # each exactly once
    held = owners(engine)
    for name, recorder in (("a", ra), ("b", rb), ("c", rc)):
        assert {m for m, o in held.items() if o == name} == set(recorder.running)


def test_a_joining_replica_gets_its_share_in_steps_and_the_other_hands_over(
    engine: sa.Engine,
) -> None:
    a, ra = keeper(engine, "a")
    rounds(a, times=4)
    assert len(ra.running) == 30
    b, rb = keeper(engine, "b")
    b.round()
    assert rb.running == []  # nothing free yet
    a.round()
    assert len(ra.running) == 25  # a third of its new share (15) per round: 5
    rounds(b, a, times=4)
    assert (len(ra.running), len(rb.running)) == (15, 15)
    assert set(ra.handed_over) == set(rb.running)  # handed over, never reported removed


def test_a_dead_replica_loses_its_mailboxes_after_the_ttl(engine: sa.Engine) -> None:
    clock = FakeClock()
    a, ra = keeper(engine, "a", clock, ttl=2.0)
    b, rb = keeper(engine, "b", clock, ttl=2.0)
    rounds(a, b)
    assert (len(ra.running), len(rb.running)) == (15, 15)
    before = {m: t for m, t in _tokens(engine).items() if m in ra.running}
    threading.Event().wait(2.5)  # a stops renewing: its heartbeat and leases expire
    rounds(b, times=4)
    assert len(rb.running) == 30
    after = _tokens(engine)
    assert all(after[m] == before[m] + 1 for m in before)  # a takeover increments the token
    clock.now += 2.0 - safety_margin(2.0)
    a.enforce()  # its own deadline passed: it has stopped polling by itself
    assert ra.running == []


def test_sigterm_hands_every_lease_back_at_once(engine: sa.Engine) -> None:
    a, _ = keeper(engine, "a")
    b, rb = keeper(engine, "b")
    rounds(a, b)
    a.stop()
    assert "a" not in set(owners(engine).values())
    b.round()
    assert len(rb.running) == 25  # its share is 30 now; it moves a third per round
    b.round()
    assert len(rb.running) == 30


def test_a_replica_that_cannot_renew_stops_before_its_lease_can_expire(
    engine: sa.Engine,
) -> None:
    clock = FakeClock()
    a, ra = keeper(engine, "a", clock)
    rounds(a, times=4)
    assert len(ra.running) == 30
    clock.now += TTL - safety_margin(TTL) - 0.1
    a.enforce()
    assert len(ra.running) == 30
    clock.now += 0.2
    a.enforce()
    assert ra.running == []
    assert set(ra.handed_over) == {m.address for m in MAILBOXES}
    a.round()  # the database answers again: the leases, still its own, come back
    assert len(ra.running) == 30


def test_a_removed_mailbox_loses_its_lease_and_an_added_one_is_taken(engine: sa.Engine) -> None:
    a, ra = keeper(engine, "a")
    rounds(a, times=4)
    added = settings("new@contoso.test")
    a.set_mailboxes([*MAILBOXES[1:], added])
    assert MAILBOXES[0].address not in ra.running
    assert MAILBOXES[0].address not in ra.handed_over  # removed: its status says so
    a.round()
    held = owners(engine)
    assert held[MAILBOXES[0].address] is None
    assert held[added.address] == "a"
    assert added.address in ra.running


def test_a_write_after_the_lease_moved_is_refused_and_writes_nothing(engine: sa.Engine) -> None:
    store = SqlStore(engine)
    address = MAILBOXES[0].address
    mailbox_id = store.ensure_mailbox(address, "contoso")
    folder = store.ensure_folder(mailbox_id, "INBOX")
    leases = LeaseStore(engine, statement_timeout=5.0)
    leases.ensure([address])
    token = leases.acquire("a", TTL, [address], 1)[address]
    fence: list[Fence | None] = [Fence(address, "a", token)]
    fenced = FencedStore(store, address, lambda: fence[0])
    now = dt.datetime.now(UTC)
    fenced.apply(_changes(folder.folder_id, uid=1), now)
    with engine.begin() as connection:  # a's lease expired and b took it over
        connection.execute(sa.text("UPDATE mailbox_leases SET expires_at = now() - interval '1s'"))
    assert leases.acquire("b", TTL, [address], 1) == {address: token + 1}
    with pytest.raises(LeaseLost):
        fenced.apply(_changes(folder.folder_id, uid=2), now)
    with pytest.raises(LeaseLost):
        fenced.reset_folder(folder.folder_id, 2, now)
    fence[0] = None  # the keeper knows it lost the lease: refused before the database
    with pytest.raises(LeaseLost):
        fenced.mark_folder_vanished(folder.folder_id, now)
    with engine.connect() as connection:
        uids = connection.execute(sa.text("SELECT uid FROM messages")).scalars().all()
        last_uid = connection.execute(sa.text("SELECT last_uid FROM folders")).scalar_one()
    assert (uids, last_uid) == ([1], 1)


def test_a_takeover_waits_for_a_write_in_flight(engine: sa.Engine) -> None:
    """The fence holds the lease row until the commit: no takeover slips in between."""
    leases = LeaseStore(engine, statement_timeout=5.0)
    address = MAILBOXES[0].address
    leases.ensure([address])
    leases.acquire("a", 0.5, [address], 1)
    taken: dict[str, int] = {}
    with engine.begin() as connection:
        connection.execute(
            sa.text("SELECT 1 FROM mailbox_leases WHERE mailbox = :m FOR SHARE"), {"m": address}
        )
        threading.Event().wait(0.6)  # the lease has expired meanwhile
        thief = threading.Thread(
            target=lambda: taken.update(leases.acquire("b", TTL, [address], 1))
        )
        thief.start()
        thief.join()
    assert taken == {}  # SKIP LOCKED: it skipped the row a write holds; a later round takes it
    assert leases.acquire("b", TTL, [address], 1) == {address: 2}


def test_the_status_view_names_the_live_lease_owner(engine: sa.Engine) -> None:
    store = SqlStore(engine)
    address = MAILBOXES[0].address
    store.ensure_mailbox(address, "contoso")
    store.save_statuses([_status(address, owner="a")])
    leases = LeaseStore(engine, statement_timeout=5.0)
    leases.ensure([address])
    assert _view_owner(engine) is None  # a lease row without an owner
    leases.acquire("b", TTL, [address], 1)
    assert _view_owner(engine) == "b"
    leases.release("b")
    assert _view_owner(engine) is None


def test_a_status_saved_by_a_new_owner_keeps_the_last_success(engine: sa.Engine) -> None:
    store = SqlStore(engine)
    address = MAILBOXES[0].address
    store.ensure_mailbox(address, "contoso")
    success = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    store.save_statuses([_status(address, owner="a", last_success_at=success)])
    store.save_statuses([_status(address, owner="b", last_success_at=None)])
    (saved,) = store.load_statuses([address])
    assert (saved.last_success_at, saved.owner) == (success, "b")


def _tokens(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT mailbox, token FROM mailbox_leases"))
        return {str(m): int(t) for m, t in rows}


def _view_owner(engine: sa.Engine) -> str | None:
    with engine.connect() as connection:
        return connection.execute(sa.text("SELECT owner FROM mailbox_status")).scalar_one()


def _status(
    address: str, *, owner: str, last_success_at: dt.datetime | None = None
) -> MailboxStatus:
    polled = dt.datetime(2026, 1, 2, 4, tzinfo=UTC)
    return healthy_status(address, polled=polled, succeeded=last_success_at, owner=owner)


def _changes(folder_id: int, *, uid: int) -> FolderChanges:
    record = MessageRecord(
        uid=uid,
        message_id=f"<{uid}@test>",
        subject="s",
        from_address="a@b.test",
        to_addresses=(),
        cc_addresses=(),
        in_reply_to=None,
        references=None,
        sent_at=None,
        received_at=dt.datetime(2026, 1, 1, tzinfo=UTC),
        size_bytes=10,
        flags=(),
    )
    return FolderChanges(
        folder_id=folder_id,
        uidvalidity=1,
        new=(record,),
        checkpoint=Checkpoint(uidvalidity=1, last_uid=uid),
    )
