"""The token refresher over a scripted token source and a hand-moved clock."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import pytest

from daemon.auth import AccessToken
from daemon.auth.refresher import TokenRefresher
from daemon.errors import TokenRejected, TokenUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Source:
    """Answers from a script: a lifetime (token) or an exception, one per request."""

    def __init__(self, clock: Clock, lifetime: float = 60.0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.failures: list[Exception] = []
        self.calls = 0
        self.delay = 0.0

    def acquire(self, tenant: str) -> AccessToken:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if self.failures:
            raise self.failures.pop(0)
        now = self.clock()
        return AccessToken(f"token-{self.calls}", now + self.lifetime, now)


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, object]]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        return lambda event, **kw: self.lines.append((level, event, kw))


@pytest.fixture
def world() -> tuple[Clock, Source, Log, TokenRefresher]:
    clock = Clock()
    source = Source(clock)
    log = Log()
    refresher = TokenRefresher(
        source,
        ["contoso"],
        log=log,
        poll_intervals={"contoso": 5.0},
        clock=clock,
        rng=random.Random(1),
    )
    return clock, source, log, refresher


def test_valid_token_is_served_without_a_request(world) -> None:
    clock, source, _, refresher = world
    first = refresher.token("contoso")
    clock.now += 39
    assert refresher.token("contoso") is first
    assert source.calls == 1


def test_refresh_happens_at_two_thirds_of_the_lifetime(world) -> None:
    clock, source, _, refresher = world
    refresher.refresh_due()
    assert source.calls == 1
    clock.now += 39.9
    assert refresher.refresh_due() == pytest.approx(0.1, abs=0.01)
    assert source.calls == 1
    clock.now += 0.1
    refresher.refresh_due()
    assert source.calls == 2
    assert refresher.token("contoso").value == "token-2"


def test_outage_while_token_valid_is_retried_with_backoff_and_polls_go_on(world) -> None:
    clock, source, log, refresher = world
    token = refresher.token("contoso")
    clock.now += 40
    source.failures = [TokenUnavailable("503")] * 4
    waits = []
    for _ in range(4):
        refresher.refresh_due()
        wait = refresher.refresh_due()  # not yet due again: no request
        waits.append(wait)
        assert refresher.token("contoso") is token  # still valid: polls unharmed
        clock.now += wait
    assert source.calls == 5
    assert waits == sorted(waits)  # exponential
    assert [line[0] for line in log.lines if line[1] == "token request failed"] == [
        "warning",
        "debug",
        "debug",
        "debug",
    ]
    refresher.refresh_due()
    assert refresher.token("contoso").value == "token-6"


def test_retry_after_from_the_platform_is_honoured(world) -> None:
    clock, source, _, refresher = world
    refresher.token("contoso")
    clock.now += 40
    source.failures = [TokenUnavailable("429", retry_after=30.0)]
    refresher.refresh_due()
    assert refresher.refresh_due() == pytest.approx(30.0)


def test_without_a_valid_token_polls_fail_fast_until_the_next_retry(world) -> None:
    clock, source, _, refresher = world
    source.failures = [TokenUnavailable("down")] * 3
    with pytest.raises(TokenUnavailable):
        refresher.token("contoso")
    with pytest.raises(TokenUnavailable, match="no valid token"):
        refresher.token("contoso")
    assert source.calls == 1  # the second poll did not hammer the platform
    clock.now += 100
    with pytest.raises(TokenUnavailable):
        refresher.token("contoso")
    assert source.calls == 2


def test_retries_without_token_stay_within_half_the_poll_interval(world) -> None:
    clock, source, _, refresher = world
    source.failures = [TokenUnavailable("down")] * 20
    for _ in range(20):
        refresher.refresh_due()
        wait = refresher.refresh_due()
        assert wait <= 2.5
        clock.now += wait


def test_rejected_configuration_is_logged_once_with_hint_and_stays_permanent(world) -> None:
    clock, source, log, refresher = world
    rejected = TokenRejected("bad secret (AADSTS7000215)", code=7000215, hint="use the Value")
    source.failures = [rejected, rejected]
    with pytest.raises(TokenRejected):
        refresher.token("contoso")
    with pytest.raises(TokenRejected):
        refresher.token("contoso")  # no request: waits for its retry time
    clock.now += 400
    with pytest.raises(TokenRejected):
        refresher.token("contoso")
    errors = [kw for level, event, kw in log.lines if level == "error"]
    assert len(errors) == 1
    assert errors[0]["aadsts"] == 7000215
    assert errors[0]["hint"] == "use the Value"


def test_recovery_is_announced(world) -> None:
    clock, source, _, refresher = world
    woken: list[str] = []
    refresher.when_recovered(woken.append)
    source.failures = [TokenUnavailable("down")]
    refresher.refresh_due()
    assert woken == []
    clock.now += 10
    refresher.refresh_due()
    assert woken == ["contoso"]


def test_reported_expiry_renews_at_once(world) -> None:
    _, source, _, refresher = world
    token = refresher.token("contoso")
    refresher.report_expired("contoso", token)
    assert refresher.token("contoso") is not token
    assert source.calls == 2


def test_one_request_in_flight_however_many_polls_wait(world) -> None:
    _, source, _, refresher = world
    source.delay = 0.2
    results: list[AccessToken] = []
    threads = [
        threading.Thread(target=lambda: results.append(refresher.token("contoso")))
        for _ in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert source.calls == 1
    assert len({id(r) for r in results}) == 1


def test_a_retry_never_falls_after_the_token_stops_being_usable(world) -> None:
    clock, source, _, refresher = world
    token = refresher.token("contoso")
    clock.now += 40
    source.failures = [TokenUnavailable("503")] * 12
    usable = token.expires_at - 6  # handed out until 10% of its life before expiry
    while clock.now < usable:
        refresher.refresh_due()
        wait = refresher.refresh_due()
        assert clock.now + wait <= usable
        clock.now += wait
    # The last try came exactly as the token ran out, not minutes after.
    assert clock.now == pytest.approx(usable)


def test_set_tenants_keeps_tokens_adds_and_drops_tenants_and_renews_a_changed_credential(
    world: tuple[Clock, Source, Log, TokenRefresher],
) -> None:
    clock, source, _, refresher = world
    first = refresher.token("contoso")
    refresher.set_tenants(["contoso", "fabrikam"])
    assert refresher.token("contoso") is first  # kept: no request
    assert refresher.token("fabrikam").value != first.value
    calls = source.calls
    refresher.set_tenants(["contoso"], renew={"contoso"})
    with pytest.raises(TokenUnavailable):
        refresher.token("fabrikam")
    # Until the renewed token arrives, polls go on with the current one.
    assert refresher.token("contoso") is first
    assert refresher.refresh_due() >= 0
    assert source.calls == calls + 1
    renewed = refresher.token("contoso")
    assert renewed is not first
    clock.now += 1
    assert refresher.refresh_due() > 30  # not renewed again: next at 2/3 of its lifetime
    assert refresher.token("contoso") is renewed
