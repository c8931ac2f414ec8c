"""The runtime: the set of mailboxes this process polls, changed by one ``reconcile`` step.

    config / leases ──reconcile(mailboxes)──▶ Runtime ──timer──▶ _on_due ──▶ Poller.poll
                                               │  ▲                            │
                                               │  └──── outcome: schedule.succeeded/failed
                                               └─ TenantLimiter (slots per tenant, FIFO)

``reconcile`` compares the wanted mailboxes with the running ones: added mailboxes get their
first poll (spread over half of min(interval, 60 s)), removed ones are cancelled, drained (a
running poll stops at its next batch boundary) and their sessions closed, changed ones run
with their new settings from the next poll on, keeping their schedule state. Start-up is just
the first reconcile; config reload and replica leases are later ones.

Every field of a mailbox's runtime entry is written under one lock. When a poll is due the
timer runs ``_on_due`` on one of its worker threads (which bounds global concurrency); a
mailbox over its tenant's bound waits in the limiter's line without holding a thread, and the
finishing poll of that tenant hands its slot over.
"""

from __future__ import annotations

import datetime as dt
import functools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Final

from daemon.config import MailboxSettings
from daemon.errors import (
    MailsyncError,
    PermanentError,
    Reason,
    TokenExpiredOnServer,
    error_fields,
    reason_of,
)
from daemon.logging import Logger
from daemon.metrics import Metrics
from daemon.ports import Clock, Jitter, Poller, Timer
from daemon.runtime.limiter import TenantLimiter
from daemon.status import MailboxStatus
from daemon.sync import schedule
from daemon.sync.schedule import STATES, Failure, MailboxState, Schedule

HOUSEKEEPING_SECONDS: Final = 5.0
"""Also how often changed mailbox statuses are saved, in one transaction."""
HOUSEKEEPING_KEY: Final = "__housekeeping__"


@dataclass
class _Mailbox:
    settings: MailboxSettings
    schedule: Schedule
    running: bool = False
    waiting: bool = False
    """In its tenant's line for a slot."""
    has_slot: bool = False
    """A finishing poll of the same tenant handed its slot to this mailbox."""
    removed: bool = False
    """No longer wanted; a running poll drains and the entry goes when it ends."""
    last_failure_key: tuple[str, str] | None = None
    last_poll_at: float | None = None
    last_error: tuple[Reason, str, str | None] | None = None
    """reason, message, hint of the last failure; None after a success."""
    remaining: int = 0
    """New messages its current or last poll still had to fetch."""
    dirty: bool = True
    """Its status changed since it was last saved."""
    idle: bool = False
    """Its session waits in IMAP IDLE (push) since its last poll."""
    pushed: bool = False
    """The server reported news while its poll ran: it polls again at once."""

    def status(self, owner: str | None) -> MailboxStatus:
        error = self.last_error
        return MailboxStatus(
            mailbox=self.settings.address,
            tenant=self.settings.tenant,
            state="removed" if self.removed else self.schedule.state,
            owner=None if self.removed else owner,
            last_poll_at=_utc(self.last_poll_at),
            last_success_at=_utc(self.schedule.last_success),
            consecutive_failures=self.schedule.failures,
            last_error_reason=error[0] if error else None,
            last_error=error[1] if error else None,
            hint=error[2] if error else None,
            initial_sync_remaining=self.remaining,
            idle=self.idle and not self.removed,
        )


@dataclass(frozen=True)
class ReconcileResult:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()


class Runtime:
    """Owns every running mailbox's schedule; polls through ``poller`` on ``timer``."""

    def __init__(
        self,
        *,
        poller: Poller,
        timer: Timer,
        limiter: TenantLimiter,
        metrics: Metrics,
        log: Logger,
        clock: Clock,
        rng: Jitter,
        monotonic: Clock = time.monotonic,
        owner: str | None = None,
        save_statuses: Callable[[Sequence[MailboxStatus]], None] | None = None,
    ) -> None:
        self._poller = poller
        self._timer = timer
        self._limiter = limiter
        self._metrics = metrics
        self._log = log
        self._clock = clock
        self._rng = rng
        self._monotonic = monotonic
        self._owner = owner
        self._save_statuses = save_statuses
        self._gone: list[MailboxStatus] = []
        """Statuses of removed mailboxes not saved yet."""
        self._mailboxes: dict[str, _Mailbox] = {}
        self._wakes: Counter[str] = Counter()
        """Per tenant: how often its token came back (a poll failing meanwhile is not parked)."""
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._started_at = clock()
        self._heartbeat = monotonic()

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, mailboxes: Iterable[MailboxSettings]) -> ReconcileResult:
        """Start the timer and the first reconcile."""
        self._timer.start()
        result = self.reconcile(mailboxes)
        self._timer.every(HOUSEKEEPING_KEY, HOUSEKEEPING_SECONDS, self._housekeeping)
        return result

    def stop(self, timeout: float) -> bool:
        """Stop scheduling, wait up to ``timeout`` s for running polls; idempotent."""
        self._stopping.set()
        return self._timer.stop(timeout)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def alive(self) -> bool:
        """The timer runs and the housekeeping job ran recently."""
        fresh = self._monotonic() - self._heartbeat < HOUSEKEEPING_SECONDS * 6
        return self._timer.running and fresh

    def states(self) -> Counter[MailboxState]:
        with self._lock:
            return Counter(m.schedule.state for m in self._mailboxes.values() if not m.removed)

    # -- the seam: what runs here -------------------------------------------------------------
    def reconcile(
        self, wanted: Iterable[MailboxSettings], *, handed_over: Iterable[str] = ()
    ) -> ReconcileResult:
        """Make the running set equal ``wanted``: add, remove (drain), update settings.

        Mailboxes in ``handed_over`` leave because another replica runs them now, not because
        they were removed: no ``removed`` status is saved for them (their new owner saves one).
        """
        by_address = {m.address: m for m in wanted}
        moved = set(handed_over)
        added: list[str] = []
        removed: list[str] = []
        updated: list[str] = []
        forget: list[str] = []
        now = self._clock()
        with self._lock:
            for address, entry in list(self._mailboxes.items()):
                if address not in by_address and not entry.removed:
                    removed.append(address)
                    if self._remove(entry, record=address not in moved):
                        forget.append(address)
            for address, settings in by_address.items():
                known = self._mailboxes.get(address)
                if known is None:
                    self._add(settings, now)
                    added.append(address)
                elif known.removed:
                    # Removed and wanted again while its last poll drains: it continues.
                    known.removed = False
                    known.settings = settings
                    known.dirty = True
                    updated.append(address)
                elif known.settings != settings:
                    if self._update(known, settings, now):
                        forget.append(address)
                    updated.append(address)
        for address in forget:
            self._poller.forget(address)
        if added or removed or updated:
            self._log.info(
                "mailboxes reconciled",
                added=len(added),
                removed=len(removed),
                updated=len(updated),
                running=len(self._mailboxes),
            )
        return ReconcileResult(tuple(added), tuple(removed), tuple(updated))

    def _add(self, settings: MailboxSettings, now: float) -> None:
        entry = _Mailbox(
            settings,
            schedule.first(settings.poll_interval, now, self._rng, enabled=settings.enabled),
        )
        self._mailboxes[settings.address] = entry
        self._arm(entry)

    def _remove(self, entry: _Mailbox, *, record: bool = True) -> bool:
        """Stop the mailbox; True when it can be forgotten now (no poll running)."""
        entry.removed = True
        if record:
            self._gone.append(entry.status(None))
        address = entry.settings.address
        self._timer.cancel(address)
        if entry.waiting:
            self._limiter.withdraw(entry.settings.tenant, address)
            entry.waiting = False
        if entry.running:
            return False  # the poll drains and finishes the removal
        if entry.has_slot:
            self._pass_slot(entry.settings.tenant)
        del self._mailboxes[address]
        return True

    def _update(self, entry: _Mailbox, settings: MailboxSettings, now: float) -> bool:
        """New settings from the next poll on; True when its session must close (disabled)."""
        old = entry.settings
        entry.settings = settings
        entry.dirty = True
        if old.enabled and not settings.enabled:
            entry.schedule = schedule.first(settings.poll_interval, now, self._rng, enabled=False)
            self._timer.cancel(settings.address)
            return not entry.running
        if not old.enabled and settings.enabled:
            entry.schedule = schedule.first(settings.poll_interval, now, self._rng)
        elif settings.poll_interval < old.poll_interval and not entry.schedule.waits_for_token:
            # A shorter interval applies now, not after the old, longer wait.
            due = min(entry.schedule.due, now + settings.poll_interval)
            entry.schedule = replace(entry.schedule, due=due)
        if not entry.running:
            self._arm(entry)
        # Another tenant: the session (logged in for the old one) must go.
        return settings.tenant != old.tenant and not entry.running

    def set_tenant_limit(self, per_tenant: int) -> None:
        """``limits.max_concurrent_polls_per_tenant`` changed; a raised bound applies at once."""
        with self._lock:
            for tenant, addresses in self._limiter.set_limit(per_tenant).items():
                for address in addresses:
                    entry = self._mailboxes.get(address)
                    if entry is None or entry.removed:
                        self._pass_slot(tenant)
                        continue
                    entry.waiting = False
                    entry.has_slot = True
                    self._arm(entry)

    # -- polls --------------------------------------------------------------------------------
    def _arm(self, entry: _Mailbox) -> None:
        """Arm the mailbox's next poll at its due time; the caller holds the lock."""
        if self._stopping.is_set() or entry.removed or entry.schedule.state == "disabled":
            return
        address = entry.settings.address
        self._timer.call_at(address, entry.schedule.due, functools.partial(self._on_due, address))

    def _on_due(self, address: str) -> None:
        with self._lock:
            entry = self._mailboxes.get(address)
            if entry is None or entry.removed or entry.running or self._stopping.is_set():
                return  # a running poll re-arms its mailbox itself when it ends
            tenant = entry.settings.tenant
            if not entry.has_slot:
                if entry.waiting:
                    return
                if not self._limiter.acquire(tenant, address):
                    entry.waiting = True  # the finishing poll of this tenant hands its slot on
                    return
            entry.has_slot = entry.waiting = False
            entry.running = True
            settings, due, wakes = entry.settings, entry.schedule.due, self._wakes[tenant]
        self._metrics.schedule_delay(max(0.0, self._clock() - due))

        def should_stop() -> bool:
            return self._stopping.is_set() or entry.removed

        def progress(remaining: int) -> None:
            with self._lock:
                entry.remaining = remaining
                entry.dirty = True

        failure: Exception | None = None
        try:
            self._poller.poll(settings, should_stop, progress)
        except Exception as exc:  # noqa: BLE001 - every failure is classified and retried
            failure = exc
        self._finished(entry, settings, failure, woken=self._wakes[tenant] != wakes)

    def _finished(
        self,
        entry: _Mailbox,
        settings: MailboxSettings,
        exc: Exception | None,
        *,
        woken: bool,
    ) -> None:
        now = self._clock()
        address, tenant = settings.address, settings.tenant
        previous = entry.schedule
        with self._lock:
            entry.running = False
            pushed, entry.pushed = entry.pushed, False
            entry.last_poll_at = now
            entry.dirty = True
            if exc is None:
                entry.last_error = None
            else:
                fields = error_fields(exc)
                entry.last_error = (
                    reason_of(exc),
                    str(fields["error"]),
                    str(fields["hint"]) if "hint" in fields else None,
                )
            self._pass_slot(tenant)
            if entry.removed:
                self._mailboxes.pop(address, None)
            elif exc is None:
                entry.schedule = schedule.succeeded(
                    previous, entry.settings.poll_interval, now, self._rng
                )
                entry.last_failure_key = None
                if pushed:  # news came while it polled: once more, now
                    entry.schedule = replace(entry.schedule, due=now)
            else:
                entry.schedule = schedule.failed(
                    previous, _failure(exc, woken), entry.settings.poll_interval, now, self._rng
                )
            if not entry.settings.enabled:  # disabled while this poll ran
                entry.schedule = schedule.first(0.0, now, self._rng, enabled=False)
            self._arm(entry)
            key = (type(exc).__name__, str(exc)) if exc is not None else None
            repeated = key is not None and key == entry.last_failure_key
            if key is not None:
                entry.last_failure_key = key
            current = entry.schedule
            gone = entry.removed or (not entry.settings.enabled) or entry.settings.tenant != tenant
        if gone:
            self._poller.forget(address)
        if entry.removed:
            return
        if exc is None:
            if previous.state != "ok":
                self._log.info(
                    "mailbox recovered",
                    mailbox=address,
                    tenant=tenant,
                    previous_state=previous.state,
                    failures=previous.failures,
                )
            return
        # The same failure again is worth a debug line, not another warning.
        log = self._log.debug if repeated else self._log.warning
        fields = error_fields(exc)
        log(
            "mailbox poll failed",
            mailbox=address,
            tenant=tenant,
            state=current.state,
            failures=current.failures,
            retry_in_s=round(max(0.0, current.due - now), 1),
            exc_info=fields["reason"] == "other" and not isinstance(exc, PermanentError),
            **fields,
        )

    def _pass_slot(self, tenant: str) -> None:
        """Give a tenant slot to the first live mailbox in line; the caller holds the lock."""
        while (heir_address := self._limiter.release(tenant)) is not None:
            heir = self._mailboxes.get(heir_address)
            if heir is None or heir.removed or heir.schedule.state == "disabled":
                continue  # it left the line's mailbox set: pass the slot further
            heir.waiting = False
            heir.has_slot = True
            self._arm(heir)
            return

    def push(self, address: str) -> None:
        """The server reported news on the mailbox's session in IDLE: poll it now.

        A mailbox whose poll is running polls again at once when it is done; one waiting for
        its tenant's slot polls when it has one; one that is failing keeps its backoff.
        """
        now = self._clock()
        with self._lock:
            entry = self._mailboxes.get(address)
            if entry is None or entry.removed or entry.schedule.state != "ok":
                return
            if entry.running:
                entry.pushed = True
                return
            if entry.waiting or entry.has_slot:
                return  # its poll starts as soon as its tenant has a slot
            entry.schedule = replace(entry.schedule, due=min(entry.schedule.due, now))
            self._arm(entry)

    def set_idle(self, address: str, idle: bool) -> None:
        """Whether the mailbox's session waits in IDLE (its status and the gauge show it)."""
        with self._lock:
            entry = self._mailboxes.get(address)
            if entry is not None and entry.idle != idle:
                entry.idle = idle
                entry.dirty = True

    def wake_tenant(self, tenant: str) -> None:
        """The tenant has a token again: mailboxes that failed for lack of one poll within 2 s."""
        now = self._clock()
        woken = 0
        with self._lock:
            self._wakes[tenant] += 1
            for entry in self._mailboxes.values():
                if (
                    entry.settings.tenant != tenant
                    or not entry.schedule.waits_for_token
                    or entry.running
                    or entry.waiting
                ):
                    continue
                entry.schedule = schedule.token_returned(
                    entry.schedule, entry.settings.poll_interval, now, self._rng
                )
                self._arm(entry)
                woken += 1
        if woken:
            self._log.info("token available again; polling", tenant=tenant, mailboxes=woken)

    # -- status -------------------------------------------------------------------------------
    def statuses(self) -> list[MailboxStatus]:
        """The status of every mailbox running here (``/status``)."""
        with self._lock:
            live = [m for m in self._mailboxes.values() if not m.removed]
            return [m.status(self._owner) for m in sorted(live, key=lambda m: m.settings.address)]

    def save_statuses(self) -> None:
        """Save the statuses that changed since the last save, in one transaction."""
        if self._save_statuses is None:
            return
        with self._lock:
            changed = [m for m in self._mailboxes.values() if m.dirty and not m.removed]
            rows = [*self._gone, *(m.status(self._owner) for m in changed)]
            gone, self._gone = self._gone, []
            for entry in changed:
                entry.dirty = False
        if not rows:
            return
        try:
            self._save_statuses(rows)
        except MailsyncError as exc:
            with self._lock:  # saved with the next batch
                self._gone[:0] = gone
                for entry in changed:
                    entry.dirty = True
            self._log.debug("mailbox statuses not saved; retried", **error_fields(exc))

    # -- housekeeping -------------------------------------------------------------------------
    def _housekeeping(self) -> None:
        self._heartbeat = self._monotonic()
        self.save_statuses()
        with self._lock:
            live = [m for m in self._mailboxes.values() if not m.removed]
            counts = Counter((m.settings.tenant, m.schedule.state) for m in live)
            owned = Counter(m.settings.tenant for m in live if m.settings.enabled)
            remaining = Counter[str]()
            idle = Counter[str]()
            for m in live:
                remaining[m.settings.tenant] += m.remaining
                idle[m.settings.tenant] += m.idle
            oldest: dict[str, float] = {}  # per tenant: its stalest mailbox
            for m in live:
                if m.schedule.state != "disabled":
                    since = m.schedule.last_success or self._started_at
                    oldest[m.settings.tenant] = min(since, oldest.get(m.settings.tenant, since))
        tenants = {tenant for tenant, _ in counts}
        self._metrics.set_mailbox_states({(t, s): counts[t, s] for t in tenants for s in STATES})
        self._metrics.set_mailboxes_owned(owned)
        self._metrics.set_initial_sync_remaining(remaining)
        self._metrics.set_idle_sessions(idle)
        self._metrics.set_oldest_success(oldest)


def _failure(exc: Exception, token_returned: bool) -> Failure:
    if isinstance(exc, MailsyncError):
        return Failure(
            reason=exc.reason,
            permanent=isinstance(exc, PermanentError),
            retry_after=exc.retry_after,
            token_expired_on_server=isinstance(exc, TokenExpiredOnServer),
            token_returned=token_returned,
        )
    return Failure(reason="other", token_returned=token_returned)


def _utc(epoch: float | None) -> dt.datetime | None:
    return None if epoch is None else dt.datetime.fromtimestamp(epoch, dt.UTC)
