"""What changed between two configurations: the plan of a reload, computed without side effects.

:func:`diff` compares a running configuration with a newly loaded one:

- mailboxes by address, on their *effective* settings (``Config.mailbox_settings()``): a mailbox
  moved from ``mailboxes`` into a mailbox file, or one whose written value now equals the
  default it used to inherit, has not changed; one whose inherited default changed has;
- tenants by name, on every key (credential included); :class:`TenantChange` says whether the
  change needs a new token (``credential``, ``tenant_id``, ``client_id``, ``authority_host``,
  ``scope``) and whether it moved the IMAP endpoint (``imap``);
- every other key (``database``, ``http``, ``tls``, ``logging``, ``defaults``, ``limits``) by
  key path, in :attr:`ConfigDiff.changed_keys`.

Keys that cannot change while the daemon runs are :data:`RESTART_KEYS`; a changed one is listed
in :attr:`ConfigDiff.needs_restart`, and the running process keeps its old value until it is
restarted. The SPEC names ``database``, ``http`` and ``limits.max_concurrent_polls``. Two more
are decided here, because they are bound when the process starts:

- ``tls.ca_file``: the trust of every TLS connection (IMAP and the identity platform) is built
  once; the file's *contents* are read again only at a restart too.
- ``logging.format``: the renderer is chosen once. ``logging.level`` applies at once.

Everything else applies at once: ``defaults.*`` through the mailboxes whose effective settings
they change, the other ``limits.*`` from the next poll, tenants and mailboxes as above.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields

from pydantic import BaseModel

from daemon.config.fields import MailboxSettings
from daemon.config.model import Config, Tenant

RESTART_KEYS: tuple[str, ...] = (
    "database",
    "http.listen",
    "limits.max_concurrent_polls",
    "tls.ca_file",
    "logging.format",
    "cluster.lease_ttl",
)
"""Key paths (a section stands for every key in it) that a running daemon cannot apply."""

_TOKEN_KEYS = ("tenant_id", "client_id", "credential", "authority_host", "scope")
_LISTS = ("tenants", "mailboxes", "mailboxes_files")  # compared entry by entry, not as keys


@dataclass(frozen=True, slots=True)
class MailboxChange:
    """A mailbox in both configurations whose effective settings differ."""

    old: MailboxSettings
    new: MailboxSettings

    @property
    def address(self) -> str:
        """The mailbox address (lower-case)."""
        return self.new.address

    @property
    def settings(self) -> tuple[str, ...]:
        """Names of the settings that differ, e.g. ``("folders", "poll_interval")``."""
        return tuple(
            f.name
            for f in fields(MailboxSettings)
            if getattr(self.old, f.name) != getattr(self.new, f.name)
        )


@dataclass(frozen=True, slots=True)
class TenantChange:
    """A tenant in both configurations with at least one differing key."""

    name: str
    keys: tuple[str, ...]
    """Key paths within the tenant that differ, e.g. ``("credential.client_secret_file",)``."""

    @property
    def needs_new_token(self) -> bool:
        """The credential, the tenant or application ID, the authority or the scope changed:
        the cached token must be dropped and a new one requested."""
        return any(_under(key, _TOKEN_KEYS) for key in self.keys)

    @property
    def imap_changed(self) -> bool:
        """``imap.host`` or ``imap.port`` changed: open sessions go to the old server."""
        return any(_under(key, ("imap",)) for key in self.keys)


@dataclass(frozen=True, slots=True)
class ConfigDiff:
    """The difference between two configurations; every tuple in a stable order (the new
    configuration's for added and changed entries, the old one's for removed ones)."""

    mailboxes_added: tuple[MailboxSettings, ...] = ()
    mailboxes_removed: tuple[MailboxSettings, ...] = ()
    mailboxes_changed: tuple[MailboxChange, ...] = ()
    tenants_added: tuple[str, ...] = ()
    tenants_removed: tuple[str, ...] = ()
    tenants_changed: tuple[TenantChange, ...] = ()
    changed_keys: tuple[str, ...] = ()
    """Key paths outside ``tenants`` and ``mailboxes`` that differ, e.g. ``logging.level``."""
    needs_restart: tuple[str, ...] = ()
    """The subset of :attr:`changed_keys` applied only by a restart (:data:`RESTART_KEYS`)."""

    @property
    def empty(self) -> bool:
        """Nothing differs."""
        return not any(getattr(self, f.name) for f in fields(self))


def diff(old: Config, new: Config) -> ConfigDiff:
    """What changed from *old* to *new* (see the module's documentation)."""
    old_mailboxes = {m.address: m for m in old.mailbox_settings()}
    new_mailboxes = {m.address: m for m in new.mailbox_settings()}
    old_tenants = {t.name: t for t in old.tenants}
    new_tenants = {t.name: t for t in new.tenants}
    changed_keys = tuple(
        key
        for name in Config.model_fields
        if name not in _LISTS
        for key in _differences(getattr(old, name), getattr(new, name), name)
    )
    return ConfigDiff(
        mailboxes_added=tuple(m for a, m in new_mailboxes.items() if a not in old_mailboxes),
        mailboxes_removed=tuple(m for a, m in old_mailboxes.items() if a not in new_mailboxes),
        mailboxes_changed=tuple(
            MailboxChange(old_mailboxes[a], m)
            for a, m in new_mailboxes.items()
            if a in old_mailboxes and old_mailboxes[a] != m
        ),
        tenants_added=tuple(n for n in new_tenants if n not in old_tenants),
        tenants_removed=tuple(n for n in old_tenants if n not in new_tenants),
        tenants_changed=tuple(
            change
            for n, t in new_tenants.items()
            if n in old_tenants and (change := _tenant_change(old_tenants[n], t)) is not None
        ),
        changed_keys=changed_keys,
        needs_restart=tuple(key for key in changed_keys if _under(key, RESTART_KEYS)),
    )


def _tenant_change(old: Tenant, new: Tenant) -> TenantChange | None:
    keys = tuple(_differences(old, new, ""))
    return TenantChange(new.name, keys) if keys else None


def _differences(old: object, new: object, path: str) -> Iterator[str]:
    """Key paths under *path* whose values differ (a model is compared key by key)."""
    if not (isinstance(old, BaseModel) and type(old) is type(new)):
        if old != new:
            yield path or "(value)"
        return
    found = False
    for name, info in type(old).model_fields.items():
        if info.exclude:
            continue  # the traps for inline secrets: never set in a valid configuration
        for key in _differences(getattr(old, name), getattr(new, name), _join(path, name)):
            found = True
            yield key
    if not found and old.__pydantic_private__ != new.__pydantic_private__:
        # a value resolved at load time (a variable named by *_env) differs: the key itself
        yield path or "(value)"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith((f"{p}.", f"{p}[")) for p in prefixes)
