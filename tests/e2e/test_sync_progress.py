"""Progress of an initial sync that runs longer than 10 s: event, gauge and mailbox status.

The sync is held past 10 s by stalling the server mid-fetch (the local environment's Exchange
mode), so the test does not depend on how fast the daemon is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from daemon.runtime.worker import PROGRESS_EVERY
from localenv.env import EnvInfo
from localenv.exchange_proxy import ExchangeProxy
from localenv.imap import FixtureImap
from localenv.seed import realistic_messages
from support.daemon import DaemonProcess, MailboxSpec, count_rows, events, through, wait_for

pytestmark = pytest.mark.slow


def _status_remaining(daemon: DaemonProcess, mailbox: str) -> int | None:
    code, body = daemon.get("/status")
    if code != 200:
        return None
    for entry in json.loads(body)["mailboxes"]:
        if entry["mailbox"] == mailbox:
            return int(entry["initial_sync_remaining"])
    return None


def test_initial_sync_longer_than_10_s_logs_sync_progress_and_shows_remaining(
    *,
    make_sqlite_url: Callable[[], str],
    mailsyncd: Callable[..., DaemonProcess],
    fixture_imap: Callable[[str], FixtureImap],
    new_mailbox: Callable[..., str],
    exchange: ExchangeProxy,
    env_info: EnvInfo,
) -> None:
    database_url = make_sqlite_url()
    mailbox = new_mailbox()
    total = 5000
    fixture_imap(mailbox).append("INBOX", realistic_messages(total, seed=41, big_every=0))
    extra = through(env_info, exchange.port)
    extra["limits"] = {"fetch_batch_size": 20}
    daemon = mailsyncd(database_url=database_url, mailboxes=[MailboxSpec(mailbox)], extra=extra)
    wait_for(
        lambda: 0 < count_rows(database_url, mailbox) < total,
        timeout=60,
        interval=0.02,
        what="initial sync under way",
    )
    exchange.stall()
    stalled = time.monotonic()
    try:
        wait_for(
            lambda: (
                daemon.metric("mailsyncd_initial_sync_remaining_messages", tenant="contoso") > 0
            ),
            timeout=30,
            what="remaining messages gauge",
        )
        remaining = _status_remaining(daemon, mailbox)
        assert remaining is not None
        assert 0 < remaining < total
        # Held until the folder's sync has run longer than the event interval.
        wait_for(
            lambda: time.monotonic() - stalled > PROGRESS_EVERY,
            timeout=PROGRESS_EVERY + 30,
            interval=0.5,
            what="the sync to run past the progress interval",
        )
    finally:
        exchange.unstall()
    progress = wait_for(
        lambda: events(daemon, "sync_progress"), timeout=60, what="a sync_progress event"
    )
    event = progress[0]
    assert event["level"] == "info"
    assert event["mailbox"] == mailbox
    assert event["folder"] == "INBOX"
    assert 0 < event["fetched"] < total
    assert event["fetched"] + event["remaining"] == total
    assert event["rate_per_s"] > 0
    wait_for(lambda: count_rows(database_url, mailbox) == total, timeout=120, what="all rows")
    wait_for(
        lambda: (
            daemon.metric("mailsyncd_initial_sync_remaining_messages", tenant="contoso") == 0
            and _status_remaining(daemon, mailbox) == 0
        ),
        timeout=30,
        what="nothing left to fetch",
    )
    assert daemon.stop() == 0
