"""The ``Timer`` port on APScheduler 3: one date job per key, run on a bounded thread pool.

Jobs are one-shot date jobs re-armed by the runtime when a poll ends (rather than interval
triggers), which is what keeps polls of one mailbox from overlapping and lets a failing
mailbox wait its backoff instead of its interval. APScheduler drops a date job it considers
missed or still running; the adapter re-arms such a job a second later so no mailbox is lost.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Callable
from typing import Final

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from daemon.logging import Logger

REARM_DELAY: Final = 1.0


class ApschedulerTimer:
    """``daemon.ports.Timer`` with APScheduler's BackgroundScheduler."""

    def __init__(self, *, workers: int, log: Logger) -> None:
        self._log = log
        self._scheduler = BackgroundScheduler(
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
        self._scheduler.add_job(
            self._fire,
            "date",
            run_date=dt.datetime.fromtimestamp(when, dt.UTC),
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
