"""The sub-commands behind ``daemon.cli``."""

from __future__ import annotations

import argparse
import sys

from daemon.config import Config, ConfigError, load_config

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

    log = configure_from(config)
    return Daemon(config, log, migrate=not args.no_migrate).run()
