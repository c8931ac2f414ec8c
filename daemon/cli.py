"""Command line of mailsyncd: run, validate, migrate, check, status (exit codes as the SPEC
lists them)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from daemon import __version__


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``mailsyncd`` command."""
    parser = argparse.ArgumentParser(
        prog="mailsyncd",
        description="Keeps the message metadata of Microsoft 365 mailboxes in a SQL database.",
    )
    parser.add_argument("--version", action="version", version=f"mailsyncd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "-c",
            "--config",
            metavar="FILE",
            help="configuration file (default: $MAILSYNCD_CONFIG)",
        )
        return sub

    run = with_config("run", "run until SIGTERM/SIGINT, migrating the schema first")
    run.add_argument(
        "--no-migrate", action="store_true", help="do not migrate; fail if the schema is behind"
    )
    with_config("validate", "parse and validate the configuration, print every error")
    with_config("migrate", "bring the database schema to head and exit")
    check = with_config(
        "check",
        "diagnose the setup step by step (credential, token and its claims, DNS/TCP/TLS, "
        "XOAUTH2 login, folders), each failure with its likely cause and fix; "
        "exit 0 all passed, 1 a step failed, 2 bad config",
    )
    check.add_argument(
        "--mailbox",
        metavar="ADDR",
        action="append",
        default=[],
        help="check only this mailbox and its tenant (repeatable; default: every mailbox)",
    )
    check.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document (schema: docs/check-output.schema.json)",
    )
    check.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_seconds,
        default=10.0,
        help="time bound of each network step (default: 10)",
    )
    status = with_config(
        "status",
        "print the state of every mailbox as the replicas last saved it in the database "
        "(view mailbox_status); exit 0, or 1 when the database cannot be read",
    )
    status.add_argument(
        "--mailbox",
        metavar="ADDR",
        action="append",
        default=[],
        help="only this mailbox (repeatable, any case; default: every mailbox)",
    )
    status.add_argument(
        "--json", action="store_true", help='print one JSON document: {"mailboxes": [...]}'
    )
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError("must be a number of seconds between 0 and 600")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2  # the SPEC's exit code for a command line that cannot run
    # Imported here so that `--version` and `--help` stay fast and side-effect free.
    from daemon import commands  # noqa: PLC0415

    handler = {
        "run": commands.run,
        "validate": commands.validate,
        "migrate": commands.migrate,
        "check": commands.check,
        "status": commands.status,
    }[args.command]
    return handler(args)
