"""The operator's view of a running daemon: probes, unknown paths and the log stream (SPEC
"HTTP endpoints", "Logs")."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from localenv.env import EnvInfo, free_port
from localenv.imap import FixtureImap
from localenv.seed import realistic_messages
from support.daemon import DaemonProcess, MailboxSpec, wait_for
from support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow

LEVELS = {"debug", "info", "warning", "error", "critical"}
POLL_FIELDS = {
    "mailbox",
    "tenant",
    "folder",
    "duration_s",
    "new",
    "updated",
    "deleted",
    "outcome",
}


def _readyz(daemon: DaemonProcess) -> tuple[int, list[str]]:
    status, body = daemon.get("/readyz")
    with contextlib.suppress(ValueError):
        return status, list(json.loads(body).get("reasons", []))
    return status, []


@pytest.fixture
def pg_proxy(make_pg_url: Callable[[], str]) -> Iterator[tuple[TcpProxy, str]]:
    """A fresh PostgreSQL database reachable only through a proxy; yields (proxy, its URL)."""
    url = make_url(make_pg_url())
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432)).start()
    try:
        proxied = url.set(host="127.0.0.1", port=proxy.port)
        yield proxy, proxied.render_as_string(hide_password=False)
    finally:
        proxy.close()


def test_readyz_is_503_while_the_database_is_unreachable_and_200_after_healthz_always_200(
    pg_proxy: tuple[TcpProxy, str],
    mailsyncd: Callable[..., DaemonProcess],
    fixture_imap: Callable[[str], FixtureImap],
    new_mailbox: Callable[..., str],
) -> None:
    proxy, database_url = pg_proxy
    mailbox = new_mailbox(prefix="readyz")
    fixture_imap(mailbox).append("INBOX", realistic_messages(3, seed=41, big_every=0))
    daemon = mailsyncd(database_url=database_url, mailboxes=[MailboxSpec(mailbox)])
    daemon.wait_ready()
    assert daemon.get("/healthz")[0] == 200
    assert _readyz(daemon) == (200, [])

    healthz: list[int] = []

    def readyz_is(status: int) -> bool:
        # /healthz is sampled on every round: it must not follow /readyz.
        healthz.append(daemon.get("/healthz")[0])
        assert daemon.running()
        return _readyz(daemon)[0] == status

    proxy.cut()
    wait_for(lambda: readyz_is(503), timeout=30, what="/readyz 503 with the database cut off")
    status, reasons = _readyz(daemon)
    assert (status, reasons) == (503, ["database unreachable"])
    # It stays 503 while the database is away, not a one-off.
    for _ in range(5):
        assert not readyz_is(200)
        time.sleep(0.2)

    proxy.restore()
    wait_for(lambda: readyz_is(200), timeout=30, what="/readyz 200 after the database returned")
    assert _readyz(daemon) == (200, [])
    assert healthz, "never sampled"
    assert set(healthz) == {200}, f"/healthz answered {sorted(set(healthz))}"
    assert daemon.stop() == 0


def test_unknown_http_paths_answer_404_next_to_the_known_ones(
    make_sqlite_url: Callable[[], str],
    mailsyncd: Callable[..., DaemonProcess],
    new_mailbox: Callable[..., str],
) -> None:
    daemon = mailsyncd(database_url=make_sqlite_url(), mailboxes=[MailboxSpec(new_mailbox())])
    daemon.wait_ready()
    for path in ("/metrics", "/healthz", "/readyz", "/metrics?name[]=x"):
        assert daemon.get(path)[0] == 200, path
    for path in ("/", "/metric", "/metrics/x", "/healthz/", "/ready", "/favicon.ico", "/%2e%2e/"):
        status, body = daemon.get(path)
        assert status == 404, (path, status, body)
    assert daemon.stop() == 0


def _parse_line(number: int, line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError:
        pytest.fail(f"log line {number} is not JSON: {line!r}")
    assert isinstance(record, dict), (number, line)
    assert record.get("level") in LEVELS, (number, line)
    assert isinstance(record.get("event"), str), (number, line)
    assert record["event"], (number, line)
    stamp = dt.datetime.fromisoformat(str(record.get("timestamp")))
    assert stamp.utcoffset() == dt.timedelta(0), (number, line)
    return record


def test_every_log_line_of_a_run_with_sync_failure_and_sigterm_is_json_with_level_time_event(
    env_info: EnvInfo,
    tmp_path: Path,
    mailsyncd: Callable[..., DaemonProcess],
    fixture_imap: Callable[[str], FixtureImap],
    new_mailbox: Callable[..., str],
) -> None:
    wrong_secret = tmp_path / "wrong-secret"
    wrong_secret.write_text("not-the-secret-of-this-app-0123456789\n")
    synced = new_mailbox(prefix="logs")
    refused = new_mailbox("fabrikam.test", prefix="logs-token")
    unreachable = new_mailbox(prefix="logs-connect")
    seeded = list(realistic_messages(5, seed=42, big_every=0))
    fixture_imap(synced).append("INBOX", seeded)
    started_at = dt.datetime.now(dt.UTC)
    daemon = mailsyncd(
        database_url=f"sqlite:///{tmp_path / 'db' / 'mailsyncd.db'}",
        mailboxes=[
            MailboxSpec(synced),
            MailboxSpec(refused, tenant="wrongsecret"),
            MailboxSpec(unreachable, tenant="closedport"),
        ],
        # debug: every line there is, including those of SQLAlchemy, APScheduler and MSAL.
        level="debug",
        extra={
            "tenants": [
                env_info.tenant_config("contoso", like="contoso"),
                env_info.tenant_config(
                    "wrongsecret", like="fabrikam", secret_file=str(wrong_secret)
                ),
                env_info.tenant_config("closedport", like="contoso", imap_port=free_port()),
            ]
        },
    )
    daemon.wait_ready()

    def events() -> list[dict[str, Any]]:
        return [json.loads(line) for line in daemon.log_text().splitlines() if line.strip()]

    def seen(event: str, **fields: Any) -> bool:
        return any(
            r.get("event") == event and all(r.get(k) == v for k, v in fields.items())
            for r in events()
        )

    wait_for(lambda: seen("poll", mailbox=synced, new=5), timeout=60, what="the sync")
    wait_for(lambda: seen("poll", mailbox=synced, new=0), timeout=30, what="an idle poll")
    wait_for(
        lambda: (
            seen("mailbox poll failed", mailbox=refused, reason="token")
            and seen("mailbox poll failed", mailbox=unreachable, reason="connect")
        ),
        timeout=60,
        what="both failures logged",
    )
    assert daemon.stop() == 0

    text = daemon.log_text()
    assert text.endswith("\n")
    records = [_parse_line(n, line) for n, line in enumerate(text.splitlines(), 1)]
    assert len(records) > 20
    assert all(
        dt.datetime.fromisoformat(r["timestamp"]) >= started_at - dt.timedelta(seconds=1)
        for r in records
    )
    names = [r["event"] for r in records]
    for event in ("starting", "database schema at head", "running", "stopping", "stopped"):
        assert event in names, event
    assert names.index("starting") < names.index("running") < names.index("stopping")
    assert names.index("stopping") < names.index("stopped")
    assert records[names.index("stopped")]["exit_code"] == 0
    assert records[names.index("starting")]["level"] == "info"
    assert {r["level"] for r in records} >= {"debug", "info", "warning"}

    polls = [r for r in records if r["event"] == "poll"]
    assert all(r.keys() >= POLL_FIELDS for r in polls), polls
    first = next(r for r in polls if r["mailbox"] == synced and r["new"] == 5)
    assert (first["level"], first["tenant"], first["folder"], first["outcome"]) == (
        "info",
        "contoso",
        "INBOX",
        "success",
    )
    assert (first["updated"], first["deleted"]) == (0, 0)
    assert isinstance(first["duration_s"], float | int)
    # Polls that changed nothing are debug lines (SPEC: idle mailboxes must not flood the logs).
    idle = [
        r
        for r in polls
        if r["mailbox"] == synced and not (r["new"] or r["updated"] or r["deleted"])
    ]
    assert idle
    assert {(r["level"], r["outcome"]) for r in idle} == {("debug", "success")}

    failures = [r for r in records if r["event"] == "mailbox poll failed"]
    token = next(r for r in failures if r["mailbox"] == refused)
    connect = next(r for r in failures if r["mailbox"] == unreachable)
    assert (token["level"], token["tenant"], token["state"]) == (
        "warning",
        "wrongsecret",
        "auth_failed",
    )
    assert token.get("hint"), token
    assert (connect["level"], connect["tenant"], connect["state"]) == (
        "warning",
        "closedport",
        "backoff",
    )
    rejected = [r for r in records if r["event"] == "token request rejected"]
    assert rejected, "the refused token request must be logged"
    assert rejected[0]["aadsts"] == 7000215
    assert rejected[0]["tenant"] == "wrongsecret"

    # The secrets the daemon read, and the tokens it obtained (JWTs), are in no line.
    for secret in (env_info.tenant("contoso").secret, wrong_secret.read_text().strip()):
        assert secret not in text
    assert "eyJ" not in text


def test_token_failure_lines_lose_none_of_their_own_fields_to_redaction(
    env_info: EnvInfo,
    tmp_path: Path,
    mailsyncd: Callable[..., DaemonProcess],
    new_mailbox: Callable[..., str],
) -> None:
    wrong_secret = tmp_path / "wrong-secret"
    wrong_secret.write_text("not-the-secret-of-this-app-0123456789\n")
    daemon = mailsyncd(
        database_url=f"sqlite:///{tmp_path / 'db' / 'mailsyncd.db'}",
        mailboxes=[MailboxSpec(new_mailbox("fabrikam.test"), tenant="wrongsecret")],
        extra={
            "tenants": [
                env_info.tenant_config(
                    "wrongsecret", like="fabrikam", secret_file=str(wrong_secret)
                )
            ]
        },
    )

    def rejected() -> dict[str, Any] | None:
        return next((r for r in daemon.log_lines() if r["event"] == "token request rejected"), None)

    line = wait_for(rejected, timeout=30, what="the token request rejected line")
    assert daemon.stop() == 0
    # Nothing in this line is a secret: the error, the counts, the AADSTS code and the hint.
    assert [key for key, value in line.items() if value == "[REDACTED]"] == []
