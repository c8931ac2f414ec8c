"""``validate`` accepts exactly what ``run`` accepts (SPEC "Command line").

Each value that ``run`` parses again at start (``http.listen`` by the HTTP server,
``database.url`` by the engine, ``tls.ca_file`` by the TLS context) goes through both: the
configuration model, which ``validate`` and ``run`` both load with, and the part of ``run`` that
uses the value. A value one of them accepts and the other refuses is a bug either way: a file
that validates and then crashes ``run``, or a rule that ``validate`` enforces for nothing.
The values are every example the documentation and the example files write, and a list of bad
ones.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from daemon.cli import main
from daemon.config import ConfigError, config_from_mapping
from daemon.http import HealthServer
from daemon.store.engine import create_engine_for
from daemon.tls import make_ssl_context
from localenv import pki

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTED_FILES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "config").glob("*.yaml")),
    *sorted((ROOT / "deploy" / "compose").glob("*.y*ml")),
]
# a URL with something after "://" (a bare `mysql://` in prose names what is refused)
DB_URL = re.compile(r"\b(?:postgresql|postgres|sqlite|mysql)[+a-z0-9]*://[^\s`'\"|)]+")
LISTEN_LINE = re.compile(r"\blisten:\s*([^\s#]+)")
BACKTICKED_ADDRESS = re.compile(r"`(\[[0-9a-f:]+\]:\d+|[0-9.]+:\d+)`")


def _documented(pattern: re.Pattern[str]) -> list[str]:
    found: dict[str, None] = {}
    for path in DOCUMENTED_FILES:
        for match in pattern.finditer(path.read_text(encoding="utf-8")):
            found[match.group(match.lastindex or 0)] = None
    return list(found)


DOCUMENTED_URLS = _documented(DB_URL)
DOCUMENTED_LISTEN = [*_documented(LISTEN_LINE), *_documented(BACKTICKED_ADDRESS)]

GOOD_URLS = [
    "postgresql://mailsyncd@db/mailsyncd",
    "postgres://mailsyncd@db/mailsyncd",
    "postgresql+psycopg://u:p%40ss@[::1]:5432/db?sslmode=require",
    "postgresql+psycopg://u@/db?host=/run/postgresql",
    "sqlite:///relative/mailsyncd.db",
    "sqlite+pysqlite:////var/lib/mailsyncd/mailsyncd.db",
    "sqlite:///x.db?timeout=5",
]
BAD_URLS = [
    "mysql://mailsyncd@db/mailsyncd",
    "mysql+pymysql://mailsyncd@db/mailsyncd",
    "oracle://u@db/x",
    "postgresql+psycopg2://u@db/x",
    "postgresql+asyncpg://u@db/x",
    "sqlite+aiosqlite:///x.db",
    "postgresql+psycopg://u@db:notaport/x",
    "sqlite://host/x.db",
    "sqlite:///x.db?timeout=soon",
    "sqlite:///x.db?colour=blue",
    "not a url",
    "db.example.com/mailsyncd",
]
GOOD_LISTEN = [
    "127.0.0.1:0",
    "[::1]:9464",
    "[::]:0",
    ":9464",
    "localhost:8080",
    "metrics.internal.example:9464",
    " 0.0.0.0:9464 ",
]
BAD_LISTEN = [
    "9464",
    "localhost",
    "::1:9464",
    "[::1]9464",
    "[::1]",
    "[localhost]:9464",
    "host:http",
    "host:70000",
    "host:",
    "host:-1",
    "999.1.1.1:9464",
    "bad host:9464",
    "host_name:9464",
    f"{'a' * 64}.example:9464",
    "h\u00f6st.example:9464",
]


def _document(**sections: Any) -> dict[str, Any]:
    return {
        "database": {"url": "sqlite:///mailsyncd.db"},
        "tenants": [
            {
                "name": "contoso",
                "tenant_id": "contoso.onmicrosoft.com",
                "client_id": "00000000-0000-0000-0000-000000000000",
                "credential": {"client_secret_env": "SECRET"},
            }
        ],
        "mailboxes": [{"address": "a@contoso.example", "tenant": "contoso"}],
        **sections,
    }


def validate_accepts(tmp_path: Path, **sections: Any) -> bool:
    try:
        config_from_mapping(_document(**sections), environ={"SECRET": "x"}, base_dir=tmp_path)
    except ConfigError:
        return False
    return True


def run_accepts_url(url: str) -> bool:
    try:
        engine = create_engine_for(url.strip())
    except Exception:  # noqa: BLE001 - anything raised here would be a traceback in run
        return False
    engine.dispose()
    return True


def run_accepts_listen(listen: str) -> bool:
    try:
        HealthServer(listen, CollectorRegistry(), health=lambda: True, readiness=list)
    except Exception:  # noqa: BLE001 - anything raised here would be a traceback in run
        return False
    return True


def test_the_documentation_has_examples_to_check() -> None:
    """Guards the extraction: finding nothing would make the documented cases vacuous."""
    assert "sqlite:////var/lib/mailsyncd/mailsyncd.db" in DOCUMENTED_URLS
    assert "postgresql+psycopg://mailsyncd@db/mailsyncd" in DOCUMENTED_URLS
    assert {"0.0.0.0:9464", "[::]:9464", "127.0.0.1:9464"} <= set(DOCUMENTED_LISTEN)


@pytest.mark.parametrize("url", DOCUMENTED_URLS)
def test_every_documented_database_url_is_accepted_by_validate_and_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.chdir(tmp_path)  # a relative SQLite path creates its directory here
    assert validate_accepts(tmp_path, database={"url": url}), url
    assert run_accepts_url(url), url


@pytest.mark.parametrize("listen", DOCUMENTED_LISTEN)
def test_every_documented_listen_address_is_accepted_by_validate_and_run(
    tmp_path: Path, listen: str
) -> None:
    assert validate_accepts(tmp_path, http={"listen": listen}), listen
    assert run_accepts_listen(listen), listen


@pytest.mark.parametrize("url", GOOD_URLS + BAD_URLS)
def test_validate_and_run_agree_on_a_database_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.chdir(tmp_path)
    expected = url in GOOD_URLS
    assert validate_accepts(tmp_path, database={"url": url}) is expected
    assert run_accepts_url(url) is expected


@pytest.mark.parametrize("url", GOOD_URLS + BAD_URLS)
def test_a_url_from_url_env_is_checked_like_url(tmp_path: Path, url: str) -> None:
    def load() -> None:
        config_from_mapping(
            _document(database={"url_env": "DATABASE_URL"}),
            environ={"SECRET": "x", "DATABASE_URL": url},
            base_dir=tmp_path,
        )

    if url in GOOD_URLS:
        load()
        return
    with pytest.raises(ConfigError) as caught:
        load()
    assert [issue.path for issue in caught.value.errors] == ["database.url_env"]
    assert "DATABASE_URL" in str(caught.value)


@pytest.mark.parametrize("listen", GOOD_LISTEN + BAD_LISTEN)
def test_validate_and_run_agree_on_a_listen_address(tmp_path: Path, listen: str) -> None:
    expected = listen in GOOD_LISTEN
    assert validate_accepts(tmp_path, http={"listen": listen}) is expected
    assert run_accepts_listen(listen) is expected


@pytest.mark.parametrize(
    "url", ["postgresql+psycopg_async://u@db/x", "postgresql+psycopg://u@db:99999/x"]
)
def test_a_url_run_builds_an_engine_for_but_cannot_connect_with_is_refused(
    tmp_path: Path, url: str
) -> None:
    """The engine builds and fails at the first connection: refuse such a URL up front."""
    assert not validate_accepts(tmp_path, database={"url": url})


def test_an_unsupported_database_is_named_without_the_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_mapping(
            _document(database={"url": "mysql://u:hunter2-secret@db/x"}),
            environ={"SECRET": "x"},
            base_dir=tmp_path,
        )
    [issue] = caught.value.errors
    assert issue.path == "database.url"
    assert "'mysql' is not supported" in issue.message
    assert "postgresql+psycopg://" in issue.message
    assert "hunter2" not in str(caught.value)


def test_a_ca_file_without_a_certificate_is_refused_by_validate_as_by_run(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("this is not a certificate\n")
    with pytest.raises(Exception):  # noqa: B017, PT011 - what run's TLS context raises
        make_ssl_context(str(not_pem))
    assert not validate_accepts(tmp_path, tls={"ca_file": str(not_pem)})

    good = tmp_path / "good.pem"
    good.write_bytes(pki.cert_pem(pki.CertificateAuthority.create("values test CA").cert))
    make_ssl_context(str(good))
    assert validate_accepts(tmp_path, tls={"ca_file": str(good)})


def test_run_exits_2_naming_the_key_for_an_unsupported_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before the fix this URL passed the configuration and raised out of ``run``."""
    config = tmp_path / "mailsyncd.yaml"
    config.write_text(
        "database: {url: 'mysql://mailsyncd@db/mailsyncd'}\n"
        "tenants:\n"
        "  - {name: contoso, tenant_id: contoso.onmicrosoft.com,"
        " client_id: 00000000-0000-0000-0000-000000000000,"
        " credential: {client_secret_file: secret}}\n"
        "mailboxes: []\n"
    )
    (tmp_path / "secret").write_text("x\n")

    assert main(["run", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert "database.url: database 'mysql' is not supported" in err
    assert "Traceback" not in err
