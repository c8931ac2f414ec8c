"""The real APScheduler schedule with a stand-in poll function: states, bounds, backoff."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from daemon.config import MailboxSettings
from daemon.errors import AuthFailed, ImapConnectionError
from daemon.logging import get_logger
from daemon.metrics import Metrics
from daemon.scheduler import PollScheduler
from support.daemon import wait_for


def _mailboxes(count: int, tenant: str = "contoso", interval: float = 1.0) -> list[MailboxSettings]:
    return [
        MailboxSettings(
            address=f"m{i}@{tenant}.test",
            tenant=tenant,
            folders=("INBOX",),
            poll_interval=interval,
            full_scan_interval=900,
            backfill_days=None,
        )
        for i in range(count)
    ]


@pytest.fixture
def make_scheduler() -> Callable[..., tuple[PollScheduler, Metrics]]:
    made: list[PollScheduler] = []

    def make(
        mailboxes: list[MailboxSettings],
        poll: Callable[[MailboxSettings], None],
        *,
        max_concurrent: int = 8,
        max_per_tenant: int = 8,
    ) -> tuple[PollScheduler, Metrics]:
        metrics = Metrics(CollectorRegistry(), sorted({m.tenant for m in mailboxes}))
        scheduler = PollScheduler(
            mailboxes,
            poll,
            metrics=metrics,
            log=get_logger("test"),
            max_concurrent=max_concurrent,
            max_per_tenant=max_per_tenant,
        )
        made.append(scheduler)
        return scheduler, metrics

    yield make
    for scheduler in made:
        assert scheduler.stop(timeout=10)


def test_polls_of_one_mailbox_never_overlap_and_tenant_concurrency_is_bounded(
    make_scheduler: Callable[..., tuple[PollScheduler, Metrics]],
) -> None:
    lock = threading.Lock()
    running: Counter[str] = Counter()
    peak_tenant = 0
    overlaps = 0
    polls: Counter[str] = Counter()

    def poll(mailbox: MailboxSettings) -> None:
        nonlocal peak_tenant, overlaps
        with lock:
            if running[mailbox.address]:
                overlaps += 1
            running[mailbox.address] += 1
            running[mailbox.tenant] += 1
            peak_tenant = max(peak_tenant, running[mailbox.tenant])
        time.sleep(0.3)  # a poll that outlasts a third of its interval
        with lock:
            running[mailbox.address] -= 1
            running[mailbox.tenant] -= 1
            polls[mailbox.address] += 1

    mailboxes = _mailboxes(12, interval=0.5)
    scheduler, _ = make_scheduler(mailboxes, poll, max_concurrent=8, max_per_tenant=3)
    scheduler.start()
    wait_for(
        lambda: min(polls[m.address] for m in mailboxes) >= 2,
        timeout=30,
        what="2 polls of every mailbox",
    )
    assert overlaps == 0
    assert peak_tenant == 3


def test_failures_back_off_auth_failures_park_and_success_recovers(
    make_scheduler: Callable[..., tuple[PollScheduler, Metrics]],
) -> None:
    outcome: dict[str, Exception | None] = {
        "m0@contoso.test": ImapConnectionError("connection refused"),
        "m1@contoso.test": AuthFailed("AUTHENTICATE failed", hint="grant FullAccess"),
        "m2@contoso.test": None,
    }
    calls: Counter[str] = Counter()

    def poll(mailbox: MailboxSettings) -> None:
        calls[mailbox.address] += 1
        error = outcome[mailbox.address]
        if error is not None:
            raise error

    scheduler, metrics = make_scheduler(_mailboxes(3, interval=1.0), poll)
    scheduler.start()
    wait_for(
        lambda: scheduler.states() == Counter({"ok": 1, "backoff": 1, "auth_failed": 1}),
        timeout=15,
        what="one mailbox in each state",
    )
    wait_for(lambda: calls["m2@contoso.test"] >= 4, timeout=15, what="healthy mailbox polls")
    # The auth failure waits minutes; the healthy mailbox went on meanwhile.
    assert calls["m1@contoso.test"] == 1
    outcome["m0@contoso.test"] = None
    wait_for(lambda: scheduler.states()["backoff"] == 0, timeout=20, what="recovery")
    sample = metrics.registry.get_sample_value
    wait_for(
        lambda: sample("mailsyncd_mailboxes", {"state": "ok"}) == 2.0,
        timeout=10,
        what="state gauge",
    )
    assert sample("mailsyncd_mailboxes", {"state": "auth_failed"}) == 1.0
    assert scheduler.alive()


def test_stop_waits_for_running_polls_and_is_idempotent(
    make_scheduler: Callable[..., tuple[PollScheduler, Metrics]],
) -> None:
    started = threading.Event()
    finished = threading.Event()

    def poll(mailbox: MailboxSettings) -> None:
        started.set()
        time.sleep(0.5)
        finished.set()

    scheduler, _ = make_scheduler(_mailboxes(1, interval=1.0), poll)
    scheduler.start()
    assert started.wait(10)
    assert scheduler.stop(timeout=5)
    assert finished.is_set()
    assert scheduler.stop(timeout=1)
    assert not scheduler.alive()
