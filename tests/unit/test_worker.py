"""One poll through the session pool, on in-memory fakes: stale sessions, kept sessions, tokens."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from daemon.auth import AccessToken
from daemon.config import MailboxSettings
from daemon.errors import DatabaseError, ImapConnectionError, MailsyncError
from daemon.imap.pool import SessionPool
from daemon.logging import get_logger
from daemon.metrics import Metrics
from daemon.runtime.push import Push
from daemon.runtime.worker import MailboxWorker
from daemon.sync.algorithm import ServerFolder
from daemon.sync.model import FolderState, MessageRecord
from support.sync_fakes import FakeClient, FakeServer, MemoryStore


class FakeSession(FakeClient):
    """A fake server connection: counts commands, fails on demand."""

    def __init__(self, server: FakeServer) -> None:
        super().__init__(server)
        self.completed = 0
        self.fail_next: MailsyncError | None = None
        self.logged_out = False
        self.on_fetch: list[Callable[[], None]] = []

    def _command(self) -> None:
        if self.fail_next is not None:
            failure, self.fail_next = self.fail_next, None
            raise failure
        self.completed += 1

    def login_xoauth2(self, user: str, token: str) -> None:
        self._command()

    def noop(self) -> None:
        self._command()

    def has_unread_input(self) -> bool:
        return False

    @property
    def commands_completed(self) -> int:
        return self.completed

    def logout(self) -> None:
        self.logged_out = True

    idling = False
    idle_answer = "idling"
    idle_folders: list[str]

    def start_idle(self, folder: str) -> str:
        self.idle_folders = [*getattr(self, "idle_folders", []), folder]
        self._command()
        self.idling = self.idle_answer == "idling"
        return self.idle_answer

    def end_idle(self) -> None:
        self.idling = False
        self._command()

    def idle_news(self) -> bool:
        return True

    def socket(self) -> Any:
        raise NotImplementedError

    def examine(self, folder: str) -> ServerFolder:
        self._command()
        return super().examine(folder)

    def fetch_records(self, uids: Sequence[int]) -> list[MessageRecord]:
        self._command()
        for hook in self.on_fetch:
            hook()
        return super().fetch_records(uids)


class Store(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.state_reads = 0
        self.fail_reads: Exception | None = None

    def ensure_mailbox(self, address: str, tenant: str) -> int:
        return 1

    def folder_states(self, mailbox_id: int) -> dict[str, FolderState]:
        self.state_reads += 1
        if self.fail_reads is not None:
            raise self.fail_reads
        return super().folder_states(mailbox_id)


class Tokens:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.current = AccessToken("t1", expires_at=clock.now + 3600, obtained_at=clock.now)
        self.reported: list[str] = []

    def token(self, tenant: str) -> AccessToken:
        return self.current

    def report_expired(self, tenant: str, token: AccessToken) -> None:
        self.reported.append(token.value)

    def renew(self) -> None:
        now = self.clock.now
        self.current = AccessToken(f"t{now}", expires_at=now + 3600, obtained_at=now)


class Clock:
    now = 50_000.0

    def __call__(self) -> float:
        return self.now


class FakeHub:
    """Stands for IdleHub: records the sessions handed to it."""

    def __init__(self) -> None:
        self.watched: dict[str, tuple[FakeSession, float]] = {}
        self.released: list[str] = []

    def watch(self, address: str, tenant: str, session: FakeSession, due: float) -> None:
        self.watched[address] = (session, due)

    def unwatch(self, address: str) -> bool:
        self.released.append(address)
        return self.watched.pop(address, None) is not None


class Rig:
    def __init__(self, *, idle: bool = False) -> None:
        self.server = FakeServer()
        self.server.append("INBOX", 5)
        self.store = Store()
        self.clock = Clock()
        self.tokens = Tokens(self.clock)
        self.sessions: list[FakeSession] = []
        self.on_fetch: list[Callable[[], None]] = []
        self.metrics = Metrics(CollectorRegistry(), ["contoso"])
        self.hub = FakeHub()
        self.idle: dict[str, bool] = {}
        self.woken: list[str] = []
        self.pool = SessionPool(
            connect=self.connect,
            max_open=100,
            clock=self.clock,
            rng=_Low(),
            log=get_logger("test"),
            on_login=self.metrics.imap_login,
            on_release=self.hub.unwatch,
        )
        self.push = Push(
            self.hub,  # type: ignore[arg-type]
            renew=1500.0,
            log=get_logger("test"),
            on_idle=self.idle.__setitem__,
            wake=self.woken.append,
            clock=self.clock,
        )
        self.worker = MailboxWorker(
            store=self.store,
            tokens=self.tokens,
            sessions=self.pool,
            metrics=self.metrics,
            log=get_logger("test"),
            batch_size=2,
            clock=self.clock,
            push=self.push,
        )
        self.mailbox = MailboxSettings(
            address="a@contoso.test",
            tenant="contoso",
            folders=("INBOX",),
            poll_interval=60,
            full_scan_interval=900,
            backfill_days=None,
            idle=idle,
        )

    connect_answer = "idling"

    def connect(self, tenant: str) -> FakeSession:
        session = FakeSession(self.server)
        session.idle_answer = self.connect_answer
        session.on_fetch.extend(self.on_fetch)
        self.sessions.append(session)
        return session

    def poll(self) -> None:
        self.worker.poll(self.mailbox, lambda: False)

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


class _Low:
    def uniform(self, a: float, b: float) -> float:
        return a


def test_a_reused_session_closed_while_idle_is_replaced_and_the_poll_does_not_fail() -> None:
    rig = Rig()
    rig.poll()
    rig.sessions[0].fail_next = ImapConnectionError("EOF (server said BYE)")
    rig.server.append("INBOX", 1)
    rig.poll()
    assert len(rig.sessions) == 2
    assert rig.sessions[0].logged_out
    assert rig.sample("mailsyncd_polls_total", tenant="contoso", outcome="failure") == 0
    assert rig.sample("mailsyncd_polls_total", tenant="contoso", outcome="success") == 2
    assert len(rig.store.live(1)) == 6
    assert rig.pool.idle_count() == 1


def test_a_session_that_fails_after_a_completed_command_fails_the_poll_and_is_discarded() -> None:
    rig = Rig()
    rig.poll()
    rig.server.append("INBOX", 1)
    session = rig.sessions[0]

    def drop() -> None:
        session.fail_next = ImapConnectionError("reset")

    session.on_fetch.append(drop)  # the fetch completes; the next command fails
    rig.server.append("INBOX", 2)
    with pytest.raises(ImapConnectionError):
        rig.poll()
    assert session.logged_out
    assert rig.pool.idle_count() == 0
    assert rig.sample("mailsyncd_poll_failures_total", tenant="contoso", reason="connect") == 1


def test_a_database_failure_keeps_the_imap_session_for_the_next_poll() -> None:
    rig = Rig()
    rig.store.fail_reads = DatabaseError("database unreachable")
    with pytest.raises(DatabaseError):
        rig.poll()
    assert rig.pool.idle_count() == 1
    assert not rig.sessions[0].logged_out
    rig.store.fail_reads = None
    rig.poll()
    assert len(rig.sessions) == 1


def test_unchanged_polls_read_the_folder_states_once_and_a_change_reads_them_again() -> None:
    rig = Rig()
    rig.poll()  # first sync: writes
    rig.poll()  # reads again after the writes, then nothing changes
    reads = rig.store.state_reads
    for _ in range(5):
        rig.poll()
    assert rig.store.state_reads == reads
    rig.server.append("INBOX", 1)
    rig.poll()  # reads its cached states, writes the new message
    rig.poll()
    assert rig.store.state_reads == reads + 1
    assert len(rig.store.live(1)) == 6


def test_a_long_poll_moves_to_a_new_session_when_its_token_ends_and_loses_nothing() -> None:
    rig = Rig()
    rig.server.append("INBOX", 15)  # 20 messages in batches of 2

    def time_passes() -> None:
        rig.clock.now += 400  # ten batches take the token past its latest switch
        if rig.clock.now - rig.tokens.current.obtained_at > 2400:
            rig.tokens.renew()

    rig.on_fetch.append(time_passes)
    rig.poll()
    assert len(rig.sessions) >= 2
    assert rig.sessions[0].logged_out
    assert len(rig.store.live(1)) == 20
    assert rig.sample("mailsyncd_polls_total", tenant="contoso", outcome="success") == 1
    assert rig.sample("mailsyncd_polls_total", tenant="contoso", outcome="failure") == 0
    assert rig.tokens.reported == []


def test_an_idle_mailbox_waits_in_idle_after_its_poll_and_the_next_poll_ends_it() -> None:
    rig = Rig(idle=True)
    rig.poll()
    session, due = rig.hub.watched[rig.mailbox.address]
    assert session is rig.sessions[0]
    assert session.idling
    assert session.idle_folders == ["INBOX"]
    assert due == rig.clock.now + 1500.0  # the renewal comes before the token's end
    assert rig.idle == {rig.mailbox.address: True}
    rig.server.append("INBOX", 2)
    rig.poll()  # woken: the pool takes it back from the hub and ends the IDLE first
    assert rig.hub.released[0] == rig.mailbox.address
    assert len(rig.sessions) == 1
    assert len(rig.store.live(1)) == 7
    assert rig.hub.watched[rig.mailbox.address][0].idling  # and in IDLE again
    assert rig.sample("mailsyncd_polls_total", tenant="contoso", outcome="failure") == 0


def test_idle_ends_before_the_session_must_move_to_a_newer_token() -> None:
    rig = Rig(idle=True)
    rig.clock.now += 3600 - 600  # ten minutes of the token left
    rig.poll()
    _, due = rig.hub.watched[rig.mailbox.address]
    token = rig.tokens.current
    assert rig.clock.now < due < token.expires_at
    assert due < rig.clock.now + 1500.0


def test_a_server_without_idle_is_polled_and_says_so_once() -> None:
    rig = Rig(idle=True)
    rig.connect_answer = "unsupported"
    rig.poll()
    rig.poll()
    assert rig.hub.watched == {}
    assert rig.idle == {rig.mailbox.address: False}
    assert len(rig.sessions) == 1  # the session is kept for polling


def test_news_that_came_as_idle_started_asks_for_another_poll_at_once() -> None:
    rig = Rig(idle=True)
    rig.connect_answer = "changed"
    rig.poll()
    assert rig.woken == [rig.mailbox.address]
    assert rig.hub.watched == {}


def test_a_session_whose_idle_the_server_ended_is_replaced_without_a_failed_poll() -> None:
    rig = Rig(idle=True)
    rig.poll()
    rig.sessions[0].fail_next = ImapConnectionError("EOF (server said BYE)")  # on DONE
    rig.server.append("INBOX", 1)
    rig.poll()
    assert len(rig.sessions) == 2
    assert rig.sessions[0].logged_out
    assert len(rig.store.live(1)) == 6
    assert rig.sample("mailsyncd_polls_total", tenant="contoso", outcome="failure") == 0
    assert rig.idle == {rig.mailbox.address: True}


def test_a_failed_poll_is_not_in_idle() -> None:
    rig = Rig(idle=True)
    rig.poll()
    rig.store.fail_reads = DatabaseError("database unreachable")
    rig.server.append("INBOX", 1)
    with pytest.raises(DatabaseError):
        rig.poll()
    assert rig.idle == {rig.mailbox.address: False}
