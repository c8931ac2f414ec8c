"""Every interface the runtime and the sync engine use, in one place.

The core (``daemon/sync``, ``daemon/runtime``) names what it needs here; each adapter is named
after its technology and satisfies one of these structurally:

    MailboxClient / Session  <- daemon.imap.client.ImapMailbox (imapclient)
    Store / RuntimeStore     <- daemon.store.repository.SqlStore (SQLAlchemy)
    TokenProvider            <- daemon.auth.refresher.TokenRefresher
    TokenSource              <- daemon.auth.msal_provider.MsalTokenClient (MSAL)
    Timer                    <- daemon.runtime.timer.ApschedulerTimer (APScheduler 3)
    Poller                   <- daemon.runtime.worker.MailboxWorker
    Clock                    <- time.time (tests pass a fake)
"""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, Protocol

from daemon.auth import AccessToken
from daemon.config import MailboxSettings
from daemon.sync.algorithm import ServerFolder
from daemon.sync.model import Flags, FolderChanges, FolderState, MessageRecord

Clock = Callable[[], float]
"""Epoch seconds (``time.time``); tests pass a fake."""


class Jitter(Protocol):
    """The randomness the schedule needs (``random.Random`` satisfies it)."""

    def uniform(self, a: float, b: float) -> float: ...


# -- IMAP -------------------------------------------------------------------------------------
class MailboxClient(Protocol):
    """A logged-in IMAP session on one mailbox, as the sync engine uses it."""

    @property
    def condstore(self) -> bool:
        """The server advertises CONDSTORE (after login)."""
        ...

    def examine(self, folder: str) -> ServerFolder:
        """Open ``folder`` read-only; raises ``FolderMissing`` when it does not exist."""
        ...

    def uids_from(self, uid: int) -> list[int]:
        """UIDs at or above ``uid`` (may include the highest UID even when below)."""
        ...

    def uids_since(self, uid: int, since: dt.date) -> list[int]:
        """UIDs at or above ``uid`` of messages received on or after ``since``."""
        ...

    def fetch_records(self, uids: Sequence[int]) -> list[MessageRecord]: ...

    def fetch_all_flags(self) -> Mapping[int, Flags]: ...

    def fetch_flags_changed_since(self, modseq: int) -> Mapping[int, Flags]: ...


IdleStart = Literal["idling", "changed", "unsupported"]
"""``idling``: in IDLE, nothing reported yet; ``changed``: the server reported news at once (IDLE
was ended again: poll); ``unsupported``: the server does not advertise IDLE."""


class Session(MailboxClient, Protocol):
    """A mailbox client with a lifetime of its own: log in, probe, log out."""

    def login_xoauth2(self, user: str, token: str) -> None: ...

    def noop(self) -> None: ...

    def has_unread_input(self) -> bool:
        """The server sent something while the session sat idle (data, BYE or EOF)."""
        ...

    @property
    def commands_completed(self) -> int:
        """Commands that got their tagged answer: tells a stale session from a failing poll."""
        ...

    def logout(self) -> None:
        """Log out and close; never raises; idempotent."""
        ...

    @property
    def idling(self) -> bool:
        """In IMAP IDLE: only ``end_idle`` and ``logout`` may be called."""
        ...

    def start_idle(self, folder: str) -> IdleStart:
        """Start IDLE on ``folder`` (see :data:`IdleStart`)."""
        ...

    def idle_news(self) -> bool:
        """Its socket became readable in IDLE: True for news (poll), False for a keepalive."""
        ...

    def end_idle(self) -> None:
        """End IDLE (DONE); what the server reported meanwhile marks the folder changed."""
        ...

    def socket(self) -> socket.socket:
        """The connection, to wait on while in IDLE (never read from outside)."""
        ...


# -- database ---------------------------------------------------------------------------------
class ApplyCounts(Protocol):
    """How many rows one transaction inserted, changed and marked deleted."""

    @property
    def new(self) -> int: ...

    @property
    def updated(self) -> int: ...

    @property
    def deleted(self) -> int: ...


class Store(Protocol):
    """The database, as the sync engine sees it."""

    def ensure_folder(self, mailbox_id: int, name: str) -> FolderState: ...

    def folder_states(self, mailbox_id: int) -> dict[str, FolderState]: ...

    def stored_flags(self, folder_id: int, uidvalidity: int) -> dict[int, Flags]: ...

    def apply(self, changes: FolderChanges, now: dt.datetime) -> ApplyCounts: ...

    def reset_folder(self, folder_id: int, uidvalidity: int, now: dt.datetime) -> int: ...

    def mark_folder_vanished(self, folder_id: int, now: dt.datetime) -> int: ...


class RuntimeStore(Store, Protocol):
    """The database, as the runtime sees it."""

    def ensure_mailbox(self, address: str, tenant: str) -> int: ...


# -- tokens -----------------------------------------------------------------------------------
class TokenSource(Protocol):
    """Asks the identity platform for a new token (the MSAL adapter); raises token errors."""

    def acquire(self, tenant: str) -> AccessToken: ...


class TokenProvider(Protocol):
    """Gives the current token of a tenant; raises ``daemon.errors`` token errors."""

    def token(self, tenant: str) -> AccessToken: ...

    def report_expired(self, tenant: str, token: AccessToken) -> None:
        """The server rejected ``token`` as expired: renew it now."""


# -- the runtime ------------------------------------------------------------------------------
class Poller(Protocol):
    """Polls one mailbox (every folder) and remembers what it needs between polls."""

    def poll(
        self,
        mailbox: MailboxSettings,
        should_stop: Callable[[], bool],
        progress: Callable[[int], None],
    ) -> None:
        """One poll; raises the failure that ended it. Stops early when ``should_stop()``;
        ``progress(n)``: n new messages are still to fetch (0 when done)."""
        ...

    def forget(self, address: str) -> None:
        """The mailbox no longer runs here: close its session, drop what is cached."""
        ...


# -- time -------------------------------------------------------------------------------------
class Timer(Protocol):
    """Runs callables at given times on a bounded pool of worker threads."""

    def start(self) -> None: ...

    def stop(self, timeout: float) -> bool:
        """Stop firing and wait up to ``timeout`` s for running calls; True when all ended."""
        ...

    def call_at(self, key: str, when: float, func: Callable[[], None]) -> None:
        """Run ``func`` at epoch ``when`` (replacing what ``key`` had pending)."""
        ...

    def cancel(self, key: str) -> None: ...

    def every(self, key: str, seconds: float, func: Callable[[], None]) -> None: ...

    @property
    def running(self) -> bool: ...
