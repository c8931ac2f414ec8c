"""When a mailbox polls next: interval on success, exponential backoff, slow auth retry."""

from __future__ import annotations

import random

import pytest

from daemon.backoff import BACKOFF_CAP, auth_retry_delay, backoff_delay, next_interval


@pytest.mark.parametrize("seed", range(20))
def test_backoff_doubles_from_the_interval_with_jitter_up_to_the_cap(seed: int) -> None:
    rng = random.Random(seed)
    delays = [backoff_delay(60, n, rng) for n in range(1, 10)]
    for n, delay in enumerate(delays, start=1):
        base = min(BACKOFF_CAP, 60 * 2 ** (n - 1))
        assert base * 0.5 <= delay <= base
    assert max(delays) <= BACKOFF_CAP == 900


def test_backoff_never_retries_sooner_than_the_servers_suggestion() -> None:
    rng = random.Random(1)
    assert backoff_delay(5, 1, rng, retry_after=120.0) == 120.0
    assert backoff_delay(5, 1, rng, retry_after=0.1) >= 2.5


def test_jitter_spreads_mailboxes_that_fail_together() -> None:
    rng = random.Random(2)
    delays = {round(backoff_delay(60, 3, rng), 3) for _ in range(50)}
    assert len(delays) > 40


def test_success_keeps_the_interval_within_two_percent() -> None:
    rng = random.Random(3)
    for _ in range(100):
        assert 58.8 <= next_interval(60, rng) <= 61.2


@pytest.mark.parametrize(
    ("interval", "low", "high"), [(1, 240, 300), (60, 480, 600), (3600, 2880, 3600)]
)
def test_auth_failures_retry_slowly_but_within_an_hour(
    interval: float, low: float, high: float
) -> None:
    rng = random.Random(4)
    for _ in range(50):
        assert low <= auth_retry_delay(interval, rng) <= high


def test_huge_failure_counts_do_not_overflow() -> None:
    assert backoff_delay(60, 10_000, random.Random(5)) <= BACKOFF_CAP
