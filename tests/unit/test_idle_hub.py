"""IdleHub on real sockets (socket pairs): one thread, wakes on news and at the due time."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from daemon.imap.idle import IdleHub
from daemon.logging import get_logger


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


class Session:
    """The server end writes; ``idle_news`` reads what came, as ImapMailbox does."""

    def __init__(self) -> None:
        self.ours, self.server = socket.socketpair()
        self.ours.setblocking(False)
        self.read: list[bytes] = []

    def socket(self) -> socket.socket:
        return self.ours

    def idle_news(self) -> bool:
        try:
            data = self.ours.recv(4096)
        except BlockingIOError:
            return False
        self.read.append(data)
        return not data or b"EXISTS" in data or b"BYE" in data

    def close(self) -> None:
        self.ours.close()
        self.server.close()


@pytest.fixture
def sessions() -> Iterator[list[Session]]:
    made: list[Session] = []
    yield made
    for session in made:
        session.close()


def hub_with(clock: Clock) -> tuple[IdleHub, list[str]]:
    woken: list[str] = []
    return IdleHub(wake=woken.append, log=get_logger("test"), clock=clock), woken


def test_news_wakes_its_mailbox_once_and_a_keepalive_does_not(sessions: list[Session]) -> None:
    clock = Clock()
    hub, woken = hub_with(clock)
    a, b = Session(), Session()
    sessions += [a, b]
    hub.watch("a@x", "contoso", a, due=clock.now + 600)
    hub.watch("b@x", "fabrikam", b, due=clock.now + 600)
    assert hub.count() == {"contoso": 1, "fabrikam": 1}
    b.server.sendall(b"* OK Still here\r\n")
    assert hub.run_once() == []
    assert b.read == [b"* OK Still here\r\n"]
    a.server.sendall(b"* 7 EXISTS\r\n")
    assert hub.run_once() == ["a@x"]
    assert woken == ["a@x"]
    assert not hub.watching("a@x")  # handed back: the poll owns the session now
    a.server.sendall(b"* 8 EXISTS\r\n")
    assert hub.run_once() == []  # not watched any more: nothing is read from it
    assert hub.count() == {"fabrikam": 1}
    hub.stop()


def test_a_closed_connection_wakes_its_mailbox(sessions: list[Session]) -> None:
    clock = Clock()
    hub, _ = hub_with(clock)
    session = Session()
    sessions.append(session)
    hub.watch("a@x", "contoso", session, due=clock.now + 600)
    session.server.close()
    assert hub.run_once() == ["a@x"]
    hub.stop()


def test_the_renewal_falls_due_on_the_clock(sessions: list[Session]) -> None:
    clock = Clock()
    hub, woken = hub_with(clock)
    session = Session()
    sessions.append(session)
    hub.watch("a@x", "contoso", session, due=clock.now + 1500)
    clock.now += 1499
    assert hub.run_once() == []
    clock.now += 1
    assert hub.run_once() == ["a@x"]
    assert woken == ["a@x"]
    hub.stop()


def test_unwatch_takes_the_session_back_and_a_new_watch_replaces_the_old(
    sessions: list[Session],
) -> None:
    clock = Clock()
    hub, _ = hub_with(clock)
    first, second = Session(), Session()
    sessions += [first, second]
    hub.watch("a@x", "contoso", first, due=clock.now + 10)
    hub.watch("a@x", "contoso", second, due=clock.now + 600)
    first.server.sendall(b"* 1 EXISTS\r\n")
    clock.now += 20
    assert hub.run_once() == []  # the first session's news and due no longer count
    assert hub.unwatch("a@x")
    assert not hub.unwatch("a@x")
    second.server.sendall(b"* 2 EXISTS\r\n")
    assert hub.run_once() == []
    hub.stop()


def test_one_thread_serves_many_sessions(sessions: list[Session]) -> None:
    clock = Clock()
    woken = threading.Event()
    seen: list[str] = []

    def wake(address: str) -> None:
        seen.append(address)
        if len(seen) == 3:
            woken.set()

    hub = IdleHub(wake=wake, log=get_logger("test"), clock=clock)
    before = threading.active_count()
    hub.start()
    for i in range(200):
        session = Session()
        sessions.append(session)
        hub.watch(f"m{i}@x", "contoso", session, due=clock.now + 600)
    assert threading.active_count() == before + 1
    for i in (5, 77, 150):
        sessions[i].server.sendall(b"* 3 EXISTS\r\n")
    assert woken.wait(30)
    assert sorted(seen) == ["m150@x", "m5@x", "m77@x"]
    hub.stop()
    assert not hub.alive()
