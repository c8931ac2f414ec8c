"""One ``mailsyncd run`` per SQLite file (SPEC "Replicas": with SQLite there is one replica).

SQLite has no leases to share mailboxes with: a second process on the same file would poll
every mailbox again and fight over the write lock. The first process holds an exclusive
advisory lock on ``<database>.run.lock`` for its lifetime and writes who it is into the file;
a second one fails at once and names the holder. The operating system drops the lock when the
holder exits, however it exits (``kill -9`` included), so a stale lock never blocks a restart.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
from pathlib import Path

from sqlalchemy.engine import make_url

from daemon.errors import AlreadyRunning


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite://`` URL; None for other databases or in memory."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database in {"", ":memory:"} or "mode=memory" in database or database.startswith("file:"):
        return None
    return Path(database).expanduser().absolute()


class RunLock:
    """The exclusive lock of one database file, held from ``acquire`` to ``release``."""

    def __init__(self, database: Path, replica: str) -> None:
        self.path = database.with_name(database.name + ".run.lock")
        self._replica = replica
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``AlreadyRunning`` naming the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise AlreadyRunning(
                f"another mailsyncd runs on this SQLite database ({self.path.name}): {holder}",
                hint="SQLite allows one replica: stop the other process, or use PostgreSQL "
                "to run several replicas that share the mailboxes",
            ) from None
        me = {
            "replica": self._replica,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock back (idempotent)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor drops the flock


def _read(fd: int) -> str:
    try:
        raw = os.pread(fd, 4096, 0)
        holder = json.loads(raw.decode("utf-8", "replace")) if raw else {}
    except (OSError, ValueError):
        holder = {}
    if not isinstance(holder, dict) or not holder:
        return "a process that has not written its name yet"
    return ", ".join(
        f"{key} {holder[key]}" for key in ("replica", "pid", "host", "since") if key in holder
    )
