"""What the sync engine needs from the outside world, as small interfaces."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Protocol

from daemon.sync.algorithm import ServerFolder
from daemon.sync.model import Flags, FolderChanges, FolderState, MessageRecord


class MailboxClient(Protocol):
    """A logged-in IMAP session on one mailbox."""

    @property
    def condstore(self) -> bool:
        """The server advertises CONDSTORE (after login)."""
        ...

    def examine(self, folder: str) -> ServerFolder:
        """Open ``folder`` read-only; raises ``FolderMissing`` when it does not exist."""
        ...

    def uids_from(self, uid: int) -> list[int]:
        """UIDs at or above ``uid`` (may include the highest UID even when below)."""
        ...

    def uids_since(self, uid: int, since: dt.date) -> list[int]:
        """UIDs at or above ``uid`` of messages received on or after ``since``."""
        ...

    def fetch_records(self, uids: Sequence[int]) -> list[MessageRecord]: ...

    def fetch_all_flags(self) -> Mapping[int, Flags]: ...

    def fetch_flags_changed_since(self, modseq: int) -> Mapping[int, Flags]: ...


class ApplyCounts(Protocol):
    """How many rows one transaction inserted, changed and marked deleted."""

    @property
    def new(self) -> int: ...

    @property
    def updated(self) -> int: ...

    @property
    def deleted(self) -> int: ...


class Store(Protocol):
    """The database, as the sync engine sees it."""

    def ensure_folder(self, mailbox_id: int, name: str) -> FolderState: ...

    def folder_states(self, mailbox_id: int) -> dict[str, FolderState]: ...

    def stored_flags(self, folder_id: int, uidvalidity: int) -> dict[int, Flags]: ...

    def apply(self, changes: FolderChanges, now: dt.datetime) -> ApplyCounts: ...

    def reset_folder(self, folder_id: int, uidvalidity: int, now: dt.datetime) -> int: ...

    def mark_folder_vanished(self, folder_id: int, now: dt.datetime) -> int: ...
