"""``mailsyncd run`` with a configuration value it cannot use: an exit code and a line saying
why, never a traceback (SPEC "Command line": validate accepts exactly what run accepts)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from support.daemon import MAILSYNCD

# Generous: the command stops before it connects to anything.
RUN_TIMEOUT = 60


def _run(tmp_path: Path, database_url: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "secret").write_text("x\n")
    config = tmp_path / "mailsyncd.yaml"
    config.write_text(
        f"database: {{url: '{database_url}'}}\n"
        "http: {listen: '127.0.0.1:0'}\n"
        "tenants:\n"
        "  - {name: contoso, tenant_id: contoso.onmicrosoft.com,"
        " client_id: 00000000-0000-0000-0000-000000000000,"
        " credential: {client_secret_file: secret}}\n"
        "mailboxes: []\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSYNCD_")}
    return subprocess.run(
        [MAILSYNCD, "run", "-c", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


@pytest.mark.parametrize(
    "url",
    ["mysql://mailsyncd@db/mailsyncd", "postgresql+psycopg2://mailsyncd@db/mailsyncd"],
)
def test_run_refuses_an_unsupported_database_with_exit_2_and_no_traceback(
    tmp_path: Path, url: str
) -> None:
    result = _run(tmp_path, url)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "database.url: database" in output
    assert "is not supported" in output
    assert "Traceback" not in output


def test_run_reports_an_sqlite_path_it_cannot_create_with_exit_1_and_no_traceback(
    tmp_path: Path,
) -> None:
    (tmp_path / "a-file").write_text("")
    result = _run(tmp_path, f"sqlite:///{tmp_path}/a-file/sub/mailsyncd.db")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert '"event": "cannot start"' in output
    assert "Not a directory" in output
    assert "Traceback" not in output
