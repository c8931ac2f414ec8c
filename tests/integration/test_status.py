"""``mailsyncd status`` in process against real SQLite and PostgreSQL databases.

The statuses are written by ``SqlStore.save_statuses`` (what the daemon calls) and read back by
the command through the view ``mailbox_status``; the real console script is run in
``tests/e2e/test_status_cli.py``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from daemon.cli import main
from daemon.status import MailboxStatus
from daemon.store.migrate import current_revision, migrate
from daemon.store.repository import SqlStore
from localenv.env import free_port
from support.status import healthy_status

UTC = dt.UTC
TENANT_ID = "00000000-0000-0000-0000-000000000001"
CLIENT_ID = "00000000-0000-0000-0000-000000000002"
CONFIGURED = ("one@contoso.test", "two@contoso.test", "never@fabrikam.test")

MakeEngine = Callable[[str], sa.Engine]
Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Returns a function writing a valid configuration for a database URL."""
    counter = iter(range(1_000_000))

    def write(url: str, addresses: Sequence[str] = CONFIGURED) -> Path:
        config = {
            "database": {"url": url},
            "tenants": [
                {
                    "name": name,
                    "tenant_id": TENANT_ID,
                    "client_id": CLIENT_ID,
                    # Never read by `status`, which works where secrets are not mounted.
                    "credential": {"client_secret_file": str(tmp_path / "not-mounted")},
                }
                for name in ("contoso", "fabrikam")
            ],
            "mailboxes": [
                {"address": a, "tenant": a.split("@")[1].split(".")[0]} for a in addresses
            ],
        }
        path = tmp_path / f"config-{next(counter)}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """Returns a function running ``mailsyncd ARGS`` in process: (exit code, stdout, stderr)."""

    def run_(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run_


def status(mailbox: str, **changes: Any) -> MailboxStatus:
    now = dt.datetime.now(UTC)
    return healthy_status(mailbox, polled=now, succeeded=now - dt.timedelta(seconds=30), **changes)


FAILING = {
    "state": "auth_failed",
    "owner": "pod-b",
    "last_success_at": None,
    "consecutive_failures": 4,
    "last_error_reason": "auth",
    "last_error": "AUTHENTICATE failed",
    "hint": "grant the app access to the mailbox",
    "initial_sync_remaining": 250,
}


@pytest.fixture
def saved(database_url: str, make_engine: MakeEngine) -> str:
    """A migrated database holding the statuses of two configured and one removed mailbox."""
    engine = make_engine(database_url)
    migrate(engine)
    SqlStore(engine).save_statuses(
        [
            status("one@contoso.test"),
            status("two@contoso.test", **FAILING),
            status("gone@contoso.test", state="removed", owner=None),
        ]
    )
    return database_url


def _table_rows(out: str) -> dict[str, list[str]]:
    """The table's mailbox lines by address, split on whitespace (detail lines left out)."""
    lines = out.splitlines()
    return {line.split()[0]: line.split() for line in lines[1:] if not line.startswith(" ")}


def test_table_shows_every_stored_and_configured_mailbox(
    saved: str, write_config: Callable[..., Path], run: Run
) -> None:
    code, out, err = run("status", "-c", str(write_config(saved)))

    assert (code, err) == (0, "")
    assert out.splitlines()[0].split()[:3] == ["MAILBOX", "TENANT", "STATE"]
    rows = _table_rows(out)
    assert list(rows) == [
        "gone@contoso.test",
        "never@fabrikam.test",
        "one@contoso.test",
        "two@contoso.test",
    ]
    assert rows["one@contoso.test"][1:] == [
        "contoso",
        "ok",
        "pod-a",
        "30s",
        "ago",
        "0",
        "-",
        "done",
    ]
    assert rows["two@contoso.test"][1:] == [
        "contoso",
        "auth_failed",
        "pod-b",
        "never",
        "4",
        "auth",
        "250",
        "left",
    ]
    assert rows["never@fabrikam.test"][1:6] == ["fabrikam", "-", "-", "never", "polled"]
    assert rows["gone@contoso.test"][2:4] == ["removed", "-"]
    lines = out.splitlines()
    below = lines[lines.index(next(x for x in lines if x.startswith("two@"))) + 1 :]
    assert below[:2] == [
        "    error: AUTHENTICATE failed",
        "    hint: grant the app access to the mailbox",
    ]


def test_json_is_one_document_with_the_spec_fields(
    saved: str, write_config: Callable[..., Path], run: Run
) -> None:
    code, out, err = run("status", "-c", str(write_config(saved)), "--json")

    assert (code, err) == (0, "")
    document = json.loads(out)
    assert list(document) == ["mailboxes"]
    by_address = {entry["mailbox"]: entry for entry in document["mailboxes"]}
    assert list(by_address) == sorted(by_address)
    two = by_address["two@contoso.test"]
    assert {key: two[key] for key in FAILING} == FAILING
    assert dt.datetime.fromisoformat(two["last_poll_at"]).utcoffset() == dt.timedelta(0)
    never = by_address["never@fabrikam.test"]
    assert (never["tenant"], never["state"], never["last_success_at"]) == ("fabrikam", None, None)
    assert list(never) == list(two)


def test_mailbox_filter_is_case_insensitive_and_names_unknown_addresses(
    saved: str, write_config: Callable[..., Path], run: Run
) -> None:
    config = str(write_config(saved))

    code, out, err = run(
        "status",
        "-c",
        config,
        "--mailbox",
        "TWO@Contoso.TEST",
        "--mailbox",
        "never@fabrikam.test",
        "--mailbox",
        "gone@contoso.test",
        "--mailbox",
        "nobody@contoso.test",
    )

    assert code == 0
    assert list(_table_rows(out)) == [
        "gone@contoso.test",  # not configured any more: the database still tells
        "never@fabrikam.test",
        "two@contoso.test",
    ]
    assert err == "mailsyncd: nobody@contoso.test: not configured and no status in the database\n"

    code, out, _ = run("status", "-c", config, "--mailbox", "One@contoso.test", "--json")
    assert code == 0
    assert [entry["mailbox"] for entry in json.loads(out)["mailboxes"]] == ["one@contoso.test"]


def test_a_database_without_the_schema_lists_every_mailbox_as_never_polled_and_stays_empty(
    database_url: str, make_engine: MakeEngine, write_config: Callable[..., Path], run: Run
) -> None:
    engine = make_engine(database_url)
    with engine.connect():  # the database exists (a SQLite file too), its schema does not
        pass

    code, out, err = run("status", "-c", str(write_config(database_url)))

    assert code == 0
    assert "no mailsyncd schema yet" in err
    assert {row[2] for row in _table_rows(out).values()} == {"-"}
    assert len(_table_rows(out)) == len(CONFIGURED)
    assert current_revision(engine) is None  # status never migrates


def test_a_schema_behind_head_is_exit_1_with_the_fix(
    database_url: str, make_engine: MakeEngine, write_config: Callable[..., Path], run: Run
) -> None:
    engine = make_engine(database_url)
    migrate(engine)
    with engine.begin() as connection:
        connection.execute(sa.text("DROP VIEW mailbox_status"))
        connection.execute(sa.text("DROP TABLE mailbox_states"))
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '0001'"))

    code, out, err = run("status", "-c", str(write_config(database_url)))

    assert (code, out) == (1, "")
    assert err.startswith("mailsyncd: cannot read mailbox status from the database: ")
    assert "mailbox_status" in err
    assert "run mailsyncd migrate" in err
    assert len(err.splitlines()) == 1


def test_unreachable_postgresql_is_exit_1_in_one_line_without_the_password(
    write_config: Callable[..., Path], run: Run
) -> None:
    url = f"postgresql+psycopg://root:Sup3rS3cret@127.0.0.1:{free_port()}/mailsyncd"

    code, out, err = run("status", "-c", str(write_config(url)), "--json")

    assert (code, out) == (1, "")
    assert err.startswith("mailsyncd: cannot read mailbox status from the database: ")
    assert len(err.splitlines()) == 1
    assert "Traceback" not in err
    assert "Sup3rS3cret" not in err


def test_a_missing_sqlite_file_is_exit_1_and_is_not_created(
    tmp_path: Path, write_config: Callable[..., Path], run: Run
) -> None:
    database = tmp_path / "nothing-here" / "mailsyncd.db"

    code, _, err = run("status", "-c", str(write_config(f"sqlite:///{database}")))

    assert code == 1
    assert f"SQLite file {database} does not exist" in err
    assert not database.parent.exists()


def test_a_bad_configuration_is_exit_2(
    make_sqlite_url: Callable[[], str], write_config: Callable[..., Path], run: Run
) -> None:
    path = write_config(make_sqlite_url())
    path.write_text(path.read_text() + "colour: blue\n")

    code, out, err = run("status", "-c", str(path))

    assert (code, out) == (2, "")
    assert "colour" in err


def test_nothing_configured_and_nothing_stored_says_so(
    make_sqlite_url: Callable[[], str],
    make_engine: MakeEngine,
    write_config: Callable[..., Path],
    run: Run,
) -> None:
    url = make_sqlite_url()
    migrate(make_engine(url))

    code, out, _ = run("status", "-c", str(write_config(url, addresses=())))

    assert (code, out) == (0, "no mailboxes configured and none in the database\n")
