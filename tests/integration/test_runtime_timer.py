"""The runtime on the real APScheduler timer with a stand-in poller: states, bounds, backoff."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import CollectorRegistry

from daemon.config import MailboxSettings
from daemon.errors import AuthFailed, ImapConnectionError
from daemon.logging import get_logger
from daemon.metrics import Metrics
from daemon.runtime.limiter import TenantLimiter
from daemon.runtime.supervisor import Runtime
from daemon.runtime.timer import ApschedulerTimer
from support.daemon import wait_for

PollFn = Callable[[MailboxSettings], None]


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


class _Poller:
    def __init__(self, poll: PollFn) -> None:
        self._poll = poll

    def poll(
        self,
        mailbox: MailboxSettings,
        should_stop: Callable[[], bool],
        progress: Callable[[int], None],
    ) -> None:
        self._poll(mailbox)

    def forget(self, address: str) -> None:
        pass


class Scheduler:
    """The runtime wired as the daemon wires it, with a stand-in poll function."""

    def __init__(self, mailboxes: list[MailboxSettings], runtime: Runtime) -> None:
        self.mailboxes = mailboxes
        self.runtime = runtime

    def start(self) -> None:
        self.runtime.start(self.mailboxes)

    def stop(self, timeout: float) -> bool:
        return self.runtime.stop(timeout)

    def states(self) -> Counter[str]:
        return Counter(self.runtime.states())

    def alive(self) -> bool:
        return self.runtime.alive()


MakeScheduler = Callable[..., tuple[Scheduler, Metrics]]


@pytest.fixture
def make_scheduler() -> Iterator[MakeScheduler]:
    made: list[Scheduler] = []

    def make(
        mailboxes: list[MailboxSettings],
        poll: PollFn,
        *,
        max_concurrent: int = 8,
        max_per_tenant: int = 8,
    ) -> tuple[Scheduler, Metrics]:
        metrics = Metrics(CollectorRegistry(), sorted({m.tenant for m in mailboxes}))
        log = get_logger("test")
        runtime = Runtime(
            poller=_Poller(poll),
            timer=ApschedulerTimer(workers=max_concurrent, log=log),
            limiter=TenantLimiter(max_per_tenant),
            metrics=metrics,
            log=log,
            clock=time.time,
            rng=random.Random(),
        )
        scheduler = Scheduler(mailboxes, runtime)
        made.append(scheduler)
        return scheduler, metrics

    yield make
    for scheduler in made:
        assert scheduler.stop(timeout=10)


def test_polls_of_one_mailbox_never_overlap_and_tenant_concurrency_is_bounded(
    make_scheduler: MakeScheduler,
) -> None:
    lock = threading.Condition()
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
            lock.notify_all()
            # The first polls last until the tenant's limit has been reached once (or a
            # generous deadline, ten times their interval): the peak then depends on the
            # limiter, not on how long a poll happens to take on a loaded machine.
            lock.wait_for(lambda: peak_tenant >= 3, timeout=5)
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
    make_scheduler: MakeScheduler,
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
        lambda: sample("mailsyncd_mailboxes", {"tenant": "contoso", "state": "ok"}) == 2.0,
        timeout=10,
        what="state gauge",
    )
    assert sample("mailsyncd_mailboxes", {"tenant": "contoso", "state": "auth_failed"}) == 1.0
    assert scheduler.alive()


def test_stop_waits_for_running_polls_and_is_idempotent(
    make_scheduler: MakeScheduler,
) -> None:
    started = threading.Event()
    release = threading.Event()
    finished = threading.Event()

    def poll(mailbox: MailboxSettings) -> None:
        started.set()
        release.wait(30)  # runs until the test lets it finish
        finished.set()

    scheduler, _ = make_scheduler(_mailboxes(1, interval=1.0), poll)
    scheduler.start()
    assert started.wait(10)
    stopped: list[bool] = []
    stopping = threading.Thread(target=lambda: stopped.append(scheduler.stop(timeout=20)))
    stopping.start()
    stopping.join(0.2)
    assert stopping.is_alive(), "stop() returned while a poll was still running"
    release.set()
    stopping.join(30)
    assert stopped == [True]
    assert finished.is_set()
    assert scheduler.stop(timeout=1)
    assert not scheduler.alive()


def test_reconcile_on_the_running_timer_starts_added_and_stops_removed_mailboxes(
    make_scheduler: MakeScheduler,
) -> None:
    lock = threading.Lock()
    polls: Counter[str] = Counter()

    def poll(mailbox: MailboxSettings) -> None:
        with lock:
            polls[mailbox.address] += 1

    first, second = _mailboxes(2, interval=0.5)
    scheduler, _ = make_scheduler([first], poll)
    scheduler.start()
    wait_for(lambda: polls[first.address] >= 2, timeout=15, what="first mailbox polled")
    result = scheduler.runtime.reconcile([second])
    assert (result.added, result.removed) == ((second.address,), (first.address,))
    with lock:
        stopped_at = polls[first.address]
    wait_for(lambda: polls[second.address] >= 3, timeout=15, what="added mailbox polled")
    with lock:
        # At most a poll that had already started when it was removed.
        assert polls[first.address] <= stopped_at + 1


# -- the timer itself: wake-ups ---------------------------------------------------------------
@pytest.fixture
def timer() -> Iterator[ApschedulerTimer]:
    made = ApschedulerTimer(workers=4, log=get_logger("test"))
    made.start()
    yield made
    assert made.stop(timeout=10)


def test_a_job_due_after_the_planned_wake_up_does_not_wake_the_scheduler(
    timer: ApschedulerTimer,
) -> None:
    scheduler = timer._scheduler
    ran: dict[str, float] = {}
    changed = threading.Condition()

    def job(key: str) -> Callable[[], None]:
        def run() -> None:
            with changed:
                ran[key] = time.time()
                changed.notify_all()

        return run

    # Seconds apart, so a slow machine still adds "later" and "sooner" before "first" runs.
    now = time.time()
    due = {"first": now + 5.0, "later": now + 6.0, "sooner": now + 1.0}
    timer.call_at("first", due["first"], job("first"))
    wait_for(lambda: scheduler._planned is not None, timeout=4, what="a planned wake-up")
    woken = scheduler.wakeups
    timer.call_at("later", due["later"], job("later"))  # after the plan: no wake-up
    assert scheduler.wakeups == woken
    timer.call_at("sooner", due["sooner"], job("sooner"))  # before it: wakes the scheduler
    assert scheduler.wakeups == woken + 1
    with changed:
        assert changed.wait_for(lambda: len(ran) == 3, timeout=30), ran
    assert ran["sooner"] < ran["first"] < ran["later"]
    for key, when in due.items():
        assert ran[key] >= when, key
