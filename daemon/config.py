"""The configuration file: YAML in, frozen and validated pydantic models out.

``load_config`` reads the file given by ``-c FILE`` or ``MAILSYNCD_CONFIG`` and raises one
:class:`ConfigError` listing every problem with its key path (``mailboxes[3].tenant``), so an
operator fixes a file in one round. Variables named by ``*_env`` keys are read when the file is
loaded; secret files are checked then and read only when a secret is needed (they may rotate).
Secret values never enter an error message or a repr.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, Self
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from daemon.errors import PermanentError

try:  # the C parser is much faster on a file that lists 10,000 mailboxes
    from yaml import CSafeLoader as _YamlBase
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _YamlBase  # type: ignore[assignment]

__all__ = [
    "CONFIG_ENV_VAR",
    "CertificateCredential",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "Credential",
    "DatabaseConfig",
    "Defaults",
    "HttpConfig",
    "ImapEndpoint",
    "Limits",
    "LoggingConfig",
    "Mailbox",
    "MailboxSettings",
    "SecretReadError",
    "Tenant",
    "TlsConfig",
    "config_from_mapping",
    "format_errors",
    "load_config",
    "parse_duration",
]

CONFIG_ENV_VAR = "MAILSYNCD_CONFIG"
FILE_PATH = "(file)"  # the key path of problems with the file as a whole

_INLINE_SECRET_KEYS = ("client_secret", "secret", "password", "private_key")
_INLINE_HINT = (
    "secrets must not be written into the configuration: put the secret in a file and name it "
    "with client_secret_file, or in an environment variable and name it with client_secret_env"
    " (a certificate's key goes in certificate.private_key_file)"
)
_DURATION_HINT = "must be a duration such as 30, 30s, 5m, 1h or 1h30m"
_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION_RE = re.compile(r"(?:\d+(?:\.\d+)?[dhms])+|\d+(?:\.\d+)?")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ADDRESS_RE = re.compile(r"[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)*")
_TENANT_NAME_RE = re.compile(r"[a-z0-9_-]{1,64}")
_GUID_RE = re.compile(r"[0-9a-f]{8}-(?:[0-9a-f]{4}-){3}[0-9a-f]{12}")
_DOMAIN_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+")
_DB_URL_RE = re.compile(r"[a-z][a-z0-9+]*://\S*")
_DB_URL_HINT = (
    "must be a SQLAlchemy URL such as postgresql+psycopg://user@host/db or sqlite:////path/db"
)


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in the configuration, at a key path such as ``mailboxes[3].tenant``."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """The configuration cannot be used; ``errors`` lists every problem found."""

    def __init__(self, errors: Iterable[ConfigIssue]) -> None:
        self.errors: list[ConfigIssue] = list(errors)
        super().__init__("\n".join(str(issue) for issue in self.errors))


class SecretReadError(PermanentError):
    """A secret file or variable could not be read (its content never appears here).

    Permanent: a token cannot be requested until an operator fixes the file or variable.
    """

    reason = "token"

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}")


def format_errors(err: ConfigError) -> str:
    """Return one ``path: message`` line per problem."""
    return "\n".join(str(issue) for issue in err.errors)


@dataclass(frozen=True, slots=True)
class MailboxSettings:
    """A mailbox with its effective settings (intervals in seconds)."""

    address: str
    tenant: str
    folders: tuple[str, ...]
    poll_interval: float
    full_scan_interval: float
    backfill_days: int | None


# -- values ------------------------------------------------------------------------------------


def parse_duration(value: object) -> float:
    """Return a duration (30, "30", "30s", "5m", "1h", "1h30m") in seconds; at least 1s."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(_DURATION_HINT)  # noqa: TRY004 - pydantic reports ValueError, not TypeError
    if isinstance(value, str):
        text = value.strip().lower()
        if not _DURATION_RE.fullmatch(text):
            raise ValueError(f"{_DURATION_HINT}, not {value[:40]!r}")
        parts = _DURATION_PART_RE.findall(text)
        ranks = ["dhms".index(unit) for _, unit in parts]
        if ranks != sorted(set(ranks)):
            raise ValueError(f"{_DURATION_HINT}: each unit once, largest first")
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts) if parts else float(text)
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds < 1:
        raise ValueError("must be at least 1s")
    return seconds


@dataclass(frozen=True, slots=True)
class _LoadContext:
    environ: Mapping[str, str]
    base_dir: Path
    check_secrets: bool


def _context(info: ValidationInfo) -> _LoadContext:
    ctx = info.context
    if isinstance(ctx, dict) and isinstance(ctx.get("load"), _LoadContext):
        return ctx["load"]  # type: ignore[no-any-return]
    return _LoadContext(os.environ, Path.cwd(), check_secrets=True)


def _file_problem(path: Path, raw: str, problem: str) -> ValueError:
    # A value without a slash may be a secret pasted where its file name belongs: never echo it.
    if "/" in raw:
        return ValueError(f"{str(path)!r} {problem}")
    return ValueError(
        f"the file {problem} (its name is not shown because it does not look like a path:"
        " is a secret pasted here?)"
    )


def _file(value: object, info: ValidationInfo, *, secret: bool) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a file path")
    ctx = _context(info)
    path = Path(value)
    if not path.is_absolute():
        path = ctx.base_dir / path
    if secret and not ctx.check_secrets:
        return path
    if not path.exists():
        raise _file_problem(path, value, "does not exist")
    if not path.is_file():
        raise _file_problem(path, value, "is not a file")
    if not os.access(path, os.R_OK):
        raise _file_problem(path, value, "is not readable by this user")
    return path


def _secret_file(value: object, info: ValidationInfo) -> Path:
    return _file(value, info, secret=True)


def _plain_file(value: object, info: ValidationInfo) -> Path:
    return _file(value, info, secret=False)


def _env_name(value: str) -> str:
    if not _ENV_NAME_RE.fullmatch(value):
        # not echoed: a secret pasted here instead of a variable name must not be printed
        raise ValueError("must be the name of an environment variable (letters, digits, _)")
    return value


def _env_value(name: str, info: ValidationInfo) -> str | None:
    value = _context(info).environ.get(name)
    return value.strip() if value is not None and value.strip() else None


def _token(value: object) -> object:
    if isinstance(value, str) and (not value or any(c.isspace() for c in value)):
        raise ValueError("must be a non-empty value without spaces")
    return value


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


def _address(value: object) -> object:
    if isinstance(value, str):
        value = value.strip().lower()
        if not _ADDRESS_RE.fullmatch(value):
            raise ValueError(f"{value[:80]!r} is not a mail address (local@domain)")
    return value


def _unique(folders: tuple[str, ...]) -> tuple[str, ...]:
    seen: set[str] = set()
    for folder in folders:
        if folder in seen:
            raise ValueError(f"folder {folder!r} is listed twice")
        seen.add(folder)
    return folders


def _not_empty(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
SecretFile = Annotated[Path, BeforeValidator(_secret_file)]
PlainFile = Annotated[Path, BeforeValidator(_plain_file)]
Token = Annotated[str, BeforeValidator(_token)]
Folders = Annotated[
    tuple[Annotated[str, AfterValidator(_not_empty)], ...],
    Field(min_length=1),
    AfterValidator(_unique),
]
Count = Annotated[int, Field(strict=True, ge=1)]
Port = Annotated[int, Field(strict=True, ge=1, le=65535)]


def _read(path: Path, key: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise SecretReadError(key, "the file is not UTF-8 text") from None
    except OSError as exc:
        raise SecretReadError(key, f"cannot read the file: {exc.strerror}") from None
    if not text:
        raise SecretReadError(key, "the file is empty")
    return text


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
        if value is not None and not _DB_URL_RE.fullmatch(value.get_secret_value().strip()):
            raise ValueError(_DB_URL_HINT)
        return value

    @field_validator("url_env")
    @classmethod
    def _check_url_env(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        resolved = _env_value(_env_name(value), info)
        if resolved is None:
            raise ValueError(f"environment variable {value} is not set")
        if not _DB_URL_RE.fullmatch(resolved):
            raise ValueError(f"environment variable {value} {_DB_URL_HINT}")
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
        _split_listen(value)
        return value.strip()

    @property
    def host(self) -> str:
        """The address to bind, without IPv6 brackets."""
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        """The TCP port to bind."""
        return _split_listen(self.listen)[1]


def _split_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("must be host:port, e.g. 0.0.0.0:9464 or [::]:9464")
    return host, int(port)


class TlsConfig(_Model):
    """``tls``: an extra CA bundle for every outbound TLS connection."""

    ca_file: PlainFile | None = None


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


class Limits(_Model):
    """``limits``: concurrency bounds and the IMAP FETCH batch size."""

    max_concurrent_polls: Count = 32
    max_concurrent_polls_per_tenant: Count = 16
    fetch_batch_size: Count = 500


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


_SECTIONS = ("http", "tls", "logging", "defaults", "limits")


class Config(_Model):
    """The whole configuration file."""

    database: DatabaseConfig
    http: HttpConfig = HttpConfig()
    tls: TlsConfig = TlsConfig()
    logging: LoggingConfig = LoggingConfig()
    defaults: Defaults = Defaults()
    limits: Limits = Limits()
    tenants: tuple[Tenant, ...]
    mailboxes: tuple[Mailbox, ...]

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # `http:` with every child commented out is YAML null: read it as "all defaults"
        if isinstance(data, dict):
            data = dict(data)
            for key in _SECTIONS:
                if key in data and data[key] is None:
                    data[key] = {}
            for key in ("tenants", "mailboxes"):
                if key in data and data[key] is None:
                    data[key] = []
        return data

    @property
    def database_url(self) -> str:
        """The database URL, resolved from ``database.url`` or ``database.url_env``."""
        return self.database.resolved_url

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
            )
            for m in self.mailboxes
        )


# -- loading -----------------------------------------------------------------------------------


def load_config(
    path: str | os.PathLike[str] | None,
    environ: Mapping[str, str] | None = None,
    *,
    check_secrets: bool = True,
) -> Config:
    """Load and validate the file *path* (None: ``$MAILSYNCD_CONFIG``); raise ConfigError.

    Relative file paths in the configuration are relative to the file's directory. With
    ``check_secrets=False`` missing secret files and variables are left for the caller to
    diagnose (``mailsyncd check`` reports them as failed steps).
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    if path is None:
        path = env.get(CONFIG_ENV_VAR) or None
        if path is None:
            raise ConfigError(
                [ConfigIssue(FILE_PATH, f"no configuration file: use -c FILE or {CONFIG_ENV_VAR}")]
            )
    file = Path(path)
    data = _read_yaml(file)
    return config_from_mapping(
        data, environ=env, base_dir=file.absolute().parent, check_secrets=check_secrets
    )


def config_from_mapping(
    data: object,
    *,
    environ: Mapping[str, str] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    check_secrets: bool = True,
) -> Config:
    """Validate already parsed YAML *data*; raise ConfigError listing every problem."""
    if not isinstance(data, Mapping):
        message = "the file is empty" if data is None else "the top level must be a mapping"
        raise ConfigError([ConfigIssue(FILE_PATH, message)])
    load = _LoadContext(
        environ=os.environ if environ is None else environ,
        base_dir=Path.cwd() if base_dir is None else Path(base_dir),
        check_secrets=check_secrets,
    )
    issues: list[ConfigIssue] = []
    config: Config | None = None
    try:
        config = Config.model_validate(dict(data), context={"load": load})
    except ValidationError as exc:
        # converted here and raised below, outside this block: the pydantic error holds the
        # input values (an inline secret among them) and must not ride along as __context__
        issues.extend(_issue(error) for error in exc.errors(include_input=False))
    issues.extend(_cross_check(data))
    if issues or config is None:
        raise ConfigError(_ordered(issues))
    return config


_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
    "string_type": "must be a string",
    "int_type": "must be a whole number",
    "bool_type": "must be true or false",
}


def _issue(error: ErrorDetails) -> ConfigIssue:
    kind = error["type"]
    if kind in ("value_error", "assertion_error"):
        message = str(error.get("ctx", {}).get("error", error["msg"]))
    else:
        message = _MESSAGES.get(kind, error["msg"].replace("Input should be", "must be", 1))
    return ConfigIssue(_path(error["loc"]), message)


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _cross_check(data: Mapping[Any, Any]) -> list[ConfigIssue]:
    """Rules across entries, checked on the raw data so they run even when entries are bad."""
    issues: list[ConfigIssue] = []
    tenants = data.get("tenants")
    known: dict[str, int] = {}
    for i, tenant in enumerate(tenants if isinstance(tenants, list) else []):
        name = tenant.get("name") if isinstance(tenant, dict) else None
        if isinstance(name, str):
            if name in known:
                issues.append(
                    ConfigIssue(
                        f"tenants[{i}].name",
                        f"duplicate tenant name {name!r} (first at tenants[{known[name]}])",
                    )
                )
            known.setdefault(name, i)
    mailboxes = data.get("mailboxes")
    seen: dict[str, int] = {}
    for i, mailbox in enumerate(mailboxes if isinstance(mailboxes, list) else []):
        if not isinstance(mailbox, dict):
            continue
        address = mailbox.get("address")
        if isinstance(address, str):
            address = address.strip().lower()
            if address in seen:
                issues.append(
                    ConfigIssue(
                        f"mailboxes[{i}].address",
                        f"duplicate of mailboxes[{seen[address]}].address ({address})",
                    )
                )
            seen.setdefault(address, i)
        tenant_name = mailbox.get("tenant")
        if isinstance(tenant_name, str) and isinstance(tenants, list) and tenant_name not in known:
            names = ", ".join(sorted(known)[:10]) + (", ..." if len(known) > 10 else "")
            issues.append(
                ConfigIssue(
                    f"mailboxes[{i}].tenant",
                    f"unknown tenant {tenant_name[:64]!r} (tenants: {names or 'none'})",
                )
            )
    return issues


_FIRST_STEP = re.compile(r"([^.\[]*)(?:\[(\d+)\])?")


def _ordered(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    """Unique issues in file order: by section, then entry; stable within an entry."""
    order = [FILE_PATH, *Config.model_fields]

    def key(issue: ConfigIssue) -> tuple[int, int]:
        match = _FIRST_STEP.match(issue.path)
        name, index = (match.group(1), match.group(2)) if match else ("", None)
        rank = order.index(name) if name in order else len(order)
        return rank, -1 if index is None else int(index)

    return sorted(dict.fromkeys(issues), key=key)


class _YamlLoader(_YamlBase):
    """A safe loader that rejects a key given twice in one mapping (YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                ident = (key_node.tag, key_node.value)
                if ident in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value[:64]!r}", key_node.start_mark
                    )
                seen.add(ident)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(file: Path) -> object:
    def fail(message: str) -> NoReturn:
        raise ConfigError([ConfigIssue(FILE_PATH, message)])

    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        fail(f"configuration file {str(file)!r} does not exist")
    except IsADirectoryError:
        fail(f"configuration file {str(file)!r} is a directory")
    except UnicodeDecodeError:
        fail(f"configuration file {str(file)!r} is not UTF-8 text")
    except OSError as exc:
        fail(f"cannot read configuration file {str(file)!r}: {exc.strerror}")
    loader = _YamlLoader(text)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        # only the problem and its position: str(exc) quotes the line, which may hold a secret
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        fail(f"invalid YAML at {where}{exc.problem or exc.context or 'syntax error'}")
    except yaml.YAMLError:
        fail("invalid YAML")
    finally:
        loader.dispose()
