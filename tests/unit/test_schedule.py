"""The schedule state machine, transition by transition, on a fake clock with fixed jitter."""

from __future__ import annotations

import math
import random

import pytest

from daemon.backoff import AUTH_RETRY_MIN, BACKOFF_CAP
from daemon.sync import schedule
from daemon.sync.schedule import Failure, Schedule


class Low:
    """Jitter that always draws the lower bound: every delay is exactly computable."""

    def uniform(self, a: float, b: float) -> float:
        return a


class High:
    def uniform(self, a: float, b: float) -> float:
        return b


NOW = 1_000_000.0
INTERVAL = 60.0

# (name, current, failure, expected state, expected delay from NOW with Low jitter,
#  expected failures, waits_for_token)
FAILURES = [
    (
        "first transient failure waits half the interval (jitter in the upper half)",
        Schedule(due=NOW),
        Failure("connect"),
        "backoff",
        INTERVAL * 0.5,
        1,
        False,
    ),
    (
        "third transient failure doubles twice",
        Schedule(state="backoff", due=NOW, failures=2),
        Failure("timeout"),
        "backoff",
        INTERVAL * 4 * 0.5,
        3,
        False,
    ),
    (
        "backoff is capped at 15 minutes",
        Schedule(state="backoff", due=NOW, failures=20),
        Failure("protocol"),
        "backoff",
        BACKOFF_CAP * 0.5,
        21,
        False,
    ),
    (
        "the server's suggested backoff wins when longer",
        Schedule(due=NOW),
        Failure("throttled", retry_after=299.91),
        "backoff",
        299.91,
        1,
        False,
    ),
    (
        "a permanent auth failure retries slowly",
        Schedule(due=NOW),
        Failure("auth", permanent=True),
        "auth_failed",
        max(AUTH_RETRY_MIN, INTERVAL * 10) * 0.8,
        1,
        False,
    ),
    (
        "a database refusal is permanent but not auth: plain backoff",
        Schedule(due=NOW),
        Failure("database", permanent=True),
        "backoff",
        INTERVAL * 0.5,
        1,
        False,
    ),
    (
        "a token that expired on the server's clock first retries at once",
        Schedule(due=NOW),
        Failure("token", token_expired_on_server=True),
        "backoff",
        schedule.SKEW_RETRY,
        1,
        True,
    ),
    (
        "no token: wait for it to come back",
        Schedule(due=NOW),
        Failure("token"),
        "backoff",
        INTERVAL * 0.5,
        1,
        True,
    ),
    (
        "no token, but it came back during the poll: retry within 2 s",
        Schedule(due=NOW),
        Failure("token", token_returned=True),
        "backoff",
        0.0,
        1,
        False,
    ),
    (
        "a refused credential parks as auth_failed and waits for a token",
        Schedule(due=NOW),
        Failure("token", permanent=True),
        "auth_failed",
        max(AUTH_RETRY_MIN, INTERVAL * 10) * 0.8,
        1,
        True,
    ),
]


@pytest.mark.parametrize("case", FAILURES, ids=[case[0] for case in FAILURES])
def test_a_failure_moves_the_mailbox_to_its_state_and_delay(
    case: tuple[str, Schedule, Failure, str, float, int, bool],
) -> None:
    _, current, failure, state, delay, failures, waits = case
    after = schedule.failed(current, failure, INTERVAL, NOW, Low())
    assert after.state == state
    assert after.due == pytest.approx(NOW + delay)
    assert after.failures == failures
    assert after.waits_for_token is waits


def test_success_keeps_the_cadence_on_due_times_not_on_when_the_poll_ended() -> None:
    current = Schedule(due=NOW)
    after = schedule.succeeded(current, INTERVAL, NOW + 3.0, Low())
    assert after.due == pytest.approx(NOW + INTERVAL * 0.98)
    assert (after.state, after.failures, after.last_success) == ("ok", 0, NOW + 3.0)


def test_success_after_a_long_poll_is_due_now_rather_than_in_the_past() -> None:
    after = schedule.succeeded(Schedule(due=NOW), INTERVAL, NOW + 500.0, High())
    assert after.due == NOW + 500.0


def test_success_resets_backoff_and_keeps_nothing_of_the_failures() -> None:
    failing = Schedule(state="auth_failed", due=NOW, failures=7, waits_for_token=True)
    after = schedule.succeeded(failing, INTERVAL, NOW, Low())
    assert after == Schedule(state="ok", due=after.due, failures=0, last_success=NOW)


def test_a_failure_keeps_the_time_of_the_last_success() -> None:
    current = Schedule(due=NOW, last_success=NOW - 60)
    assert schedule.failed(current, Failure("connect"), INTERVAL, NOW, Low()).last_success == (
        NOW - 60
    )


@pytest.mark.parametrize(("interval", "spread"), [(12.0, 6.0), (60.0, 30.0), (3600.0, 30.0)])
def test_first_polls_spread_over_half_of_the_interval_at_most_30_s(
    interval: float, spread: float
) -> None:
    assert schedule.first(interval, NOW, Low()).due == NOW
    assert schedule.first(interval, NOW, High()).due == NOW + spread


def test_a_disabled_mailbox_is_never_due() -> None:
    disabled = schedule.first(INTERVAL, NOW, Low(), enabled=False)
    assert disabled.state == "disabled"
    assert math.isinf(disabled.due)


def test_a_returning_token_brings_a_waiting_mailbox_forward_within_2_s() -> None:
    waiting = schedule.failed(Schedule(due=NOW), Failure("token"), INTERVAL, NOW, Low())
    later = NOW + 1.0
    woken = schedule.token_returned(waiting, INTERVAL, later, High())
    assert woken.due == later + schedule.TOKEN_WAKE_SPREAD
    assert not woken.waits_for_token
    assert woken.state == "backoff"


def test_a_returning_token_leaves_mailboxes_that_do_not_wait_for_it_alone() -> None:
    current = Schedule(state="backoff", due=NOW + 100, failures=1)
    assert schedule.token_returned(current, INTERVAL, NOW, Low()) is current


def test_a_returning_token_never_pushes_an_earlier_due_later() -> None:
    waiting = Schedule(state="backoff", due=NOW + 0.1, failures=1, waits_for_token=True)
    assert schedule.token_returned(waiting, INTERVAL, NOW, High()).due == NOW + 0.1


def test_random_failures_and_successes_never_schedule_into_the_past_or_past_the_cap() -> None:
    rng = random.Random(7)
    current = schedule.first(INTERVAL, NOW, rng)
    now = NOW
    reasons = ("connect", "timeout", "throttled", "protocol", "database", "other")
    for _ in range(2000):
        now = max(now, current.due) + rng.uniform(0, 5)
        if rng.random() < 0.6:
            failure = Failure(rng.choice(reasons), retry_after=rng.choice([None, 30.0]))
            current = schedule.failed(current, failure, INTERVAL, now, rng)
            assert now < current.due <= now + BACKOFF_CAP
            assert current.state == "backoff"
        else:
            current = schedule.succeeded(current, INTERVAL, now, rng)
            assert now <= current.due <= now + INTERVAL * 1.02
            assert current.failures == 0
