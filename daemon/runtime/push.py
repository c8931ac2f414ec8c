"""Push: after its poll, a mailbox with ``idle: true`` waits in IMAP IDLE on its first folder.

    poll ends ──Push.rest──▶ start IDLE ──watch──▶ IdleHub ──news / renewal──▶ Runtime.push
                                                                                   │
    next poll ◀── pool.checkout ends IDLE (DONE) ◀─────────────────────────────────┘

The IDLE lasts until the server reports news, ``limits.idle_renew`` passes (Exchange Online
ends an IDLE after 30 minutes), or the session's token nears the moment it must be replaced;
then the mailbox polls (the normal sync path: batches, checkpoints, metrics) and IDLEs again.
A server without IDLE is polled as before: one info log line per mailbox says so.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from daemon.config import MailboxSettings
from daemon.errors import ImapError, error_fields
from daemon.imap.idle import IdleHub
from daemon.imap.pool import PooledSession, latest_switch
from daemon.logging import Logger
from daemon.ports import Clock


class Push:
    """Starts IDLE on a polled session and hands it to the hub; thread-safe."""

    def __init__(
        self,
        hub: IdleHub,
        *,
        renew: float,
        log: Logger,
        on_idle: Callable[[str, bool], None],
        wake: Callable[[str], None],
        clock: Clock = time.time,
    ) -> None:
        """``on_idle(address, idle)`` reports the mailbox in IDLE or not; ``wake(address)``
        asks for a poll at once (news that came as IDLE started)."""
        self._hub = hub
        self._renew = renew
        self._log = log
        self._on_idle = on_idle
        self._wake = wake
        self._clock = clock
        self._lock = threading.Lock()
        self._unsupported: set[str] = set()
        """Mailboxes already logged as polled because their server has no IDLE."""

    def set_renew(self, seconds: float) -> None:
        """``limits.idle_renew`` changed: IDLEs started from now on use it."""
        self._renew = seconds

    def rest(self, mailbox: MailboxSettings, pooled: PooledSession) -> bool:
        """After a successful poll: IDLE if the mailbox wants it. False: discard the session."""
        if not mailbox.idle or not mailbox.folders:
            self._on_idle(mailbox.address, False)
            return True
        folder = mailbox.folders[0]
        try:
            state = pooled.session.start_idle(folder)
        except ImapError as exc:
            self._log.debug(
                "IDLE could not start; the session is replaced at the next poll",
                mailbox=mailbox.address,
                tenant=mailbox.tenant,
                folder=folder,
                **error_fields(exc),
            )
            self._on_idle(mailbox.address, False)
            return False
        if state == "unsupported":
            self._note_unsupported(mailbox)
        elif state == "changed":
            self._wake(mailbox.address)  # news already: poll once more, at once
        else:
            self._hub.watch(mailbox.address, mailbox.tenant, pooled.session, self._due(pooled))
        self._on_idle(mailbox.address, state == "idling")
        return True

    def failed(self, address: str) -> None:
        """The mailbox's poll failed: its session is not in IDLE."""
        self._on_idle(address, False)

    def forget(self, address: str) -> None:
        with self._lock:
            self._unsupported.discard(address)

    def _due(self, pooled: PooledSession) -> float:
        """When the IDLE ends by itself: renewal, or the latest moment to switch tokens."""
        now = self._clock()
        due = now + self._renew
        switch = latest_switch(pooled.token)
        return min(due, switch) if switch > now else due

    def _note_unsupported(self, mailbox: MailboxSettings) -> None:
        with self._lock:
            if mailbox.address in self._unsupported:
                return
            self._unsupported.add(mailbox.address)
        self._log.info(
            "the server does not support IDLE; the mailbox is polled",
            mailbox=mailbox.address,
            tenant=mailbox.tenant,
            poll_interval_s=mailbox.poll_interval,
        )
