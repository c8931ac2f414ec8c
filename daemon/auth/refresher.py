"""Keeps one token per tenant fresh in the background, so that no poll waits for one.

A single thread renews each tenant's token once ``refresh_fraction`` (2/3) of its lifetime has
passed. While the current token is still valid, a failed renewal is retried with exponential
backoff and jitter (never sooner than the platform's Retry-After) and polls go on with the
current token. Only when no valid token remains does ``token()`` fail, and then without a
network request unless a retry is due: exactly one request per tenant is ever in flight.
A rejected configuration (AADSTS code) is logged once per change, with its hint.

    refresher thread ──acquire()──▶ MsalTokenClient ──▶ identity platform
    polls ──token()──▶ current token (no network while one is valid)
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from daemon.auth import AccessToken
from daemon.errors import TokenRejected, TokenUnavailable
from daemon.logging import Logger
from daemon.ports import TokenSource

REFRESH_FRACTION = 2 / 3
RETRY_FIRST = 1.0
RETRY_CAP_VALID = 300.0
"""While a valid token remains, retries need not hurry."""
RETRY_CAP_REJECTED = 300.0
LOCK_WAIT = 40.0
"""How long a poll waits for a request already in flight (longer than its HTTP timeout)."""
LOOP_MAX_WAIT = 5.0


@dataclass
class _Tenant:
    name: str
    retry_cap_expired: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    token: AccessToken | None = None
    failures: int = 0
    next_attempt: float = 0.0
    last_error: TokenUnavailable | TokenRejected | None = None
    logged_key: tuple[str, str] | None = None
    renew_now: bool = False
    """The tenant's credential changed: get a token with the new one at once."""


def _retry_cap(poll_interval: float | None) -> float:
    # Without a token, a tenant's polls wait for the refresher: retrying about twice per
    # shortest poll interval brings them back within one interval of the platform's return.
    return min(30.0, max(1.0, (poll_interval or 60.0) / 2))


def usable_until(token: AccessToken) -> float:
    """A token is handed out until shortly before it expires (10% of its life, at most 60 s)."""
    margin = min(60.0, (token.expires_at - token.obtained_at) * 0.1)
    return token.expires_at - margin


class TokenRefresher:
    """The daemon's ``TokenProvider``."""

    def __init__(
        self,
        source: TokenSource,
        tenants: Sequence[str],
        *,
        log: Logger,
        poll_intervals: Mapping[str, float] | None = None,
        refresh_fraction: float = REFRESH_FRACTION,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        intervals = poll_intervals or {}
        self._source = source
        self._log = log
        self._tenants = {name: _Tenant(name, _retry_cap(intervals.get(name))) for name in tenants}
        self._on_recovered: list[Callable[[str], None]] = []
        self._fraction = refresh_fraction
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def set_tenants(
        self,
        tenants: Sequence[str],
        *,
        poll_intervals: Mapping[str, float] | None = None,
        renew: Collection[str] = (),
    ) -> None:
        """The tenants changed while running (a reload): keep the tokens of those that stay,
        add and drop the others, and renew the tokens of ``renew`` (a changed credential) at
        once. Until a renewed token arrives polls go on with the current one."""
        intervals = poll_intervals or {}
        current = self._tenants
        updated: dict[str, _Tenant] = {}
        for name in tenants:
            state = current.get(name) or _Tenant(name, _retry_cap(intervals.get(name)))
            state.retry_cap_expired = _retry_cap(intervals.get(name))
            if name in renew and name in current:
                state.renew_now = True
                state.failures, state.next_attempt, state.logged_key = 0, 0.0, None
            updated[name] = state
        self._tenants = updated  # replaced whole: the refresher thread iterates a snapshot
        self._wake.set()

    def when_recovered(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(tenant)`` whenever a tenant without a valid token gets one."""
        self._on_recovered.append(callback)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="token-refresher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the provider ---------------------------------------------------------------------
    def token(self, tenant: str) -> AccessToken:
        """The tenant's current token; a network request only when none is valid."""
        state = self._tenants.get(tenant)
        if state is None:
            raise TokenUnavailable(f"tenant {tenant} is no longer configured")
        current = state.token
        if current is not None and self._clock() < usable_until(current):
            return current
        if not state.lock.acquire(timeout=LOCK_WAIT):
            raise TokenUnavailable(f"tenant {tenant}: a token request is taking too long")
        try:
            current = state.token
            now = self._clock()
            if current is not None and now < usable_until(current):
                return current
            if now < state.next_attempt:
                raise self._still_failing(state, now)
            return self._attempt(state)
        finally:
            state.lock.release()

    def report_expired(self, tenant: str, token: AccessToken) -> None:
        """The server ended a session for an expired token: renew now, not at 2/3."""
        state = self._tenants.get(tenant)
        if state is not None and state.token is token:
            state.token = None
            state.next_attempt = 0.0
            self._wake.set()

    # -- refreshing -----------------------------------------------------------------------
    def _due(self, state: _Tenant) -> float:
        if state.renew_now and not state.failures:
            return 0.0
        if state.failures:
            return state.next_attempt
        if state.token is None:
            return 0.0
        return state.token.refresh_at(self._fraction)

    def _loop(self) -> None:
        while not self._stop.is_set():
            wait = self.refresh_due()
            self._wake.wait(min(max(wait, 0.05), LOOP_MAX_WAIT))
            self._wake.clear()

    def refresh_due(self) -> float:
        """Renew every token that is due (one pass); returns seconds until the next is due."""
        for state in self._tenants.values():
            if self._due(state) <= self._clock() and state.lock.acquire(blocking=False):
                try:
                    if self._due(state) <= self._clock():
                        self._attempt(state)
                except (TokenUnavailable, TokenRejected):
                    pass  # logged and rescheduled by _attempt
                finally:
                    state.lock.release()
        now = self._clock()
        return min((self._due(s) for s in self._tenants.values()), default=now + 60) - now

    def _attempt(self, state: _Tenant) -> AccessToken:
        """One request; the caller holds ``state.lock``."""
        try:
            token = self._source.acquire(state.name)
        except TokenUnavailable as exc:
            self._failed(state, exc, retry_after=exc.retry_after)
            raise
        except TokenRejected as exc:
            self._failed(state, exc, retry_after=None)
            raise
        state.renew_now = False
        recovered = state.failures > 0 or state.token is None
        if state.failures:
            self._log.info("token obtained again", tenant=state.name, failures=state.failures)
        state.token, state.failures, state.next_attempt = token, 0, 0.0
        state.last_error, state.logged_key = None, None
        self._log.debug(
            "token refreshed",
            tenant=state.name,
            expires_in_s=round(token.expires_at - self._clock()),
        )
        if recovered:
            for callback in self._on_recovered:
                callback(state.name)
        return token

    def _failed(
        self, state: _Tenant, exc: TokenUnavailable | TokenRejected, *, retry_after: float | None
    ) -> None:
        now = self._clock()
        state.failures += 1
        state.last_error = exc
        valid = state.token is not None and now < usable_until(state.token)
        if isinstance(exc, TokenRejected):
            cap = RETRY_CAP_REJECTED
        else:
            cap = RETRY_CAP_VALID if valid else state.retry_cap_expired
        base = min(cap, RETRY_FIRST * 2 ** min(state.failures - 1, 20))
        delay = base * self._rng.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, retry_after)
        if valid and state.token is not None and retry_after is None:
            # Never let the next try fall after the token stops being usable: polls would
            # fail for lack of a token although the platform may long be back. (A Retry-After
            # still wins: the platform said when it will answer.)
            delay = min(delay, max(0.0, usable_until(state.token) - now))
        state.next_attempt = now + delay
        fields: dict[str, object] = {
            "tenant": state.name,
            "reason": "token",
            "error": str(exc),
            "failures": state.failures,
            "retry_in_s": round(delay, 1),
            "valid_for_s": round(usable_until(state.token) - now) if valid and state.token else 0,
        }
        if isinstance(exc, TokenRejected) and exc.code:
            fields["aadsts"] = exc.code
        if exc.hint:
            fields["hint"] = exc.hint
        key = (type(exc).__name__, str(exc))
        if key == state.logged_key:
            self._log.debug("token request failed", **fields)
            return
        state.logged_key = key
        if isinstance(exc, TokenRejected):
            self._log.error("token request rejected", **fields)
        else:
            self._log.warning("token request failed", **fields)

    def _still_failing(self, state: _Tenant, now: float) -> TokenUnavailable | TokenRejected:
        last = state.last_error
        if isinstance(last, TokenRejected):
            # Still the configuration's fault: the mailbox is parked as auth_failed.
            return TokenRejected(
                str(last), code=last.code, hint=last.hint, description=last.description
            )
        return TokenUnavailable(
            f"tenant {state.name}: no valid token; the last request failed ({last})",
            hint=last.hint if last is not None else None,
            retry_after=max(0.0, state.next_attempt - now),
        )
