"""When a mailbox is polled next: interval, exponential backoff with jitter, slow auth retry."""

from __future__ import annotations

from daemon.ports import Jitter

BACKOFF_CAP = 900.0
"""A failing mailbox waits at most 15 minutes (SPEC)."""
AUTH_RETRY_MIN = 300.0
AUTH_RETRY_MAX = 3600.0


def next_interval(interval: float, rng: Jitter) -> float:
    """A successful poll: the configured interval, jittered by 2% to keep mailboxes apart."""
    return interval * rng.uniform(0.98, 1.02)


def backoff_delay(
    interval: float,
    failures: int,
    rng: Jitter,
    *,
    retry_after: float | None = None,
    cap: float = BACKOFF_CAP,
) -> float:
    """Delay after the ``failures``-th consecutive transient failure.

    Doubles from the poll interval up to ``cap``, with jitter in the upper half so that
    mailboxes failing together do not retry together; never sooner than the server's
    ``retry_after`` (Exchange's Suggested Backoff Time).
    """
    exponent = min(max(failures - 1, 0), 30)
    base = min(cap, max(interval, 1.0) * 2.0**exponent)
    delay = base * rng.uniform(0.5, 1.0)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def auth_retry_delay(interval: float, rng: Jitter) -> float:
    """A mailbox in ``auth_failed`` retries slowly: someone has to fix permissions first."""
    base = min(AUTH_RETRY_MAX, max(AUTH_RETRY_MIN, interval * 10))
    return base * rng.uniform(0.8, 1.0)
