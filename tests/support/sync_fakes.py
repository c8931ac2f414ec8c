"""In-memory fakes of the sync engine's ports: an IMAP server with folders, and a store."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from daemon.errors import FolderMissing
from daemon.sync.algorithm import ServerFolder
from daemon.sync.model import Flags, FolderChanges, FolderState, MessageRecord

T0 = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


def record(uid: int, flags: Flags = ()) -> MessageRecord:
    return MessageRecord(
        uid=uid,
        message_id=f"m{uid}@x",
        subject=f"s{uid}",
        from_address=None,
        to_addresses=(),
        cc_addresses=(),
        in_reply_to=None,
        references=None,
        sent_at=None,
        received_at=T0 - dt.timedelta(seconds=30),
        size_bytes=100,
        flags=flags,
    )


@dataclass
class FakeServer:
    """A folder on an IMAP server: uidvalidity and {uid: flags}."""

    folders: dict[str, tuple[int, dict[int, Flags]]] = field(default_factory=dict)
    condstore: bool = False
    modseq: int = 1
    fetch_calls: list[list[int]] = field(default_factory=list)
    fail_fetch_after: int | None = None

    def append(self, folder: str, count: int, flags: Flags = ()) -> None:
        _, msgs = self.folders.setdefault(folder, (100, {}))
        start = max(msgs, default=0) + 1
        for uid in range(start, start + count):
            msgs[uid] = flags
        self.modseq += 1


class FakeClient:
    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.current = ""

    @property
    def condstore(self) -> bool:
        return self.server.condstore

    def examine(self, folder: str) -> ServerFolder:
        if folder not in self.server.folders:
            raise FolderMissing(f"no folder {folder}", folder=folder)
        self.current = folder
        validity, msgs = self.server.folders[folder]
        return ServerFolder(
            uidvalidity=validity,
            uidnext=max(msgs, default=0) + 1,
            highest_modseq=self.server.modseq if self.server.condstore else None,
            exists=len(msgs),
        )

    def _msgs(self) -> dict[int, Flags]:
        return self.server.folders[self.current][1]

    def uids_from(self, uid: int) -> list[int]:
        msgs = self._msgs()
        found = [u for u in msgs if u >= uid]
        # Like real servers: n:* includes the highest UID even when n is above it.
        return found or ([max(msgs)] if msgs else [])

    def uids_since(self, uid: int, since: dt.date) -> list[int]:
        return self.uids_from(uid)

    def fetch_records(self, uids: Sequence[int]) -> list[MessageRecord]:
        self.server.fetch_calls.append(list(uids))
        limit = self.server.fail_fetch_after
        if limit is not None and len(self.server.fetch_calls) > limit:
            raise ConnectionError("dropped mid-fetch")
        msgs = self._msgs()
        return [record(u, msgs[u]) for u in uids if u in msgs]

    def fetch_all_flags(self) -> Mapping[int, Flags]:
        return dict(self._msgs())

    def fetch_flags_changed_since(self, modseq: int) -> Mapping[int, Flags]:
        return dict(self._msgs())


@dataclass
class Counts:
    new: int = 0
    updated: int = 0
    deleted: int = 0


class MemoryStore:
    """Transactions are trivially atomic: each apply() is one dict update."""

    def __init__(self) -> None:
        self.folders: dict[str, FolderState] = {}
        self.rows: dict[tuple[int, int, int], dict[str, object]] = {}

    def ensure_folder(self, mailbox_id: int, name: str) -> FolderState:
        state = self.folders.get(name)
        if state is None:
            state = FolderState(folder_id=len(self.folders) + 1, name=name)
        elif state.vanished_at is not None:
            state = replace(state, vanished_at=None)
        self.folders[name] = state
        return state

    def _by_id(self, folder_id: int) -> FolderState:
        return next(s for s in self.folders.values() if s.folder_id == folder_id)

    def folder_states(self, mailbox_id: int) -> dict[str, FolderState]:
        return dict(self.folders)

    def live(self, folder_id: int) -> dict[int, dict[str, object]]:
        return {
            k[2]: v for k, v in self.rows.items() if k[0] == folder_id and v["deleted_at"] is None
        }

    def stored_flags(self, folder_id: int, uidvalidity: int) -> dict[int, Flags]:
        return {
            k[2]: v["flags"]  # type: ignore[misc]
            for k, v in self.rows.items()
            if k[0] == folder_id and k[1] == uidvalidity and v["deleted_at"] is None
        }

    def apply(self, changes: FolderChanges, now: dt.datetime) -> Counts:
        counts = Counts()
        for record in changes.new:
            key = (changes.folder_id, changes.uidvalidity, record.uid)
            if key not in self.rows:
                self.rows[key] = {"flags": record.flags, "deleted_at": None}
                counts.new += 1
        for uid, flags in changes.flag_updates:
            row = self.rows[(changes.folder_id, changes.uidvalidity, uid)]
            if row["flags"] != flags:
                row["flags"] = flags
                counts.updated += 1
        for uid in changes.expunged:
            row = self.rows[(changes.folder_id, changes.uidvalidity, uid)]
            if row["deleted_at"] is None:
                row["deleted_at"] = now
                counts.deleted += 1
        if changes.checkpoint is not None:
            state = self._by_id(changes.folder_id)
            cp = changes.checkpoint
            self.folders[state.name] = replace(
                state,
                uidvalidity=cp.uidvalidity,
                last_uid=cp.last_uid,
                highest_modseq=cp.highest_modseq,
                last_full_scan_at=cp.last_full_scan_at,
            )
        return counts

    def reset_folder(self, folder_id: int, uidvalidity: int, now: dt.datetime) -> int:
        marked = 0
        for key, row in self.rows.items():
            if key[0] == folder_id and key[1] != uidvalidity and row["deleted_at"] is None:
                row["deleted_at"] = now
                marked += 1
        state = self._by_id(folder_id)
        self.folders[state.name] = replace(
            state,
            uidvalidity=uidvalidity,
            last_uid=0,
            highest_modseq=None,
            last_full_scan_at=None,
        )
        return marked

    def mark_folder_vanished(self, folder_id: int, now: dt.datetime) -> int:
        marked = 0
        for key, row in self.rows.items():
            if key[0] == folder_id and row["deleted_at"] is None:
                row["deleted_at"] = now
                marked += 1
        state = self._by_id(folder_id)
        self.folders[state.name] = replace(state, vanished_at=now)
        return marked
