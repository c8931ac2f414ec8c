"""One poll of one mailbox: token, IMAP login, every configured folder, logs and metrics."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from daemon.auth import TokenProvider
from daemon.config import MailboxSettings, Tenant
from daemon.errors import TokenExpiredOnServer
from daemon.metrics import Metrics
from daemon.sync.engine import FolderJob, FolderResult, MailboxSync
from daemon.sync.model import FolderChanges, FolderState
from daemon.sync.ports import ApplyCounts, MailboxClient, Store


class Session(MailboxClient, Protocol):
    """A mailbox client that can also log in and out (the IMAP adapter)."""

    def login_xoauth2(self, user: str, token: str) -> None: ...

    def logout(self) -> None: ...


class PollStore(Store, Protocol):
    def ensure_mailbox(self, address: str, tenant: str) -> int: ...


class _TimedStore:
    """The store with every write transaction timed into ``mailsyncd_db_write_duration``."""

    def __init__(self, store: PollStore, metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def apply(self, changes: FolderChanges, now: dt.datetime) -> ApplyCounts:
        with self._metrics.time_db_write():
            return self._store.apply(changes, now)

    def reset_folder(self, folder_id: int, uidvalidity: int, now: dt.datetime) -> int:
        with self._metrics.time_db_write():
            return self._store.reset_folder(folder_id, uidvalidity, now)

    def mark_folder_vanished(self, folder_id: int, now: dt.datetime) -> int:
        with self._metrics.time_db_write():
            return self._store.mark_folder_vanished(folder_id, now)


Connector = Callable[[Tenant], Session]


def error_fields(exc: BaseException) -> dict[str, Any]:
    """The log fields of a failure: reason, error, and hint where known."""
    fields: dict[str, Any] = {
        "reason": getattr(exc, "reason", "other"),
        "error": str(exc) or type(exc).__name__,
        "error_type": type(exc).__name__,
    }
    hint = getattr(exc, "hint", None)
    if hint:
        fields["hint"] = hint
    return fields


class Poller:
    """Runs polls; shared by every worker thread, holds no per-poll state."""

    def __init__(
        self,
        *,
        tenants: Mapping[str, Tenant],
        store: PollStore,
        tokens: TokenProvider,
        connect: Connector,
        metrics: Metrics,
        log: Any,
        batch_size: int,
        should_stop: Callable[[], bool],
    ) -> None:
        self._tenants = tenants
        self._store = store
        self._tokens = tokens
        self._connect = connect
        self._metrics = metrics
        self._log = log
        timed: Store = _TimedStore(store, metrics)
        self._sync = MailboxSync(timed, batch_size=batch_size, should_stop=should_stop)
        self._mailbox_ids: dict[str, int] = {}
        self._missing: set[tuple[str, str]] = set()
        self._missing_lock = threading.Lock()

    def poll(self, mailbox: MailboxSettings) -> None:
        """Poll every folder of ``mailbox``; raises the failure that ended the poll."""
        tenant = self._tenants[mailbox.tenant]
        started = time.monotonic()
        try:
            with self._metrics.track_poll(tenant.name):
                self._poll(mailbox, tenant)
        except BaseException as exc:
            self._metrics.poll_finished(
                tenant.name, "failure", time.monotonic() - started, getattr(exc, "reason", "other")
            )
            raise
        self._metrics.poll_finished(tenant.name, "success", time.monotonic() - started)

    def _poll(self, mailbox: MailboxSettings, tenant: Tenant) -> None:
        mailbox_id = self._mailbox_ids.get(mailbox.address)
        if mailbox_id is None:
            mailbox_id = self._store.ensure_mailbox(mailbox.address, mailbox.tenant)
            self._mailbox_ids[mailbox.address] = mailbox_id
        token = self._tokens.token(tenant.name)
        session = self._connect(tenant)
        try:
            try:
                session.login_xoauth2(mailbox.address, token.value)
            except BaseException:
                self._metrics.imap_login(tenant.name, ok=False)
                raise
            self._metrics.imap_login(tenant.name, ok=True)
            states = self._store.folder_states(mailbox_id)
            self._sync_folders(mailbox, mailbox_id, session, states)
        except TokenExpiredOnServer:
            self._tokens.report_expired(tenant.name, token)
            raise
        finally:
            session.logout()

    def _sync_folders(
        self,
        mailbox: MailboxSettings,
        mailbox_id: int,
        session: Session,
        states: Mapping[str, FolderState],
    ) -> None:
        for folder in mailbox.folders:
            job = FolderJob(mailbox_id, folder, mailbox.full_scan_interval, mailbox.backfill_days)
            result = FolderResult(folder)
            try:
                self._sync.sync_folder(session, job, states.get(folder), result)
            except BaseException as exc:
                # Batches committed before the failure still count.
                result.outcome = "failure"
                self._record(mailbox, result, exc)
                raise
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
        with self._missing_lock:
            if result.outcome in ("missing", "skipped"):
                self._missing.add(key)
            elif result.outcome == "success":
                self._missing.discard(key)
            count = len(self._missing)
        self._metrics.set_folders_missing(count)

    def _log_folder(
        self, mailbox: MailboxSettings, result: FolderResult, exc: BaseException | None
    ) -> None:
        fields: dict[str, Any] = {
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
