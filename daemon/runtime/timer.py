"""The ``Timer`` port on APScheduler 3: one date job per key, run on a bounded thread pool.

Jobs are one-shot date jobs re-armed by the runtime when a poll ends (rather than interval
triggers), which is what keeps polls of one mailbox from overlapping and lets a failing
mailbox wait its backoff instead of its interval. APScheduler drops a date job it considers
missed or still running; the adapter re-arms such a job a second later so no mailbox is lost.

Adding a job wakes the scheduler thread only when the job is due before the scheduler's next
planned wake-up (``_LazyScheduler``): a poll that re-arms itself an interval ahead does not, which
saves a thread switch per poll. (Rounding due times up to a 0.1 s tick, so that polls due
together share a wake-up, saved a further fifth of the CPU in ``make bench-steady`` but tripled
the mean poll duration: the polls of a tick then wait for each other's share of the GIL.)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger

from daemon.logging import Logger

REARM_DELAY: Final = 1.0


class _LazyScheduler(BackgroundScheduler):  # type: ignore[misc]
    """A BackgroundScheduler that is not woken for a job due after its next planned wake-up.

    ``_planned`` is the epoch time of the next wake-up, or None while unknown (a round runs,
    or nothing is scheduled): then every added job wakes the scheduler, as upstream does.
    ``add_due`` checks it and adds the job under the job stores' lock, which the scheduler's
    round holds while it reads the due jobs and the next run time: a job added before that
    section is seen by the round, one added after it finds the new plan or None.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._planned: float | None = None
        self._quiet = threading.local()
        """``quiet`` on the thread in ``add_due`` when its job needs no wake-up."""
        self.wakeups = 0
        """Wake-ups requested (for tests)."""

    def add_due(self, when: float, **job: Any) -> None:
        """``add_job`` for a job first due at epoch ``when``; wakes only when needed."""
        with self._jobstores_lock:
            planned = self._planned
            self._quiet.quiet = planned is not None and when >= planned
            try:
                self.add_job(**job)
            finally:
                self._quiet.quiet = False

    def wakeup(self) -> None:
        if getattr(self._quiet, "quiet", False):
            return
        self.wakeups += 1
        super().wakeup()

    def _process_jobs(self) -> float | None:
        self._planned = None
        wait: float | None = super()._process_jobs()
        # Taken after the round, so it is never later than the real wake-up.
        self._planned = None if wait is None else time.time() + wait
        return wait


class ApschedulerTimer:
    """``daemon.ports.Timer`` with APScheduler's BackgroundScheduler."""

    def __init__(self, *, workers: int, log: Logger) -> None:
        self._log = log
        self._scheduler = _LazyScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=workers)},
            # Two instances: a job re-arms itself (same id) just before it returns, and a call
            # that is already due must not be skipped as "still running".
            job_defaults={"coalesce": True, "max_instances": 2, "misfire_grace_time": None},
            timezone=dt.UTC,
        )
        self._pending: dict[str, Callable[[], None]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._scheduler.add_listener(self._on_lost, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)

    def start(self) -> None:
        self._scheduler.start()

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running) and not self._stopping.is_set()

    def stop(self, timeout: float) -> bool:
        """Stop firing; wait up to ``timeout`` s for running calls. Idempotent."""
        self._stopping.set()
        if not self._scheduler.running:
            return True
        done = threading.Event()

        def shutdown() -> None:
            try:
                self._scheduler.shutdown(wait=True)
            finally:
                done.set()

        threading.Thread(target=shutdown, name="timer-shutdown", daemon=True).start()
        return done.wait(timeout)

    def call_at(self, key: str, when: float, func: Callable[[], None]) -> None:
        if self._stopping.is_set():
            return
        with self._lock:
            self._pending[key] = func
        self._scheduler.add_due(
            when,
            func=self._fire,
            trigger=DateTrigger(run_date=dt.datetime.fromtimestamp(when, dt.UTC)),
            args=[key, func],
            id=key,
            replace_existing=True,
        )

    def cancel(self, key: str) -> None:
        with self._lock:
            self._pending.pop(key, None)
        with contextlib.suppress(JobLookupError):  # already run, or never armed
            self._scheduler.remove_job(key)

    def every(self, key: str, seconds: float, func: Callable[[], None]) -> None:
        self._scheduler.add_job(
            func,
            "interval",
            seconds=seconds,
            id=key,
            replace_existing=True,
            next_run_time=dt.datetime.now(dt.UTC),
        )

    def _fire(self, key: str, func: Callable[[], None]) -> None:
        with self._lock:
            if self._pending.get(key) is func:
                del self._pending[key]
        func()

    def _on_lost(self, event: JobEvent) -> None:
        # A date job that APScheduler skipped would never run again: arm it once more.
        with self._lock:
            func = self._pending.get(event.job_id)
        if func is not None and not self._stopping.is_set():
            self._log.warning("poll skipped by the scheduler; re-armed", mailbox=event.job_id)
            self.call_at(
                event.job_id,
                dt.datetime.now(dt.UTC).timestamp() + REARM_DELAY,
                func,
            )
