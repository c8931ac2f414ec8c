"""The schedule: one APScheduler date job per mailbox, re-armed when its poll ends.

Re-arming after the poll (instead of a fixed interval trigger) gives three guarantees at once:
polls of one mailbox never overlap, a failing mailbox waits its backoff instead of its
interval, and the cadence of a healthy mailbox stays on its due times. The thread pool bounds
global concurrency; a count per tenant bounds each tenant's share, and a mailbox over its
tenant's bound waits in a first-come-first-served line instead of blocking a worker thread.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from daemon.backoff import auth_retry_delay, backoff_delay, next_interval
from daemon.config import MailboxSettings
from daemon.errors import PermanentError, TokenExpiredOnServer
from daemon.metrics import Metrics
from daemon.poller import error_fields

HOUSEKEEPING_SECONDS = 5.0
FIRST_POLL_SPREAD_MAX = 60.0
"""First polls spread over min(interval, this) so a restart does not poll everything at once."""

STATES = ("ok", "backoff", "auth_failed", "disabled")
AUTH_REASONS = frozenset({"auth", "token"})


@dataclass
class MailboxRuntime:
    settings: MailboxSettings
    state: str = "ok"
    failures: int = 0
    last_success: float | None = None
    due: float = 0.0
    last_failure_key: tuple[str, str] | None = None
    has_slot: bool = False
    """A finishing poll of the same tenant handed its concurrency slot to this mailbox."""
    running: bool = False
    waiting: bool = False
    """In its tenant's line for a concurrency slot."""


class PollScheduler:
    """Owns the APScheduler instance and every mailbox's runtime state."""

    def __init__(
        self,
        mailboxes: Sequence[MailboxSettings],
        poll: Callable[[MailboxSettings], None],
        *,
        metrics: Metrics,
        log: Any,
        max_concurrent: int,
        max_per_tenant: int,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._poll = poll
        self._metrics = metrics
        self._log = log
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._runtime = {m.address: MailboxRuntime(m) for m in mailboxes}
        self._max_per_tenant = max_per_tenant
        self._active: Counter[str] = Counter()
        self._waiting: defaultdict[str, deque[MailboxRuntime]] = defaultdict(deque)
        self._token_parked: defaultdict[str, set[str]] = defaultdict(set)
        self._wakes: Counter[str] = Counter()
        """Per tenant: how often a token came back (a poll failing meanwhile is not parked)."""
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=max_concurrent)},
            # Two instances: the job re-arms itself (same id) just before it returns, and a poll
            # that is already due must not be skipped as "still running". Polls cannot overlap
            # anyway: the next one is scheduled only when the previous one is done.
            job_defaults={"coalesce": True, "max_instances": 2, "misfire_grace_time": None},
            timezone=dt.UTC,
        )
        self._stopping = threading.Event()
        self._started_at = clock()
        self._heartbeat = time.monotonic()
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        now = self._clock()
        for runtime in self._runtime.values():
            if not runtime.settings.enabled:
                runtime.state = "disabled"  # never armed: `enabled: false` in the config
                continue
            spread = min(runtime.settings.poll_interval, FIRST_POLL_SPREAD_MAX)
            runtime.due = now + self._rng.uniform(0, spread * 0.5)
            self._arm(runtime)
        self._scheduler.add_job(
            self._housekeeping,
            "interval",
            seconds=HOUSEKEEPING_SECONDS,
            id="__housekeeping__",
            next_run_time=dt.datetime.now(dt.UTC),
        )
        self._scheduler.add_listener(self._on_lost, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        self._scheduler.start()

    def _on_lost(self, event: JobEvent) -> None:
        # A date job that APScheduler skipped would never run again: arm it once more.
        runtime = self._runtime.get(event.job_id)
        if runtime is not None:
            self._log.warning("poll skipped by the scheduler; re-armed", mailbox=event.job_id)
            runtime.due = self._clock() + 1.0
            self._arm(runtime)

    def stop(self, timeout: float = 8.0) -> bool:
        """Stop scheduling and wait up to ``timeout`` s for running polls; idempotent."""
        self._stopping.set()
        if not self._scheduler.running:
            return True
        done = threading.Event()

        def shutdown() -> None:
            try:
                self._scheduler.shutdown(wait=True)
            finally:
                done.set()

        threading.Thread(target=shutdown, name="scheduler-shutdown", daemon=True).start()
        return done.wait(timeout)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def alive(self) -> bool:
        """The scheduler loop runs and its housekeeping job ran recently."""
        return (
            self._scheduler.running
            and time.monotonic() - self._heartbeat < HOUSEKEEPING_SECONDS * 6
        )

    def states(self) -> Counter[str]:
        with self._lock:
            return Counter(r.state for r in self._runtime.values())

    # -- jobs -----------------------------------------------------------------------------
    def _arm(self, runtime: MailboxRuntime) -> None:
        if self._stopping.is_set():
            return
        self._scheduler.add_job(
            self._run,
            "date",
            run_date=dt.datetime.fromtimestamp(runtime.due, dt.UTC),
            args=[runtime.settings.address],
            id=runtime.settings.address,
            replace_existing=True,
        )

    def _run(self, address: str) -> None:
        runtime = self._runtime[address]
        tenant = runtime.settings.tenant
        with self._lock:
            if self._stopping.is_set() or runtime.running:
                return  # a running poll re-arms its mailbox itself when it ends
            if not runtime.has_slot:
                if runtime.waiting:
                    return  # already in line
                if self._active[tenant] >= self._max_per_tenant:
                    # Wait in line without holding a worker thread; a finishing poll of this
                    # tenant hands its slot over (first come, first served).
                    runtime.waiting = True
                    self._waiting[tenant].append(runtime)
                    return
                self._active[tenant] += 1
            runtime.has_slot = runtime.waiting = False
            runtime.running = True
        try:
            started = self._clock()
            self._metrics.schedule_delay(max(0.0, started - runtime.due))
            wakes = self._wakes[tenant]
            try:
                self._poll(runtime.settings)
            except Exception as exc:  # noqa: BLE001 - every failure is classified and retried
                self._failed(runtime, exc, woken=self._wakes[tenant] != wakes)
            else:
                self._succeeded(runtime)
        finally:
            with self._lock:
                runtime.running = False
                heir = self._waiting[tenant].popleft() if self._waiting[tenant] else None
                if heir is None:
                    self._active[tenant] -= 1
                else:
                    heir.has_slot = True
            self._arm(runtime)
            if heir is not None:
                self._arm(heir)

    def wake_tenant(self, tenant: str) -> None:
        """The tenant has a token again: poll its mailboxes that failed for lack of one now.

        Spread over up to 2 s so the IMAP server is not hit by every mailbox at once.
        """
        with self._lock:
            self._wakes[tenant] += 1
            parked = [
                runtime
                for runtime in map(self._runtime.__getitem__, self._token_parked.pop(tenant, ()))
                if not (runtime.running or runtime.waiting)
            ]
        now = self._clock()
        for runtime in parked:
            spread = min(runtime.settings.poll_interval, 2.0)
            runtime.due = min(runtime.due, now + self._rng.uniform(0, spread))
            self._arm(runtime)
        if parked:
            self._log.info("token available again; polling", tenant=tenant, mailboxes=len(parked))

    def _succeeded(self, runtime: MailboxRuntime) -> None:
        now = self._clock()
        interval = runtime.settings.poll_interval
        if runtime.state != "ok":
            self._log.info(
                "mailbox recovered",
                mailbox=runtime.settings.address,
                tenant=runtime.settings.tenant,
                previous_state=runtime.state,
                failures=runtime.failures,
            )
        with self._lock:
            runtime.state, runtime.failures, runtime.last_success = "ok", 0, now
            runtime.last_failure_key = None
        due = runtime.due + next_interval(interval, self._rng)
        runtime.due = max(due, now)

    def _failed(self, runtime: MailboxRuntime, exc: Exception, *, woken: bool = False) -> None:
        now = self._clock()
        fields = error_fields(exc)
        reason = fields["reason"]
        interval = runtime.settings.poll_interval
        permanent_auth = isinstance(exc, PermanentError) and reason in AUTH_REASONS
        with self._lock:
            runtime.failures += 1
            runtime.state = "auth_failed" if permanent_auth else "backoff"
        if permanent_auth:
            delay = auth_retry_delay(interval, self._rng)
        elif isinstance(exc, TokenExpiredOnServer) and runtime.failures == 1:
            delay = 0.5  # the server's clock ran out before ours: retry at once, new token
        else:
            delay = backoff_delay(
                interval, runtime.failures, self._rng, retry_after=getattr(exc, "retry_after", None)
            )
        if reason == "token":
            if woken:
                # The token came back while this poll was failing: do not wait for a wake-up
                # that has already happened.
                delay = self._rng.uniform(0, min(interval, 2.0))
            else:
                # Woken by wake_tenant() as soon as the tenant has a token again.
                with self._lock:
                    self._token_parked[runtime.settings.tenant].add(runtime.settings.address)
        runtime.due = now + delay
        key = (type(exc).__name__, str(exc))
        # The same failure again is worth a debug line, not another warning.
        log = self._log.warning if key != runtime.last_failure_key else self._log.debug
        runtime.last_failure_key = key
        log(
            "mailbox poll failed",
            mailbox=runtime.settings.address,
            tenant=runtime.settings.tenant,
            state=runtime.state,
            failures=runtime.failures,
            retry_in_s=round(delay, 1),
            exc_info=reason == "other" and not isinstance(exc, PermanentError),
            **fields,
        )

    def _housekeeping(self) -> None:
        self._heartbeat = time.monotonic()
        with self._lock:
            counts = Counter(r.state for r in self._runtime.values())
            oldest = min(
                (
                    r.last_success or self._started_at
                    for r in self._runtime.values()
                    if r.state != "disabled"
                ),
                default=None,
            )
        self._metrics.set_mailbox_states({s: counts.get(s, 0) for s in STATES})
        self._metrics.set_oldest_success(oldest)
