"""Migrations: empty database to head, idempotent, safe when run concurrently, equal to models."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

from daemon.store.migrate import (
    MIGRATIONS_DIR,
    current_revision,
    head_revision,
    is_at_head,
    migrate,
)
from daemon.store.models import metadata

REPO_ROOT = Path(__file__).resolve().parents[2]
TABLES = {
    "alembic_version",
    "mailboxes",
    "folders",
    "messages",
    "mailbox_states",
    "mailsyncd_replicas",
    "mailbox_leases",
}
LEASES = {"mailsyncd_replicas", "mailbox_leases"}
VIEWS = {"message_metadata", "mailbox_status"}
STATUS_VIEW_COLUMNS = [
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
    "idle",  # an extension: SPEC "Push"
]

MakeEngine = Callable[[str], sa.Engine]


def _tables_and_views(engine: sa.Engine) -> tuple[set[str], set[str]]:
    inspector = sa.inspect(engine)
    return set(inspector.get_table_names()), set(inspector.get_view_names())


def _alembic(engine: sa.Engine, action: str, revision: str) -> None:
    """Run ``alembic upgrade|downgrade REVISION`` on ``engine`` (migrate() only goes up)."""
    with engine.begin() as connection:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = connection
        getattr(command, action)(config, revision)


def test_head_revision_is_the_leases_revision() -> None:
    assert head_revision() == "0003"


def test_migrate_brings_an_empty_database_to_head(
    database_url: str, make_engine: MakeEngine
) -> None:
    engine = make_engine(database_url)
    assert current_revision(engine) is None
    assert not is_at_head(engine)

    migrate(engine)

    assert current_revision(engine) == head_revision()
    assert is_at_head(engine)
    tables, views = _tables_and_views(engine)
    assert tables == TABLES
    assert views == VIEWS


def test_migrate_twice_is_a_no_op(database_url: str, make_engine: MakeEngine) -> None:
    engine = make_engine(database_url)
    migrate(engine)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO mailboxes (address, tenant, created_at) VALUES ('a@b.c', 't', :t)"
            ),
            {"t": "2024-01-01 00:00:00"},
        )

    migrate(engine)

    assert is_at_head(engine)
    assert _tables_and_views(engine)[0] == TABLES
    with engine.connect() as connection:
        assert connection.scalar(sa.text("SELECT count(*) FROM mailboxes")) == 1


def test_two_threads_migrating_at_once_both_succeed(
    database_url: str, make_engine: MakeEngine
) -> None:
    # Separate engines: separate pools and connections, as two replicas would have.
    engines = [make_engine(database_url) for _ in range(2)]
    start = threading.Barrier(len(engines))
    errors: list[BaseException] = []

    def run(engine: sa.Engine) -> None:
        try:
            start.wait(timeout=30)
            migrate(engine)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert all(is_at_head(engine) for engine in engines)
    assert _tables_and_views(engines[0])[0] == TABLES


@pytest.mark.slow
def test_two_processes_migrating_at_once_both_succeed(
    database_url: str, make_engine: MakeEngine
) -> None:
    script = (
        "import sys\n"
        "from daemon.store.engine import create_engine_for\n"
        "from daemon.store.migrate import migrate\n"
        "engine = create_engine_for(sys.argv[1])\n"
        "migrate(engine)\n"
        "engine.dispose()\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, database_url],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outcomes = [(process.wait(timeout=120), process.communicate()[1]) for process in processes]

    assert outcomes == [(0, "")] * len(processes)
    assert is_at_head(make_engine(database_url))


def _schema_differences(connection: sa.Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def test_migrated_schema_matches_the_models(database_url: str, make_engine: MakeEngine) -> None:
    engine = make_engine(database_url)
    migrate(engine)

    with engine.connect() as connection:
        differences = _schema_differences(connection)

    assert differences == []


def test_schema_comparison_notices_a_difference(database_url: str, make_engine: MakeEngine) -> None:
    # Guards the test above against comparing nothing at all.
    engine = make_engine(database_url)
    migrate(engine)
    with engine.begin() as connection:
        connection.execute(sa.text("DROP INDEX ix_messages_live"))

    with engine.connect() as connection:
        differences = _schema_differences(connection)

    assert [diff[0] for diff in differences] == ["add_index"]


def test_mailbox_status_view_has_exactly_the_spec_columns(
    database_url: str, make_engine: MakeEngine
) -> None:
    engine = make_engine(database_url)
    migrate(engine)

    with engine.connect() as connection:
        result = connection.execute(sa.text("SELECT * FROM mailbox_status WHERE 1 = 0"))
        assert list(result.keys()) == STATUS_VIEW_COLUMNS


def test_mailbox_status_view_timestamps_are_timestamptz_in_postgresql(
    make_pg_url: Callable[[], str], make_engine: MakeEngine
) -> None:
    engine = make_engine(make_pg_url())
    migrate(engine)

    with engine.connect() as connection:
        types = dict(
            connection.execute(
                sa.text(
                    "SELECT column_name, data_type FROM information_schema.columns"
                    " WHERE table_name = 'mailbox_status'"
                )
            ).all()
        )
    assert types["last_poll_at"] == "timestamp with time zone"
    assert types["last_success_at"] == "timestamp with time zone"
    assert types["consecutive_failures"] == "integer"
    assert types["initial_sync_remaining"] == "bigint"


def test_downgrade_to_0001_drops_the_status_and_upgrade_restores_it(
    database_url: str, make_engine: MakeEngine
) -> None:
    engine = make_engine(database_url)
    migrate(engine)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO mailboxes (address, tenant, created_at) VALUES ('a@b.c', 't', :t)"
            ),
            {"t": "2024-01-01 00:00:00"},
        )
        connection.execute(
            sa.text(
                "INSERT INTO mailbox_states (mailbox_id, state, updated_at)"
                " SELECT id, 'ok', :t FROM mailboxes"
            ),
            {"t": "2024-01-01 00:00:00"},
        )

    _alembic(engine, "downgrade", "0001")

    assert current_revision(engine) == "0001"
    assert _tables_and_views(engine) == (TABLES - {"mailbox_states"} - LEASES, {"message_metadata"})
    with engine.connect() as connection:  # the data of 0001 is untouched
        assert connection.scalar(sa.text("SELECT count(*) FROM mailboxes")) == 1

    migrate(engine)

    assert is_at_head(engine)
    assert _tables_and_views(engine) == (TABLES, VIEWS)
    with engine.connect() as connection:
        assert connection.scalar(sa.text("SELECT count(*) FROM mailbox_status")) == 0
        differences = _schema_differences(connection)
    assert differences == []


def test_downgrade_to_nothing_leaves_an_empty_database(
    database_url: str, make_engine: MakeEngine
) -> None:
    engine = make_engine(database_url)
    migrate(engine)

    _alembic(engine, "downgrade", "base")

    assert current_revision(engine) is None
    assert _tables_and_views(engine) == ({"alembic_version"}, set())


def test_status_state_is_checked_by_the_database(
    database_url: str, make_engine: MakeEngine
) -> None:
    engine = make_engine(database_url)
    migrate(engine)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO mailboxes (address, tenant, created_at) VALUES ('a@b.c', 't', :t)"
            ),
            {"t": "2024-01-01 00:00:00"},
        )

    with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO mailbox_states (mailbox_id, state, updated_at)"
                " SELECT id, 'sleeping', :t FROM mailboxes"
            ),
            {"t": "2024-01-01 00:00:00"},
        )
