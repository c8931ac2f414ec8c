"""The composition root: builds every part from the validated config and owns its lifecycle.

Shutdown is a bounded sequence: stop scheduling, let in-flight batches commit (the sync engine
checks the stop flag between batches), log the open IMAP sessions out, stop the HTTP server,
close the database pool. Signal handlers only set the stop event.
"""

from __future__ import annotations

import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from prometheus_client import CollectorRegistry, ProcessCollector
from sqlalchemy.engine import Engine

from daemon import __version__
from daemon.auth import AccessToken
from daemon.auth.msal_provider import MsalTokenClient
from daemon.auth.refresher import TokenRefresher
from daemon.config import Config, load_config
from daemon.config.diff import ConfigDiff
from daemon.errors import AlreadyRunning, MailsyncError
from daemon.http import HealthServer
from daemon.imap.client import ImapMailbox
from daemon.imap.idle import IdleHub
from daemon.imap.pool import SessionPool
from daemon.logging import (
    Logger,
    SecretRegistry,
    configure_logging,
    get_logger,
    set_log_level,
)
from daemon.metrics import Metrics
from daemon.ports import Session
from daemon.runtime.leases import LeaseKeeper
from daemon.runtime.limiter import TenantLimiter
from daemon.runtime.push import Push
from daemon.runtime.reload import LiveConfig, Reloader, ReloadTargets
from daemon.runtime.supervisor import Runtime
from daemon.runtime.timer import ApschedulerTimer
from daemon.runtime.worker import MailboxWorker
from daemon.status import replica_id
from daemon.store.engine import create_engine_for
from daemon.store.leases import FencedStore, LeaseStore
from daemon.store.migrate import is_at_head
from daemon.store.migrate import migrate as run_migrations
from daemon.store.repository import SqlStore
from daemon.store.single import RunLock, sqlite_file
from daemon.tls import make_ssl_context

RELOAD_CHECK_SECONDS = 2.0
"""How often the configuration's files are checked for a change (SPEC: at least every 5 s)."""
SHUTDOWN_POLLS_TIMEOUT = 7.0
SHUTDOWN_SESSIONS_TIMEOUT = 3.0
MIGRATION_WAIT = 60.0


def register_secrets(config: Config, secrets: SecretRegistry) -> None:
    """Register every client secret the config can read, so that logs never show it."""
    for tenant in config.tenants:
        try:
            if tenant.credential.kind == "client_secret":
                secrets.register_secret(tenant.credential.read_client_secret().get_secret_value())
        except MailsyncError:
            pass  # unreadable now: reported where it is used


def configure_from(config: Config, secrets: SecretRegistry | None = None) -> Logger:
    """Configure logging from the config, registering every secret it can read for scrubbing."""
    secrets = secrets if secrets is not None else SecretRegistry()
    register_secrets(config, secrets)
    configure_logging(config.logging.level, config.logging.format, secrets=secrets)
    return get_logger("mailsyncd")


def migrate_database(config: Config, log: Logger, *, wait: float = MIGRATION_WAIT) -> bool:
    """Migrate under the database lock, retrying an unreachable database for ``wait`` s."""
    engine = create_engine_for(config.database_url)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                run_migrations(engine)
            except MailsyncError as exc:
                if time.monotonic() >= deadline:
                    # An outage, not a bug: the message says it all, a traceback would not help.
                    log.error("migration failed", error=str(exc), reason=exc.reason)  # noqa: TRY400
                    return False
                log.warning("database not ready for migration; retrying", error=str(exc))
                time.sleep(2.0)
                continue
            log.info("database schema at head")
            return True
    finally:
        engine.dispose()


def _ca_file(config: Config) -> str | None:
    return str(config.tls.ca_file) if config.tls.ca_file else None


def _shortest_intervals(config: Config) -> dict[str, float]:
    shortest: dict[str, float] = {}
    for settings in config.mailbox_settings():
        current = shortest.get(settings.tenant, settings.poll_interval)
        shortest[settings.tenant] = min(current, settings.poll_interval)
    return shortest


def _run_lock(config: Config) -> RunLock | None:
    """The lock that keeps a SQLite database to one ``run`` (None for PostgreSQL)."""
    database = sqlite_file(config.database_url)
    return None if database is None else RunLock(database, replica_id())


def _fenced(store: SqlStore, leases: LeaseKeeper) -> Callable[[str], FencedStore]:
    """The store of one mailbox's polls: every write carries the mailbox's lease."""

    def store_for(address: str) -> FencedStore:
        return FencedStore(store, address, lambda: leases.fence(address))

    return store_for


class _Readiness:
    """``/readyz``: the database answers and its schema is at head (checked until it is)."""

    def __init__(self, store: SqlStore, engine: Engine) -> None:
        self._store = store
        self._engine = engine
        self._head_seen = False

    def __call__(self) -> list[str]:
        try:
            self._store.ping()
            if not self._head_seen:
                self._head_seen = is_at_head(self._engine)
        except MailsyncError:
            return ["database unreachable"]
        return [] if self._head_seen else ["database schema is not at head"]


@dataclass
class _Parts:
    engine: Engine
    metrics: Metrics
    registry: CollectorRegistry
    tokens: TokenRefresher
    sessions: SessionPool
    runtime: Runtime
    http: HealthServer
    reloader: Reloader
    leases: LeaseKeeper | None
    """None with SQLite: one replica runs every configured mailbox."""
    idle: IdleHub

    def start_mailboxes(self, config: Config) -> None:
        self.idle.start()
        if self.leases is None:
            self.runtime.start(config.mailbox_settings())
            return
        self.runtime.start(())
        self.leases.set_mailboxes(config.mailbox_settings())
        self.leases.start()

    def alive(self) -> bool:
        leases_alive = self.leases is None or self.leases.alive()
        return self.runtime.alive() and self.tokens.alive() and self.idle.alive() and leases_alive


class Daemon:
    """``mailsyncd run``."""

    def __init__(
        self,
        config: Config,
        log: Logger,
        *,
        migrate: bool = True,
        secrets: SecretRegistry | None = None,
    ) -> None:
        self.config = config
        self.log = log
        self.migrate = migrate
        self.secrets = secrets if secrets is not None else SecretRegistry()
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        """Signal handler: only sets the stop event."""
        del signum
        self.stop_event.set()

    def request_reload(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        """SIGHUP handler: only sets the reload event (the main loop reloads)."""
        del signum
        self.reload_event.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)
        config, log = self.config, self.log
        log.info(
            "starting",
            version=__version__,
            tenants=len(config.tenants),
            mailboxes=len(config.mailboxes),
        )
        lock = _run_lock(config)
        if lock is not None:
            try:
                lock.acquire()
            except AlreadyRunning as exc:
                # A configuration fact, not a bug: the message says it all, a traceback would not.
                log.error("cannot start", error=str(exc), reason=exc.reason, hint=exc.hint)  # noqa: TRY400
                return 1
        try:
            return self._run(config, log)
        finally:
            if lock is not None:
                lock.release()

    def _run(self, config: Config, log: Logger) -> int:
        if self.migrate and not migrate_database(config, log):
            return 1
        parts = self._build()
        try:
            parts.http.start()
        except OSError as exc:
            log.error("cannot listen", listen=config.http.listen, error=str(exc))  # noqa: TRY400
            parts.engine.dispose()
            return 1
        parts.tokens.start()
        parts.start_mailboxes(config)
        log.info("running", listen=f"{parts.http.host or '0.0.0.0'}:{parts.http.port}")  # noqa: S104
        exit_code = 0
        next_check = time.monotonic() + RELOAD_CHECK_SECONDS
        while not self.stop_event.wait(1.0):
            if parts.leases is not None:
                parts.leases.enforce()
            if not parts.alive():
                log.error("a background thread stopped unexpectedly; exiting")
                exit_code = 1
                break
            if self.reload_event.is_set():
                self.reload_event.clear()
                parts.reloader.reload("SIGHUP")
            elif time.monotonic() >= next_check:
                next_check = time.monotonic() + RELOAD_CHECK_SECONDS
                if parts.reloader.changed():
                    parts.reloader.reload("file changed")
        self._shutdown(parts)
        log.info("stopped", exit_code=exit_code)
        sys.stdout.flush()
        return exit_code

    def _shutdown(self, parts: _Parts) -> None:
        self.log.info("stopping")
        if not parts.runtime.stop(timeout=SHUTDOWN_POLLS_TIMEOUT):
            self.log.warning("polls still running at shutdown; uncommitted batches are redone")
        parts.idle.stop()
        parts.sessions.close_all(deadline=SHUTDOWN_SESSIONS_TIMEOUT)
        parts.runtime.save_statuses()  # the last polls' outcomes
        if parts.leases is not None:
            parts.leases.stop()  # hands the leases back: the other replicas take over now
        parts.tokens.stop()
        parts.http.stop()
        parts.engine.dispose()

    def _build(self) -> _Parts:
        config, log = self.config, self.log
        live = LiveConfig(config)
        engine = create_engine_for(config.database_url)
        registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=registry)  # process_*: CPU, memory, open fds (SPEC)
        metrics = Metrics(registry, [t.name for t in config.tenants], __version__)
        store = SqlStore(engine, on_write=metrics.db_write)
        owner = replica_id()
        leases = None
        if engine.dialect.name == "postgresql":
            ttl = config.cluster.lease_ttl
            leases = LeaseKeeper(
                store=LeaseStore(engine, statement_timeout=ttl / 3),
                replica=owner,
                version=__version__,
                ttl=ttl,
                reconcile=lambda wanted, handed_over: runtime.reconcile(
                    wanted, handed_over=handed_over
                ),
                log=log,
                on_replicas=metrics.set_replicas,
            )
        else:
            metrics.set_replicas(1)  # SQLite: one replica runs every configured mailbox

        def on_token(tenant: str, ok: bool, token: AccessToken | None) -> None:
            metrics.token_request(tenant, ok)
            if token is not None:
                metrics.token_expiry(tenant, token.expires_at)

        source = MsalTokenClient(config.tenants, ca_file=_ca_file(config), observer=on_token)
        tokens = TokenRefresher(
            source,
            [t.name for t in config.tenants],
            log=log,
            poll_intervals=_shortest_intervals(config),
        )
        context = make_ssl_context(_ca_file(config))  # tls.ca_file needs a restart

        def connect(tenant_name: str) -> Session:
            current = live.config  # a reload swaps it: new sessions use the new endpoint
            tenant = current.tenant(tenant_name)
            return ImapMailbox.connect(
                tenant.imap.host,
                tenant.imap.port,
                ssl_context=context,
                timeout=current.limits.imap_timeout,
            )

        limits = config.limits
        rng = random.Random()  # noqa: S311 - jitter, not cryptography

        # The runtime is built last (it needs the worker); these reach it once it exists.
        def push_now(address: str) -> None:
            runtime.push(address)

        def set_idle(address: str, idle: bool) -> None:
            runtime.set_idle(address, idle)

        hub = IdleHub(wake=push_now, log=log)
        sessions = SessionPool(
            connect=connect,
            max_open=limits.max_open_sessions,
            clock=time.time,
            rng=rng,
            log=log,
            on_login=metrics.imap_login,
            on_count=metrics.set_sessions_open,
            on_release=hub.unwatch,
        )
        push = Push(hub, renew=limits.idle_renew, log=log, on_idle=set_idle, wake=push_now)
        worker = MailboxWorker(
            push=push,
            store=store,
            tokens=tokens,
            sessions=sessions,
            metrics=metrics,
            log=log,
            batch_size=limits.fetch_batch_size,
            store_for=None if leases is None else _fenced(store, leases),
        )
        runtime = Runtime(
            poller=worker,
            timer=ApschedulerTimer(workers=limits.max_concurrent_polls, log=log),
            limiter=TenantLimiter(limits.max_concurrent_polls_per_tenant),
            metrics=metrics,
            log=log,
            clock=time.time,
            rng=rng,
            owner=owner,
            save_statuses=store.save_statuses,
        )
        tokens.when_recovered(runtime.wake_tenant)

        def set_tenants(new: Config, changes: ConfigDiff) -> None:
            for name in changes.tenants_added:
                metrics.add_tenant(name)
            register_secrets(new, self.secrets)
            source.set_tenants(new.tenants)
            renew = {c.name for c in changes.tenants_changed if c.needs_new_token}
            tokens.set_tenants(
                [t.name for t in new.tenants],
                poll_intervals=_shortest_intervals(new),
                renew=renew,
            )
            for change in changes.tenants_changed:
                if change.imap_changed:
                    sessions.close_tenant(change.name)

        def set_limits(new: Config, changes: ConfigDiff) -> None:
            keys = set(changes.changed_keys)
            if "limits.max_concurrent_polls_per_tenant" in keys:
                runtime.set_tenant_limit(new.limits.max_concurrent_polls_per_tenant)
            if "limits.max_open_sessions" in keys:
                sessions.set_max_open(new.limits.max_open_sessions)
            if "limits.fetch_batch_size" in keys:
                worker.set_batch_size(new.limits.fetch_batch_size)
            if "limits.idle_renew" in keys:
                push.set_renew(new.limits.idle_renew)

        def drop_tenants(names: tuple[str, ...]) -> None:
            for name in names:
                sessions.close_tenant(name)

        reloader = Reloader(
            live,
            load=load_config,
            targets=ReloadTargets(
                set_tenants=set_tenants,
                set_limits=set_limits,
                reconcile=runtime.reconcile if leases is None else leases.set_mailboxes,
                drop_tenants=drop_tenants,
                set_log_level=set_log_level,
            ),
            metrics=metrics,
            log=log,
            clock=time.time,
        )

        def status() -> dict[str, object]:
            return {"replica": owner, "mailboxes": [s.to_json() for s in runtime.statuses()]}

        http = HealthServer(
            config.http.listen,
            registry,
            runtime.alive,
            _Readiness(store, engine),
            status=status,
        )
        return _Parts(
            engine, metrics, registry, tokens, sessions, runtime, http, reloader, leases, hub
        )
