"""Fixtures shared by every test: the local stand-in environment and its helpers.

The environment (Dovecot + identity platform) starts once per test process (once per xdist
worker) and is stopped by PID at the end of the session, whatever the outcome of the tests.
Databases are fresh per test: SQLite files in the test's tmp dir, PostgreSQL databases on the
local server (``MAILSYNCD_TEST_PG`` names another one: a URL of a database the test role may
connect to, with CREATEDB), each dropped at teardown.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool

from daemon.store.engine import create_engine_for
from localenv.client import IdpControl
from localenv.env import EnvInfo, LocalEnv
from localenv.imap import FixtureImap


@pytest.fixture(scope="session")
def local_env() -> Iterator[LocalEnv]:
    env = LocalEnv.start_temporary()
    try:
        yield env
    finally:
        env.stop()


@pytest.fixture
def env_info(local_env: LocalEnv) -> EnvInfo:
    return local_env.info


@pytest.fixture
def idp(env_info: EnvInfo) -> Iterator[IdpControl]:
    """Controls of the identity platform; failures and lifetime are reset after the test."""
    control = IdpControl(env_info)
    control.clear_failures()
    yield control
    control.clear_failures()
    control.set_token_lifetime(3600)


@pytest.fixture
def new_mailbox() -> Callable[..., str]:
    """Returns a function making a mailbox address no other test uses."""

    def make(domain: str = "contoso.test", prefix: str = "mbx") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}@{domain}"

    return make


@pytest.fixture
def fixture_imap(env_info: EnvInfo) -> Iterator[Callable[[str], FixtureImap]]:
    """Returns a function opening a fixture (master) session on a mailbox; all closed after."""
    opened: list[FixtureImap] = []

    def open_(mailbox: str) -> FixtureImap:
        session = FixtureImap(env_info, mailbox)
        opened.append(session)
        return session

    yield open_
    for session in opened:
        session.close()


# -- databases ---------------------------------------------------------------------------

DEFAULT_PG_SERVER = "postgresql+psycopg://root@127.0.0.1:5432/postgres"

MakeUrl = Callable[[], str]
MakeEngine = Callable[[str], Engine]


@pytest.fixture
def make_sqlite_url(tmp_path: Path) -> MakeUrl:
    """Return a factory of URLs of new SQLite files (in a directory that does not exist yet)."""
    counter = iter(range(1_000_000))

    def make() -> str:
        return f"sqlite:///{tmp_path / f'db{next(counter)}' / 'mailsyncd.db'}"

    return make


@pytest.fixture
def make_pg_url() -> Iterator[MakeUrl]:
    """Return a factory of URLs of new, empty PostgreSQL databases, dropped after the test."""
    server = make_url(os.environ.get("MAILSYNCD_TEST_PG", DEFAULT_PG_SERVER))
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    created: list[str] = []

    def make() -> str:
        name = f"mailsyncd_t_{secrets.token_hex(6)}"
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        created.append(name)
        return server.set(database=name).render_as_string(hide_password=False)

    try:
        yield make
    finally:
        with admin.connect() as connection:
            for name in created:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


_URL_FACTORIES = {"sqlite": "make_sqlite_url", "postgresql": "make_pg_url"}


@pytest.fixture(params=list(_URL_FACTORIES))
def database_url(request: pytest.FixtureRequest) -> str:
    """The URL of a fresh, empty database, once for SQLite and once for PostgreSQL."""
    factory: MakeUrl = request.getfixturevalue(_URL_FACTORIES[request.param])
    return factory()


@pytest.fixture
def make_engine() -> Iterator[MakeEngine]:
    """Return ``create_engine_for`` whose engines are disposed of after the test."""
    engines: list[Engine] = []

    def make(url: str) -> Engine:
        engine = create_engine_for(url)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()
