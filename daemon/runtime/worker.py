"""One poll of one mailbox: its session from the pool, every configured folder, logs and metrics.

A poll that finds its idle session closed (by the server, by the network, or by a token that
ran out on the server's clock) before any command completed gets a fresh session and runs
again: that is not a failed poll and not counted as one. A session that fails during a poll is
discarded; one that survives goes back to the pool for the mailbox's next poll.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from daemon.config import MailboxSettings
from daemon.errors import (
    DatabaseError,
    ImapConnectionError,
    ImapTimeout,
    MailsyncError,
    TokenExpiredOnServer,
    error_fields,
    reason_of,
)
from daemon.imap.pool import PooledSession, SessionPool, latest_switch
from daemon.logging import Logger
from daemon.metrics import Metrics
from daemon.ports import Clock, RuntimeStore, Store, TokenProvider
from daemon.runtime.push import Push
from daemon.sync.engine import FolderJob, FolderResult, MailboxSync
from daemon.sync.model import FolderState

STALE: tuple[type[MailsyncError], ...] = (ImapConnectionError, ImapTimeout, TokenExpiredOnServer)
"""What a session that died while idle fails with on its first command."""
KEEPS_SESSION: tuple[type[MailsyncError], ...] = (DatabaseError,)
"""Failures that leave the IMAP session as good as it was: it goes back to the pool."""


class MailboxWorker:
    """Runs polls; shared by every worker thread, holds no per-poll state."""

    def __init__(
        self,
        *,
        store: RuntimeStore,
        tokens: TokenProvider,
        sessions: SessionPool,
        metrics: Metrics,
        log: Logger,
        batch_size: int,
        clock: Clock = time.time,
        store_for: Callable[[str], Store] | None = None,
        push: Push | None = None,
    ) -> None:
        """``store_for(address)``: the store a poll of that mailbox writes through (replicas
        with leases fence every write with the mailbox's lease); ``store`` when None.
        ``push``: IDLE between polls for the mailboxes that want it."""
        self._push = push
        self._store = store
        self._store_for = store_for
        self._batch_size = batch_size
        self._tokens = tokens
        self._sessions = sessions
        self._metrics = metrics
        self._log = log
        self._clock = clock
        self._sync = MailboxSync(store, batch_size=batch_size)
        self._mailbox_ids: dict[str, int] = {}
        self._states: dict[str, Mapping[str, FolderState]] = {}
        self._missing: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def poll(
        self,
        mailbox: MailboxSettings,
        should_stop: Callable[[], bool],
        progress: Callable[[int], None] = lambda _remaining: None,
    ) -> None:
        """Poll every folder of ``mailbox``; raises the failure that ended the poll."""
        started = time.monotonic()
        try:
            with self._metrics.track_poll(mailbox.tenant):
                report = _Progress(progress, log=self._log, mailbox=mailbox.address)
                self._poll(mailbox, should_stop, report)
        except BaseException as exc:
            self._metrics.poll_finished(
                mailbox.tenant, "failure", time.monotonic() - started, reason_of(exc)
            )
            if self._push is not None:
                self._push.failed(mailbox.address)
            raise
        self._metrics.poll_finished(mailbox.tenant, "success", time.monotonic() - started)

    def set_batch_size(self, batch_size: int) -> None:
        """``limits.fetch_batch_size`` changed: polls that start from now on use it."""
        self._batch_size = batch_size
        self._sync = MailboxSync(self._store, batch_size=batch_size)

    def forget(self, address: str) -> None:
        """The mailbox no longer runs here: close its session, drop what is remembered of it."""
        self._sessions.close_mailbox(address)
        if self._push is not None:
            self._push.forget(address)
        with self._lock:
            self._mailbox_ids.pop(address, None)
            self._states.pop(address, None)
            gone = {key for key in self._missing if key[0] == address}
            self._missing -= gone
            count = len(self._missing)
        self._metrics.set_folders_missing(count)

    def _poll(
        self, mailbox: MailboxSettings, should_stop: Callable[[], bool], progress: _Progress
    ) -> None:
        mailbox_id = self._mailbox_id(mailbox)
        while True:
            token = self._tokens.token(mailbox.tenant)
            pooled = self._sessions.checkout(mailbox.address, mailbox.tenant, token)

            def token_ending(tenant: str = mailbox.tenant, used: PooledSession = pooled) -> bool:
                return self._token_ending(tenant, used)

            pooled = self._sync_session(
                mailbox, mailbox_id, pooled, lambda: should_stop() or token_ending(), progress
            )
            stopping = should_stop()
            if stopping or not token_ending():
                if stopping or self._push is None or self._push.rest(mailbox, pooled):
                    self._sessions.checkin(pooled)
                else:
                    self._sessions.discard(pooled)
                return
            self._sessions.checkin(pooled)
            # A long poll (an initial sync) reached the end of its session's token: it goes on
            # from its last checkpoint on a session logged in with the newer token.
            self._log.debug(
                "token of the session ends during the poll; continuing on a new session",
                mailbox=mailbox.address,
                tenant=mailbox.tenant,
            )

    def _token_ending(self, tenant: str, pooled: PooledSession) -> bool:
        """The session's token is near its end and a newer one exists."""
        if self._clock() < latest_switch(pooled.token):
            return False
        try:
            current = self._tokens.token(tenant)
        except MailsyncError:
            return False  # no newer token to move to: the session goes on while it lasts
        return current.expires_at > pooled.token.expires_at

    def _sync_session(
        self,
        mailbox: MailboxSettings,
        mailbox_id: int,
        pooled: PooledSession,
        should_stop: Callable[[], bool],
        progress: _Progress,
    ) -> PooledSession:
        """Sync every folder on ``pooled``; returns the session the poll ended on.

        On failure the session is discarded (or kept, for failures that leave it intact).
        """
        try:
            pooled = self._sync_with_retry(mailbox, mailbox_id, pooled, should_stop, progress)
        except TokenExpiredOnServer:
            self._sessions.discard(pooled)
            self._tokens.report_expired(mailbox.tenant, pooled.token)
            raise
        except KEEPS_SESSION:
            self._sessions.checkin(pooled)
            raise
        except BaseException:
            self._sessions.discard(pooled)
            raise
        return pooled

    def _sync_with_retry(
        self,
        mailbox: MailboxSettings,
        mailbox_id: int,
        pooled: PooledSession,
        should_stop: Callable[[], bool],
        progress: _Progress,
    ) -> PooledSession:
        states = self._folder_states(mailbox.address, mailbox_id)
        try:
            self._sync_folders(
                mailbox,
                mailbox_id,
                pooled,
                states=states,
                should_stop=should_stop,
                progress=progress,
            )
        except STALE as exc:
            if not (pooled.reused and pooled.untouched()):
                raise
            # Closed while it sat idle: a new session, and the poll runs as if nothing had
            # happened (nothing was committed: no command had completed).
            self._log.debug(
                "idle session was closed; polling on a new one",
                mailbox=mailbox.address,
                tenant=mailbox.tenant,
                **error_fields(exc),
            )
            self._sessions.discard(pooled)
            token = self._tokens.token(mailbox.tenant)
            if isinstance(exc, TokenExpiredOnServer) and token.value == pooled.token.value:
                self._tokens.report_expired(mailbox.tenant, token)
                token = self._tokens.token(mailbox.tenant)
            pooled = self._sessions.open(mailbox.address, mailbox.tenant, token)
            self._sync_folders(
                mailbox,
                mailbox_id,
                pooled,
                states=states,
                should_stop=should_stop,
                progress=progress,
            )
        return pooled

    def _folder_states(self, address: str, mailbox_id: int) -> Mapping[str, FolderState]:
        """The mailbox's folder states: from memory while no poll wrote, else from the store.

        Only this process writes a mailbox it runs (polls of a mailbox never overlap), so
        after a poll that wrote nothing the stored states are the ones read before it. This
        saves a database read on each unchanged poll, the commonest kind by far.
        """
        with self._lock:
            cached = self._states.get(address)
        if cached is not None:
            return cached
        states = self._store.folder_states(mailbox_id)
        with self._lock:
            self._states[address] = states
        return states

    def _drop_states(self, address: str) -> None:
        with self._lock:
            self._states.pop(address, None)

    def _mailbox_id(self, mailbox: MailboxSettings) -> int:
        with self._lock:
            known = self._mailbox_ids.get(mailbox.address)
        if known is not None:
            return known
        mailbox_id = self._store.ensure_mailbox(mailbox.address, mailbox.tenant)
        with self._lock:
            self._mailbox_ids[mailbox.address] = mailbox_id
        return mailbox_id

    def _sync_folders(
        self,
        mailbox: MailboxSettings,
        mailbox_id: int,
        pooled: PooledSession,
        *,
        states: Mapping[str, FolderState],
        should_stop: Callable[[], bool],
        progress: _Progress,
    ) -> None:
        sync = self._sync
        if self._store_for is not None:
            sync = MailboxSync(self._store_for(mailbox.address), batch_size=self._batch_size)
        for folder in mailbox.folders:
            job = FolderJob(mailbox_id, folder, mailbox.full_scan_interval, mailbox.backfill_days)
            result = FolderResult(folder)
            try:
                sync.sync_folder(
                    pooled.session,
                    job,
                    states.get(folder),
                    result,
                    should_stop=should_stop,
                    progress=progress.folder(folder),
                )
            except BaseException as exc:
                self._drop_states(mailbox.address)
                if isinstance(exc, STALE) and pooled.reused and pooled.untouched():
                    raise  # not a failed folder: the poll runs again on a new session
                # Batches committed before the failure still count.
                result.outcome = "failure"
                self._record(mailbox, result, exc)
                raise
            if result.wrote:
                self._drop_states(mailbox.address)
            self._record(mailbox, result, None)
            if result.outcome == "stopped":
                break

    def _record(
        self, mailbox: MailboxSettings, result: FolderResult, exc: BaseException | None
    ) -> None:
        self._metrics.messages_synced(mailbox.tenant, result.new, result.updated, result.deleted)
        self._note_missing(mailbox.address, result)
        for lag in result.lag_seconds:
            self._metrics.observe_sync_lag(mailbox.tenant, lag)
        self._log_folder(mailbox, result, exc)

    def _note_missing(self, address: str, result: FolderResult) -> None:
        key = (address, result.folder)
        with self._lock:
            if result.outcome in ("missing", "skipped"):
                self._missing.add(key)
            elif result.outcome == "success":
                self._missing.discard(key)
            count = len(self._missing)
        self._metrics.set_folders_missing(count)

    def _log_folder(
        self, mailbox: MailboxSettings, result: FolderResult, exc: BaseException | None
    ) -> None:
        fields: dict[str, object] = {
            "mailbox": mailbox.address,
            "tenant": mailbox.tenant,
            "folder": result.folder,
            "duration_s": round(result.duration, 4),
            "new": result.new,
            "updated": result.updated,
            "deleted": result.deleted,
            "outcome": result.outcome,
        }
        if exc is not None:
            self._log.warning("poll", **fields, **error_fields(exc))
        elif result.outcome == "missing":
            self._log.info(
                "poll",
                **fields,
                reason="protocol",
                hint="the folder does not exist on the server; it is checked again at each "
                "full scan interval (fix the mailbox's `folders` if it was renamed)",
            )
        elif result.changed or result.outcome not in ("success", "skipped"):
            self._log.info("poll", **fields)
        else:
            self._log.debug("poll", **fields)


PROGRESS_EVERY = 10.0
"""Seconds between two ``sync_progress`` events of one mailbox's long sync."""


class _Progress:
    """Sums what each folder of a poll still has to fetch into one figure for the mailbox,
    and logs ``sync_progress`` every ``every`` seconds while a folder's fetch runs longer."""

    def __init__(
        self,
        report: Callable[[int], None],
        *,
        log: Logger | None = None,
        mailbox: str = "",
        clock: Clock = time.monotonic,
        every: float = PROGRESS_EVERY,
    ) -> None:
        self._report = report
        self._left: dict[str, int] = {}
        self._log = log
        self._mailbox = mailbox
        self._clock = clock
        self._every = every
        self._started: dict[str, tuple[float, int]] = {}
        """Per folder: when its first figure came, and that figure."""
        self._last_event: float | None = None

    def folder(self, name: str) -> Callable[[int], None]:
        def update(remaining: int) -> None:
            if self._left.get(name, 0) != remaining:
                self._left[name] = remaining
                self._report(sum(self._left.values()))
            self._event(name, remaining)

        return update

    def _event(self, folder: str, remaining: int) -> None:
        now = self._clock()
        started, first = self._started.setdefault(folder, (now, remaining))
        if self._log is None or remaining == 0:
            return
        since = started if self._last_event is None else self._last_event
        if now - since < self._every:
            return
        self._last_event = now
        fetched, elapsed = first - remaining, now - started
        self._log.info(
            "sync_progress",
            mailbox=self._mailbox,
            folder=folder,
            fetched=fetched,
            remaining=remaining,
            rate_per_s=round(fetched / elapsed, 1) if elapsed > 0 else 0.0,
        )
