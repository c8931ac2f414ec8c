"""When a mailbox is polled next: a pure state machine (state + outcome + now -> state, due).

    start ──▶ ok ──failure (transient)──▶ backoff ──success──▶ ok
               │                             │
               └──failure (permanent auth)───┴──▶ auth_failed ──success──▶ ok

- A success keeps the cadence on its due times: the next due is the previous due plus the
  interval (jittered by 2 %), never earlier than now.
- A transient failure backs off exponentially from the interval with jitter, capped at 15
  minutes, and never sooner than the server's ``retry_after`` (Exchange's Suggested Backoff
  Time).
- A permanent failure of authentication (token refused, login rejected, no mailbox rights)
  goes to ``auth_failed`` with a slow retry: somebody has to change permissions first.
- No token for the tenant: the mailbox waits for the token to come back (``waits_for_token``)
  and ``token_returned`` brings it forward; if the token came back while the poll was failing,
  it retries within 2 s instead of waiting for a wake-up that has already happened.
- The server ended the session because its token expired although ours had not (clock skew):
  the first such failure retries after half a second with a new login.

Nothing here reads a clock or draws random numbers on its own: ``now`` and ``rng`` come in, so
tests run every transition on a fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final, Literal

from daemon.backoff import auth_retry_delay, backoff_delay, next_interval
from daemon.errors import Reason
from daemon.ports import Jitter

MailboxState = Literal["ok", "backoff", "auth_failed", "disabled"]
STATES: Final[tuple[MailboxState, ...]] = ("ok", "backoff", "auth_failed", "disabled")

FIRST_POLL_SPREAD_MAX: Final = 60.0
"""First polls spread over half of min(interval, this): a restart does not poll all at once."""
TOKEN_WAKE_SPREAD: Final = 2.0
"""Mailboxes woken by a returning token start within this many seconds, not all at once."""
SKEW_RETRY: Final = 0.5
AUTH_REASONS: Final = frozenset({"auth", "token"})


@dataclass(frozen=True, slots=True)
class Failure:
    """What the schedule needs to know about a failed poll."""

    reason: Reason
    permanent: bool = False
    retry_after: float | None = None
    token_expired_on_server: bool = False
    token_returned: bool = False
    """The tenant's token came back while this poll was failing."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """A mailbox's place in the schedule."""

    state: MailboxState = "ok"
    due: float = 0.0
    failures: int = 0
    last_success: float | None = None
    waits_for_token: bool = False


def first(interval: float, now: float, rng: Jitter, *, enabled: bool = True) -> Schedule:
    """A mailbox that starts being polled (daemon start, or added while running)."""
    if not enabled:
        return Schedule(state="disabled", due=float("inf"))
    spread = min(interval, FIRST_POLL_SPREAD_MAX)
    return Schedule(due=now + rng.uniform(0, spread * 0.5))


def succeeded(current: Schedule, interval: float, now: float, rng: Jitter) -> Schedule:
    """The poll succeeded: back to ``ok``, next due one interval after the previous due."""
    due = max(current.due + next_interval(interval, rng), now)
    return Schedule(state="ok", due=due, failures=0, last_success=now)


def failed(
    current: Schedule, failure: Failure, interval: float, now: float, rng: Jitter
) -> Schedule:
    """The poll failed: ``backoff`` or ``auth_failed``, due after the matching delay."""
    failures = current.failures + 1
    permanent_auth = failure.permanent and failure.reason in AUTH_REASONS
    if permanent_auth:
        delay = auth_retry_delay(interval, rng)
    elif failure.token_expired_on_server and failures == 1:
        delay = SKEW_RETRY
    else:
        delay = backoff_delay(interval, failures, rng, retry_after=failure.retry_after)
    waits = False
    if failure.reason == "token":
        # Refused or unavailable alike: the refresher keeps trying, and a token that comes
        # back (a fixed credential, the platform up again) brings the mailbox back at once.
        if failure.token_returned:
            delay = rng.uniform(0, min(interval, TOKEN_WAKE_SPREAD))
        else:
            waits = True
    return Schedule(
        state="auth_failed" if permanent_auth else "backoff",
        due=now + delay,
        failures=failures,
        last_success=current.last_success,
        waits_for_token=waits,
    )


def token_returned(current: Schedule, interval: float, now: float, rng: Jitter) -> Schedule:
    """The tenant has a token again: a mailbox waiting for it is due within 2 s."""
    if not current.waits_for_token:
        return current
    due = min(current.due, now + rng.uniform(0, min(interval, TOKEN_WAKE_SPREAD)))
    return replace(current, due=due, waits_for_token=False)
