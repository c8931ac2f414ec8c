"""Allows ``python -m daemon``."""

from daemon.cli import main

raise SystemExit(main())
