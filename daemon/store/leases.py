"""Leases of mailboxes and heartbeats of replicas, in PostgreSQL (SPEC "Replicas").

Two tables: ``mailsyncd_replicas`` (one heartbeat row per live replica) and
``mailbox_leases`` (one row per configured mailbox: ``owner``, ``expires_at``, ``token``). Every
time is the database's ``now()``, so the replicas' clocks never have to agree.

- A free lease (no owner, or expired) is taken with ``FOR UPDATE SKIP LOCKED``: two replicas
  taking at once never take the same row and never wait for each other. Taking it increments
  its fencing ``token``.
- A write for a mailbox (:meth:`SqlStore.apply` and friends with ``fence=``) first reads its
  lease row ``FOR SHARE`` in the same transaction and fails with :class:`LeaseLost` unless
  owner and token are still the writer's. The share lock holds until the commit, so a takeover
  (an ``UPDATE`` of that row) waits for a write in flight, and every write after it fails: a
  replica that lost a lease never writes for that mailbox again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from daemon.errors import LeaseLost
from daemon.store.translate import translate_errors
from daemon.sync.model import FolderChanges, FolderState

if TYPE_CHECKING:
    from daemon.store.repository import ApplyResult, SqlStore

_CHUNK: Final = 1000
PRUNE_AFTER_TTLS: Final = 20
"""A replica whose heartbeat is this many ``lease_ttl`` old is removed from the table."""


@dataclass(frozen=True, slots=True)
class Fence:
    """What a write for ``mailbox`` must still hold: the lease ``owner`` with ``token``."""

    mailbox: str
    owner: str
    token: int


def check_fence(connection: Connection, fence: Fence) -> None:
    """Hold the lease row of ``fence.mailbox`` for the transaction; LeaseLost if not ours."""
    held = connection.execute(
        sa.text(
            "SELECT 1 FROM mailbox_leases"
            " WHERE mailbox = :mailbox AND owner = :owner AND token = :token FOR SHARE"
        ),
        {"mailbox": fence.mailbox, "owner": fence.owner, "token": fence.token},
    ).first()
    if held is None:
        raise LeaseLost(fence.mailbox)


class LeaseStore:
    """The SQL of heartbeats and leases; each method is one short transaction (PostgreSQL)."""

    def __init__(self, engine: Engine, *, statement_timeout: float) -> None:
        """``statement_timeout``: seconds any statement here may run (well under the TTL)."""
        if engine.dialect.name != "postgresql":
            raise ValueError("leases need PostgreSQL; SQLite runs one replica")
        self._engine = engine
        self._timeout_ms = max(1, int(statement_timeout * 1000))

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with translate_errors(), self._engine.connect() as connection, connection.begin():
            connection.execute(sa.text(f"SET LOCAL statement_timeout = {self._timeout_ms}"))
            yield connection

    def heartbeat(self, replica: str, version: str, ttl: float, owned: int) -> list[str]:
        """Record this replica alive for ``ttl`` s; prune long-dead ones; the live ids, sorted."""
        with self._transaction() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO mailsyncd_replicas"
                    " (replica, version, started_at, heartbeat_at, expires_at, mailboxes)"
                    " VALUES (:replica, :version, now(), now(),"
                    " now() + make_interval(secs => :ttl), :owned)"
                    " ON CONFLICT (replica) DO UPDATE SET version = excluded.version,"
                    " heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at,"
                    " mailboxes = excluded.mailboxes"
                ),
                {"replica": replica, "version": version, "ttl": ttl, "owned": owned},
            )
            connection.execute(
                sa.text(
                    "DELETE FROM mailsyncd_replicas"
                    " WHERE expires_at < now() - make_interval(secs => :age)"
                ),
                {"age": ttl * PRUNE_AFTER_TTLS},
            )
            rows = connection.execute(
                sa.text(
                    "SELECT replica FROM mailsyncd_replicas WHERE expires_at > now()"
                    " ORDER BY replica"
                )
            )
            return [str(row[0]) for row in rows]

    def ensure(self, mailboxes: Sequence[str]) -> None:
        """Give every mailbox a lease row (free until taken)."""
        for start in range(0, len(mailboxes), _CHUNK):
            with self._transaction() as connection:
                connection.execute(
                    sa.text(
                        "INSERT INTO mailbox_leases (mailbox)"
                        " SELECT unnest(CAST(:mailboxes AS text[])) ON CONFLICT DO NOTHING"
                    ),
                    {"mailboxes": list(mailboxes[start : start + _CHUNK])},
                )

    def renew(self, replica: str, ttl: float) -> dict[str, int]:
        """Extend every lease this replica holds by ``ttl`` s; mailbox -> token of each."""
        with self._transaction() as connection:
            rows = connection.execute(
                sa.text(
                    "UPDATE mailbox_leases SET expires_at = now() + make_interval(secs => :ttl)"
                    " WHERE owner = :replica RETURNING mailbox, token"
                ),
                {"replica": replica, "ttl": ttl},
            )
            return {str(mailbox): int(token) for mailbox, token in rows}

    def acquire(
        self, replica: str, ttl: float, wanted: Sequence[str], limit: int
    ) -> dict[str, int]:
        """Take up to ``limit`` free leases among ``wanted``; mailbox -> new token of each."""
        if limit <= 0 or not wanted:
            return {}
        with self._transaction() as connection:
            rows = connection.execute(
                sa.text(
                    "UPDATE mailbox_leases AS l SET owner = :replica, token = l.token + 1,"
                    " expires_at = now() + make_interval(secs => :ttl)"
                    " WHERE l.mailbox IN ("
                    "  SELECT f.mailbox FROM mailbox_leases AS f"
                    "  JOIN unnest(CAST(:wanted AS text[])) AS w(mailbox) ON w.mailbox = f.mailbox"
                    "  WHERE f.owner IS NULL OR f.expires_at IS NULL OR f.expires_at <= now()"
                    "  ORDER BY random() LIMIT :limit FOR UPDATE OF f SKIP LOCKED)"
                    " RETURNING l.mailbox, l.token"
                ),
                {"replica": replica, "ttl": ttl, "wanted": list(wanted), "limit": limit},
            )
            return {str(mailbox): int(token) for mailbox, token in rows}

    def release(self, replica: str, mailboxes: Sequence[str] | None = None) -> int:
        """Hand leases back (all of this replica's when ``mailboxes`` is None); how many."""
        query = "UPDATE mailbox_leases SET owner = NULL, expires_at = NULL WHERE owner = :replica"
        params: dict[str, Any] = {"replica": replica}
        if mailboxes is not None:
            if not mailboxes:
                return 0
            query += " AND mailbox = ANY(CAST(:mailboxes AS text[]))"
            params["mailboxes"] = list(mailboxes)
        with self._transaction() as connection:
            return int(connection.execute(sa.text(query), params).rowcount)

    def leave(self, replica: str) -> None:
        """Remove this replica's heartbeat: the others count it gone at their next round."""
        with self._transaction() as connection:
            connection.execute(
                sa.text("DELETE FROM mailsyncd_replicas WHERE replica = :replica"),
                {"replica": replica},
            )


class FencedStore:
    """The store for the polls of one mailbox, whose writes carry its lease (:func:`check_fence`).

    ``fence`` is asked at each write, so a lease lost in the middle of a poll fails the next
    write (``None``: this replica holds no lease on the mailbox any more).
    """

    def __init__(self, store: SqlStore, mailbox: str, fence: Callable[[], Fence | None]) -> None:
        self._store = store
        self._mailbox = mailbox
        self._fence = fence

    def _current(self) -> Fence:
        fence = self._fence()
        if fence is None:
            raise LeaseLost(self._mailbox)
        return fence

    def ensure_folder(self, mailbox_id: int, name: str) -> FolderState:
        return self._store.ensure_folder(mailbox_id, name)

    def folder_states(self, mailbox_id: int) -> dict[str, FolderState]:
        return self._store.folder_states(mailbox_id)

    def stored_flags(self, folder_id: int, uidvalidity: int) -> dict[int, tuple[str, ...]]:
        return self._store.stored_flags(folder_id, uidvalidity)

    def apply(self, changes: FolderChanges, now: dt.datetime) -> ApplyResult:
        return self._store.apply(changes, now, fence=self._current())

    def reset_folder(self, folder_id: int, uidvalidity: int, now: dt.datetime) -> int:
        return self._store.reset_folder(folder_id, uidvalidity, now, fence=self._current())

    def mark_folder_vanished(self, folder_id: int, now: dt.datetime) -> int:
        return self._store.mark_folder_vanished(folder_id, now, fence=self._current())
