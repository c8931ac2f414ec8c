"""Persistent IMAP sessions of the real `mailsyncd run` (SPEC "Persistent IMAP sessions").

Some tests talk to Dovecot through the local environment's Exchange mode
(``localenv.exchange_proxy``): it advertises Exchange Online's capabilities and ends a session
whose token has expired with ``* BYE Session invalidated - AccessTokenExpired``, which Dovecot
never does, and it can drop or stall connections on demand.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from localenv.client import IdpControl
from localenv.env import EnvInfo
from localenv.exchange_proxy import ExchangeProxy
from localenv.imap import FixtureImap
from localenv.seed import realistic_messages
from support.daemon import DaemonProcess, MailboxSpec, events, through, view_rows, wait_for
from support.rig import MailboxRig

pytestmark = pytest.mark.slow


class Rig(MailboxRig):
    """Runs the daemon on a fresh SQLite file, polling every second."""

    def run(self, mailboxes: list[str], **kwargs: Any) -> DaemonProcess:
        return self.mailsyncd(
            database_url=self.url,
            mailboxes=[MailboxSpec(m) for m in mailboxes],
            poll_interval="1s",
            **kwargs,
        )


@pytest.fixture
def rig(
    mailsyncd: Callable[..., DaemonProcess],
    fixture_imap: Callable[[str], FixtureImap],
    new_mailbox: Callable[..., str],
    env_info: EnvInfo,
    make_sqlite_url: Callable[[], str],
) -> Rig:
    return Rig(mailsyncd, fixture_imap, new_mailbox, env_info, make_sqlite_url())


def failures(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return events(daemon, "mailbox poll failed")


def test_polls_reuse_one_session_per_mailbox_so_logins_stay_flat_while_polls_grow(
    rig: Rig,
) -> None:
    mailboxes = rig.mailboxes(4)
    daemon = rig.run(mailboxes)
    polls = lambda: daemon.metric("mailsyncd_polls_total", outcome="success")  # noqa: E731
    wait_for(lambda: polls() >= 8, timeout=60, what="two polls per mailbox")
    logins = daemon.metric("mailsyncd_imap_logins_total", outcome="success")
    assert logins == len(mailboxes)
    assert daemon.metric("mailsyncd_imap_sessions_open") == len(mailboxes)
    start = polls()
    wait_for(lambda: polls() >= start + 5 * len(mailboxes), timeout=60, what="more polls")
    assert daemon.metric("mailsyncd_imap_logins_total") == logins
    # New mail still arrives on a session that stayed open.
    rig.fixture_imap(mailboxes[0]).append("INBOX", realistic_messages(1, seed=999))
    wait_for(lambda: rig.rows(mailboxes[0]) == 3, timeout=15, what="new mail")
    assert daemon.metric("mailsyncd_imap_logins_total") == logins
    assert daemon.stop() == 0
    assert "IMAP sessions still closing" not in daemon.log_text()


RUN_TOKENS = 150.0


@pytest.mark.timeout(RUN_TOKENS + 120)
def test_with_60s_tokens_every_session_logs_in_again_before_its_token_expires(
    rig: Rig, idp: IdpControl, exchange: ExchangeProxy
) -> None:
    idp.set_token_lifetime(60)
    mailboxes = rig.mailboxes(5)
    daemon = rig.run(mailboxes, extra=through(rig.info, exchange.port))
    wait_for(lambda: all(rig.rows(m) == 2 for m in mailboxes), timeout=60, what="initial syncs")
    started = time.monotonic()
    while time.monotonic() - started < RUN_TOKENS:
        daemon.running()
        time.sleep(1.0)
    # 2.5 token lifetimes: the proxy would have ended any session used past its token.
    assert exchange.expired_sessions == 0
    assert failures(daemon) == []
    assert daemon.metric("mailsyncd_polls_total", outcome="failure") == 0
    polls = daemon.metric("mailsyncd_polls_total", outcome="success")
    assert polls >= len(mailboxes) * RUN_TOKENS * 0.7
    # About one login per token lifetime per mailbox: a new token every 40 s, each session
    # moves to it between then and 6 s before its own token expires (54 s).
    per_mailbox = daemon.metric("mailsyncd_imap_logins_total", outcome="success") / len(mailboxes)
    assert 2 <= per_mailbox <= 2 + RUN_TOKENS / 40, per_mailbox
    rig.fixture_imap(mailboxes[0]).append("INBOX", realistic_messages(1, seed=998))
    wait_for(lambda: rig.rows(mailboxes[0]) == 3, timeout=15, what="new mail")
    assert daemon.stop() == 0


def test_sessions_the_network_drops_between_polls_are_replaced_without_a_failed_poll(
    rig: Rig, exchange: ExchangeProxy
) -> None:
    mailboxes = rig.mailboxes(3)
    daemon = rig.run(mailboxes, extra=through(rig.info, exchange.port))
    polls = lambda: daemon.metric("mailsyncd_polls_total", outcome="success")  # noqa: E731
    wait_for(lambda: polls() >= 2 * len(mailboxes), timeout=60, what="initial polls")
    for round_ in range(4):
        logins = exchange.logins
        exchange.drop_idle()
        target = polls() + 2 * len(mailboxes)
        wait_for(lambda t=target: polls() >= t, timeout=30, what=f"polls after drop {round_}")
        assert exchange.logins >= logins + 1
    assert failures(daemon) == []
    assert daemon.metric("mailsyncd_polls_total", outcome="failure") == 0
    rig.fixture_imap(mailboxes[1]).append("INBOX", realistic_messages(1, seed=997))
    wait_for(lambda: rig.rows(mailboxes[1]) == 3, timeout=15, what="new mail")
    assert daemon.stop() == 0


def test_a_server_that_stops_answering_mid_fetch_times_out_and_the_mailbox_recovers(
    rig: Rig, exchange: ExchangeProxy
) -> None:
    mailbox = rig.new_mailbox()
    total = 5000
    rig.fixture_imap(mailbox).append("INBOX", realistic_messages(total, seed=31, big_every=0))
    extra = through(rig.info, exchange.port)
    extra["limits"] = {"fetch_batch_size": 100, "imap_timeout": "2s"}
    daemon = rig.run([mailbox], extra=extra)
    wait_for(
        lambda: 0 < rig.rows(mailbox) < total,
        timeout=60,
        interval=0.02,
        what="initial sync under way",
    )
    exchange.stall()
    wait_for(
        lambda: daemon.metric("mailsyncd_poll_failures_total", reason="timeout") >= 1,
        timeout=30,
        what="the stalled poll timed out",
    )
    assert rig.rows(mailbox) < total
    exchange.unstall()
    wait_for(lambda: rig.rows(mailbox) == total, timeout=120, what="sync completed")
    uids = [row["uid"] for row in view_rows(rig.url, mailbox)]
    assert uids == list(range(1, total + 1))
    timed_out = [line for line in failures(daemon) if line.get("reason") == "timeout"]
    assert timed_out
    assert timed_out[0]["mailbox"] == mailbox
    assert daemon.stop() == 0
