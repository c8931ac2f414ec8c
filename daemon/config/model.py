"""The configuration file as frozen pydantic models, one per section."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, Self
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    StrictBool,
    ValidationInfo,
    field_validator,
    model_validator,
)

from daemon.config.fields import (
    _DOMAIN_RE,
    _GUID_RE,
    _INLINE_HINT,
    _INLINE_SECRET_KEYS,
    _TENANT_NAME_RE,
    Count,
    Duration,
    Folders,
    MailboxSettings,
    Patterns,
    PlainFile,
    Port,
    SecretFile,
    Token,
    _address,
    _context,
    _env_name,
    _env_value,
    _lower,
    _read,
    check_database_url,
    parse_listen,
)
from daemon.config.sources import ConfigSources
from daemon.errors import SecretReadError
from daemon.tls import make_ssl_context

# -- models ------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class _RejectsInlineSecrets(_Model):
    """Names the usual inline-secret keys only to reject them with a helpful message."""

    client_secret: object = Field(default=None, exclude=True, repr=False)
    secret: object = Field(default=None, exclude=True, repr=False)
    password: object = Field(default=None, exclude=True, repr=False)
    private_key: object = Field(default=None, exclude=True, repr=False)

    @field_validator(*_INLINE_SECRET_KEYS, mode="before")
    @classmethod
    def _reject_inline_secret(cls, _value: object) -> NoReturn:
        raise ValueError(_INLINE_HINT)


class DatabaseConfig(_Model):
    """``database``: exactly one of ``url`` and ``url_env`` (a variable read at load time)."""

    url: SecretStr | None = None  # may hold a password
    url_env: str | None = None
    _resolved: SecretStr = PrivateAttr(default_factory=lambda: SecretStr(""))

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_database_url(value.get_secret_value())
        return value

    @field_validator("url_env")
    @classmethod
    def _check_url_env(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        resolved = _env_value(_env_name(value), info)
        if resolved is None:
            raise ValueError(f"environment variable {value} is not set")
        try:
            check_database_url(resolved)
        except ValueError as exc:
            raise ValueError(f"environment variable {value}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> Self:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("set exactly one of url and url_env")
        if self.url is not None:
            self._resolved = SecretStr(self.url.get_secret_value().strip())
        elif self.url_env is not None:
            self._resolved = SecretStr(_env_value(self.url_env, info) or "")
        return self

    @property
    def resolved_url(self) -> str:
        """The database URL, from ``url`` or from the variable named by ``url_env``."""
        return self._resolved.get_secret_value()


class HttpConfig(_Model):
    """``http``: where /metrics, /healthz and /readyz are served."""

    listen: str = "0.0.0.0:9464"  # the SPEC default: reachable in a container

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)  # the HTTP server parses it with the same function
        return value.strip()

    @property
    def host(self) -> str:
        """The address to bind, without IPv6 brackets (empty: every IPv4 interface)."""
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        """The TCP port to bind (0: a free one)."""
        return parse_listen(self.listen)[1]


class TlsConfig(_Model):
    """``tls``: an extra CA bundle for every outbound TLS connection."""

    ca_file: PlainFile | None = None

    @field_validator("ca_file")
    @classmethod
    def _check_ca_file(cls, value: Path | None) -> Path | None:
        # Loaded exactly as every TLS connection loads it, so a file run cannot use fails here.
        if value is not None:
            try:
                make_ssl_context(str(value))
            except (ssl.SSLError, OSError, ValueError):
                raise ValueError(
                    f"{str(value)!r} holds no CA certificate in PEM format"
                    " (-----BEGIN CERTIFICATE-----)"
                ) from None
        return value


class LoggingConfig(_Model):
    """``logging``: level and renderer (auto: console on a terminal, else JSON)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console", "auto"] = "auto"

    _lower_case = field_validator("level", "format", mode="before")(_lower)


class Defaults(_Model):
    """``defaults``: settings every mailbox inherits (intervals in seconds)."""

    poll_interval: Duration = 60.0
    full_scan_interval: Duration = 900.0
    folders: Folders = ("INBOX",)
    backfill_days: Count | None = None  # None: the whole folder on first sync
    idle: StrictBool = False
    """Keep the first folder in IMAP IDLE between polls (push)."""


MAX_IDLE_RENEW = 29 * 60.0


class Limits(_Model):
    """``limits``: concurrency bounds, the IMAP FETCH batch size, IMAP sessions and timeouts."""

    max_concurrent_polls: Count = 32
    max_concurrent_polls_per_tenant: Count = 16
    fetch_batch_size: Count = 500
    max_open_sessions: Count = 10000
    """IMAP sessions kept open between polls; the least recently used is closed first."""
    imap_timeout: Duration = 60.0
    """Seconds any one IMAP command (and the connect) may take before it fails as a timeout."""
    idle_renew: Duration = 1500.0
    """Seconds after which an IMAP IDLE is ended and started again (Exchange ends it at 30 min)."""

    @field_validator("idle_renew")
    @classmethod
    def _before_the_server_ends_it(cls, value: float) -> float:
        if value > MAX_IDLE_RENEW:
            raise ValueError(
                f"must be at most {MAX_IDLE_RENEW:g}s (29 minutes, RFC 2177): servers end an"
                " IDLE after 30 minutes"
            )
        return value


MIN_LEASE_TTL = 2.0


class ClusterConfig(_Model):
    """``cluster``: how replicas that share one PostgreSQL database share the mailboxes."""

    lease_ttl: Duration = 30.0
    """Seconds a mailbox lease lasts unless renewed; renewed every third of it (PostgreSQL)."""

    @field_validator("lease_ttl")
    @classmethod
    def _long_enough(cls, value: float) -> float:
        if value < MIN_LEASE_TTL:
            raise ValueError(f"must be at least {MIN_LEASE_TTL:g}s")
        return value


class CertificateCredential(_RejectsInlineSecrets):
    """``credential.certificate``: a private key and its certificate, both PEM files."""

    private_key_file: SecretFile
    certificate_file: SecretFile
    send_certificate_chain: StrictBool = False

    def read_private_key(self) -> SecretStr:
        """Read the PEM private key."""
        return SecretStr(_read(self.private_key_file, "certificate.private_key_file"))

    def read_certificate(self) -> str:
        """Read the PEM certificate (chain)."""
        return _read(self.certificate_file, "certificate.certificate_file")


_CREDENTIAL_KINDS = (
    "client_secret_file",
    "client_secret_env",
    "certificate",
    "federated_token_file",
)


class Credential(_RejectsInlineSecrets):
    """``tenants[].credential``: exactly one way for the application to prove its identity."""

    client_secret_file: SecretFile | None = None
    client_secret_env: str | None = None
    certificate: CertificateCredential | None = None
    federated_token_file: SecretFile | None = None
    _env_secret: SecretStr | None = PrivateAttr(default=None)

    @field_validator("client_secret_env")
    @classmethod
    def _check_env(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        _env_name(value)
        if _context(info).check_secrets and _env_value(value, info) is None:
            raise ValueError(f"environment variable {value} is not set or is empty")
        return value

    @model_validator(mode="after")
    def _exactly_one(self, info: ValidationInfo) -> Self:
        given = [kind for kind in _CREDENTIAL_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            found = f" (found {' and '.join(given)})" if given else ""
            raise ValueError(f"set exactly one of {', '.join(_CREDENTIAL_KINDS)}{found}")
        if self.client_secret_env is not None:
            value = _env_value(self.client_secret_env, info)
            self._env_secret = None if value is None else SecretStr(value)
        return self

    @property
    def kind(self) -> Literal["client_secret", "certificate", "federated_token"]:
        """Which grant this credential feeds."""
        if self.certificate is not None:
            return "certificate"
        if self.federated_token_file is not None:
            return "federated_token"
        return "client_secret"

    def read_client_secret(self) -> SecretStr:
        """Read the client secret from its file (now) or its variable (as read at load time)."""
        if self.client_secret_file is not None:
            return SecretStr(_read(self.client_secret_file, "client_secret_file"))
        if self.client_secret_env is not None:
            if self._env_secret is None:
                raise SecretReadError("client_secret_env", "the variable was not set at load time")
            return self._env_secret
        raise SecretReadError("credential", f"a {self.kind} credential has no client secret")

    def read_federated_token(self) -> SecretStr:
        """Read the federated token file (now: it is rotated by the platform)."""
        if self.federated_token_file is None:
            raise SecretReadError("credential", f"a {self.kind} credential has no token file")
        return SecretStr(_read(self.federated_token_file, "federated_token_file"))


class ImapEndpoint(_Model):
    """``tenants[].imap``: the IMAP server (implicit TLS)."""

    host: Token = "outlook.office365.com"
    port: Port = 993


class Tenant(_RejectsInlineSecrets):
    """``tenants[]``: one Entra ID application in one tenant."""

    name: str
    tenant_id: str
    client_id: Token
    credential: Credential
    authority_host: str = "https://login.microsoftonline.com"
    scope: Token = "https://outlook.office365.com/.default"
    imap: ImapEndpoint = ImapEndpoint()

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _TENANT_NAME_RE.fullmatch(value):
            raise ValueError("must be a label of lower-case letters, digits, '_' and '-'")
        return value

    @field_validator("tenant_id", mode="before")
    @classmethod
    def _check_tenant_id(cls, value: object) -> object:
        value = _lower(value)
        if isinstance(value, str) and not (
            _GUID_RE.fullmatch(value) or _DOMAIN_RE.fullmatch(value)
        ):
            raise ValueError("must be the directory (tenant) GUID or a verified domain name")
        return value

    @field_validator("authority_host")
    @classmethod
    def _check_authority(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme != "https" or not parts.netloc or parts.path not in ("", "/"):
            raise ValueError("must be an https URL without a path, e.g. https://login.example")
        if parts.query or parts.fragment:
            raise ValueError("must be an https URL without a query")
        return f"https://{parts.netloc}"

    @property
    def authority(self) -> str:
        """The MSAL authority URL of this tenant."""
        return f"{self.authority_host}/{self.tenant_id}"


class Mailbox(_Model):
    """``mailboxes[]``: one mailbox; unset settings come from ``defaults``."""

    address: Annotated[str, BeforeValidator(_address)]
    tenant: str
    folders: Folders | None = None
    poll_interval: Duration | None = None
    full_scan_interval: Duration | None = None
    backfill_days: Count | None = None  # an explicit null means the whole folder
    enabled: StrictBool = True
    idle: StrictBool | None = None


_SECTIONS = ("http", "tls", "logging", "defaults", "limits", "cluster")
_LOADER_ONLY = (
    "mailbox files are read only when the configuration is loaded with load_config() or"
    " config_from_mapping()"
)


class Config(_Model):
    """The whole configuration file.

    ``mailboxes`` is the effective list: the entries of the ``mailboxes`` key followed by those
    of every file ``mailboxes_files`` matched (the loader reads them; ``mailboxes_files`` keeps
    the patterns as written). :attr:`sources` names the files all of it was read from.
    """

    database: DatabaseConfig
    http: HttpConfig = HttpConfig()
    tls: TlsConfig = TlsConfig()
    logging: LoggingConfig = LoggingConfig()
    defaults: Defaults = Defaults()
    limits: Limits = Limits()
    cluster: ClusterConfig = ClusterConfig()
    tenants: tuple[Tenant, ...]
    mailboxes: tuple[Mailbox, ...] = ()
    mailboxes_files: Patterns = ()
    _sources: ConfigSources = PrivateAttr(default_factory=ConfigSources)

    @field_validator("mailboxes_files")
    @classmethod
    def _read_by_the_loader(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if value and not isinstance(_sources_of(info), ConfigSources):
            raise ValueError(_LOADER_ONLY)
        return value

    @model_validator(mode="after")
    def _remember_sources(self, info: ValidationInfo) -> Self:
        sources = _sources_of(info)
        if isinstance(sources, ConfigSources):
            self._sources = sources
        return self

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # `http:` with every child commented out is YAML null: read it as "all defaults"
        if isinstance(data, dict):
            data = dict(data)
            for key in _SECTIONS:
                if key in data and data[key] is None:
                    data[key] = {}
            for key in ("tenants", "mailboxes", "mailboxes_files"):
                if key in data and data[key] is None:
                    data[key] = []
        return data

    @property
    def database_url(self) -> str:
        """The database URL, resolved from ``database.url`` or ``database.url_env``."""
        return self.database.resolved_url

    @property
    def sources(self) -> ConfigSources:
        """The files this configuration was read from (``sources.files``), their stamp as read
        and how to take it again (``sources.current_stamp()``) to notice a change."""
        return self._sources

    def mailbox_key_path(self, index: int) -> str:
        """The key path of ``mailboxes[index]`` (also ``mailbox_settings()[index]``) as errors
        write it: ``mailboxes[3]``, or ``mailboxes_files[0]: teams.yaml[12]`` for an entry
        read from a mailbox file."""
        return self._sources.mailbox_key_path(index)

    def tenant(self, name: str) -> Tenant:
        """Return the tenant called *name*; raise KeyError if there is none."""
        for tenant in self.tenants:
            if tenant.name == name:
                return tenant
        raise KeyError(name)

    def mailbox_settings(self) -> tuple[MailboxSettings, ...]:
        """Every mailbox with its effective settings; its own ``folders`` replace the defaults."""
        d = self.defaults
        return tuple(
            MailboxSettings(
                address=m.address,
                tenant=m.tenant,
                folders=d.folders if m.folders is None else m.folders,
                poll_interval=d.poll_interval if m.poll_interval is None else m.poll_interval,
                full_scan_interval=(
                    d.full_scan_interval if m.full_scan_interval is None else m.full_scan_interval
                ),
                backfill_days=(
                    m.backfill_days if "backfill_days" in m.model_fields_set else d.backfill_days
                ),
                enabled=m.enabled,
                idle=d.idle if m.idle is None else m.idle,
            )
            for m in self.mailboxes
        )


def _sources_of(info: ValidationInfo) -> object:
    return info.context.get("sources") if isinstance(info.context, dict) else None
