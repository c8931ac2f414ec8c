"""Per-tenant concurrency: at most N polls of one tenant at once, the rest in a FIFO line.

A mailbox over its tenant's bound waits in line without holding a worker thread; a finishing
poll of that tenant hands its slot straight to the first in line (first come, first served),
so a busy tenant cannot starve behind newcomers and never blocks another tenant's polls.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict, deque


class TenantLimiter:
    """Slots per tenant with a waiting line; thread-safe."""

    def __init__(self, per_tenant: int) -> None:
        if per_tenant < 1:
            raise ValueError("the per-tenant bound must be at least 1")
        self._limit = per_tenant
        self._active: Counter[str] = Counter()
        self._waiting: defaultdict[str, deque[str]] = defaultdict(deque)
        self._lock = threading.Lock()

    def set_limit(self, per_tenant: int) -> dict[str, list[str]]:
        """A new bound; returns, per tenant, the waiting keys a raised bound let in now."""
        if per_tenant < 1:
            raise ValueError("the per-tenant bound must be at least 1")
        admitted: dict[str, list[str]] = {}
        with self._lock:
            self._limit = per_tenant
            for tenant, line in self._waiting.items():
                while line and self._active[tenant] < per_tenant:
                    self._active[tenant] += 1
                    admitted.setdefault(tenant, []).append(line.popleft())
        return admitted

    def acquire(self, tenant: str, key: str) -> bool:
        """Take a slot now (True), or join the tenant's line (False; once per key)."""
        with self._lock:
            if self._active[tenant] < self._limit:
                self._active[tenant] += 1
                return True
            line = self._waiting[tenant]
            if key not in line:
                line.append(key)
            return False

    def release(self, tenant: str) -> str | None:
        """Give a slot back; returns the key it was handed to, if one was waiting.

        The heir owns the slot from now on and must run (or ``release`` it) itself.
        """
        with self._lock:
            line = self._waiting[tenant]
            if line:
                return line.popleft()
            self._active[tenant] -= 1
            if self._active[tenant] <= 0:
                del self._active[tenant]
            return None

    def withdraw(self, tenant: str, key: str) -> bool:
        """Leave the line (a removed mailbox); True if ``key`` was waiting."""
        with self._lock:
            line = self._waiting[tenant]
            try:
                line.remove(key)
            except ValueError:
                return False
            return True

    def active(self, tenant: str) -> int:
        with self._lock:
            return self._active[tenant]

    def waiting(self, tenant: str) -> int:
        with self._lock:
            return len(self._waiting[tenant])
