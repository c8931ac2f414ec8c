"""With SQLite there is exactly one replica (SPEC "Replicas")."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from support.daemon import DaemonProcess, MailboxSpec, wait_for

pytestmark = pytest.mark.slow


def test_a_second_run_on_the_same_sqlite_file_exits_1_naming_the_holder(
    mailsyncd: Callable[..., DaemonProcess],
    make_sqlite_url: Callable[[], str],
    new_mailbox: Callable[..., str],
) -> None:
    url = make_sqlite_url()
    spec = [MailboxSpec(new_mailbox())]
    first = mailsyncd(database_url=url, mailboxes=spec)
    first.wait_ready()
    assert first.metric("mailsyncd_replicas") == 1
    holder = first.proc.pid  # type: ignore[union-attr]
    second = mailsyncd(database_url=url, mailboxes=spec)
    code = second.proc.wait(30)  # type: ignore[union-attr]
    assert code == 1
    refused = [line for line in second.log_lines() if line.get("event") == "cannot start"]
    assert refused, second.log_text()
    assert f"pid {holder}" in refused[0]["error"]
    assert "PostgreSQL" in refused[0]["hint"]
    assert first.running()
    assert first.stop() == 0
    # The lock goes with its holder: the next run starts (after a kill -9 too).
    third = mailsyncd(database_url=url, mailboxes=spec)
    third.wait_ready()
    third.kill()
    fourth = mailsyncd(database_url=url, mailboxes=spec)
    wait_for(lambda: fourth.metric("mailsyncd_replicas") == 1, timeout=60, what="restart")
    assert fourth.stop() == 0
