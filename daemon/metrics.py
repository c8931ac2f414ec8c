"""Prometheus metrics of mailsyncd, registered on a registry the caller owns.

Metric names, types and labels are part of the SPEC contract. Labels are bounded by the
configuration (tenant names) or by fixed vocabularies (outcome, reason, change, state): there
is never a per-mailbox or per-folder label, so the number of series does not grow with the
mailbox count. Every known label combination is created at construction so that dashboards
and ``rate()`` see a 0 before the first event rather than a missing series.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Final, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector

from daemon import __version__
from daemon.errors import REASONS, Reason

Outcome = Literal["success", "failure"]
Change = Literal["new", "updated", "deleted"]
MailboxState = Literal["ok", "backoff", "auth_failed", "disabled"]

OUTCOMES: Final[tuple[Outcome, ...]] = ("success", "failure")
CHANGES: Final[tuple[Change, ...]] = ("new", "updated", "deleted")
MAILBOX_STATES: Final[tuple[MailboxState, ...]] = ("ok", "backoff", "auth_failed", "disabled")

# A poll of an idle folder takes tens of milliseconds; a large first batch can take minutes.
POLL_DURATION_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# The scale target is a p99 schedule delay under 2 s, so 1, 2 and 5 s are bucket bounds.
SCHEDULE_DELAY_BUCKETS: Final = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600)
# Lag is bounded below by the poll interval (default 60 s), hence the detail around minutes.
SYNC_LAG_BUCKETS: Final = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 90, 120, 300, 600, 1800, 3600)
DB_WRITE_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)


class Metrics:
    """Every mailsyncd metric, registered on ``registry`` and pre-populated for ``tenants``."""

    def __init__(
        self, registry: CollectorRegistry, tenants: Iterable[str], version: str = __version__
    ) -> None:
        self.registry = registry
        self.tenants: tuple[str, ...] = tuple(dict.fromkeys(tenants))
        reg = registry

        self.polls_total = Counter(
            "mailsyncd_polls_total",
            "Mailbox polls finished (every configured folder of one mailbox), by outcome.",
            ["tenant", "outcome"],
            registry=reg,
        )
        self.poll_failures_total = Counter(
            "mailsyncd_poll_failures_total",
            "Failed mailbox polls, by the class of failure.",
            ["tenant", "reason"],
            registry=reg,
        )
        self.poll_duration_seconds = Histogram(
            "mailsyncd_poll_duration_seconds",
            "Wall time of one mailbox poll, successful or not.",
            ["tenant"],
            buckets=POLL_DURATION_BUCKETS,
            registry=reg,
        )
        self.schedule_delay_seconds = Histogram(
            "mailsyncd_schedule_delay_seconds",
            "How late a poll started after it was due.",
            buckets=SCHEDULE_DELAY_BUCKETS,
            registry=reg,
        )
        self.messages_synced_total = Counter(
            "mailsyncd_messages_synced_total",
            "Message rows written, by kind of change.",
            ["tenant", "change"],
            registry=reg,
        )
        self.sync_lag_seconds = Histogram(
            "mailsyncd_sync_lag_seconds",
            "Time from a new message's INTERNALDATE to its row being committed.",
            ["tenant"],
            buckets=SYNC_LAG_BUCKETS,
            registry=reg,
        )
        self.token_requests_total = Counter(
            "mailsyncd_token_requests_total",
            "Access token requests to the identity platform, by outcome.",
            ["tenant", "outcome"],
            registry=reg,
        )
        self.token_expiry_timestamp_seconds = Gauge(
            "mailsyncd_token_expiry_timestamp_seconds",
            "Unix time at which the tenant's current access token expires (0: no token yet).",
            ["tenant"],
            registry=reg,
        )
        self.imap_logins_total = Counter(
            "mailsyncd_imap_logins_total",
            "IMAP XOAUTH2 authentications, by outcome.",
            ["tenant", "outcome"],
            registry=reg,
        )
        self.mailboxes = Gauge(
            "mailsyncd_mailboxes",
            "Mailboxes owned by this replica (plus disabled ones), by tenant and scheduling state.",
            ["tenant", "state"],
            registry=reg,
        )
        self.oldest_successful_poll_timestamp_seconds = Gauge(
            "mailsyncd_oldest_successful_poll_timestamp_seconds",
            "Unix time of the last successful poll of the tenant's stalest mailbox on this "
            "replica (the start time for one that never succeeded; 0: none owned).",
            ["tenant"],
            registry=reg,
        )
        self.db_write_duration_seconds = Histogram(
            "mailsyncd_db_write_duration_seconds",
            "Duration of one database write transaction.",
            buckets=DB_WRITE_BUCKETS,
            registry=reg,
        )
        self.imap_sessions_open = Gauge(
            "mailsyncd_imap_sessions_open",
            "IMAP sessions kept open between polls.",
            ["tenant"],
            registry=reg,
        )
        self.build_info = Gauge(
            "mailsyncd_build_info",
            "Always 1; the version label says which build is running.",
            ["version"],
            registry=reg,
        )
        # Not in the SPEC table: what an operator reaches for when the ones above look odd.
        self.polls_in_flight = Gauge(
            "mailsyncd_polls_in_flight",
            "Folder polls running right now.",
            ["tenant"],
            registry=reg,
        )
        self.mailboxes_configured = Gauge(
            "mailsyncd_mailboxes_configured",
            "Mailboxes listed in the loaded configuration.",
            ["tenant"],
            registry=reg,
        )
        self.folders_missing = Gauge(
            "mailsyncd_folders_missing",
            "Configured folders that the server does not list (marked and skipped).",
            registry=reg,
        )

        self.mailboxes_owned = Gauge(
            "mailsyncd_mailboxes_owned",
            "Enabled mailboxes this replica runs (holds the lease of, with replicas).",
            ["tenant"],
            registry=reg,
        )
        self.initial_sync_remaining_messages = Gauge(
            "mailsyncd_initial_sync_remaining_messages",
            "Messages initial syncs in progress still have to fetch.",
            ["tenant"],
            registry=reg,
        )
        self.idle_sessions = Gauge(
            "mailsyncd_idle_sessions",
            "Mailboxes whose IMAP session waits in IDLE for new mail (push).",
            ["tenant"],
            registry=reg,
        )
        self.replicas = Gauge(
            "mailsyncd_replicas",
            "Live replicas this replica sees, itself included.",
            registry=reg,
        )
        self.config_last_reload_successful = Gauge(
            "mailsyncd_config_last_reload_successful",
            "1 after a good load or reload of the configuration, 0 after a rejected reload.",
            registry=reg,
        )
        self.config_last_reload_success_timestamp_seconds = Gauge(
            "mailsyncd_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful load or reload of the configuration.",
            registry=reg,
        )
        for tenant in self.tenants:
            self._init_tenant(tenant)
        self.build_info.labels(version).set(1)
        # python_info (implementation and version); process_* comes from the ProcessCollector
        # the composition root registers on the same registry.
        PlatformCollector(registry=reg)

    def add_tenant(self, tenant: str) -> None:
        """Export a tenant added while running at 0, like those known at start."""
        if tenant not in self.tenants:
            self.tenants = (*self.tenants, tenant)
            self._init_tenant(tenant)

    def _init_tenant(self, tenant: str) -> None:
        for outcome in OUTCOMES:
            self.polls_total.labels(tenant, outcome)
            self.token_requests_total.labels(tenant, outcome)
            self.imap_logins_total.labels(tenant, outcome)
        for reason in REASONS:
            self.poll_failures_total.labels(tenant, reason)
        for change in CHANGES:
            self.messages_synced_total.labels(tenant, change)
        self.poll_duration_seconds.labels(tenant)
        self.sync_lag_seconds.labels(tenant)
        self.token_expiry_timestamp_seconds.labels(tenant)
        self.imap_sessions_open.labels(tenant)
        self.polls_in_flight.labels(tenant)
        self.mailboxes_configured.labels(tenant)
        self.mailboxes_owned.labels(tenant)
        self.initial_sync_remaining_messages.labels(tenant)
        self.idle_sessions.labels(tenant)
        self.oldest_successful_poll_timestamp_seconds.labels(tenant)
        for state in MAILBOX_STATES:
            self.mailboxes.labels(tenant, state)

    def poll_finished(
        self,
        tenant: str,
        outcome: Outcome,
        duration: float,
        reason: Reason | str | None = None,
    ) -> None:
        """Counts one mailbox poll; a failure also counts under ``reason`` (unknown: other)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown poll outcome {outcome!r}")
        self.polls_total.labels(tenant, outcome).inc()
        self.poll_duration_seconds.labels(tenant).observe(max(duration, 0.0))
        if outcome == "failure":
            label = reason if reason in REASONS else "other"
            self.poll_failures_total.labels(tenant, label).inc()

    @contextmanager
    def track_poll(self, tenant: str) -> Iterator[None]:
        """Counts a poll as running for the duration of the ``with`` block."""
        gauge = self.polls_in_flight.labels(tenant)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def messages_synced(self, tenant: str, new: int, updated: int, deleted: int) -> None:
        """Counts the rows a committed batch inserted, changed and marked deleted."""
        for change, count in (("new", new), ("updated", updated), ("deleted", deleted)):
            if count < 0:
                raise ValueError(f"negative {change} count {count}")
            if count:
                self.messages_synced_total.labels(tenant, change).inc(count)

    def observe_sync_lag(self, tenant: str, seconds: float) -> None:
        """Records INTERNALDATE-to-commit lag; negative values (clock skew) count as 0."""
        self.sync_lag_seconds.labels(tenant).observe(max(seconds, 0.0))

    def schedule_delay(self, seconds: float) -> None:
        """Records how late a poll started; an early start counts as 0."""
        self.schedule_delay_seconds.observe(max(seconds, 0.0))

    def set_mailbox_states(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Sets the mailbox count of every (tenant, state); a pair absent from ``counts`` is 0."""
        unknown = {state for _, state in counts} - set(MAILBOX_STATES)
        if unknown:
            raise ValueError(f"unknown mailbox states {sorted(unknown)}")
        for tenant in self._known_and(tenant for tenant, _ in counts):
            for state in MAILBOX_STATES:
                self.mailboxes.labels(tenant, state).set(counts.get((tenant, state), 0))

    def set_oldest_success(self, by_tenant: Mapping[str, float]) -> None:
        """Sets each tenant's stalest last-success time; a tenant absent (none owned) gets 0."""
        for tenant in self._known_and(by_tenant):
            self.oldest_successful_poll_timestamp_seconds.labels(tenant).set(
                by_tenant.get(tenant, 0)
            )

    def _known_and(self, tenants: Iterable[str]) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.tenants, *tenants)))

    def token_request(self, tenant: str, ok: bool) -> None:
        """Counts one token request to the identity platform."""
        self.token_requests_total.labels(tenant, "success" if ok else "failure").inc()

    def token_expiry(self, tenant: str, ts: float) -> None:
        """Sets when the tenant's current token expires (Unix time)."""
        self.token_expiry_timestamp_seconds.labels(tenant).set(ts)

    def imap_login(self, tenant: str, ok: bool) -> None:
        """Counts one IMAP XOAUTH2 authentication."""
        self.imap_logins_total.labels(tenant, "success" if ok else "failure").inc()

    def set_sessions_open(self, tenant: str, count: int) -> None:
        """Sets how many IMAP sessions of ``tenant`` are open between polls."""
        if count < 0:
            raise ValueError(f"negative session count {count}")
        self.imap_sessions_open.labels(tenant).set(count)

    def db_write(self, seconds: float) -> None:
        """Records the duration of one write transaction."""
        self.db_write_duration_seconds.observe(max(seconds, 0.0))

    def set_mailboxes_configured(self, counts: Mapping[str, int]) -> None:
        """Sets the configured mailbox count per tenant; a known tenant absent becomes 0."""
        for tenant in (*self.tenants, *(t for t in counts if t not in self.tenants)):
            self.mailboxes_configured.labels(tenant).set(counts.get(tenant, 0))

    def set_mailboxes_owned(self, counts: Mapping[str, int]) -> None:
        """Sets the owned mailbox count per tenant; a known tenant absent becomes 0."""
        for tenant in (*self.tenants, *(t for t in counts if t not in self.tenants)):
            self.mailboxes_owned.labels(tenant).set(counts.get(tenant, 0))

    def set_initial_sync_remaining(self, counts: Mapping[str, int]) -> None:
        """Sets the messages still to fetch per tenant; a known tenant absent becomes 0."""
        for tenant in (*self.tenants, *(t for t in counts if t not in self.tenants)):
            self.initial_sync_remaining_messages.labels(tenant).set(counts.get(tenant, 0))

    def set_idle_sessions(self, counts: Mapping[str, int]) -> None:
        """Sets the mailboxes in IDLE per tenant; a known tenant absent becomes 0."""
        for tenant in (*self.tenants, *(t for t in counts if t not in self.tenants)):
            self.idle_sessions.labels(tenant).set(counts.get(tenant, 0))

    def set_replicas(self, count: int) -> None:
        """Sets how many live replicas this one sees (itself included)."""
        self.replicas.set(count)

    def config_reloaded(self, ok: bool, when: float) -> None:
        """A load or reload of the configuration was accepted (``ok``) or rejected."""
        self.config_last_reload_successful.set(1 if ok else 0)
        if ok:
            self.config_last_reload_success_timestamp_seconds.set(when)

    def set_folders_missing(self, count: int) -> None:
        """Sets how many configured folders the servers do not list."""
        self.folders_missing.set(count)
