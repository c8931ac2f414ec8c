"""Plain values the sync algorithm, the IMAP adapter and the store exchange."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

Flags = tuple[str, ...]
"""IMAP flags of one message, sorted, without the session flag ``\\Recent``."""


def normalize_flags(flags: object) -> Flags:
    """Sorted, de-duplicated flags as text, without ``\\Recent``."""
    out: set[str] = set()
    for flag in flags or ():  # type: ignore[attr-defined]
        text = flag.decode("utf-8", "replace") if isinstance(flag, bytes) else str(flag)
        if text.lower() != "\\recent":
            out.add(text)
    return tuple(sorted(out))


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """The metadata of one message copy in a folder, already decoded and cleaned."""

    uid: int
    message_id: str | None
    subject: str | None
    from_address: str | None
    to_addresses: tuple[str, ...]
    cc_addresses: tuple[str, ...]
    in_reply_to: str | None
    references: str | None
    sent_at: dt.datetime | None
    received_at: dt.datetime
    size_bytes: int
    flags: Flags


@dataclass(frozen=True, slots=True)
class FolderState:
    """What the store remembers about one folder (the sync checkpoint)."""

    folder_id: int
    name: str
    uidvalidity: int | None = None
    last_uid: int = 0
    highest_modseq: int | None = None
    last_full_scan_at: dt.datetime | None = None
    vanished_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The new checkpoint of a folder, written in the same transaction as its rows."""

    uidvalidity: int
    last_uid: int
    highest_modseq: int | None = None
    last_full_scan_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class FolderChanges:
    """One transaction's worth of changes to one folder."""

    folder_id: int
    uidvalidity: int
    new: tuple[MessageRecord, ...] = ()
    flag_updates: tuple[tuple[int, Flags], ...] = ()
    expunged: tuple[int, ...] = ()
    checkpoint: Checkpoint | None = None
