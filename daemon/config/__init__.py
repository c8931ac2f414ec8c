"""The configuration file: YAML in, frozen and validated pydantic models out.

``load_config`` reads the file given by ``-c FILE`` or ``MAILSYNCD_CONFIG`` and raises one
:class:`ConfigError` listing every problem with its key path (``mailboxes[3].tenant``), so an
operator fixes a file in one round. Variables named by ``*_env`` keys are read when the file is
loaded; secret files are checked then and read only when a secret is needed (they may rotate).
Secret values never enter an error message or a repr. :class:`SecretReadError` lives in
``daemon.errors`` with every other error; it is re-exported here, where it is raised.

``mailboxes_files`` adds mailbox lists kept in their own files: ``Config.mailboxes`` holds them
all, and ``Config.sources`` (``ConfigError.sources`` for a rejected file) names every file read,
with a stamp that tells when one of them changes. :func:`diff` compares two configurations
for a reload.
"""

from __future__ import annotations

from daemon.config.diff import RESTART_KEYS, ConfigDiff, MailboxChange, TenantChange, diff
from daemon.config.fields import (
    CONFIG_ENV_VAR,
    ConfigError,
    ConfigIssue,
    MailboxSettings,
    check_database_url,
    format_errors,
    parse_duration,
    parse_listen,
)
from daemon.config.loader import config_from_mapping, load_config
from daemon.config.model import (
    CertificateCredential,
    Config,
    Credential,
    DatabaseConfig,
    Defaults,
    HttpConfig,
    ImapEndpoint,
    Limits,
    LoggingConfig,
    Mailbox,
    Tenant,
    TlsConfig,
)
from daemon.config.sources import ConfigSources, SourceStamp
from daemon.errors import SecretReadError

__all__ = [
    "CONFIG_ENV_VAR",
    "RESTART_KEYS",
    "CertificateCredential",
    "Config",
    "ConfigDiff",
    "ConfigError",
    "ConfigIssue",
    "ConfigSources",
    "Credential",
    "DatabaseConfig",
    "Defaults",
    "HttpConfig",
    "ImapEndpoint",
    "Limits",
    "LoggingConfig",
    "Mailbox",
    "MailboxChange",
    "MailboxSettings",
    "SecretReadError",
    "SourceStamp",
    "Tenant",
    "TenantChange",
    "TlsConfig",
    "check_database_url",
    "config_from_mapping",
    "diff",
    "format_errors",
    "load_config",
    "parse_duration",
    "parse_listen",
]
