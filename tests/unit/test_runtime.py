"""The runtime's reconcile step, tenant limiter and poll dispatch on a fake timer and clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from daemon.config import MailboxSettings
from daemon.errors import AuthFailed, ImapConnectionError
from daemon.logging import get_logger
from daemon.metrics import Metrics
from daemon.runtime.limiter import TenantLimiter
from daemon.runtime.supervisor import Runtime
from daemon.status import MailboxStatus


class FakeTimer:
    """Keeps armed calls; ``run_due`` runs those due at the fake time, in due order, inline."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.armed: dict[str, tuple[float, Callable[[], None]]] = {}
        self.periodic: dict[str, Callable[[], None]] = {}
        self.started = False
        self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self, timeout: float) -> bool:
        self.stopped = True
        return True

    @property
    def running(self) -> bool:
        return self.started and not self.stopped

    def call_at(self, key: str, when: float, func: Callable[[], None]) -> None:
        self.armed[key] = (when, func)

    def cancel(self, key: str) -> None:
        self.armed.pop(key, None)

    def every(self, key: str, seconds: float, func: Callable[[], None]) -> None:
        self.periodic[key] = func

    def run_due(self) -> list[str]:
        ran: list[str] = []
        while True:
            due = sorted(
                (when, key) for key, (when, _) in self.armed.items() if when <= self.clock.now
            )
            if not due:
                return ran
            key = due[0][1]
            _, func = self.armed.pop(key)
            ran.append(key)
            func()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Mid:
    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


class FakePoller:
    def __init__(self) -> None:
        self.polled: list[str] = []
        self.forgotten: list[str] = []
        self.fail: dict[str, Exception] = {}
        self.during: Callable[[MailboxSettings, Callable[[], bool]], None] | None = None
        self.stop_seen: dict[str, bool] = {}
        self.progress: dict[str, list[int]] = {}

    def poll(
        self,
        mailbox: MailboxSettings,
        should_stop: Callable[[], bool],
        progress: Callable[[int], None],
    ) -> None:
        self.polled.append(mailbox.address)
        for remaining in self.progress.get(mailbox.address, ()):
            progress(remaining)
        if self.during is not None:
            self.during(mailbox, should_stop)
        self.stop_seen[mailbox.address] = should_stop()
        if mailbox.address in self.fail:
            raise self.fail[mailbox.address]

    def forget(self, address: str) -> None:
        self.forgotten.append(address)


def box(
    address: str, *, tenant: str = "contoso", interval: float = 10.0, enabled: bool = True
) -> MailboxSettings:
    return MailboxSettings(
        address=address,
        tenant=tenant,
        folders=("INBOX",),
        poll_interval=interval,
        full_scan_interval=900,
        backfill_days=None,
        enabled=enabled,
    )


@pytest.fixture
def parts() -> tuple[Runtime, FakeTimer, FakeClock, FakePoller, Metrics]:
    clock = FakeClock()
    timer = FakeTimer(clock)
    poller = FakePoller()
    metrics = Metrics(CollectorRegistry(), ["contoso", "fabrikam"])
    saved: list[list[MailboxStatus]] = []
    runtime = Runtime(
        poller=poller,
        timer=timer,
        limiter=TenantLimiter(1),
        metrics=metrics,
        log=get_logger("test"),
        clock=clock,
        rng=Mid(),
        monotonic=clock,
        owner="replica-1",
        save_statuses=lambda rows: saved.append(list(rows)),
    )
    runtime.saved = saved  # type: ignore[attr-defined]
    return runtime, timer, clock, poller, metrics


Parts = tuple[Runtime, FakeTimer, FakeClock, FakePoller, Metrics]


def test_start_is_the_first_reconcile_and_arms_every_enabled_mailbox(parts: Parts) -> None:
    runtime, timer, clock, _, _ = parts
    result = runtime.start([box("a@x"), box("b@x"), box("off@x", enabled=False)])
    assert set(result.added) == {"a@x", "b@x", "off@x"}
    assert set(timer.armed) == {"a@x", "b@x"}
    # Spread over half of min(interval, 60 s): Mid jitter puts them at a quarter.
    assert timer.armed["a@x"][0] == clock.now + 2.5
    assert runtime.states() == {"ok": 2, "disabled": 1}


def test_reconcile_adds_and_removes_while_running_and_leaves_the_others_alone(
    parts: Parts,
) -> None:
    runtime, timer, clock, poller, _ = parts
    runtime.start([box("a@x"), box("b@x")])
    clock.now += 3
    timer.run_due()
    due_b = timer.armed["b@x"][0]

    result = runtime.reconcile([box("b@x"), box("c@x")])

    assert (result.added, result.removed, result.updated) == (("c@x",), ("a@x",), ())
    assert "a@x" not in timer.armed
    assert poller.forgotten == ["a@x"]
    assert timer.armed["b@x"][0] == due_b  # untouched
    assert "c@x" in timer.armed
    assert runtime.states() == {"ok": 2}


def test_a_mailbox_removed_during_its_poll_drains_and_is_not_polled_again(parts: Parts) -> None:
    runtime, timer, clock, poller, _ = parts
    runtime.start([box("a@x"), box("b@x", tenant="fabrikam")])

    def remove_a(mailbox: MailboxSettings, should_stop: Callable[[], bool]) -> None:
        if mailbox.address == "a@x":
            assert not should_stop()
            runtime.reconcile([box("b@x", tenant="fabrikam")])

    poller.during = remove_a
    clock.now += 3
    timer.run_due()
    assert poller.stop_seen["a@x"] is True  # the poll was told to stop at its next batch
    assert poller.forgotten == ["a@x"]  # after the poll, not during it
    assert "a@x" not in timer.armed
    clock.now += 100
    poller.during = None
    poller.polled.clear()
    timer.run_due()
    assert "a@x" not in poller.polled


def test_changed_settings_apply_from_the_next_poll_and_keep_the_backoff_state(
    parts: Parts,
) -> None:
    runtime, timer, clock, poller, _ = parts
    runtime.start([box("a@x", interval=600)])
    poller.fail["a@x"] = ImapConnectionError("reset")
    clock.now += 200
    timer.run_due()
    assert runtime.states() == {"backoff": 1}
    due_before = timer.armed["a@x"][0]

    result = runtime.reconcile([box("a@x", interval=30)])

    assert result.updated == ("a@x",)
    assert runtime.states() == {"backoff": 1}
    assert timer.armed["a@x"][0] == min(due_before, clock.now + 30)
    del poller.fail["a@x"]
    clock.now += 30
    timer.run_due()
    assert runtime.states() == {"ok": 1}
    # The next due follows the new interval.
    assert timer.armed["a@x"][0] - clock.now <= 30 * 1.02


def test_disabling_a_mailbox_stops_its_polls_and_closes_its_session(parts: Parts) -> None:
    runtime, timer, _, poller, _ = parts
    runtime.start([box("a@x")])
    runtime.reconcile([box("a@x", enabled=False)])
    assert "a@x" not in timer.armed
    assert poller.forgotten == ["a@x"]
    assert runtime.states() == {"disabled": 1}
    runtime.reconcile([box("a@x")])
    assert "a@x" in timer.armed
    assert runtime.states() == {"ok": 1}


def test_a_tenant_over_its_bound_waits_in_line_and_gets_the_slot_of_a_finishing_poll(
    parts: Parts,
) -> None:
    runtime, timer, clock, poller, _ = parts
    runtime.start([box("a@x"), box("b@x"), box("c@x", tenant="fabrikam")])
    order: list[str] = []

    def nested(mailbox: MailboxSettings, should_stop: Callable[[], bool]) -> None:
        order.append(f"start {mailbox.address}")
        if mailbox.address == "a@x":
            # While a@x holds contoso's only slot, b@x comes due: it must wait; fabrikam runs.
            timer.run_due()
        order.append(f"end {mailbox.address}")

    poller.during = nested
    clock.now += 3
    timer.run_due()
    assert order.index("end a@x") < order.index("start b@x")
    assert order.index("start c@x") < order.index("end a@x")
    assert sorted(poller.polled) == ["a@x", "b@x", "c@x"]


def test_a_removed_mailbox_waiting_in_line_passes_its_turn_on(parts: Parts) -> None:
    runtime, timer, clock, poller, _ = parts
    runtime.start([box("a@x"), box("b@x"), box("c@x")])

    def remove_b_while_a_runs(mailbox: MailboxSettings, _stop: Callable[[], bool]) -> None:
        if mailbox.address == "a@x":
            timer.run_due()  # b@x and c@x join the line
            runtime.reconcile([box("a@x"), box("c@x")])

    poller.during = remove_b_while_a_runs
    clock.now += 3
    timer.run_due()
    assert poller.polled == ["a@x", "c@x"]


def test_auth_failures_park_the_mailbox_and_the_rest_keep_polling(parts: Parts) -> None:
    runtime, timer, clock, poller, metrics = parts
    runtime.start([box("a@x"), box("b@x", tenant="fabrikam")])
    poller.fail["a@x"] = AuthFailed("NO AUTHENTICATE failed")
    for _ in range(5):
        clock.now += 10
        timer.run_due()
    assert poller.polled.count("a@x") == 1  # auth_failed retries after minutes
    assert poller.polled.count("b@x") == 5
    timer.periodic["__housekeeping__"]()
    auth_failed = {"tenant": "contoso", "state": "auth_failed"}
    assert metrics.registry.get_sample_value("mailsyncd_mailboxes", auth_failed) == 1
    owned = metrics.registry.get_sample_value
    assert owned("mailsyncd_mailboxes_owned", {"tenant": "contoso"}) == 1
    assert owned("mailsyncd_mailboxes_owned", {"tenant": "fabrikam"}) == 1


def test_a_returning_token_wakes_only_the_mailboxes_that_wait_for_it(parts: Parts) -> None:
    from daemon.errors import TokenUnavailable

    runtime, timer, clock, poller, _ = parts
    runtime.start([box("a@x", interval=600), box("b@x", tenant="fabrikam", interval=600)])
    poller.fail["a@x"] = TokenUnavailable("no token")
    poller.fail["b@x"] = ImapConnectionError("reset")
    clock.now += 200
    timer.run_due()
    parked = {key: when for key, (when, _) in timer.armed.items()}
    runtime.wake_tenant("contoso")
    runtime.wake_tenant("fabrikam")
    assert timer.armed["a@x"][0] <= clock.now + 2
    assert timer.armed["b@x"][0] == parked["b@x"]


def test_stop_stops_arming_and_alive_turns_false(parts: Parts) -> None:
    runtime, timer, _, _, _ = parts
    runtime.start([box("a@x")])
    timer.periodic["__housekeeping__"]()
    assert runtime.alive()
    assert runtime.stop(timeout=1)
    assert not runtime.alive()
    timer.armed.clear()
    runtime.reconcile([box("a@x"), box("new@x")])
    assert timer.armed == {}


def test_alive_turns_false_when_housekeeping_stops_running(parts: Parts) -> None:
    runtime, timer, clock, _, _ = parts
    assert clock.now
    runtime.start([box("a@x")])
    timer.periodic["__housekeeping__"]()
    clock.now += 31
    assert not runtime.alive()


def test_limiter_hands_slots_over_in_arrival_order() -> None:
    limiter = TenantLimiter(2)
    assert limiter.acquire("t", "a")
    assert limiter.acquire("t", "b")
    assert not limiter.acquire("t", "c")
    assert not limiter.acquire("t", "d")
    assert not limiter.acquire("t", "c")  # once in line
    assert limiter.acquire("u", "x")  # another tenant is not affected
    assert limiter.waiting("t") == 2
    assert limiter.withdraw("t", "d")
    assert limiter.release("t") == "c"
    assert limiter.active("t") == 2  # c owns the slot now
    assert limiter.release("t") is None
    assert limiter.release("t") is None
    assert limiter.active("t") == 0


def test_updated_settings_keep_equal_mailboxes_untouched(parts: Parts) -> None:
    runtime = parts[0]
    settings = box("a@x")
    runtime.start([settings])
    assert runtime.reconcile([replace(settings)]).updated == ()


def test_statuses_are_saved_in_batches_of_what_changed_with_errors_hints_and_progress(
    parts: Parts,
) -> None:
    runtime, timer, clock, poller, _ = parts
    saved: list[list[MailboxStatus]] = runtime.saved  # type: ignore[attr-defined]
    runtime.start([box("a@x"), box("b@x", tenant="fabrikam")])
    runtime.save_statuses()
    assert {s.mailbox for s in saved[-1]} == {"a@x", "b@x"}
    assert all(s.owner == "replica-1" and s.last_poll_at is None for s in saved[-1])
    runtime.save_statuses()
    assert len(saved) == 1  # nothing changed: nothing written
    poller.fail["b@x"] = AuthFailed("NO AUTHENTICATE failed", hint="grant FullAccess")
    poller.progress["a@x"] = [40, 20, 0]
    clock.now += 3
    timer.run_due()
    runtime.save_statuses()
    by_mailbox = {s.mailbox: s for s in saved[-1]}
    a, b = by_mailbox["a@x"], by_mailbox["b@x"]
    assert (a.state, a.consecutive_failures, a.last_error, a.initial_sync_remaining) == (
        "ok",
        0,
        None,
        0,
    )
    assert a.last_success_at is not None
    assert a.last_success_at.timestamp() == clock.now
    assert (b.state, b.consecutive_failures, b.last_error_reason, b.hint) == (
        "auth_failed",
        1,
        "auth",
        "grant FullAccess",
    )
    assert b.last_error == "NO AUTHENTICATE failed"
    assert b.last_success_at is None
    runtime.reconcile([box("a@x")])
    runtime.save_statuses()
    assert [(s.mailbox, s.state, s.owner) for s in saved[-1]] == [("b@x", "removed", None)]
    assert [s.mailbox for s in runtime.statuses()] == ["a@x"]


def test_a_mailbox_handed_to_another_replica_stops_without_a_removed_status(
    parts: Parts,
) -> None:
    runtime, _, _, poller, _ = parts
    saved: list[list[MailboxStatus]] = runtime.saved  # type: ignore[attr-defined]
    runtime.start([box("a@x"), box("b@x")])
    runtime.save_statuses()
    result = runtime.reconcile([box("a@x")], handed_over=["b@x"])
    assert result.removed == ("b@x",)
    assert "b@x" in poller.forgotten
    runtime.save_statuses()
    assert len(saved) == 1  # its new owner reports on it, not this replica
    assert [s.mailbox for s in runtime.statuses()] == ["a@x"]


def test_statuses_that_could_not_be_saved_are_saved_with_the_next_batch(parts: Parts) -> None:
    from daemon.errors import DatabaseError

    runtime, _, _, _, _ = parts
    saved: list[list[MailboxStatus]] = runtime.saved  # type: ignore[attr-defined]
    calls = 0

    def flaky(rows: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise DatabaseError("database unreachable")
        saved.append(list(rows))  # type: ignore[call-overload]

    runtime._save_statuses = flaky  # swap the sink for this test
    runtime.start([box("a@x")])
    runtime.reconcile([])
    runtime.save_statuses()
    assert saved == []
    runtime.save_statuses()
    assert [(s.mailbox, s.state) for s in saved[-1]] == [("a@x", "removed")]


def test_news_from_idle_polls_the_mailbox_now_and_the_interval_goes_on_from_there(
    parts: Parts,
) -> None:
    runtime, timer, clock, _, metrics = parts
    runtime.start([box("a@x", interval=120.0), box("b@x", interval=120.0)])
    clock.now += 60
    timer.run_due()  # first polls
    runtime.set_idle("a@x", True)
    clock.now += 10
    runtime.push("a@x")
    assert timer.run_due() == ["a@x"]
    assert timer.armed["a@x"][0] == clock.now + 120.0
    runtime.save_statuses()
    saved: list[list[MailboxStatus]] = runtime.saved  # type: ignore[attr-defined]
    assert {s.mailbox: s.idle for s in saved[-1]}["a@x"] is True
    runtime._housekeeping()
    assert metrics.registry.get_sample_value("mailsyncd_idle_sessions", {"tenant": "contoso"}) == 1


def test_news_during_a_poll_polls_once_more_when_it_ends(parts: Parts) -> None:
    runtime, timer, clock, poller, _ = parts
    runtime.start([box("a@x", interval=120.0)])

    def news_meanwhile(mailbox: MailboxSettings, _stop: Callable[[], bool]) -> None:
        if len(poller.polled) == 1:
            runtime.push(mailbox.address)

    poller.during = news_meanwhile
    clock.now += 60
    timer.run_due()
    assert poller.polled == ["a@x", "a@x"]  # the second at once, after the first
    assert timer.armed["a@x"][0] == clock.now + 120.0


def test_news_does_not_cut_a_backoff_short(parts: Parts) -> None:
    runtime, timer, clock, poller, _ = parts
    runtime.start([box("a@x", interval=120.0)])
    poller.fail["a@x"] = ImapConnectionError("reset")
    clock.now += 60
    timer.run_due()
    due = timer.armed["a@x"][0]
    runtime.push("a@x")
    assert timer.armed["a@x"][0] == due
