"""Push through IMAP IDLE with the real `mailsyncd run` (SPEC "Push (IMAP IDLE)").

With ``idle: true`` a message delivered to a mailbox's first folder reaches the database within
about a second, long before the poll interval (120 s here) would bring it. Exchange's ways of
ending an IDLE come from the local environment's Exchange mode (``localenv.exchange_proxy``):
a ``* BYE`` for an expired token, a dropped connection, a server without IDLE.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from localenv.client import IdpControl
from localenv.env import EnvInfo
from localenv.exchange_proxy import ExchangeProxy
from localenv.imap import FixtureImap
from localenv.seed import realistic_messages
from support.daemon import DaemonProcess, MailboxSpec, count_rows, events, through, wait_for
from support.rig import MailboxRig

pytestmark = pytest.mark.slow

INTERVAL = "120s"
"""Longer than any test waits for mail: what arrives came through IDLE."""
ROUNDS = 12
SETTLE = 90.0


class Rig(MailboxRig):
    """Runs the daemon with ``idle: true`` and a poll interval longer than any wait here."""

    def run(
        self, mailboxes: list[str], *, limits: dict[str, Any] | None = None, **extra: Any
    ) -> DaemonProcess:
        config_extra: dict[str, Any] = {
            "defaults": {"poll_interval": INTERVAL, "full_scan_interval": "15m", "idle": True},
            **extra,
        }
        if limits:
            config_extra["limits"] = limits
        return self.mailsyncd(
            database_url=self.url,
            mailboxes=[MailboxSpec(m) for m in mailboxes],
            level="debug",
            extra=config_extra,
        )

    def deliver(self, mailbox: str, seed: int) -> str:
        """Append one message; its Message-ID."""
        message = next(realistic_messages(1, seed=seed))
        self.fixture_imap(mailbox).append("INBOX", [message])
        return str(message.expected.message_id)

    def arrived(self, message_id: str) -> bool:
        engine = sa.create_engine(self.url, poolclass=NullPool)
        try:
            with engine.connect() as connection:
                query = sa.text("SELECT count(*) FROM message_metadata WHERE message_id = :m")
                return bool(connection.execute(query, {"m": message_id}).scalar_one())
        except sa.exc.DBAPIError:
            return False
        finally:
            engine.dispose()


@pytest.fixture
def rig(
    mailsyncd: Callable[..., DaemonProcess],
    fixture_imap: Callable[[str], FixtureImap],
    new_mailbox: Callable[..., str],
    env_info: EnvInfo,
    make_sqlite_url: Callable[[], str],
) -> Rig:
    return Rig(mailsyncd, fixture_imap, new_mailbox, env_info, make_sqlite_url())


def in_idle(daemon: DaemonProcess, count: int) -> None:
    wait_for(
        lambda: daemon.metric("mailsyncd_idle_sessions") == count,
        timeout=SETTLE,
        what=f"{count} mailboxes in IDLE",
    )


def latency(rig: Rig, mailbox: str, seed: int) -> float:
    message_id = rig.deliver(mailbox, seed)
    appended = time.monotonic()
    wait_for(lambda: rig.arrived(message_id), timeout=60, interval=0.02, what="pushed mail")
    return time.monotonic() - appended


def failures(daemon: DaemonProcess) -> float:
    return daemon.metric("mailsyncd_polls_total", outcome="failure")


def test_mail_delivered_to_three_idle_mailboxes_arrives_within_a_second_twelve_times(
    rig: Rig,
) -> None:
    mailboxes = rig.mailboxes(3, messages=1, seed=300)
    daemon = rig.run(mailboxes)
    wait_for(lambda: all(count_rows(rig.url, m) == 1 for m in mailboxes), timeout=SETTLE)
    in_idle(daemon, 3)
    latencies = [
        latency(rig, mailbox, seed=1000 + 10 * round_ + index)
        for round_ in range(ROUNDS)
        for index, mailbox in enumerate(mailboxes)
    ]
    median, worst = statistics.median(latencies), max(latencies)
    count = len(latencies)
    print(f"IDLE push latency over {count} messages: median {median:.3f} s, max {worst:.3f} s")
    # Dovecot itself waits 0.5 s after a change before it tells an IDLE session (it batches
    # notifications), so about 0.52 s each is what a quiet machine measures. The SPEC's p99 of
    # 1 s is the figure `make bench-steady --idle` reports; here, on a machine shared with the
    # rest of the suite: the median under it, and none anywhere near the 120 s of a poll.
    assert median < 1.0, latencies
    assert worst < 20.0, latencies
    assert failures(daemon) == 0
    code, body = daemon.get("/status")
    assert code == 200
    assert {m["mailbox"]: m["idle"] for m in json.loads(body)["mailboxes"]} == dict.fromkeys(
        mailboxes, True
    )
    assert daemon.stop() == 0
    engine = sa.create_engine(rig.url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT mailbox, idle FROM mailbox_status")).all()
    finally:
        engine.dispose()
    assert {mailbox for mailbox, idle in rows if idle} == set(mailboxes)


def test_idle_is_renewed_on_time_and_mail_still_arrives(rig: Rig) -> None:
    mailboxes = rig.mailboxes(2, messages=1, seed=300)
    daemon = rig.run(mailboxes, limits={"idle_renew": "2s"})
    in_idle(daemon, 2)
    polls = daemon.metric("mailsyncd_polls_total", outcome="success")
    # Nothing arrives, the interval is 120 s: only the renewals (DONE, poll, IDLE) poll.
    wait_for(
        lambda: daemon.metric("mailsyncd_polls_total", outcome="success") >= polls + 2 * 3,
        timeout=60,
        what="three renewals of each IDLE",
    )
    assert latency(rig, mailboxes[1], seed=2000) < 20.0
    assert failures(daemon) == 0
    assert daemon.metric("mailsyncd_imap_logins_total", outcome="success") == 2  # same sessions
    assert daemon.stop() == 0


def test_a_dropped_idle_session_is_replaced_and_no_message_is_missed(
    rig: Rig, exchange: ExchangeProxy
) -> None:
    mailboxes = rig.mailboxes(2, messages=1, seed=300)
    daemon = rig.run(mailboxes, **through(rig.info, exchange.port))
    in_idle(daemon, 2)
    logins = exchange.logins
    assert exchange.drop_all() >= 2
    sent = [rig.deliver(mailbox, seed=3000 + i) for i, mailbox in enumerate(mailboxes)]
    wait_for(lambda: all(rig.arrived(m) for m in sent), timeout=60, what="mail after the drop")
    in_idle(daemon, 2)
    assert exchange.logins >= logins + 2
    assert failures(daemon) == 0
    assert events(daemon, "mailbox poll failed") == []
    assert daemon.stop() == 0


def test_an_idle_that_exchange_ends_with_bye_is_replaced_without_a_failed_poll(
    rig: Rig, exchange: ExchangeProxy
) -> None:
    mailboxes = rig.mailboxes(2, messages=1, seed=300)
    daemon = rig.run(mailboxes, **through(rig.info, exchange.port))
    in_idle(daemon, 2)
    assert exchange.expire_all() == 2  # * BYE Session invalidated - AccessTokenExpired
    message_id = rig.deliver(mailboxes[0], seed=4000)
    wait_for(lambda: rig.arrived(message_id), timeout=60, what="mail after the BYE")
    in_idle(daemon, 2)
    assert failures(daemon) == 0
    assert exchange.expired_sessions == 2
    assert daemon.stop() == 0


RUN_TOKENS = 100.0


@pytest.mark.timeout(RUN_TOKENS + 150)
def test_with_60s_tokens_idle_sessions_move_to_new_tokens_before_theirs_expire(
    rig: Rig, idp: IdpControl, exchange: ExchangeProxy
) -> None:
    idp.set_token_lifetime(60)
    mailboxes = rig.mailboxes(3, messages=1, seed=300)
    daemon = rig.run(mailboxes, **through(rig.info, exchange.port))
    in_idle(daemon, 3)
    started = time.monotonic()
    while time.monotonic() - started < RUN_TOKENS:
        daemon.running()
        time.sleep(1.0)
    # Over two token lifetimes of IDLE no session outlived its token on the server.
    assert exchange.expired_sessions == 0
    assert failures(daemon) == 0
    assert latency(rig, mailboxes[2], seed=5000) < 20.0
    assert daemon.stop() == 0


def test_a_server_without_idle_is_polled_and_says_so_once_per_mailbox(
    rig: Rig, env_info: EnvInfo
) -> None:
    proxy = ExchangeProxy(env_info, idle=False).start()
    try:
        mailboxes = rig.mailboxes(2, messages=1, seed=300)
        daemon = rig.run(
            mailboxes,
            **through(rig.info, proxy.port),
            defaults={"poll_interval": "1s", "full_scan_interval": "15m", "idle": True},
        )
        message_id = rig.deliver(mailboxes[0], seed=6000)
        wait_for(lambda: rig.arrived(message_id), timeout=60, what="polled mail")
        polls = daemon.metric("mailsyncd_polls_total", outcome="success")
        wait_for(
            lambda: daemon.metric("mailsyncd_polls_total", outcome="success") >= polls + 4,
            timeout=60,
            what="more polls",
        )
        notices = events(daemon, "the server does not support IDLE; the mailbox is polled")
        assert sorted(line["mailbox"] for line in notices) == sorted(mailboxes)
        assert all(line["level"] == "info" for line in notices)
        assert daemon.metric("mailsyncd_idle_sessions") == 0
        assert daemon.stop() == 0
    finally:
        proxy.close()
