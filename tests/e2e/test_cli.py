"""The real ``mailsyncd`` command line: version, validate, migrate and run's exit codes (SPEC)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from daemon import __version__
from daemon.store.migrate import head_revision
from localenv.env import EnvInfo, free_port
from support.daemon import MAILSYNCD, MailboxSpec, make_config

INLINE_SECRET = "Zq8~inline.SECRET.value-0123456789abcdef"
UNSET_VARIABLE = "MAILSYNCD_TEST_SURELY_UNSET_DATABASE_URL"
CLI_TIMEOUT = 60


def _env(**extra: str) -> dict[str, str]:
    """The test's environment without any MAILSYNCD_ variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSYNCD_")}
    env.pop(UNSET_VARIABLE, None)
    env.update(extra)
    return env


def _cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MAILSYNCD, *args],
        env=_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


@pytest.fixture
def valid_config(env_info: EnvInfo, make_sqlite_url: Callable[[], str]) -> dict[str, Any]:
    """A valid configuration of the local environment: two tenants, three mailboxes."""
    return make_config(
        env_info,
        database_url=make_sqlite_url(),
        mailboxes=[
            MailboxSpec("one@contoso.test"),
            MailboxSpec("two@contoso.test", folders=("INBOX", "Sent Items")),
            MailboxSpec("three@fabrikam.test", tenant="fabrikam"),
        ],
        http_port=free_port(),
    )


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[object], Path]:
    """Returns a function writing a document (a mapping, a list, or raw text) to a new file."""
    counter = iter(range(1_000_000))

    def write(document: object) -> Path:
        path = tmp_path / f"config-{next(counter)}.yaml"
        path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
        return path

    return write


# -- version -----------------------------------------------------------------------------------


def test_version_flag_of_console_script_prints_package_version_and_exits_0() -> None:
    result = _cli("--version")
    assert result.returncode == 0, _output(result)
    assert result.stdout.strip() == f"mailsyncd {__version__}"


def test_python_dash_m_daemon_prints_the_same_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "daemon", "--version"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, _output(result)
    assert result.stdout.strip() == f"mailsyncd {__version__}"


# -- validate ----------------------------------------------------------------------------------


def test_validate_accepts_a_valid_config_and_exits_0(
    valid_config: dict[str, Any], write_config: Callable[[object], Path]
) -> None:
    result = _cli("validate", "-c", str(write_config(valid_config)))
    assert result.returncode == 0, _output(result)
    assert "valid" in result.stdout
    assert "2 tenant(s), 3 mailbox(es)" in result.stdout


def _unknown_top_level(c: dict[str, Any]) -> object:
    c["colour"] = "blue"
    return c


def _unknown_nested(c: dict[str, Any]) -> object:
    c["tenants"][0]["imap"]["hots"] = "imap.example.com"
    return c


def _inline_secret(c: dict[str, Any]) -> object:
    c["tenants"][0]["credential"] = {"client_secret": INLINE_SECRET}
    return c


def _missing_secret_file(c: dict[str, Any]) -> object:
    c["tenants"][1]["credential"] = {"client_secret_file": "/nonexistent/mailsyncd/secret"}
    return c


def _duplicate_address(c: dict[str, Any]) -> object:
    c["mailboxes"][2]["address"] = c["mailboxes"][0]["address"].upper()
    c["mailboxes"][2]["tenant"] = "contoso"
    return c


def _unknown_tenant(c: dict[str, Any]) -> object:
    c["mailboxes"][1]["tenant"] = "northwind"
    return c


def _bad_interval(c: dict[str, Any]) -> object:
    c["defaults"]["poll_interval"] = "5 parsecs"
    return c


def _zero_interval(c: dict[str, Any]) -> object:
    c["mailboxes"][2]["poll_interval"] = "0s"
    return c


def _two_credential_kinds(c: dict[str, Any]) -> object:
    c["tenants"][0]["credential"]["federated_token_file"] = c["tenants"][0]["credential"][
        "client_secret_file"
    ]
    return c


def _missing_database(c: dict[str, Any]) -> object:
    del c["database"]
    return c


def _yaml_syntax_error(c: dict[str, Any]) -> object:
    return yaml.safe_dump(c) + "mailboxes: [unclosed\n"


def _top_level_list(c: dict[str, Any]) -> object:
    return [c]


def _bad_listen(c: dict[str, Any]) -> object:
    c["http"]["listen"] = "localhost"
    return c


def _bad_log_level(c: dict[str, Any]) -> object:
    c["logging"]["level"] = "verbose"
    return c


def _url_env_unset(c: dict[str, Any]) -> object:
    c["database"] = {"url_env": UNSET_VARIABLE}
    return c


# (id, how to break the valid config, key paths the output must name, message fragments)
BROKEN: list[tuple[str, Callable[[dict[str, Any]], object], list[str], list[str]]] = [
    ("unknown-top-level-key", _unknown_top_level, ["colour"], ["unknown key"]),
    ("unknown-nested-key", _unknown_nested, ["tenants[0].imap.hots"], ["unknown key"]),
    (
        "inline-client-secret",
        _inline_secret,
        ["tenants[0].credential.client_secret"],
        ["client_secret_file", "client_secret_env"],
    ),
    (
        "missing-secret-file",
        _missing_secret_file,
        ["tenants[1].credential.client_secret_file"],
        ["does not exist"],
    ),
    ("duplicate-address-other-case", _duplicate_address, ["mailboxes[2].address"], ["duplicate"]),
    ("unknown-tenant", _unknown_tenant, ["mailboxes[1].tenant"], ["northwind"]),
    ("interval-5-parsecs", _bad_interval, ["defaults.poll_interval"], ["5 parsecs"]),
    ("interval-0s", _zero_interval, ["mailboxes[2].poll_interval"], ["at least 1s"]),
    (
        "credential-with-two-kinds",
        _two_credential_kinds,
        ["tenants[0].credential"],
        ["exactly one"],
    ),
    ("missing-database", _missing_database, ["database"], ["missing"]),
    ("yaml-syntax-error", _yaml_syntax_error, ["(file)"], ["invalid YAML", "line"]),
    ("top-level-is-a-list", _top_level_list, ["(file)"], ["mapping"]),
    ("bad-http-listen", _bad_listen, ["http.listen"], ["host:port"]),
    ("bad-logging-level", _bad_log_level, ["logging.level"], ["info"]),
    ("url-env-unset", _url_env_unset, ["database.url_env"], [UNSET_VARIABLE]),
]


def _named_paths(output: str) -> list[str]:
    """The key paths of the listed errors (each printed as ``  path: message``)."""
    return [line.strip().split(": ", 1)[0] for line in output.splitlines() if line.startswith("  ")]


@pytest.mark.parametrize(
    ("breaks", "paths", "fragments"),
    [pytest.param(b, p, f, id=i) for i, b, p, f in BROKEN],
)
def test_validate_rejects_broken_config_with_exit_2_naming_each_key_path(
    valid_config: dict[str, Any],
    write_config: Callable[[object], Path],
    breaks: Callable[[dict[str, Any]], object],
    paths: list[str],
    fragments: list[str],
) -> None:
    result = _cli("validate", "-c", str(write_config(breaks(copy.deepcopy(valid_config)))))
    output = _output(result)
    assert result.returncode == 2, output
    assert sorted(_named_paths(output)) == sorted(paths), output
    for fragment in fragments:
        assert fragment in output, (fragment, output)
    assert INLINE_SECRET not in output


def test_validate_reports_every_error_of_a_file_at_once(
    valid_config: dict[str, Any], write_config: Callable[[object], Path]
) -> None:
    config = copy.deepcopy(valid_config)
    for breaks in (
        _unknown_top_level,
        _unknown_nested,
        _inline_secret,
        _missing_secret_file,
        _duplicate_address,
        _unknown_tenant,
        _bad_interval,
        _bad_listen,
        _bad_log_level,
        _url_env_unset,
    ):
        config = breaks(config)  # type: ignore[assignment]
    result = _cli("validate", "-c", str(write_config(config)))
    output = _output(result)
    assert result.returncode == 2, output
    assert sorted(_named_paths(output)) == sorted(
        [
            "colour",
            "tenants[0].imap.hots",
            "tenants[0].credential.client_secret",
            "tenants[1].credential.client_secret_file",
            "mailboxes[2].address",
            "mailboxes[1].tenant",
            "defaults.poll_interval",
            "http.listen",
            "logging.level",
            "database.url_env",
        ]
    ), output
    assert "(10 error(s))" in output


def test_inline_secret_message_names_both_alternatives_and_never_echoes_the_value(
    valid_config: dict[str, Any], write_config: Callable[[object], Path]
) -> None:
    config = _inline_secret(copy.deepcopy(valid_config))
    result = _cli("validate", "-c", str(write_config(config)))
    output = _output(result)
    assert result.returncode == 2, output
    [line] = [x for x in output.splitlines() if "tenants[0].credential.client_secret:" in x]
    assert "client_secret_file" in line
    assert "client_secret_env" in line
    assert INLINE_SECRET not in output
    # Not even a recognisable part of it (a log scrubber would miss a truncated secret).
    assert INLINE_SECRET[:12] not in output
    assert INLINE_SECRET[-12:] not in output


def test_mailsyncd_config_variable_is_used_when_dash_c_is_absent(
    valid_config: dict[str, Any], write_config: Callable[[object], Path]
) -> None:
    valid = write_config(valid_config)
    broken = write_config(_unknown_top_level(copy.deepcopy(valid_config)))

    result = _cli("validate", env=_env(MAILSYNCD_CONFIG=str(valid)))
    assert result.returncode == 0, _output(result)
    # The variable really is read: pointing it at a broken file fails with that file's error.
    result = _cli("validate", env=_env(MAILSYNCD_CONFIG=str(broken)))
    assert result.returncode == 2, _output(result)
    assert _named_paths(_output(result)) == ["colour"]
    # -c wins over the variable.
    result = _cli("validate", "-c", str(valid), env=_env(MAILSYNCD_CONFIG=str(broken)))
    assert result.returncode == 0, _output(result)
    # Neither: exit 2, saying how to name a file.
    result = _cli("validate")
    assert result.returncode == 2, _output(result)
    assert "MAILSYNCD_CONFIG" in _output(result)


# -- migrate and run ---------------------------------------------------------------------------


def test_migrate_creates_fresh_sqlite_schema_then_second_run_is_a_no_op(
    valid_config: dict[str, Any], write_config: Callable[[object], Path]
) -> None:
    url = valid_config["database"]["url"]
    path = write_config(valid_config)

    first = _cli("migrate", "-c", str(path))
    assert first.returncode == 0, _output(first)
    assert "Running upgrade" in _output(first)
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            assert connection.execute(
                sa.text("SELECT version_num FROM alembic_version")
            ).scalars().all() == [head_revision()]
            connection.execute(
                sa.text(
                    "INSERT INTO mailboxes (address, tenant, created_at) "
                    "VALUES ('kept@contoso.test', 'contoso', CURRENT_TIMESTAMP)"
                )
            )

        second = _cli("migrate", "-c", str(path))
        assert second.returncode == 0, _output(second)
        assert "Running upgrade" not in _output(second)
        with engine.connect() as connection:
            assert connection.execute(
                sa.text("SELECT version_num FROM alembic_version")
            ).scalars().all() == [head_revision()]
            assert connection.execute(sa.text("SELECT address FROM mailboxes")).scalars().all() == [
                "kept@contoso.test"
            ]
            assert (
                connection.execute(sa.text("SELECT count(*) FROM message_metadata")).scalar() == 0
            )
    finally:
        engine.dispose()


def test_migrate_against_unreachable_postgresql_exits_1_quickly(
    valid_config: dict[str, Any], write_config: Callable[[object], Path]
) -> None:
    config = copy.deepcopy(valid_config)
    closed_port = free_port()  # bound then closed: nothing listens there
    config["database"] = {"url": f"postgresql+psycopg://root@127.0.0.1:{closed_port}/mailsyncd"}
    started = time.monotonic()
    result = _cli("migrate", "-c", str(write_config(config)), timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, _output(result)
    # `migrate` tries once (no retry loop as `run` has): a refused connection fails at once.
    assert elapsed < 15, elapsed
    assert "migration failed" in _output(result)


def test_run_with_broken_config_exits_2_without_starting(
    valid_config: dict[str, Any], write_config: Callable[[object], Path]
) -> None:
    config = _unknown_tenant(copy.deepcopy(valid_config))
    result = _cli("run", "-c", str(write_config(config)), timeout=30)
    output = _output(result)
    assert result.returncode == 2, output
    assert "mailboxes[1].tenant" in output
    assert "starting" not in output
    # Nothing was created: the database of a config that does not validate stays untouched.
    database = Path(make_url(valid_config["database"]["url"]).database or "")
    assert not database.exists()
