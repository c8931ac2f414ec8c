"""Reload: a new configuration applied to the running process, or rejected whole.

    SIGHUP ─────────────┐
    files' stamp moved ─┴─▶ Reloader.reload ──load──▶ ConfigError: log each issue
                                 │                      (config_reload_failed), keep running
                                 └──diff(old, new)──▶ tenants ─▶ limits ─▶ reconcile mailboxes

A change is noticed by comparing the stamp (device, inode, size, mtime) of the configuration
file and of every mailbox list its ``mailboxes_files`` patterns match now with the stamp taken
when they were last read (by the last attempt, good or rejected): that catches an edit, a new
or removed list file, and the Kubernetes ConfigMap update, which swaps a ``..data`` symbolic
link and sends no signal.

Order matters: tenants first (a mailbox of a new tenant needs its token source), then the
limits, then the mailbox set (one ``Runtime.reconcile``), and last the sessions of removed
tenants. Keys that cannot change while running (``ConfigDiff.needs_restart``) are logged and
keep their old value; the rest applies.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from daemon.config import Config, ConfigError, MailboxSettings
from daemon.config.diff import ConfigDiff, diff
from daemon.logging import Logger
from daemon.metrics import Metrics
from daemon.ports import Clock


class LiveConfig:
    """The configuration in force; a reload swaps it whole (readers take one reference)."""

    def __init__(self, config: Config) -> None:
        self.config = config


@dataclass(frozen=True)
class ReloadTargets:
    """What a reload changes, as callables the composition root wires to the running parts."""

    set_tenants: Callable[[Config, ConfigDiff], None]
    set_limits: Callable[[Config, ConfigDiff], None]
    reconcile: Callable[[tuple[MailboxSettings, ...]], object]
    drop_tenants: Callable[[tuple[str, ...]], None]
    set_log_level: Callable[[str], None]


class Reloader:
    """Loads the configuration again when asked or when its files changed, and applies it."""

    def __init__(
        self,
        live: LiveConfig,
        *,
        load: Callable[[Path], Config],
        targets: ReloadTargets,
        metrics: Metrics,
        log: Logger,
        clock: Clock,
    ) -> None:
        self._live = live
        self._load = load
        self._targets = targets
        self._metrics = metrics
        self._log = log
        self._clock = clock
        self._watched = live.config.sources
        """The files of the last attempt (good or rejected) and their stamp as read then."""
        self._lock = threading.Lock()
        metrics.config_reloaded(True, clock())
        metrics.set_mailboxes_configured(Counter(m.tenant for m in live.config.mailboxes))

    def changed(self) -> bool:
        """The configuration file or a mailbox list changed since it was last read."""
        try:
            return self._watched.changed()
        except OSError:
            return True  # let a reload say what is wrong

    def reload(self, why: str) -> bool:
        """Load and apply the configuration; False when it was rejected (the old one stays)."""
        path = self._live.config.sources.config_file
        if path is None:
            return False
        with self._lock:
            old = self._live.config
            try:
                new = self._load(path)
            except ConfigError as exc:
                self._rejected(exc, why)
                return False
            self._watched = new.sources
            self._apply(old, new, why)
            return True

    def _rejected(self, exc: ConfigError, why: str) -> None:
        if exc.sources is not None:
            self._watched = exc.sources  # tried again when these files change, not before
        for issue in exc.errors:
            self._log.error(
                "config_reload_failed",
                key=issue.path,
                error=issue.message,
                trigger=why,
                hint="the running configuration stays until the file is fixed",
            )
        self._metrics.config_reloaded(False, self._clock())

    def _apply(self, old: Config, new: Config, why: str) -> None:
        changes = diff(old, new)
        for key in changes.needs_restart:
            self._log.warning(
                "configuration change needs a restart", key=key, hint="the old value stays"
            )
        self._live.config = new
        targets = self._targets
        targets.set_tenants(new, changes)
        targets.set_limits(new, changes)
        if "logging.level" in changes.changed_keys:
            targets.set_log_level(new.logging.level)
        targets.reconcile(new.mailbox_settings())
        if changes.tenants_removed:
            targets.drop_tenants(changes.tenants_removed)
        self._metrics.set_mailboxes_configured(Counter(m.tenant for m in new.mailboxes))
        self._metrics.config_reloaded(True, self._clock())
        self._log.info(
            "config_reloaded",
            trigger=why,
            mailboxes_added=len(changes.mailboxes_added),
            mailboxes_removed=len(changes.mailboxes_removed),
            mailboxes_changed=len(changes.mailboxes_changed),
            tenants_added=list(changes.tenants_added),
            tenants_removed=list(changes.tenants_removed),
            tenants_changed=[c.name for c in changes.tenants_changed],
            keys_changed=list(changes.changed_keys),
            needs_restart=list(changes.needs_restart),
        )
