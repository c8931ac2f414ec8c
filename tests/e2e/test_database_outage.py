"""The database unreachable for 20 seconds while polls run (cut through a TCP proxy in the test).

The daemon keeps running, reports the failures, and catches up after the database returns
with nothing lost and nothing stored twice (SPEC "Guarantees", "HTTP endpoints", "Metrics").
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from localenv.imap import FixtureImap
from localenv.seed import realistic_messages
from support.daemon import DaemonProcess, MailboxSpec, view_rows, wait_for
from support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow

PG_ADDRESS = ("127.0.0.1", 5432)
OUTAGE_SECONDS = 20.0
# After the outage a mailbox may still be waiting out its backoff: the n-th consecutive
# failure waits min(900, 1 s * 2**(n-1)) * uniform(0.5, 1.0). Polls fail from the first
# second of the cut; with the shortest jitter the 6th failure can come as late as ~16-20 s
# into the cut and then wait 16-32 s, so the first retry may start up to ~32 s after the
# restore. 60 s leaves room for that retry plus the catch-up poll itself.
CATCH_UP_TIMEOUT = 60.0


@pytest.fixture
def pg_proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy(PG_ADDRESS).start()
    try:
        yield proxy
    finally:
        proxy.close()


def _rows(database_url: str, mailbox: str) -> list[dict[str, Any]]:
    try:
        return view_rows(database_url, mailbox)
    except Exception:  # noqa: BLE001 - the schema may not exist yet while the daemon starts
        return []


def _readyz(daemon: DaemonProcess) -> tuple[int, list[str]]:
    status, body = daemon.get("/readyz")
    with contextlib.suppress(ValueError):
        return status, list(json.loads(body).get("reasons", []))
    return status, []


def test_database_outage_of_20s_keeps_daemon_alive_reports_it_and_catches_up_without_loss(
    make_pg_url: Callable[[], str],
    pg_proxy: TcpProxy,
    mailsyncd: Callable[..., DaemonProcess],
    fixture_imap: Callable[[str], FixtureImap],
    new_mailbox: Callable[..., str],
) -> None:
    direct_url = make_pg_url()  # the test reads here; the daemon goes through the proxy
    proxied_url = make_url(direct_url).set(port=pg_proxy.port).render_as_string(hide_password=False)
    mailboxes = [new_mailbox(prefix="outage-a"), new_mailbox(prefix="outage-b")]
    imaps = {m: fixture_imap(m) for m in mailboxes}
    expected: dict[str, list[str]] = {}
    for seed, (mailbox, imap) in enumerate(imaps.items()):
        messages = list(realistic_messages(25 + 10 * seed, seed=300 + seed, big_every=0))
        imap.append("INBOX", messages)
        expected[mailbox] = [str(m.expected.message_id) for m in messages]
    before_outage = {m: len(ids) for m, ids in expected.items()}

    daemon = mailsyncd(
        database_url=proxied_url,
        mailboxes=[MailboxSpec(m) for m in mailboxes],
        poll_interval="1s",
    )
    for mailbox in mailboxes:
        wait_for(
            lambda m=mailbox: len(_rows(direct_url, m)) == len(expected[m]),
            timeout=60,
            what=f"first sync of {mailbox}",
        )
    daemon.wait_ready(timeout=10)
    failures_before = daemon.metric("mailsyncd_poll_failures_total", reason="database")
    successes_before = daemon.metric("mailsyncd_polls_total", outcome="success")

    # -- the outage ---------------------------------------------------------------------
    pg_proxy.cut()
    cut_at = time.monotonic()
    seen = dict.fromkeys(("healthz_failed", "ready_503", "failures_grew", "backoff"), False)
    batch = 0
    next_append = cut_at
    while time.monotonic() - cut_at < OUTAGE_SECONDS:
        # An observation window of fixed length, not a wait for a condition: the outage
        # must last its 20 s whatever the daemon does.
        assert daemon.running()
        if daemon.get("/healthz")[0] != 200:
            seen["healthz_failed"] = True
        status, reasons = _readyz(daemon)
        if status == 503 and any("database" in r for r in reasons):
            seen["ready_503"] = True
        if daemon.metric("mailsyncd_poll_failures_total", reason="database") > failures_before:
            seen["failures_grew"] = True
        if daemon.metric("mailsyncd_mailboxes", state="backoff") >= 1:
            seen["backoff"] = True
        if time.monotonic() >= next_append:
            for offset, (mailbox, imap) in enumerate(imaps.items()):
                messages = list(realistic_messages(3, seed=1000 + 10 * batch + offset))
                imap.append("INBOX", messages)
                expected[mailbox] += [str(m.expected.message_id) for m in messages]
            batch += 1
            next_append += 4.0
        time.sleep(0.25)
    # Nothing reached the database during the cut: the proxy really cut the daemon off.
    for mailbox in mailboxes:
        assert len(_rows(direct_url, mailbox)) == before_outage[mailbox]
    assert batch >= 4  # appends at 0, 4, 8, 12 and 16 s: both mailboxes got mail while cut off
    assert pg_proxy.refused > 0, "the daemon never tried to reconnect during the outage"
    assert not seen["healthz_failed"], "/healthz must stay 200: the scheduler loop is alive"
    assert seen["ready_503"], f"/readyz never said 503 + database: last {_readyz(daemon)}"
    assert seen["failures_grew"], "mailsyncd_poll_failures_total{reason=database} did not grow"
    assert seen["backoff"], "no mailbox was reported in state backoff"

    # -- the database is back -----------------------------------------------------------
    pg_proxy.restore()
    restored_at = time.monotonic()
    for mailbox in mailboxes:
        wait_for(
            lambda m=mailbox: len(_rows(direct_url, m)) >= len(expected[m]),
            timeout=CATCH_UP_TIMEOUT - (time.monotonic() - restored_at),
            what=f"catch-up of {mailbox}",
        )
    print(f"caught up {time.monotonic() - restored_at:.1f}s after the database returned")
    wait_for(lambda: daemon.get("/readyz")[0] == 200, timeout=15, what="/readyz 200 again")
    assert daemon.metric("mailsyncd_polls_total", outcome="success") > successes_before

    for mailbox in mailboxes:
        rows = view_rows(direct_url, mailbox)
        assert all(r["folder"] == "INBOX" and r["deleted_at"] is None for r in rows)
        assert len({r["uidvalidity"] for r in rows}) == 1
        uids = [r["uid"] for r in rows]
        assert len(set(uids)) == len(uids), "a message stored twice"
        assert uids == list(range(1, len(expected[mailbox]) + 1))
        assert sorted(r["message_id"] for r in rows) == sorted(expected[mailbox])

    assert daemon.running()
    assert daemon.stop() == 0
    failures = [
        line
        for line in daemon.log_lines()
        if line["event"] == "mailbox poll failed" and line.get("reason") == "database"
    ]
    assert failures, "the outage must be logged with reason=database"
    assert all(line["level"] in ("warning", "debug") for line in failures)
