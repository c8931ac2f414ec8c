"""The session pool's rules on fake sessions and a fake clock: reuse, token switch, LRU, probes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from daemon.auth import AccessToken
from daemon.errors import ImapConnectionError
from daemon.imap.pool import SessionPool, latest_switch, switch_at
from daemon.logging import get_logger
from daemon.sync.algorithm import ServerFolder
from daemon.sync.model import Flags, MessageRecord


class FakeSession:
    def __init__(self, number: int) -> None:
        self.number = number
        self.logged_in_as: tuple[str, str] | None = None
        self.logged_out = False
        self.unread = False
        self.dead = False
        self.completed = 0

    # Session port
    def login_xoauth2(self, user: str, token: str) -> None:
        if token == "refused":
            raise ImapConnectionError("refused")
        self.logged_in_as = (user, token)
        self.completed += 1

    def noop(self) -> None:
        if self.dead:
            raise ImapConnectionError("EOF (server said BYE)")
        self.unread = False
        self.completed += 1

    def has_unread_input(self) -> bool:
        return self.unread

    @property
    def commands_completed(self) -> int:
        return self.completed

    def logout(self) -> None:
        self.logged_out = True

    idling = False
    idle_ends = 0

    def start_idle(self, folder: str) -> str:
        self.idling = True
        return "idling"

    def end_idle(self) -> None:
        self.idling = False
        self.idle_ends += 1
        if self.dead:
            raise ImapConnectionError("EOF (server said BYE)")
        self.completed += 1

    def idle_news(self) -> bool:
        return True

    def socket(self) -> Any:
        raise NotImplementedError

    # MailboxClient port (unused here)
    @property
    def condstore(self) -> bool:
        return False

    def examine(self, folder: str) -> ServerFolder:
        raise NotImplementedError

    def uids_from(self, uid: int) -> list[int]:
        raise NotImplementedError

    def uids_since(self, uid: int, since: dt.date) -> list[int]:
        raise NotImplementedError

    def fetch_records(self, uids: Sequence[int]) -> list[MessageRecord]:
        raise NotImplementedError

    def fetch_all_flags(self) -> Mapping[int, Flags]:
        raise NotImplementedError

    def fetch_flags_changed_since(self, modseq: int) -> Mapping[int, Flags]:
        raise NotImplementedError


class Clock:
    now = 10_000.0

    def __call__(self) -> float:
        return self.now


class Half:
    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


class Rig:
    def __init__(self, max_open: int = 10) -> None:
        self.clock = Clock()
        self.made: list[FakeSession] = []
        self.logins: list[tuple[str, bool]] = []
        self.counts: dict[str, int] = {}
        self.pool = SessionPool(
            connect=self.connect,
            max_open=max_open,
            clock=self.clock,
            rng=Half(),
            log=get_logger("test"),
            on_login=lambda tenant, ok: self.logins.append((tenant, ok)),
            on_count=self.counts.__setitem__,
        )

    def connect(self, tenant: str) -> FakeSession:
        session = FakeSession(len(self.made))
        self.made.append(session)
        return session

    def token(self, value: str = "t1", life: float = 3600, age: float = 0) -> AccessToken:
        obtained = self.clock.now - age
        return AccessToken(value, expires_at=obtained + life, obtained_at=obtained)


def test_a_checked_in_session_is_reused_without_a_login() -> None:
    rig = Rig()
    token = rig.token()
    first = rig.pool.checkout("a@x", "contoso", token)
    assert not first.reused
    rig.pool.checkin(first)
    again = rig.pool.checkout("a@x", "contoso", token)
    assert again.session is first.session
    assert again.reused
    assert again.untouched()
    assert rig.logins == [("contoso", True)]
    assert rig.counts == {"contoso": 1}


def test_a_session_moves_to_a_newer_token_between_its_arrival_and_the_old_ones_end() -> None:
    rig = Rig()
    old = rig.token("t1", life=3600)
    pooled = rig.pool.checkout("a@x", "contoso", old)
    rig.pool.checkin(pooled)
    rig.clock.now += 2400  # renewed at 2/3 of its lifetime
    new = rig.token("t2", life=3600)
    moment = switch_at(old, new, 0.5)  # Half() drew 0.5 for this session
    assert new.obtained_at < moment < latest_switch(old) < old.expires_at
    rig.clock.now = moment - 1
    kept = rig.pool.checkout("a@x", "contoso", new)
    assert kept.session is pooled.session
    rig.pool.checkin(kept)
    rig.clock.now = moment
    moved = rig.pool.checkout("a@x", "contoso", new)
    assert moved.session is not pooled.session
    assert pooled.session.logged_out  # type: ignore[attr-defined]
    assert moved.session.logged_in_as == ("a@x", "t2")  # type: ignore[attr-defined]
    assert rig.counts == {"contoso": 1}


def test_without_a_newer_token_a_session_is_used_until_its_token_expires_never_after() -> None:
    rig = Rig()
    token = rig.token("t1", life=600)
    rig.pool.checkin(rig.pool.checkout("a@x", "contoso", token))
    rig.clock.now = token.expires_at - 1
    same = rig.pool.checkout("a@x", "contoso", token)
    assert same.reused
    rig.pool.checkin(same)
    rig.clock.now = token.expires_at
    fresh = rig.token("t2", life=600)
    assert not rig.pool.checkout("a@x", "contoso", fresh).reused


def test_past_the_bound_the_least_recently_used_idle_session_is_closed() -> None:
    rig = Rig(max_open=2)
    token = rig.token()
    a = rig.pool.checkout("a@x", "contoso", token)
    b = rig.pool.checkout("b@x", "contoso", token)
    rig.pool.checkin(a)
    rig.pool.checkin(b)
    again = rig.pool.checkout("a@x", "contoso", token)  # a is now the most recently used
    rig.pool.checkin(again)
    c = rig.pool.checkout("c@x", "fabrikam", token)
    rig.pool.checkin(c)
    assert b.session.logged_out  # type: ignore[attr-defined]
    assert not a.session.logged_out  # type: ignore[attr-defined]
    assert rig.pool.open_count() == 2
    assert rig.counts == {"contoso": 1, "fabrikam": 1}


def test_an_idle_session_the_server_closed_is_replaced_at_checkout() -> None:
    rig = Rig()
    token = rig.token()
    first = rig.pool.checkout("a@x", "contoso", token)
    rig.pool.checkin(first)
    first.session.unread = True  # type: ignore[attr-defined]
    first.session.dead = True  # type: ignore[attr-defined]
    second = rig.pool.checkout("a@x", "contoso", token)
    assert second.session is not first.session
    assert not second.reused


def test_an_idle_session_with_an_unsolicited_update_is_kept_after_the_probe() -> None:
    rig = Rig()
    token = rig.token()
    first = rig.pool.checkout("a@x", "contoso", token)
    rig.pool.checkin(first)
    first.session.unread = True  # type: ignore[attr-defined]
    assert rig.pool.checkout("a@x", "contoso", token).session is first.session


def test_a_failed_login_counts_closes_the_connection_and_raises() -> None:
    rig = Rig()
    with pytest.raises(ImapConnectionError):
        rig.pool.checkout("a@x", "contoso", rig.token("refused"))
    assert rig.logins == [("contoso", False)]
    assert rig.made[0].logged_out
    assert rig.counts == {"contoso": 0}


def test_close_all_logs_every_idle_session_out_and_refuses_later_ones() -> None:
    rig = Rig()
    token = rig.token()
    held = [rig.pool.checkout(f"m{i}@x", "contoso", token) for i in range(5)]
    for pooled in held[:4]:
        rig.pool.checkin(pooled)
    rig.pool.close_all(deadline=5)
    assert all(s.logged_out for s in rig.made[:4])
    rig.pool.checkin(held[4])  # a poll that ended after shutdown began
    assert rig.made[4].logged_out
    assert rig.pool.open_count() == 0


def test_removing_a_mailbox_closes_its_session() -> None:
    rig = Rig()
    token = rig.token()
    rig.pool.checkin(rig.pool.checkout("a@x", "contoso", token))
    rig.pool.close_mailbox("a@x")
    assert rig.made[0].logged_out
    assert rig.pool.open_count("contoso") == 0
