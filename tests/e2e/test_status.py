"""Mailbox status of the real daemon: the view, `/status` and `mailsyncd status` agree.

The failing mailbox is refused the way Exchange Online refuses a mailbox the application has
no FullAccess on (through the local environment's Exchange mode): the login succeeds and the
next command gets `BAD User is authenticated but not connected.`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from localenv.env import EnvInfo
from localenv.exchange_proxy import ExchangeProxy
from localenv.imap import FixtureImap
from localenv.seed import realistic_messages
from support.daemon import MAILSYNCD, DaemonProcess, MailboxSpec, through, wait_for

pytestmark = pytest.mark.slow

FIELDS = (
    "mailbox",
    "tenant",
    "state",
    "owner",
    "last_poll_at",
    "last_success_at",
    "consecutive_failures",
    "last_error_reason",
    "last_error",
    "hint",
    "initial_sync_remaining",
    "idle",  # beyond the SPEC's columns: SPEC "Push"
)


@pytest.fixture
def refusing(exchange: ExchangeProxy, env_info: EnvInfo) -> tuple[ExchangeProxy, dict[str, Any]]:
    """The Exchange-mode proxy, and the config overrides that send IMAP through it."""
    return exchange, through(env_info, exchange.port)


def view(url: str) -> dict[str, dict[str, Any]]:
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            result = connection.execute(sa.text("SELECT * FROM mailbox_status"))
            return {row.mailbox: dict(row._mapping) for row in result}
    except sa.exc.OperationalError:
        return {}
    finally:
        engine.dispose()


def endpoint(daemon: DaemonProcess) -> dict[str, Any]:
    code, body = daemon.get("/status")
    return json.loads(body) if code == 200 else {}


def test_the_view_the_endpoint_and_the_command_agree_and_name_an_auth_failed_mailbox(
    mailsyncd: Callable[..., DaemonProcess],
    database_url: str,
    fixture_imap: Callable[[str], FixtureImap],
    new_mailbox: Callable[..., str],
    refusing: tuple[ExchangeProxy, dict[str, Any]],
) -> None:
    url = database_url  # PostgreSQL: a replica with leases; the view's owner is the lease's
    healthy, refused = new_mailbox(), new_mailbox()
    fixture_imap(healthy).append("INBOX", realistic_messages(3, seed=5))
    proxy, extra = refusing
    proxy.deny_mailbox(refused)
    daemon = mailsyncd(
        database_url=url,
        mailboxes=[MailboxSpec(healthy), MailboxSpec(refused)],
        poll_interval="2s",
        extra=extra,
    )

    def settled() -> dict[str, Any]:
        mailboxes = {m["mailbox"]: m for m in endpoint(daemon).get("mailboxes", [])}
        ok = mailboxes.get(healthy, {}).get("state") == "ok"
        failed = mailboxes.get(refused, {}).get("state") == "auth_failed"
        return mailboxes if ok and failed else {}

    live = wait_for(settled, timeout=60, what="one mailbox ok, one auth_failed in /status")
    replica = endpoint(daemon)["replica"]
    assert replica
    denied = live[refused]
    assert denied["last_error_reason"] == "auth"
    assert "Add-MailboxPermission" in denied["hint"]
    assert "not connected" in denied["last_error"]
    assert denied["consecutive_failures"] >= 1
    assert denied["last_success_at"] is None
    assert live[healthy]["initial_sync_remaining"] == 0
    assert set(FIELDS) <= set(live[healthy])

    rows = wait_for(
        lambda: (v := view(url)).get(refused, {}).get("state") == "auth_failed" and v,
        timeout=15,
        what="the view catches up",
    )
    assert set(rows[healthy]) == set(FIELDS)
    for address in (healthy, refused):
        assert rows[address]["owner"] == replica
        for key in ("tenant", "state", "consecutive_failures", "last_error_reason", "hint"):
            assert rows[address][key] == live[address][key], (address, key)

    config = str(daemon.config_path)
    printed = subprocess.run(
        [MAILSYNCD, "status", "-c", config, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert printed.returncode == 0, printed.stderr
    by_cli = {m["mailbox"]: m for m in json.loads(printed.stdout)["mailboxes"]}
    for address in (healthy, refused):
        for key in ("tenant", "state", "owner", "last_error_reason", "hint"):
            assert by_cli[address][key] == rows[address][key], (address, key)
    table = subprocess.run(
        [MAILSYNCD, "status", "-c", config, "--mailbox", refused.upper()],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert table.returncode == 0, table.stderr
    assert refused in table.stdout
    assert "auth_failed" in table.stdout
    assert "Add-MailboxPermission" in table.stdout
    assert healthy not in table.stdout
    assert daemon.stop() == 0
