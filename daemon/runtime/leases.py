"""Which mailboxes this replica runs, when replicas share one PostgreSQL database.

    config ──set_mailboxes──▶ LeaseKeeper ──reconcile(owned ∩ configured)──▶ Runtime
                                  │ ▲
                   every round:   ▼ │  heartbeat, renew, release, acquire (LeaseStore)
                                PostgreSQL

A round runs every ``min(2 s, lease_ttl / 3)``: it records this replica's heartbeat, reads the
live replicas, renews the held leases once a third of ``lease_ttl`` has passed since the last
renewal, and moves towards this replica's fair share. The share is exact and needs no talk
between replicas: with the live replicas sorted by id, the i-th gets ``N // R`` mailboxes plus
one when ``i < N % R``, so the shares add up to N. A replica over its share hands leases back,
one under it takes free ones; each moves at most a third of its share per round, so a joining
replica reaches its share within a few rounds without a burst of logins (the runtime spreads
new mailboxes' first polls besides).

A replica that cannot renew (database unreachable, connection cut) stops polling every
mailbox once ``lease_ttl`` minus a safety margin has passed since the start of its last
successful renewal (:meth:`LeaseKeeper.enforce`, called from the main loop so that a round
stuck on a dead connection cannot delay it). The lease in the database lasts at least
``lease_ttl`` from that same moment, so the replica has stopped before another can take over.
Writes are fenced as well (see :mod:`daemon.store.leases`).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from daemon.config import MailboxSettings
from daemon.errors import MailsyncError, error_fields
from daemon.logging import Logger
from daemon.store.leases import Fence, LeaseStore

ROUND_SECONDS: Final = 2.0
"""The longest time between two rounds (a shorter ``lease_ttl`` gives shorter rounds)."""
MOVE_FRACTION: Final = 3
"""At most 1/MOVE_FRACTION of the share moves in one round."""


def fair_share(mailboxes: int, replicas: Sequence[str], me: str) -> int:
    """This replica's share of ``mailboxes`` among the live ``replicas`` (sorted ids)."""
    if me not in replicas:
        return 0
    count = len(replicas)
    return mailboxes // count + (1 if replicas.index(me) < mailboxes % count else 0)


def safety_margin(ttl: float) -> float:
    """How long before its lease ends in the database a replica stops polling on its own."""
    return max(2.0, ttl / 5)


class LeaseKeeper:
    """Holds this replica's leases and feeds the owned mailboxes to ``reconcile``."""

    def __init__(
        self,
        *,
        store: LeaseStore,
        replica: str,
        version: str,
        ttl: float,
        reconcile: Callable[..., object],
        log: Logger,
        on_replicas: Callable[[int], None] = lambda _count: None,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        """``reconcile(wanted, handed_over=...)`` is :meth:`Runtime.reconcile`."""
        self._store = store
        self._replica = replica
        self._version = version
        self._ttl = ttl
        self._reconcile = reconcile
        self._log = log
        self._on_replicas = on_replicas
        self._monotonic = monotonic
        self._rng = rng or random.Random()  # noqa: S311 - choosing leases, not cryptography
        self._lock = threading.Lock()
        """Guards the fields below; never held while the runtime reconciles."""
        self._apply_lock = threading.Lock()
        """Serialises reconciles, so the last one always reflects the latest state."""
        self._moved: set[str] = set()
        """Mailboxes handed to another replica since the last reconcile."""
        self._configured: dict[str, MailboxSettings] = {}
        self._unensured: set[str] = set()
        self._release: set[str] = set()
        self._held: dict[str, int] = {}
        """Mailbox -> fencing token of each lease this replica holds."""
        self._valid_until = 0.0
        self._last_renewal = -math.inf
        self._failing = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def round_seconds(self) -> float:
        return min(ROUND_SECONDS, self._ttl / 3)

    # -- what runs here -----------------------------------------------------------------------
    def set_mailboxes(self, mailboxes: Iterable[MailboxSettings]) -> None:
        """The configured mailboxes (start and reload); the next round acts on the change."""
        with self._lock:
            configured = {m.address: m for m in mailboxes}
            self._unensured |= configured.keys() - self._configured.keys()
            self._configured = configured
            gone = [address for address in self._held if address not in configured]
            for address in gone:
                del self._held[address]
            self._release |= set(gone)
        # Settings changed for owned mailboxes apply now; removed ones stop (status removed).
        self._apply()
        self._wake.set()

    def fence(self, mailbox: str) -> Fence | None:
        """The fence for a write for ``mailbox``, or None when this replica does not hold it."""
        with self._lock:
            token = self._held.get(mailbox)
        return None if token is None else Fence(mailbox, self._replica, token)

    def _hand_over(self, mailboxes: Iterable[str]) -> None:
        """Drop leases from the held set; the caller holds the lock and calls _apply after."""
        for address in mailboxes:
            self._held.pop(address, None)
            self._moved.add(address)

    def _apply(self) -> None:
        """Reconcile the runtime to the held and configured mailboxes (without the lock)."""
        with self._apply_lock:
            with self._lock:
                wanted = [self._configured[a] for a in sorted(self._held) if a in self._configured]
                moved, self._moved = self._moved, set()
            self._reconcile(wanted, handed_over=tuple(moved))

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Run the first round now (a failure is retried by the thread), then every round."""
        self.round()
        self._thread = threading.Thread(target=self._loop, name="leases", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def stop(self) -> None:
        """Stop the rounds, hand every lease back and remove the heartbeat (SIGTERM)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self._ttl)
        with self._lock:
            held = len(self._held)
            self._held.clear()
        try:
            released = self._store.release(self._replica)
            self._store.leave(self._replica)
        except MailsyncError as exc:
            self._log.warning(
                "leases not handed back; they expire after lease_ttl",
                held=held,
                lease_ttl_s=self._ttl,
                **error_fields(exc),
            )
            return
        self._log.info("leases handed back", released=released)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.round_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.round()

    # -- one round ----------------------------------------------------------------------------
    def round(self) -> None:
        """Heartbeat, renew, move towards the fair share; a database failure waits a round."""
        started = self._monotonic()
        try:
            self._round(started)
        except MailsyncError as exc:
            log = self._log.debug if self._failing else self._log.warning
            self._failing = True
            log("lease round failed; retrying", **error_fields(exc))
            return
        if self._failing:
            self._failing = False
            self._log.info("lease rounds succeed again")

    def _round(self, started: float) -> None:
        store, me, ttl = self._store, self._replica, self._ttl
        with self._lock:
            unensured = sorted(self._unensured)
            release = sorted(self._release)
        if unensured:
            store.ensure(unensured)
            with self._lock:
                self._unensured -= set(unensured)
        if release:
            store.release(me, release)
            with self._lock:
                self._release -= set(release)
        live = store.heartbeat(me, self._version, ttl, len(self._held))
        self._on_replicas(len(live))
        if started - self._last_renewal >= ttl / 3:
            renewed = store.renew(me, ttl)
            self._renewed(renewed, started)
        with self._lock:
            share = fair_share(len(self._configured), live, me)
            step = max(1, math.ceil(share / MOVE_FRACTION))
            surplus = len(self._held) - share
            give = self._rng.sample(sorted(self._held), min(surplus, step)) if surplus > 0 else []
            self._hand_over(give)
            wanted = [a for a in self._configured if a not in self._held]
            room = min(share - len(self._held), step)
        if give:
            self._apply()
            store.release(me, give)
            self._log.info("leases handed over", mailboxes=len(give), share=share)
            return
        if room <= 0 or not wanted:
            return
        taken = store.acquire(me, ttl, wanted, room)
        if not taken:
            return
        with self._lock:
            if not self._held:
                self._valid_until = started + ttl - safety_margin(ttl)
            stray = [a for a in taken if a not in self._configured]  # removed meanwhile
            self._held.update({a: t for a, t in taken.items() if a in self._configured})
            self._release |= set(stray)
            held = len(self._held)
        self._apply()
        self._log.info("leases taken", mailboxes=len(taken), held=held, share=share)

    def _renewed(self, renewed: dict[str, int], started: float) -> None:
        with self._lock:
            self._last_renewal = started
            self._valid_until = started + self._ttl - safety_margin(self._ttl)
            lost = [a for a in self._held if renewed.get(a) != self._held[a]]
            stray = [a for a in renewed if a not in self._configured]
            self._hand_over(lost)
            # Held in the database but not here: still ours (after enforce(), or a restart
            # with the same replica id), with the token the database has.
            adopted = 0
            for address, token in renewed.items():
                if address in self._configured and address not in self._held:
                    self._held[address] = token
                    adopted += 1
            self._release |= set(stray)
        if lost or adopted:
            self._apply()
        if lost:
            self._log.warning(
                "leases lost to another replica; stopped polling them",
                mailboxes=len(lost),
                lease_ttl_s=self._ttl,
            )

    def enforce(self) -> None:
        """Stop polling every mailbox once the leases may have expired (renewals failing)."""
        with self._lock:
            if not self._held or self._monotonic() < self._valid_until:
                return
            lost = list(self._held)
            self._hand_over(lost)
        self._apply()
        self._log.error(
            "leases not renewed in time; stopped polling until the database answers",
            mailboxes=len(lost),
            lease_ttl_s=self._ttl,
            hint="check the database connection; other replicas take these mailboxes over",
        )
