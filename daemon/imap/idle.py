"""``IdleHub``: one thread waits on the sockets of every IMAP session in IDLE.

    worker ──watch(address, socket, due)──▶ IdleHub ──wake(address)──▶ Runtime.push
                                              │  one selector (epoll), one thread
    worker ◀── poll at once ◀─────────────────┘  readable socket, or renewal due

A session in IDLE costs no thread: after its poll, the worker starts IDLE on the mailbox's first
folder and hands the session to the hub. When its socket becomes readable the hub reads what
arrived without blocking (``Session.idle_news``): a keepalive (Dovecot's ``* OK Still here``)
keeps it waiting; an untagged ``EXISTS``, ``EXPUNGE`` or ``FETCH``, a ``BYE`` or EOF, or the
IDLE falling due for renewal (``limits.idle_renew``, or the session's token ending) drops the
session from the set and calls ``wake(address)``. The mailbox's poll then ends the IDLE
(``DONE``), syncs, and starts IDLE again. The hub reads a session only under its lock, and the
pool takes a session back (``unwatch``) under the same lock, so a session is never read by two
threads.

Data that arrived together with the ``+ idling`` continuation sits in the client's buffers,
where a selector cannot see it; the worker checks for it before it calls :meth:`watch` (see
``ImapMailbox.start_idle``).
"""

from __future__ import annotations

import contextlib
import heapq
import selectors
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from daemon.logging import Logger
from daemon.ports import Session

MAX_WAIT: Final = 1.0
"""Longest single wait of the selector: how late a stop or a renewal can be noticed."""


@dataclass(eq=False)
class _Watch:
    address: str
    tenant: str
    session: Session
    due: float
    fd: int = field(init=False)

    def __post_init__(self) -> None:
        self.fd = self.session.socket().fileno()


class IdleHub:
    """The sessions in IDLE, waited on together; ``wake(address)`` runs on the hub's thread."""

    def __init__(
        self,
        *,
        wake: Callable[[str], None],
        log: Logger,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._wake = wake
        self._log = log
        self._clock = clock
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._watches: dict[str, _Watch] = {}
        self._dues: list[tuple[float, int, _Watch]] = []
        self._seq = 0
        self._stop = threading.Event()
        self._added = threading.Event()
        self._thread: threading.Thread | None = None

    # -- called by workers --------------------------------------------------------------------
    def watch(self, address: str, tenant: str, session: Session, due: float) -> None:
        """Wait for news on ``session`` (in IDLE), or until ``due`` (epoch seconds)."""
        entry = _Watch(address, tenant, session, due)
        with self._lock:
            self._drop(address)
            self._selector.register(entry.fd, selectors.EVENT_READ, entry)
            self._watches[address] = entry
            self._seq += 1
            heapq.heappush(self._dues, (due, self._seq, entry))
        self._added.set()

    def unwatch(self, address: str) -> bool:
        """Stop waiting for the mailbox's session (before it is used or closed); True if it was."""
        with self._lock:
            return self._drop(address)

    def count(self) -> Counter[str]:
        """Sessions in IDLE per tenant."""
        with self._lock:
            return Counter(w.tenant for w in self._watches.values())

    def watching(self, address: str) -> bool:
        with self._lock:
            return address in self._watches

    def _drop(self, address: str) -> bool:
        entry = self._watches.pop(address, None)
        if entry is None:
            return False
        with contextlib.suppress(KeyError, ValueError):  # its socket is already gone
            self._selector.unregister(entry.fd)
        return True

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="idle-hub", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        thread = self._thread
        return thread is None or thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=MAX_WAIT * 5)
        with self._lock:
            for address in list(self._watches):
                self._drop(address)
        self._selector.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - a bug must not end push for every mailbox
                self._log.exception("IDLE wait failed; continuing")
                self._stop.wait(MAX_WAIT)

    def run_once(self) -> list[str]:
        """Wait once (at most MAX_WAIT s) and wake what became readable or due; the woken."""
        with self._lock:
            first_due = self._dues[0][0] if self._dues else None
            empty = not self._watches
        wait = MAX_WAIT if first_due is None else min(MAX_WAIT, first_due - self._clock())
        if empty:  # nothing to wait on: wait for the first watch
            self._added.wait(MAX_WAIT)
            self._added.clear()
            return []
        ready = self._selector.select(max(0.0, wait))
        woken: list[str] = []
        with self._lock:
            for key, _events in ready:
                entry = key.data
                if not isinstance(entry, _Watch) or self._watches.get(entry.address) is not entry:
                    continue  # taken back meanwhile
                if entry.session.idle_news():
                    self._drop(entry.address)
                    woken.append(entry.address)
            now = self._clock()
            while self._dues and self._dues[0][0] <= now:
                _, _, entry = heapq.heappop(self._dues)
                if self._watches.get(entry.address) is entry:
                    self._drop(entry.address)
                    woken.append(entry.address)
            if len(self._dues) > 2 * len(self._watches) + 64:  # drop the stale heap entries
                self._dues = [d for d in self._dues if self._watches.get(d[2].address) is d[2]]
                heapq.heapify(self._dues)
        for address in woken:
            self._wake(address)
        return woken
