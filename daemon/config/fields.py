"""Configuration values: durations, files, addresses, and the errors that report them."""

from __future__ import annotations

import ipaddress
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationInfo,
)

from daemon.config.sources import ConfigSources
from daemon.errors import SecretReadError

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
# The drivers this build ships (psycopg 3, the stdlib sqlite3); `postgres` is an old alias.
_DB_DRIVERS = frozenset(
    {"postgresql", "postgres", "postgresql+psycopg", "sqlite", "sqlite+pysqlite"}
)
_LISTEN_HINT = "must be host:port, e.g. 0.0.0.0:9464, [::]:9464 or 127.0.0.1:9464"
_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in the configuration, at a key path such as ``mailboxes[3].tenant``."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """The configuration cannot be used; ``errors`` lists every problem found.

    ``sources`` names the files the rejected configuration was read from (None when it did not
    come from a file), so that a watcher can wait for one of them to change before it tries
    again: see :class:`~daemon.config.sources.ConfigSources`.
    """

    def __init__(
        self, errors: Iterable[ConfigIssue], *, sources: ConfigSources | None = None
    ) -> None:
        self.errors: list[ConfigIssue] = list(errors)
        self.sources = sources
        super().__init__("\n".join(str(issue) for issue in self.errors))


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
    enabled: bool = True
    idle: bool = False
    """Keep the first folder in IMAP IDLE between polls (push; servers without IDLE poll)."""


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


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``http.listen`` into the host to bind and the port: the one parser of this value.

    ``host:port`` (a name or an IPv4 address), ``[v6]:port`` for IPv6, ``:port`` for every IPv4
    interface; port 0 binds a free port, which the ``running`` log event names.
    """
    text = value.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":") or not _is_ipv6(host):
            raise ValueError(f"{_LISTEN_HINT}; [...] holds an IPv6 address")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError(_LISTEN_HINT)
        if ":" in host:
            raise ValueError(f"{_LISTEN_HINT}; write an IPv6 address in brackets: [{host}]:port")
        if host and not _is_host_name_or_ipv4(host):
            raise ValueError(f"{_LISTEN_HINT}; {host[:80]!r} is not a host name or IPv4 address")
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"{_LISTEN_HINT}; the port is a number from 0 to 65535")
    return host, int(port_text)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _is_host_name_or_ipv4(text: str) -> bool:
    labels = text.removesuffix(".").split(".")
    if len(text) > 253 or not all(_HOST_LABEL_RE.fullmatch(label) for label in labels):
        return False
    if all(label.isdigit() for label in labels):  # digits only: must be a real IPv4 address
        try:
            ipaddress.IPv4Address(text)
        except ValueError:
            return False
    return True


def check_database_url(text: str) -> str:
    """Check ``database.url`` the way the engine will read it; return it stripped.

    The one parser of this value: SQLAlchemy's URL parser and the chosen dialect's own reading
    of the URL, limited to the drivers this build ships. Messages never repeat the URL, which
    may hold a password.
    """
    from sqlalchemy.engine import make_url  # noqa: PLC0415 - keeps --help and validate light
    from sqlalchemy.exc import ArgumentError, SAWarning  # noqa: PLC0415

    text = text.strip()
    if not _DB_URL_RE.fullmatch(text):
        raise ValueError(_DB_URL_HINT)
    try:
        url = make_url(text)
    except (ArgumentError, ValueError):
        raise ValueError(
            f"{_DB_URL_HINT} (this one cannot be parsed: check the port, and write special"
            " characters of the password %-encoded)"
        ) from None
    if url.drivername not in _DB_DRIVERS:
        raise ValueError(
            f"database {url.drivername[:40]!r} is not supported: use PostgreSQL through psycopg 3"
            " (postgresql+psycopg://user@host/db) or SQLite (sqlite:////path/db)"
        )
    if url.port is not None and not 1 <= url.port <= 65535:
        raise ValueError(f"{_DB_URL_HINT}; the port is a number from 1 to 65535")
    if url.drivername in {"postgresql", "postgres"}:
        url = url.set(drivername="postgresql+psycopg")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", SAWarning)  # e.g. a query argument SQLite ignores
            url.get_dialect()().create_connect_args(url)
    except (ArgumentError, SAWarning, TypeError, ValueError) as exc:
        reason = str(exc).splitlines()[0].replace(text, "<url>")[:200]
        if url.get_backend_name() == "sqlite":
            reason = f"{reason}; a SQLite URL names only a file: sqlite:////path/db"
        raise ValueError(f"{_DB_URL_HINT}, not accepted by the database driver: {reason}") from None
    return text


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


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a path or a glob pattern, not empty")
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
Patterns = tuple[Annotated[str, AfterValidator(_not_blank)], ...]
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
