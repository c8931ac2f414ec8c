"""Persistent IMAP sessions: one per mailbox, kept open between polls, least recently used out.

A poll checks its mailbox's session out and back in. Between polls the session sits idle in
the pool; an unchanged mailbox then costs one EXAMINE per folder and no login.

Rules (SPEC, "Persistent IMAP sessions"):
- One session per mailbox (polls of a mailbox never overlap, and Exchange limits concurrent
  connections per mailbox), at most ``max_open`` sessions in all: returning a session past the
  bound closes the least recently used idle ones.
- A session is never used past the expiry of the token it logged in with: Exchange ends it
  with ``* BYE Session invalidated - AccessTokenExpired``, and IMAP cannot re-authenticate a
  logged-in session. Once the tenant has a newer token, the session logs in afresh with it
  before one of its polls: at a point drawn per session between the newer token's arrival
  and shortly before the old token's expiry, so that thousands of sessions do not all log in
  at once (Exchange throttles bursts of logins). Logins per mailbox come to about one per
  token lifetime.
- A session the server or the network closed while it sat idle (it has input waiting: BYE or
  EOF) is probed with NOOP and replaced when the probe fails, before the poll starts.
- A session that fails during a poll is discarded (``discard``), never put back.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Final

from daemon.auth import AccessToken
from daemon.errors import ImapError
from daemon.logging import Logger
from daemon.ports import Clock, Jitter, Session

SAFETY_MAX: Final = 60.0
"""A session moves to a newer token at the latest this long (or a tenth of the token's life)
before its own token expires: room for the poll that runs on it."""
CLOSE_WORKERS: Final = 16
CLOSE_DEADLINE: Final = 5.0


@dataclass(eq=False)
class PooledSession:
    """A logged-in session and what it logged in with."""

    address: str
    tenant: str
    session: Session
    token: AccessToken = field(repr=False)
    reused: bool = False
    """Checked out from the pool rather than opened for this poll."""
    commands_at_checkout: int = 0
    switch_fraction: float = 0.0
    """Where in the window between a newer token and the old one's end this session moves."""
    generation: int = 0
    """The tenant's generation when the session opened: ``close_tenant`` retires older ones."""

    def untouched(self) -> bool:
        """No command completed since checkout: a failure now means the session was stale."""
        return self.session.commands_completed == self.commands_at_checkout


def latest_switch(token: AccessToken) -> float:
    """The last moment a session logged in with ``token`` may start a poll."""
    return token.expires_at - min(SAFETY_MAX, (token.expires_at - token.obtained_at) / 10)


def switch_at(old: AccessToken, new: AccessToken, fraction: float) -> float:
    """When a session on ``old`` moves to ``new``: ``fraction`` of the way from ``new``'s
    arrival to the latest switch."""
    start = new.obtained_at
    return start + fraction * max(0.0, latest_switch(old) - start)


class SessionPool:
    """Idle sessions by mailbox, in least-recently-used order; thread-safe."""

    def __init__(
        self,
        *,
        connect: Callable[[str], Session],
        max_open: int,
        clock: Clock,
        rng: Jitter,
        log: Logger,
        on_login: Callable[[str, bool], None] | None = None,
        on_count: Callable[[str, int], None] | None = None,
        on_release: Callable[[str], object] | None = None,
    ) -> None:
        """``connect(tenant)`` opens a TLS connection to the tenant's IMAP server.

        ``on_release(address)`` runs when the mailbox's pooled session is taken for a poll or
        is about to be closed: whatever waits on its socket (the IDLE hub) must stop first.
        """
        if max_open < 0:
            raise ValueError("max_open must be at least 0")
        self._connect = connect
        self._max_open = max_open
        self._clock = clock
        self._rng = rng
        self._log = log
        self._on_login = on_login or _ignore
        self._on_count = on_count or _ignore
        self._on_release = on_release or (lambda _address: None)
        self._idle: OrderedDict[str, PooledSession] = OrderedDict()
        self._open: Counter[str] = Counter()
        """Open sessions per tenant, idle and checked out."""
        self._generation: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._closed = False

    # -- a poll's view ----------------------------------------------------------------------
    def checkout(self, address: str, tenant: str, token: AccessToken) -> PooledSession:
        """The mailbox's session, logged in with a token that outlives the poll.

        Reuses the idle session when its token is not close to expiry (or no newer token
        exists) and it has not been closed meanwhile; otherwise opens one and logs in.
        """
        with self._lock:
            pooled = self._idle.pop(address, None)
        if pooled is not None:
            self._on_release(address)
            current = pooled.generation == self._generation[tenant]
            if pooled.tenant == tenant and current and self._usable(pooled, token):
                pooled.reused = True
                pooled.commands_at_checkout = pooled.session.commands_completed
                return pooled
            self._close(pooled)
        return self.open(address, tenant, token)

    def open(self, address: str, tenant: str, token: AccessToken) -> PooledSession:
        """A new session for ``address``, logged in with ``token``."""
        session = self._connect(tenant)
        self._count(tenant, +1)
        try:
            session.login_xoauth2(address, token.value)
        except BaseException:
            self._on_login(tenant, False)
            session.logout()
            self._count(tenant, -1)
            raise
        self._on_login(tenant, True)
        return PooledSession(
            address,
            tenant,
            session,
            token,
            switch_fraction=self._rng.uniform(0.0, 1.0),
            generation=self._generation[tenant],
        )

    def checkin(self, pooled: PooledSession) -> None:
        """Keep the session for the mailbox's next poll (closes the LRU ones past the bound)."""
        evicted: list[PooledSession] = []
        with self._lock:
            retired = pooled.generation != self._generation[pooled.tenant]
            if self._closed or self._max_open == 0 or retired:
                evicted.append(pooled)
            else:
                previous = self._idle.pop(pooled.address, None)
                if previous is not None:
                    evicted.append(previous)  # cannot happen while polls never overlap
                self._idle[pooled.address] = pooled
                excess = sum(self._open.values()) - self._max_open
                while excess > 0 and self._idle:
                    evicted.append(self._idle.popitem(last=False)[1])
                    excess -= 1
        for old in evicted:
            self._close(old)

    def discard(self, pooled: PooledSession) -> None:
        """The session failed (or must not be reused): close it."""
        self._close(pooled)

    # -- the runtime's view -----------------------------------------------------------------
    def set_max_open(self, max_open: int) -> None:
        """A new bound (a reload); idle sessions past it are closed, least recently used first."""
        if max_open < 0:
            raise ValueError("max_open must be at least 0")
        closing: list[PooledSession] = []
        with self._lock:
            self._max_open = max_open
            excess = sum(self._open.values()) - max_open
            while excess > 0 and self._idle:
                closing.append(self._idle.popitem(last=False)[1])
                excess -= 1
        self._close_many(closing)

    def close_mailbox(self, address: str) -> None:
        """Close the mailbox's idle session, if it has one (a removed mailbox)."""
        with self._lock:
            pooled = self._idle.pop(address, None)
        if pooled is not None:
            self._close(pooled)

    def close_tenant(self, tenant: str) -> int:
        """Close every idle session of ``tenant`` (its server changed, or it was removed);
        sessions in use are closed when their poll ends."""
        with self._lock:
            self._generation[tenant] += 1
            mine = [a for a, p in self._idle.items() if p.tenant == tenant]
            closing = [self._idle.pop(a) for a in mine]
        self._close_many(closing)
        return len(closing)

    def close_all(self, deadline: float = CLOSE_DEADLINE) -> None:
        """Log every idle session out, in parallel, within ``deadline`` s; later ones refused."""
        with self._lock:
            self._closed = True
            closing = list(self._idle.values())
            self._idle.clear()
        self._close_many(closing, deadline)

    def open_count(self, tenant: str | None = None) -> int:
        with self._lock:
            return self._open[tenant] if tenant is not None else sum(self._open.values())

    def idle_count(self) -> int:
        with self._lock:
            return len(self._idle)

    # -- internals --------------------------------------------------------------------------
    def _usable(self, pooled: PooledSession, current: AccessToken) -> bool:
        now = self._clock()
        old = pooled.token
        newer = current.value != old.value and current.expires_at > old.expires_at
        if newer and now >= switch_at(old, current, pooled.switch_fraction):
            return False  # move to the newer token before the old one runs out
        if now >= old.expires_at:
            return False
        session = pooled.session
        if session.idling:
            # In IDLE since its last poll: DONE ends it (and reads what the server reported).
            return self._answers(pooled, session.end_idle)
        if session.has_unread_input():
            # Something arrived while idle: a BYE, an EOF, or an unsolicited update. NOOP reads
            # it; a closed session fails here and is replaced before the poll starts.
            return self._answers(pooled, session.noop)
        return True

    def _answers(self, pooled: PooledSession, command: Callable[[], None]) -> bool:
        """Whether the idle session still answers ``command``; False means replace it."""
        try:
            command()
        except ImapError as exc:
            self._log.debug(
                "idle session closed by the server; replacing it",
                mailbox=pooled.address,
                tenant=pooled.tenant,
                error=str(exc),
            )
            return False
        return True

    def _close(self, pooled: PooledSession) -> None:
        self._on_release(pooled.address)
        pooled.session.logout()
        self._count(pooled.tenant, -1)

    def _close_many(
        self, closing: Iterable[PooledSession], deadline: float = CLOSE_DEADLINE
    ) -> None:
        closing = list(closing)
        if not closing:
            return
        if len(closing) == 1:
            self._close(closing[0])
            return
        pool = ThreadPoolExecutor(max_workers=CLOSE_WORKERS, thread_name_prefix="imap-close")
        futures = [pool.submit(self._close, pooled) for pooled in closing]
        _, not_done = wait(futures, timeout=deadline)
        # Sessions still logging out at the deadline are left to their own (short) timeout.
        pool.shutdown(wait=False, cancel_futures=True)
        if not_done:
            self._log.warning("IMAP sessions still closing at the deadline", count=len(not_done))

    def _count(self, tenant: str, delta: int) -> None:
        with self._lock:
            self._open[tenant] += delta
            count = self._open[tenant]
        self._on_count(tenant, count)


def _ignore(_tenant: str, _value: object) -> None:
    """No observer."""
