"""Command line entry point of mailsyncd."""

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help(sys.stderr)
    return 2
