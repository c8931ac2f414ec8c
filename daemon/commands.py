"""The sub-commands behind ``daemon.cli``."""

from __future__ import annotations

import argparse
import os
import sys

from daemon.config import CONFIG_ENV_VAR, Config, ConfigError, load_config

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_CONFIG = 2


def _load(args: argparse.Namespace) -> Config | None:
    try:
        return load_config(args.config)
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
    return Daemon(config, log, migrate=not args.no_migrate, secrets=secrets).run()


def check(args: argparse.Namespace) -> int:
    """``mailsyncd check``: 0 every step passed, 1 a step failed, 2 bad config."""
    from daemon.check import Step, format_step, format_summary, run_check, write_json  # noqa: PLC0415

    path = args.config or os.environ.get(CONFIG_ENV_VAR)

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
        config = load_config(args.config, check_secrets=False)
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
    )
    if args.json:
        write_json(steps, sys.stdout, config=str(path))
    else:
        print(format_summary(steps))
    return EXIT_FAILURE if any(step.status == "fail" for step in steps) else EXIT_OK
