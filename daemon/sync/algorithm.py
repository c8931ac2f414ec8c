"""What to do for one folder, decided from plain values.

One poll of a folder, as the SPEC describes it:

1. EXAMINE gives UIDVALIDITY, UIDNEXT and (with CONDSTORE) HIGHESTMODSEQ.
2. A UIDVALIDITY other than the stored one means every stored UID is void: the old rows get
   ``deleted_at`` and the folder syncs again from UID 1.
3. New messages are the UIDs above the checkpoint (``last_uid``); they are fetched in batches,
   and each batch commits together with the checkpoint that covers it.
4. Flag changes and expunges are found by a full UID/FLAGS scan every ``full_scan_interval``;
   where the server has CONDSTORE, flag changes are also read on every poll with CHANGEDSINCE
   (expunges still need the full scan: CONDSTORE without QRESYNC does not report them).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from daemon.sync.model import Flags, FolderState


@dataclass(frozen=True, slots=True)
class ServerFolder:
    """What EXAMINE reported about a folder."""

    uidvalidity: int
    uidnext: int | None = None
    highest_modseq: int | None = None
    exists: int | None = None


@dataclass(frozen=True, slots=True)
class FolderPlan:
    reset: bool
    """UIDVALIDITY changed: void the stored rows and start again."""
    fetch_after: int
    """Look for new messages with a UID above this one."""
    look_for_new: bool
    """False when UIDNEXT proves there is nothing above ``fetch_after``."""
    full_scan: bool
    """Compare every UID and its flags with the store (flags and expunges)."""
    changed_since: int | None
    """Read flag changes since this modseq (CONDSTORE), when no full scan runs."""


def plan_folder(
    state: FolderState,
    server: ServerFolder,
    *,
    now: dt.datetime,
    full_scan_interval: float,
    condstore: bool,
) -> FolderPlan:
    """Decide the steps of one poll of one folder."""
    reset = state.uidvalidity is not None and state.uidvalidity != server.uidvalidity
    if reset or state.uidvalidity is None:
        # Nothing valid is stored: fetch everything; a scan would compare against nothing.
        return FolderPlan(
            reset=reset,
            fetch_after=0,
            look_for_new=server.uidnext is None or server.uidnext > 1,
            full_scan=False,
            changed_since=None,
        )
    look_for_new = server.uidnext is None or server.uidnext > state.last_uid + 1
    full_scan = state.last_full_scan_at is None or (
        (now - state.last_full_scan_at).total_seconds() >= full_scan_interval
    )
    changed_since = None
    if (
        not full_scan
        and condstore
        and state.highest_modseq is not None
        and server.highest_modseq is not None
        and server.highest_modseq > state.highest_modseq
    ):
        changed_since = state.highest_modseq
    return FolderPlan(
        reset=False,
        fetch_after=state.last_uid,
        look_for_new=look_for_new,
        full_scan=full_scan,
        changed_since=changed_since,
    )


def new_uids(candidates: Iterable[int], after: int) -> list[int]:
    """UIDs above the checkpoint, ascending and unique.

    ``UID SEARCH UID n:*`` returns the highest existing UID even when ``n`` is above it, so
    an idle folder would otherwise always seem to have one new message.
    """
    return sorted({uid for uid in candidates if uid > after})


def batches(uids: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    """Consecutive slices of at most ``size`` UIDs."""
    if size < 1:
        raise ValueError("batch size must be positive")
    for start in range(0, len(uids), size):
        yield uids[start : start + size]


@dataclass(frozen=True, slots=True)
class ScanDiff:
    flag_updates: tuple[tuple[int, Flags], ...]
    expunged: tuple[int, ...]


def diff_full_scan(
    stored: Mapping[int, Flags], server: Mapping[int, Flags], *, up_to_uid: int
) -> ScanDiff:
    """Compare stored rows with a full UID/FLAGS listing of the server.

    Only UIDs at or below the checkpoint are judged: anything above it is new and belongs to
    the next fetch, and a stored UID above it cannot exist.
    """
    updates = tuple(
        (uid, flags)
        for uid, flags in sorted(server.items())
        if uid <= up_to_uid and uid in stored and stored[uid] != flags
    )
    expunged = tuple(sorted(uid for uid in stored if uid <= up_to_uid and uid not in server))
    return ScanDiff(updates, expunged)


def diff_changed(
    stored: Mapping[int, Flags], changed: Mapping[int, Flags], *, up_to_uid: int
) -> tuple[tuple[int, Flags], ...]:
    """Flag updates from a CHANGEDSINCE answer (which may repeat unchanged flags)."""
    return tuple(
        (uid, flags)
        for uid, flags in sorted(changed.items())
        if uid <= up_to_uid and uid in stored and stored[uid] != flags
    )
