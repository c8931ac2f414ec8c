"""Replicas of the real `mailsyncd run` sharing mailboxes through PostgreSQL leases.

SPEC "Replicas": every enabled mailbox has exactly one owner among the live replicas; a killed
or cut-off replica's mailboxes move within `lease_ttl` plus an interval; SIGTERM hands the
leases back before exit; a cut-off replica stops polling before another can take over.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from localenv.imap import FixtureImap
from localenv.seed import realistic_messages
from support.daemon import DaemonProcess, MailboxSpec, count_rows, epoch, events, wait_for
from support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow

INTERVAL = 2.0
SETTLE = 120.0
"""Deadline for shares to settle and first syncs to finish on a busy machine."""


class Fleet:
    """Replicas started with one configuration and one PostgreSQL database."""

    def __init__(
        self,
        mailsyncd: Callable[..., DaemonProcess],
        url: str,
        mailboxes: list[str],
        lease_ttl: str,
    ) -> None:
        self._mailsyncd = mailsyncd
        self.url = url
        self.mailboxes = mailboxes
        self._lease_ttl = lease_ttl

    def start(self, url: str | None = None) -> DaemonProcess:
        return self._mailsyncd(
            database_url=url or self.url,
            mailboxes=[MailboxSpec(m) for m in self.mailboxes],
            poll_interval=f"{INTERVAL:g}s",
            level="debug",
            extra={"cluster": {"lease_ttl": self._lease_ttl}},
        )

    def owners(self) -> dict[str, str | None]:
        engine = sa.create_engine(self.url, poolclass=NullPool)
        try:
            with engine.connect() as connection:
                rows = connection.execute(sa.text("SELECT mailbox, owner FROM mailbox_leases"))
                return {str(m): o for m, o in rows}
        finally:
            engine.dispose()


def owned(daemon: DaemonProcess) -> int:
    return int(daemon.metric("mailsyncd_mailboxes_owned"))


def polls_since(daemon: DaemonProcess, since: float) -> Counter[str]:
    return Counter(line["mailbox"] for line in events(daemon, "poll") if epoch(line) >= since)


@pytest.fixture
def seeded(
    fixture_imap: Callable[[str], FixtureImap], new_mailbox: Callable[..., str]
) -> Callable[[int], list[str]]:
    def make(count: int) -> list[str]:
        addresses = [new_mailbox() for _ in range(count)]
        for address in addresses:
            fixture_imap(address).append("INBOX", realistic_messages(1, seed=3))
        return addresses

    return make


def synced(url: str, mailboxes: list[str], rows: int) -> bool:
    return all(count_rows(url, m) == rows for m in mailboxes)


def test_three_replicas_split_thirty_mailboxes_and_a_killed_ones_move(
    mailsyncd: Callable[..., DaemonProcess],
    make_pg_url: Callable[[], str],
    seeded: Callable[[int], list[str]],
    fixture_imap: Callable[[str], FixtureImap],
) -> None:
    fleet = Fleet(mailsyncd, make_pg_url(), seeded(30), lease_ttl="4s")
    replicas = [fleet.start() for _ in range(3)]
    wait_for(
        lambda: sorted(owned(r) for r in replicas) == [10, 10, 10],
        timeout=SETTLE,
        what="10/10/10",
    )
    wait_for(lambda: synced(fleet.url, fleet.mailboxes, 1), timeout=SETTLE, what="first syncs")
    by_owner = Counter(fleet.owners().values())
    assert sorted(by_owner.values()) == [10, 10, 10]

    # Over several intervals each mailbox is polled by one replica, about once per interval.
    since = time.time()
    time.sleep(5 * INTERVAL)
    polls = [polls_since(r, since) for r in replicas]
    for mailbox in fleet.mailboxes:
        pollers = [i for i, counts in enumerate(polls) if counts[mailbox]]
        assert len(pollers) == 1, (mailbox, pollers)
        assert 2 <= polls[pollers[0]][mailbox] <= 7, (mailbox, polls[pollers[0]][mailbox])

    # kill -9: its leases expire and the two others take its mailboxes over.
    victim, survivors = replicas[2], replicas[:2]
    theirs = [m for m in fleet.mailboxes if polls[2][m]]
    victim.kill()
    killed_at = time.time()
    wait_for(lambda: sum(owned(r) for r in survivors) == 30, timeout=SETTLE, what="takeover")
    taken = [epoch(line) for r in survivors for line in events(r, "leases taken")]
    print(f"takeover finished {max(taken) - killed_at:.1f} s after kill -9 (lease_ttl 4 s)")
    assert sorted(owned(r) for r in survivors) == [15, 15]
    for mailbox in theirs:
        fixture_imap(mailbox).append("INBOX", realistic_messages(1, seed=11))
    wait_for(lambda: synced(fleet.url, theirs, 2), timeout=SETTLE, what="mail after takeover")
    engine = sa.create_engine(fleet.url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            duplicates = connection.execute(
                sa.text(
                    "SELECT mailbox, folder, uidvalidity, uid, count(*) FROM message_metadata"
                    " GROUP BY 1, 2, 3, 4 HAVING count(*) > 1"
                )
            ).all()
    finally:
        engine.dispose()
    assert duplicates == []
    for replica in survivors:
        assert replica.stop() == 0


def test_sigterm_hands_the_leases_back_before_exit(
    mailsyncd: Callable[..., DaemonProcess],
    make_pg_url: Callable[[], str],
    seeded: Callable[[int], list[str]],
) -> None:
    fleet = Fleet(mailsyncd, make_pg_url(), seeded(12), lease_ttl="60s")
    first, second = fleet.start(), fleet.start()
    wait_for(lambda: (owned(first), owned(second)) == (6, 6), timeout=SETTLE, what="6/6 split")
    replica = json.loads(first.get("/status")[1])["replica"]
    assert Counter(fleet.owners().values())[replica] == 6
    assert first.stop(signal.SIGTERM) == 0
    handed = events(first, "leases handed back")
    assert [line["released"] for line in handed] == [6]
    # Handed back, not left to expire: no lease names it once it has exited, and the other
    # takes them all long before the 60 s lease_ttl would have freed them.
    assert replica not in set(fleet.owners().values())
    wait_for(lambda: owned(second) == 12, timeout=30, what="takeover after SIGTERM")
    assert second.stop() == 0


@pytest.fixture
def db_proxy(make_pg_url: Callable[[], str]) -> Iterator[tuple[str, str, TcpProxy]]:
    """A database URL, and the same database through a proxy that a test can cut."""
    url = make_pg_url()
    parsed = make_url(url)
    proxy = TcpProxy((parsed.host or "127.0.0.1", parsed.port or 5432)).start()
    try:
        cut_url = parsed.set(host="127.0.0.1", port=proxy.port)
        yield url, cut_url.render_as_string(hide_password=False), proxy
    finally:
        proxy.close()


def test_a_cut_off_replica_stops_polling_before_another_takes_its_mailboxes(
    mailsyncd: Callable[..., DaemonProcess],
    db_proxy: tuple[str, str, TcpProxy],
    seeded: Callable[[int], list[str]],
) -> None:
    url, cut_url, proxy = db_proxy
    fleet = Fleet(mailsyncd, url, seeded(10), lease_ttl="4s")
    cut_off, other = fleet.start(cut_url), fleet.start()
    wait_for(lambda: (owned(cut_off), owned(other)) == (5, 5), timeout=SETTLE, what="5/5")
    wait_for(lambda: synced(url, fleet.mailboxes, 1), timeout=SETTLE, what="first syncs")

    proxy.cut()
    cut_at = time.time()
    wait_for(lambda: owned(other) == 10, timeout=SETTLE, what="takeover of the cut-off mailboxes")
    stopped = [
        epoch(line)
        for line in events(
            cut_off, "leases not renewed in time; stopped polling until the database answers"
        )
        if epoch(line) >= cut_at
    ]
    assert stopped, cut_off.log_text()[-3000:]
    taken = [epoch(line) for line in events(other, "leases taken") if epoch(line) >= cut_at]
    assert taken
    print(f"after the cut: stopped {stopped[0] - cut_at:.1f} s, taken {min(taken) - cut_at:.1f} s")
    assert stopped[0] < min(taken), (stopped[0] - cut_at, min(taken) - cut_at)
    assert owned(cut_off) == 0
    # After it stopped it polls nothing (so it writes nothing) until it holds leases again.
    quiet_since = stopped[0] + 1.0  # a poll running at the stop ends at its next boundary
    time.sleep(2 * INTERVAL)
    assert not polls_since(cut_off, quiet_since)

    proxy.restore()  # it comes back and gets its share again, taken over from the other
    wait_for(lambda: (owned(cut_off), owned(other)) == (5, 5), timeout=SETTLE, what="rejoin")
    holders = fleet.owners()
    assert len(holders) == 10
    assert all(holder is not None for holder in holders.values())
    for replica in (cut_off, other):
        assert replica.stop() == 0
