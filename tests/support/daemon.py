"""Helpers to run the real ``mailsyncd`` command as a subprocess and read what it wrote."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from localenv.env import EnvInfo

MAILSYNCD = str(Path(sys.executable).with_name("mailsyncd"))


def wait_for(
    condition: Callable[[], Any], *, timeout: float, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what or condition}: last={last!r}")


@dataclass
class MailboxSpec:
    address: str
    tenant: str = "contoso"
    folders: Sequence[str] = ("INBOX",)


def make_config(
    info: EnvInfo,
    *,
    database_url: str,
    mailboxes: Sequence[MailboxSpec],
    poll_interval: str = "1s",
    full_scan_interval: str = "15m",
    http_port: int,
    level: str = "info",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "database": {"url": database_url},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "tls": {"ca_file": info.ca_file},
        "logging": {"level": level, "format": "json"},
        "defaults": {"poll_interval": poll_interval, "full_scan_interval": full_scan_interval},
        "tenants": [info.tenant_config(t.name) for t in info.tenants],
        "mailboxes": [
            {"address": m.address, "tenant": m.tenant, "folders": list(m.folders)}
            for m in mailboxes
        ],
    }
    config.update(extra or {})
    return config


def through(info: EnvInfo, proxy_port: int) -> dict[str, Any]:
    """Config overrides that send every tenant's IMAP traffic through a proxy on loopback."""
    return {"tenants": [info.tenant_config(t.name, imap_port=proxy_port) for t in info.tenants]}


@dataclass
class DaemonProcess:
    config_path: Path
    log_path: Path
    http_port: int
    proc: subprocess.Popen[bytes] | None = None
    exit_codes: list[int] = field(default_factory=list)

    def start(self) -> DaemonProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [MAILSYNCD, "run", "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("MAILSYNCD_")},
        )
        log.close()
        return self

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}{path}", timeout=5
            ) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def wait_ready(self, timeout: float = 60) -> None:
        wait_for(
            lambda: self.running() and self.get("/readyz")[0] == 200,
            timeout=timeout,
            what="mailsyncd /readyz",
        )

    def running(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"mailsyncd exited early; log:\n{self.log_text()[-4000:]}")
        return True

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include ``labels``."""
        _, text = self.get("/metrics")
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric, _, rest = head.partition("{")
            if metric != name:
                continue
            if all(f'{k}="{v}"' in rest for k, v in labels.items()):
                total += float(value)
        return total

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.exit_codes.append(code)
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_text().splitlines() if line.strip()]


def count_rows(database_url: str, mailbox: str) -> int:
    """Rows of ``mailbox`` in ``message_metadata``; 0 while the daemon has not made the schema."""
    engine = sa.create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            query = sa.text("SELECT count(*) FROM message_metadata WHERE mailbox = :m")
            return int(connection.execute(query, {"m": mailbox}).scalar_one())
    except (sa.exc.OperationalError, sa.exc.ProgrammingError):  # no file, or no view yet
        return 0
    finally:
        engine.dispose()


def events(daemon: DaemonProcess, name: str) -> list[dict[str, Any]]:
    """The daemon's log lines of event ``name``."""
    return [line for line in daemon.log_lines() if line.get("event") == name]


def epoch(line: dict[str, Any]) -> float:
    """The Unix time of a log line."""
    return dt.datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()


def view_rows(database_url: str, mailbox: str | None = None) -> list[dict[str, Any]]:
    """Rows of ``message_metadata`` (optionally of one mailbox), as dicts."""
    engine = sa.create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            query = "SELECT * FROM message_metadata"
            params: dict[str, Any] = {}
            if mailbox is not None:
                query += " WHERE mailbox = :mailbox"
                params["mailbox"] = mailbox
            result = connection.execute(sa.text(query + " ORDER BY mailbox, folder, uid"), params)
            return [dict(row._mapping) for row in result]
    finally:
        engine.dispose()
