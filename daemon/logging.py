"""Log output: structlog and stdlib logging through one pipeline, one line per event.

Every line on the stream is rendered by the same processors, whether it came from structlog
or from a library using stdlib ``logging`` (SQLAlchemy, APScheduler, MSAL, urllib3, Alembic):
a JSON object with ``level``, ``timestamp`` (ISO-8601, UTC) and ``event``, or a console line
on a terminal. Secrets are removed in two places so that no path can skip both: each value of
the event (after exceptions are rendered to text, so tracebacks are covered) and the final
rendered line.

What counts as a secret (SPEC "Logs": tokens, client secrets, assertions, XOAUTH2 strings):

- any value under a key that names one (``access_token``, ``Authorization``, ``client_secret``,
  ``client_assertion``, ...), at any depth of nested dicts and lists;
- text shaped like a JWT, a ``Bearer`` credential, an XOAUTH2 ``\\x01auth=`` sequence or its
  base64 form, wherever it appears;
- any literal value registered in a :class:`SecretRegistry` (client secrets read from files).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import sys
import threading
from collections.abc import Mapping
from typing import Final, Protocol, TextIO
from urllib.parse import quote, quote_plus

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED: Final = "[REDACTED]"
LEVELS: Final = ("debug", "info", "warning", "error", "critical")
FORMATS: Final = ("json", "console", "auto")
# Chatty at info (APScheduler logs every job run); capped at warning unless level is debug.
NOISY_LOGGERS: Final = ("apscheduler", "msal", "urllib3", "sqlalchemy", "imapclient", "requests")

_SENSITIVE_KEY: Final = re.compile(
    r"token|secret|passw|assertion|authoriz|credential|xoauth|bearer|cookie|private_?key|api_?key",
    re.IGNORECASE,
)
# header.payload.signature, base64url; also matches JWE (five segments) and unsigned tokens.
_JWT: Final = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*)*")
_BEARER: Final = re.compile(r"\b(bearer)(\s+|=)([A-Za-z0-9\-._~+/]+=*)", re.IGNORECASE)
# Words that follow "bearer" in prose ("bearer token expired"), which are not credentials.
_BEARER_PROSE: Final = frozenset({"token", "tokens", "auth", "authentication", "scheme", "header"})
# The SASL XOAUTH2 separator raw, as Python escapes it and as JSON escapes it.
_XOAUTH_AUTH: Final = re.compile(r"(\x01|\\x01|\\u0001|\^A)auth=[^\x01'\"\\\r\n]*")
_BASE64_RUN: Final = re.compile(r"[A-Za-z0-9+/_-]{24,}={0,2}")
_MAX_DEPTH: Final = 16


class SecretRegistry:
    """Literal secret values (read from files or variables) that must never be logged."""

    # Shorter values would mangle ordinary words; no real credential is this short.
    MIN_LENGTH: Final = 4

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._needles: tuple[str, ...] = ()

    def register_secret(self, value: str) -> bool:
        """Scrubs ``value`` (trimmed of surrounding whitespace) from now on; False if too short."""
        secret = value.strip()
        if len(secret) < self.MIN_LENGTH:
            return False
        # The forms the value takes once escaped by repr, JSON or a form/URL encoder.
        variants = {
            secret,
            json.dumps(secret)[1:-1],
            json.dumps(secret, ensure_ascii=False)[1:-1],
            repr(secret)[1:-1],
            secret.encode("unicode_escape").decode("ascii"),
            quote(secret, safe=""),
            quote_plus(secret, safe=""),
        }
        with self._lock:
            needles = set(self._needles) | variants
            # Longest first, so a secret containing another is removed whole.
            self._needles = tuple(sorted(needles, key=len, reverse=True))
        return True

    def __len__(self) -> int:
        return len(self._needles)

    def scrub(self, text: str) -> str:
        """Replaces every registered value in ``text``."""
        for needle in self._needles:
            if needle in text:
                text = text.replace(needle, REDACTED)
        return text


def _bearer(match: re.Match[str]) -> str:
    if match.group(3).lower() in _BEARER_PROSE:
        return match.group(0)
    return f"{match.group(1)}{match.group(2)}{REDACTED}"


def _base64_xoauth(match: re.Match[str]) -> str:
    text = match.group(0)
    body = text.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        decoded = base64.b64decode(body + "=" * (-len(body) % 4), validate=True).lower()
    except (binascii.Error, ValueError):
        return text
    if b"auth=bearer" in decoded or b"\x01auth=" in decoded:
        return REDACTED
    return text


def is_sensitive_key(key: str) -> bool:
    """True when a value stored under ``key`` is treated as a secret whatever it holds."""
    return _SENSITIVE_KEY.search(key) is not None


class Redactor:
    """A structlog processor that removes secrets from every value of an event."""

    def __init__(self, secrets: SecretRegistry | None = None) -> None:
        self.secrets = secrets if secrets is not None else SecretRegistry()

    def scrub_text(self, text: str) -> str:
        """Removes registered secrets and credential-shaped substrings from ``text``."""
        text = self.secrets.scrub(text)
        text = _XOAUTH_AUTH.sub(rf"\1auth={REDACTED}", text)
        text = _BEARER.sub(_bearer, text)
        text = _JWT.sub(REDACTED, text)
        return _BASE64_RUN.sub(_base64_xoauth, text)

    def redact(self, value: object, depth: int = 0) -> object:
        """Returns ``value`` with secrets removed; objects become their scrubbed ``str``."""
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            return self.scrub_text(value)
        if isinstance(value, bytes | bytearray):
            return self.scrub_text(bytes(value).decode("utf-8", "replace"))
        if depth >= _MAX_DEPTH:
            return self.scrub_text(str(value))
        if isinstance(value, Mapping):
            return {
                str(key): REDACTED if is_sensitive_key(str(key)) else self.redact(item, depth + 1)
                for key, item in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            return [self.redact(item, depth + 1) for item in value]
        # Anything else would be rendered through str()/repr() after this processor.
        return self.scrub_text(str(value))

    def __call__(
        self,
        logger: WrappedLogger,  # noqa: ARG002 - structlog processor signature
        method_name: str,  # noqa: ARG002
        event_dict: EventDict,
    ) -> EventDict:
        return {
            key: REDACTED if is_sensitive_key(key) else self.redact(value)
            for key, value in event_dict.items()
        }


class _ScrubbedRenderer:
    """Renders, then scrubs the line: whatever a renderer adds still passes a filter."""

    def __init__(self, renderer: Processor, redactor: Redactor) -> None:
        self._renderer = renderer
        self._redactor = redactor

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
        line = self._renderer(logger, method_name, event_dict)
        if isinstance(line, bytes):
            line = line.decode("utf-8", "replace")
        return self._redactor.scrub_text(str(line))


class _Handler(logging.StreamHandler[TextIO]):
    """Marks the handler this module installs, so reconfiguring replaces it."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - stdlib name
        # The stdlib default prints the record's message and arguments to stderr, unfiltered.
        if logging.raiseExceptions:
            sys.stderr.write(f"mailsyncd: a log record from {record.name!r} could not be written\n")


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real file
        return False


def configure_logging(
    level: str,
    fmt: str,
    stream: TextIO | None = None,
    secrets: SecretRegistry | None = None,
) -> Redactor:
    """Routes structlog and stdlib logging to ``stream`` (default stdout) as JSON or console.

    ``secrets`` is the caller's registry of literal secret values; values registered after
    this call are scrubbed too. Returns the redactor, for text that leaves the process by
    another way (command output, error messages). Calling again replaces the configuration.
    """
    level_name = level.lower()
    if level_name not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(FORMATS)}")
    out = stream if stream is not None else sys.stdout
    redactor = Redactor(secrets)

    console = fmt == "console" or (fmt == "auto" and _is_tty(out))
    renderer: Processor
    if console:
        renderer = structlog.dev.ConsoleRenderer(
            colors=_is_tty(out), exception_formatter=structlog.dev.plain_traceback
        )
    else:
        renderer = structlog.processors.JSONRenderer()

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Safe to cache: everything that changes between calls lives in the handler below.
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Tracebacks become text before redaction, so they are scrubbed like any value.
            structlog.processors.format_exc_info,
            redactor,
            _ScrubbedRenderer(renderer, redactor),
        ],
    )
    handler = _Handler(out)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in list(root.handlers):
        # Ours from an earlier call, and basicConfig-style console handlers that would print
        # unfiltered lines; file or test-capture handlers someone else added are left alone.
        if isinstance(old, _Handler) or type(old) is logging.StreamHandler:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_name.upper())
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if level_name == "debug" else "WARNING")
    return redactor


def set_log_level(level: str) -> None:
    """Change the level of a configured logging setup (``logging.level`` reloaded)."""
    level_name = level.lower()
    if level_name not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
    logging.getLogger().setLevel(level_name.upper())
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if level_name == "debug" else "WARNING")


class Logger(Protocol):
    """What mailsyncd's code calls on a logger: an event name and its fields as keywords.

    ``get_logger`` returns one (a structlog ``BoundLogger`` behind a lazy proxy); tests may pass
    any object with these methods.
    """

    def debug(self, event: str, **fields: object) -> None: ...

    def info(self, event: str, **fields: object) -> None: ...

    def warning(self, event: str, **fields: object) -> None: ...

    def error(self, event: str, **fields: object) -> None: ...

    def critical(self, event: str, **fields: object) -> None: ...

    def exception(self, event: str, **fields: object) -> None:
        """``error`` with the traceback of the exception being handled."""

    def bind(self, **fields: object) -> Logger:
        """A logger that adds ``fields`` to every event."""


def get_logger(name: str | None = None, **initial: object) -> Logger:
    """A structlog logger named ``name`` (the stdlib logger name), bound to ``initial``."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name, **initial)
    return logger
