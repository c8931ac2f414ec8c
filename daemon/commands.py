"""The sub-commands behind ``daemon.cli``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.config import CONFIG_ENV_VAR, Config, ConfigError, load_config

if TYPE_CHECKING:
    from daemon.status import MailboxStatus

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_CONFIG = 2


def _load(args: argparse.Namespace, *, check_secrets: bool = True) -> Config | None:
    try:
        return load_config(args.config, check_secrets=check_secrets)
    except ConfigError as exc:
        print(f"mailsyncd: invalid configuration ({len(exc.errors)} error(s)):", file=sys.stderr)
        for issue in exc.errors:
            print(f"  {issue}", file=sys.stderr)
        return None


def validate(args: argparse.Namespace) -> int:
    """``mailsyncd validate``: 0 valid, 2 invalid."""
    config = _load(args)
    if config is None:
        return EXIT_BAD_CONFIG
    print(
        f"configuration is valid: {len(config.tenants)} tenant(s), "
        f"{len(config.mailboxes)} mailbox(es)"
    )
    return EXIT_OK


def migrate(args: argparse.Namespace) -> int:
    """``mailsyncd migrate``: brings the schema to head, 0 / 1."""
    config = _load(args)
    if config is None:
        return EXIT_BAD_CONFIG
    from daemon.app import configure_from, migrate_database  # noqa: PLC0415

    log = configure_from(config)
    return EXIT_OK if migrate_database(config, log, wait=0.0) else EXIT_FAILURE


def run(args: argparse.Namespace) -> int:
    """``mailsyncd run``: until SIGTERM/SIGINT; 0 clean stop, 1 fatal, 2 bad config."""
    config = _load(args)
    if config is None:
        return EXIT_BAD_CONFIG
    from daemon.app import Daemon, configure_from  # noqa: PLC0415
    from daemon.logging import SecretRegistry  # noqa: PLC0415

    secrets = SecretRegistry()
    log = configure_from(config, secrets)
    try:
        return Daemon(config, log, migrate=not args.no_migrate, secrets=secrets).run()
    except OSError as exc:
        # A path the configuration names that the system refuses (an SQLite file whose
        # directory cannot be created, say): a fact to report, not a bug to trace.
        log.error("cannot start", error=str(exc), error_type=type(exc).__name__)  # noqa: TRY400
        return EXIT_FAILURE


def check(args: argparse.Namespace) -> int:
    """``mailsyncd check``: 0 every step passed, 1 a step failed, 2 bad config."""
    from daemon.check import Step, format_step, format_summary, run_check, write_json  # noqa: PLC0415
    from daemon.check.database import environ_for_check  # noqa: PLC0415

    path = args.config or os.environ.get(CONFIG_ENV_VAR)
    # check needs no database (SPEC): an unset database.url_env variable only skips that step.
    environ, database = environ_for_check(args.config)

    def refuse(detail: str, problems: list[str], fix: str) -> int:
        if args.json:
            cause = "\n".join(problems)
            write_json(
                [Step("config", "fail", detail, cause=cause, fix=fix)], sys.stdout, config=path
            )
        else:
            print(f"mailsyncd: {detail}:", file=sys.stderr)
            for problem in problems:
                print(f"  {problem}", file=sys.stderr)
        return EXIT_BAD_CONFIG

    try:
        # Secret files are the check's to diagnose: missing ones become failed steps.
        config = load_config(args.config, environ, check_secrets=False)
    except ConfigError as exc:
        return refuse(
            f"invalid configuration ({len(exc.errors)} error(s))",
            [str(e) for e in exc.errors],
            "correct each key named (mailsyncd validate -c FILE prints the same list)",
        )
    known = {m.address for m in config.mailboxes}
    unknown = [a for a in args.mailbox if a.strip().lower() not in known]
    if unknown:
        return refuse(
            "--mailbox names a mailbox that is not configured",
            [f"{a!r} is not listed under mailboxes" for a in unknown],
            "name a configured address (case does not matter), or add the mailbox first",
        )

    def emit(step: Step) -> None:
        if not args.json:
            print(format_step(step), flush=True)

    steps = run_check(
        config,
        config_path=str(path),
        mailboxes=[a.strip().lower() for a in args.mailbox],
        timeout=args.timeout,
        emit=emit,
        database=database,
    )
    if args.json:
        write_json(steps, sys.stdout, config=str(path))
    else:
        print(format_summary(steps))
    return EXIT_FAILURE if any(step.status == "fail" for step in steps) else EXIT_OK


def status(args: argparse.Namespace) -> int:
    """``mailsyncd status``: the view ``mailbox_status``; 0, 1 database unreadable, 2 bad config.

    Reads only: no migration, and a SQLite file that does not exist is not created.
    """
    # Secrets are not needed to read the database: status works where they are not mounted.
    config = _load(args, check_secrets=False)
    if config is None:
        return EXIT_BAD_CONFIG
    from daemon.status import format_table, merge  # noqa: PLC0415

    wanted = list(dict.fromkeys(address.strip().lower() for address in args.mailbox))
    try:
        statuses, note = _read_statuses(config.database_url, wanted or None)
    except _Unreadable as exc:
        print(f"mailsyncd: cannot read mailbox status from the database: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    configured = [
        (m.address, m.tenant) for m in config.mailboxes if not wanted or m.address in wanted
    ]
    rows = merge(statuses, configured)
    if note:
        print(f"mailsyncd: {note}", file=sys.stderr)
    shown = {row.mailbox for row in rows}
    for address in wanted:
        if address not in shown:
            print(
                f"mailsyncd: {address}: not configured and no status in the database",
                file=sys.stderr,
            )
    if args.json:
        document = {"mailboxes": [row.to_json() for row in rows]}
        json.dump(document, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    elif rows:
        print(format_table(rows, dt.datetime.now(dt.UTC)))
    else:
        print("no mailboxes configured and none in the database")
    return EXIT_OK


class _Unreadable(Exception):
    """The database could not be read; the message is one line without the URL."""


def _read_statuses(url: str, wanted: list[str] | None) -> tuple[list[MailboxStatus], str | None]:
    """The stored statuses (all, or those of ``wanted``) and a note for the operator, if any."""
    from daemon.errors import MailsyncError  # noqa: PLC0415
    from daemon.store.engine import create_engine_for  # noqa: PLC0415
    from daemon.store.migrate import current_revision, head_revision  # noqa: PLC0415
    from daemon.store.repository import SqlStore  # noqa: PLC0415

    missing = _missing_sqlite_file(url)
    if missing is not None:
        raise _Unreadable(f"SQLite file {missing} does not exist")
    engine = create_engine_for(url, pool_size=1, max_overflow=0)
    revision: str | None = None
    try:
        try:
            revision = current_revision(engine)
            if revision is None:
                return [], "the database has no mailsyncd schema yet (mailsyncd run creates it)"
            return SqlStore(engine).load_statuses(wanted), None
        except MailsyncError as exc:
            head = head_revision()
            if revision is None or revision == head:
                raise _Unreadable(str(exc)) from exc
            raise _Unreadable(
                f"{exc} (schema at revision {revision}, this mailsyncd expects {head}: "
                "run mailsyncd migrate -c FILE)"
            ) from exc
    finally:
        engine.dispose()


def _missing_sqlite_file(url: str) -> str | None:
    """The path of a SQLite URL whose file does not exist (opening it would create it)."""
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in {"", ":memory:"}:
        return None
    if database.startswith("file:") or Path(database).expanduser().exists():
        return None
    return database
