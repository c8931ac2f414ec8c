"""The composition root: builds every part from the validated config and owns its lifecycle.

Shutdown is a bounded sequence: stop scheduling, let in-flight batches commit (the sync engine
checks the stop flag between batches), stop the HTTP server, close the database pool.
Signal handlers only set the stop event.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

from prometheus_client import CollectorRegistry

from daemon import __version__
from daemon.auth import AccessToken
from daemon.auth.msal_provider import MsalTokenProvider
from daemon.config import Config, Tenant
from daemon.errors import MailsyncError
from daemon.http import HealthServer
from daemon.imap.client import ImapMailbox, make_ssl_context
from daemon.logging import SecretRegistry, configure_logging, get_logger
from daemon.metrics import Metrics
from daemon.poller import Poller, Session
from daemon.scheduler import PollScheduler
from daemon.store.engine import create_engine_for
from daemon.store.migrate import is_at_head
from daemon.store.migrate import migrate as run_migrations
from daemon.store.repository import SqlStore

SHUTDOWN_POLLS_TIMEOUT = 7.0
MIGRATION_WAIT = 60.0
IMAP_TIMEOUT = 60.0


def configure_from(config: Config) -> Any:
    """Configure logging from the config, registering every secret it can read for scrubbing."""
    secrets = SecretRegistry()
    for tenant in config.tenants:
        try:
            if tenant.credential.kind == "client_secret":
                secrets.register_secret(tenant.credential.read_client_secret().get_secret_value())
        except MailsyncError:
            pass  # unreadable now: reported where it is used
    configure_logging(config.logging.level, config.logging.format, secrets=secrets)
    return get_logger("mailsyncd")


def migrate_database(config: Config, log: Any, *, wait: float = MIGRATION_WAIT) -> bool:
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


class Daemon:
    """``mailsyncd run``."""

    def __init__(self, config: Config, log: Any, *, migrate: bool = True) -> None:
        self.config = config
        self.log = log
        self.migrate = migrate
        self.stop_event = threading.Event()

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        """Signal handler: only sets the stop event."""
        del signum
        self.stop_event.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        config, log = self.config, self.log
        log.info(
            "starting",
            version=__version__,
            tenants=len(config.tenants),
            mailboxes=len(config.mailboxes),
        )
        if self.migrate and not migrate_database(config, log):
            return 1
        engine = create_engine_for(config.database_url)
        store = SqlStore(engine)
        registry = CollectorRegistry(auto_describe=True)
        metrics = Metrics(registry, [t.name for t in config.tenants], __version__)
        metrics.set_config_loaded(True)
        per_tenant: dict[str, int] = {}
        for mailbox in config.mailboxes:
            per_tenant[mailbox.tenant] = per_tenant.get(mailbox.tenant, 0) + 1
        metrics.set_mailboxes_configured(per_tenant)

        def on_token(tenant: str, ok: bool, token: AccessToken | None) -> None:
            metrics.token_request(tenant, ok)
            if token is not None:
                metrics.token_expiry(tenant, token.expires_at)

        tokens = MsalTokenProvider(config.tenants, ca_file=_ca_file(config), observer=on_token)
        context = make_ssl_context(_ca_file(config))

        def connect(tenant: Tenant) -> Session:
            return ImapMailbox.connect(
                tenant.imap.host, tenant.imap.port, ssl_context=context, timeout=IMAP_TIMEOUT
            )

        scheduler: PollScheduler | None = None
        poller = Poller(
            tenants={t.name: t for t in config.tenants},
            store=store,
            tokens=tokens,
            connect=connect,
            metrics=metrics,
            log=log,
            batch_size=config.limits.fetch_batch_size,
            should_stop=self.stop_event.is_set,
        )
        scheduler = PollScheduler(
            config.mailbox_settings(),
            poller.poll,
            metrics=metrics,
            log=log,
            max_concurrent=config.limits.max_concurrent_polls,
            max_per_tenant=config.limits.max_concurrent_polls_per_tenant,
        )
        head_seen = threading.Event()

        def readiness() -> list[str]:
            reasons = []
            try:
                store.ping()
                if not head_seen.is_set():
                    if is_at_head(engine):
                        head_seen.set()
                    else:
                        reasons.append("database schema is not at head")
            except MailsyncError:
                reasons.append("database unreachable")
            return reasons

        http = HealthServer(config.http.listen, registry, scheduler.alive, readiness)
        try:
            http.start()
        except OSError as exc:
            log.error("cannot listen", listen=config.http.listen, error=str(exc))  # noqa: TRY400
            engine.dispose()
            return 1
        if not self.migrate and not head_seen.is_set() and readiness():
            log.warning("database schema is not at head; run `mailsyncd migrate`")
        scheduler.start()
        log.info("running", listen=f"{http.host or '0.0.0.0'}:{http.port}")  # noqa: S104
        exit_code = 0
        while not self.stop_event.wait(1.0):
            if not scheduler.alive():
                log.error("the scheduler stopped unexpectedly; exiting")
                exit_code = 1
                break
        log.info("stopping")
        if not scheduler.stop(timeout=SHUTDOWN_POLLS_TIMEOUT):
            log.warning("polls still running at shutdown; their uncommitted batches are redone")
        http.stop()
        engine.dispose()
        log.info("stopped", exit_code=exit_code)
        sys.stdout.flush()
        return exit_code
