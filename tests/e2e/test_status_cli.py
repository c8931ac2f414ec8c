"""The real ``mailsyncd status`` command on real databases (SPEC "Mailbox status": exit 0 / 1).

Statuses are written the way the daemon writes them (``SqlStore.save_statuses``) into a
database that ``mailsyncd migrate`` created; the many cases of the command run in process in
``tests/integration/test_status.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from daemon.status import MailboxStatus
from daemon.store.repository import SqlStore
from localenv.env import free_port
from support.daemon import MAILSYNCD
from support.status import healthy_status

CLI_TIMEOUT = 60
NOW = dt.datetime.now(dt.UTC)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MAILSYNCD, *args],
        env={k: v for k, v in os.environ.items() if not k.startswith("MAILSYNCD_")},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def _config(tmp_path: Path, url: str) -> Path:
    secret = tmp_path / "client-secret"
    secret.write_text("not-a-real-secret\n")
    config: dict[str, Any] = {
        "database": {"url": url},
        "tenants": [
            {
                "name": "contoso",
                "tenant_id": "00000000-0000-0000-0000-000000000001",
                "client_id": "00000000-0000-0000-0000-000000000002",
                "credential": {"client_secret_file": str(secret)},
            }
        ],
        "mailboxes": [
            {"address": "healthy@contoso.test", "tenant": "contoso"},
            {"address": "Failing@contoso.test", "tenant": "contoso"},
            {"address": "never@contoso.test", "tenant": "contoso"},
        ],
    }
    path = tmp_path / "mailsyncd.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _status(mailbox: str, **changes: Any) -> MailboxStatus:
    return healthy_status(mailbox, polled=NOW, succeeded=NOW, **{"owner": "mailsyncd-0", **changes})


def test_status_prints_the_table_and_the_json_of_a_real_database(
    tmp_path: Path, database_url: str, make_engine: Callable[[str], sa.Engine]
) -> None:
    config = str(_config(tmp_path, database_url))
    migrated = _cli("migrate", "-c", config)
    assert migrated.returncode == 0, migrated.stderr
    SqlStore(make_engine(database_url)).save_statuses(
        [
            _status("healthy@contoso.test"),
            _status(
                "failing@contoso.test",
                state="backoff",
                consecutive_failures=2,
                last_error_reason="timeout",
                last_error="IMAP read timed out after 60 s",
                hint="check the network path to the IMAP server",
            ),
        ]
    )

    table = _cli("status", "-c", config)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert [line.split()[:3] for line in lines if not line.startswith(" ")] == [
        ["MAILBOX", "TENANT", "STATE"],
        ["failing@contoso.test", "contoso", "backoff"],
        ["healthy@contoso.test", "contoso", "ok"],
        ["never@contoso.test", "contoso", "-"],
    ]
    assert "    hint: check the network path to the IMAP server" in lines
    assert "never polled" in lines[-1]

    filtered = _cli("status", "-c", config, "--mailbox", "FAILING@contoso.test", "--json")
    assert filtered.returncode == 0, filtered.stderr
    [entry] = json.loads(filtered.stdout)["mailboxes"]
    assert entry["mailbox"] == "failing@contoso.test"
    assert (entry["state"], entry["consecutive_failures"]) == ("backoff", 2)
    assert (entry["last_error_reason"], entry["owner"]) == ("timeout", "mailsyncd-0")


def test_status_against_an_unreachable_database_exits_1_with_one_line(tmp_path: Path) -> None:
    closed_port = free_port()  # bound then closed: nothing listens there
    config = _config(tmp_path, f"postgresql+psycopg://root@127.0.0.1:{closed_port}/mailsyncd")

    started = time.monotonic()
    result = _cli("status", "-c", str(config))

    assert result.returncode == 1, result.stdout + result.stderr
    assert time.monotonic() - started < 15
    assert result.stdout == ""
    assert result.stderr.startswith("mailsyncd: cannot read mailbox status from the database:")
    assert len(result.stderr.splitlines()) == 1
