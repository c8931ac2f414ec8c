"""Mailbox status (SPEC "Mailbox status"): the value shared by the runtime, the store, ``/status``
and ``mailsyncd status``, and its rendering for a terminal.

The runtime builds one :class:`MailboxStatus` per mailbox it runs and hands the changed ones to
``SqlStore.save_statuses`` every few seconds; the view ``mailbox_status`` shows what every
replica wrote, ``GET /status`` what this replica holds. Everything here is pure apart from
:func:`replica_id`, which reads the environment, the host name and the process id.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from daemon.errors import REASONS
from daemon.sync.text import clean_text

StatusState = Literal["ok", "backoff", "auth_failed", "disabled", "removed"]
"""A mailbox's state in ``mailbox_status``: the schedule's states, plus ``removed`` for a
mailbox no longer in the configuration (its rows stay)."""

STATUS_STATES: Final[tuple[StatusState, ...]] = typing.get_args(StatusState)

REPLICA_ID_ENV: Final = "MAILSYNCD_REPLICA_ID"

ERROR_LIMIT_BYTES: Final = 2048
"""Cap of ``last_error`` and ``hint`` (UTF-8 bytes, cut on a character boundary)."""
OWNER_LIMIT_BYTES: Final = 255

FIELDS: Final[tuple[str, ...]] = (
    "mailbox",
    "tenant",
    "state",
    "owner",
    "last_poll_at",
    "last_success_at",
    "consecutive_failures",
    "last_error_reason",
    "last_error",
    "hint",
    "initial_sync_remaining",
    "idle",
)
"""The columns of the view ``mailbox_status`` and the keys of :meth:`MailboxStatus.to_json`:
the SPEC's, in its order, then ``idle`` (SPEC "Push": whether the mailbox is in IDLE)."""

_FAILING_STATES: Final = frozenset({"backoff", "auth_failed"})


@dataclass(frozen=True, slots=True)
class MailboxStatus:
    """The runtime state of one mailbox, as one row of the view ``mailbox_status``.

    Construction normalises and checks: the address is lower-cased, text is cleaned (no NUL,
    no lone surrogates) and ``last_error``/``hint`` are capped at 2 KiB, timestamps must be
    timezone-aware and come out in UTC, ``state`` and ``last_error_reason`` must be known
    values, counts must not be negative. ``last_error`` must already be free of secrets: the
    caller passes an error message that went through the adapters' scrubbing.
    """

    mailbox: str
    tenant: str
    state: StatusState
    owner: str | None
    last_poll_at: dt.datetime | None
    last_success_at: dt.datetime | None
    consecutive_failures: int
    last_error_reason: str | None
    last_error: str | None
    hint: str | None
    initial_sync_remaining: int
    idle: bool = False
    """Its first folder waits in IMAP IDLE for new mail (push) between polls."""

    def __post_init__(self) -> None:
        mailbox = clean_text(self.mailbox.strip().lower()) or ""
        tenant = clean_text(self.tenant) or ""
        if not mailbox or not tenant:
            raise ValueError("mailbox and tenant must not be empty")
        if self.state not in STATUS_STATES:
            raise ValueError(f"unknown mailbox state {self.state!r}")
        if self.last_error_reason is not None and self.last_error_reason not in REASONS:
            raise ValueError(f"unknown failure reason {self.last_error_reason!r}")
        if self.consecutive_failures < 0 or self.initial_sync_remaining < 0:
            raise ValueError("consecutive_failures and initial_sync_remaining must be >= 0")
        # Frozen: normalised values go in through object.__setattr__, once, here.
        set_ = object.__setattr__
        set_(self, "mailbox", mailbox)
        set_(self, "tenant", tenant)
        set_(self, "owner", clean_text(self.owner, OWNER_LIMIT_BYTES) or None)
        set_(self, "last_poll_at", _utc(self.last_poll_at, "last_poll_at"))
        set_(self, "last_success_at", _utc(self.last_success_at, "last_success_at"))
        set_(self, "last_error", clean_text(self.last_error, ERROR_LIMIT_BYTES))
        set_(self, "hint", clean_text(self.hint, ERROR_LIMIT_BYTES))

    @property
    def failing(self) -> bool:
        """Whether the last polls failed (a row worth its error and hint on screen)."""
        return self.consecutive_failures > 0 or self.state in _FAILING_STATES

    def to_json(self) -> dict[str, object]:
        """The SPEC's fields by their names; timestamps as ISO-8601 UTC, or null."""
        return {
            "mailbox": self.mailbox,
            "tenant": self.tenant,
            "state": self.state,
            "owner": self.owner,
            "last_poll_at": _iso(self.last_poll_at),
            "last_success_at": _iso(self.last_success_at),
            "consecutive_failures": self.consecutive_failures,
            "last_error_reason": self.last_error_reason,
            "last_error": self.last_error,
            "hint": self.hint,
            "initial_sync_remaining": self.initial_sync_remaining,
            "idle": self.idle,
        }


def replica_id() -> str:
    """This process's stable id: ``$MAILSYNCD_REPLICA_ID``, else ``<host name>-<pid>``.

    In Kubernetes the host name is the pod name, so the id names the pod to look at.
    """
    configured = (os.environ.get(REPLICA_ID_ENV) or "").strip()
    if configured:
        return configured
    return f"{socket.gethostname()}-{os.getpid()}"


def _utc(value: dt.datetime | None, what: str) -> dt.datetime | None:
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime")
    return value.astimezone(dt.UTC)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


# -- rendering for `mailsyncd status` -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NeverPolled:
    """A configured mailbox that has no row in ``mailbox_status`` yet."""

    mailbox: str
    tenant: str

    def to_json(self) -> dict[str, object]:
        """The same keys as :meth:`MailboxStatus.to_json`; everything unknown is null."""
        document: dict[str, object] = dict.fromkeys(FIELDS)
        document.update(mailbox=self.mailbox, tenant=self.tenant)
        return document


StatusRow = MailboxStatus | NeverPolled

_HEADERS: Final = (
    "MAILBOX",
    "TENANT",
    "STATE",
    "OWNER",
    "LAST SUCCESS",
    "FAILURES",
    "REASON",
    "INITIAL SYNC",
)
_DETAIL_LIMIT: Final = 300
"""Characters of ``last_error`` shown in the table; ``--json`` has it whole."""


def merge(
    statuses: Iterable[MailboxStatus], configured: Iterable[tuple[str, str]]
) -> list[StatusRow]:
    """The stored statuses plus a :class:`NeverPolled` for each configured ``(address, tenant)``
    without one, sorted by address."""
    rows: dict[str, StatusRow] = {status.mailbox: status for status in statuses}
    for address, tenant in configured:
        key = address.strip().lower()
        rows.setdefault(key, NeverPolled(key, tenant))
    return [rows[key] for key in sorted(rows)]


def format_age(then: dt.datetime | None, now: dt.datetime) -> str:
    """``12s ago``, ``5m ago``, ``3h ago``, ``2d ago``; ``never`` for None.

    A time slightly ahead of ``now`` (another host's clock) reads as ``0s ago``.
    """
    if then is None:
        return "never"
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def format_table(rows: Sequence[StatusRow], now: dt.datetime) -> str:
    """An aligned table, one line per mailbox; a failing mailbox gets its error and hint on
    indented lines below it."""
    lines: list[tuple[list[str], list[str]]] = []
    for row in rows:
        if isinstance(row, NeverPolled):
            cells = [row.mailbox, row.tenant, "-", "-", "never polled", "-", "-", "-"]
            lines.append((cells, []))
            continue
        remaining = row.initial_sync_remaining
        cells = [
            row.mailbox,
            row.tenant,
            row.state,
            row.owner or "-",
            format_age(row.last_success_at, now),
            str(row.consecutive_failures),
            row.last_error_reason or "-",
            f"{remaining} left" if remaining else "done",
        ]
        details: list[str] = []
        if row.failing:
            if row.last_error:
                details.append(f"error: {_one_line(row.last_error, _DETAIL_LIMIT)}")
            if row.hint:
                details.append(f"hint: {_one_line(row.hint)}")
        lines.append((cells, details))
    widths = [len(header) for header in _HEADERS]
    for cells, _ in lines:
        widths = [max(width, len(cell)) for width, cell in zip(widths, cells, strict=True)]

    def join(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [join(_HEADERS)]
    for cells, details in lines:
        out.append(join(cells))
        out.extend(f"    {detail}" for detail in details)
    return "\n".join(out)


def _one_line(text: str, limit: int | None = None) -> str:
    flat = " ".join(text.split())
    if limit is not None and len(flat) > limit:
        return flat[: limit - 1] + "\u2026"
    return flat
