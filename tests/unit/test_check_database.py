"""The ``database`` step of ``mailsyncd check`` and loading a configuration whose database
variable is not set where ``check`` runs (``daemon.check.database``)."""

from __future__ import annotations

from pathlib import Path

import yaml

from daemon.check.database import (
    PLACEHOLDER_URL,
    DatabaseSource,
    check_database,
    environ_for_check,
)
from daemon.config import Config, config_from_mapping
from daemon.store.engine import create_engine_for
from daemon.store.migrate import head_revision, migrate

VARIABLE = "DATABASE_URL"


def write(path: Path, database: dict[str, str]) -> Path:
    path.write_text(yaml.safe_dump({"database": database, "tenants": [], "mailboxes": []}))
    return path


def config_for(url: str) -> Config:
    data = {"database": {"url": url}, "tenants": [], "mailboxes": []}
    return config_from_mapping(data, check_secrets=False)


def test_unset_or_blank_variable_gets_a_placeholder_and_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", {"url_env": VARIABLE})
    for environ in ({}, {VARIABLE: "  "}):
        env, source = environ_for_check(path, environ)
        assert env[VARIABLE] == PLACEHOLDER_URL
        assert source == DatabaseSource(unset_variable=VARIABLE)
        assert not source.available


def test_set_variable_or_inline_url_is_left_alone(tmp_path: Path) -> None:
    environ = {VARIABLE: "sqlite:////var/lib/x.db"}
    env, source = environ_for_check(write(tmp_path / "a.yaml", {"url_env": VARIABLE}), environ)
    assert env is environ
    assert source.available
    env, source = environ_for_check(write(tmp_path / "b.yaml", {"url": "sqlite:///x.db"}), {})
    assert source.available


def test_unreadable_or_broken_files_are_left_to_the_loader(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("database: [unclosed\n")
    for path in (broken, tmp_path / "missing.yaml", None):
        env, source = environ_for_check(path, {})
        assert env == {}
        assert source.available


def test_skipped_when_the_url_is_not_available_here() -> None:
    missing = DatabaseSource(unset_variable=VARIABLE)
    assert check_database(config_for(PLACEHOLDER_URL), missing, timeout=5) is None


def test_sqlite_file_that_does_not_exist_passes_and_nothing_is_created(tmp_path: Path) -> None:
    path = tmp_path / "not-yet" / "mailsyncd.db"
    finding = check_database(config_for(f"sqlite:///{path}"), DatabaseSource(), timeout=5)
    assert finding is not None
    assert finding.status == "pass"
    assert "does not exist yet" in finding.detail
    assert not path.parent.exists()


def test_migrated_sqlite_is_at_head_and_an_empty_one_has_no_schema_yet(tmp_path: Path) -> None:
    migrated, empty = tmp_path / "migrated.db", tmp_path / "empty.db"
    engine = create_engine_for(f"sqlite:///{migrated}")
    try:
        migrate(engine)
    finally:
        engine.dispose()
    empty.touch()
    at_head = check_database(config_for(f"sqlite:///{migrated}"), DatabaseSource(), timeout=30)
    assert at_head is not None
    assert at_head.status == "pass"
    assert at_head.data["revision"] == at_head.data["head"] == head_revision()
    fresh = check_database(config_for(f"sqlite:///{empty}"), DatabaseSource(), timeout=30)
    assert fresh is not None
    assert fresh.status == "pass"
    assert fresh.data["revision"] is None
    assert "mailsyncd migrate" in fresh.detail


def test_schema_at_another_revision_fails_with_the_migrate_fix(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    engine = create_engine_for(f"sqlite:///{path}")
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32))")
            connection.exec_driver_sql("INSERT INTO alembic_version VALUES ('0001')")
    finally:
        engine.dispose()
    finding = check_database(config_for(f"sqlite:///{path}"), DatabaseSource(), timeout=30)
    assert finding is not None
    assert finding.status == "fail"
    assert "revision 0001" in finding.detail
    assert "mailsyncd migrate -c FILE" in (finding.fix or "")
