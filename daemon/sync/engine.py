"""One poll of one mailbox: the algorithm of ``algorithm.py`` driven through the ports.

Each batch of new messages commits together with the checkpoint that covers it, so a crash
at any moment leaves the store consistent: the next poll starts above the last committed UID.
Stopping is cooperative: ``should_stop`` is checked between batches and folders.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from daemon.errors import FolderMissing
from daemon.ports import MailboxClient, Store
from daemon.sync.algorithm import batches, diff_changed, diff_full_scan, new_uids, plan_folder
from daemon.sync.model import Checkpoint, FolderChanges, FolderState


@dataclass
class FolderResult:
    folder: str
    new: int = 0
    updated: int = 0
    deleted: int = 0
    duration: float = 0.0
    outcome: str = "success"  # success | failure | missing | skipped | stopped
    error: BaseException | None = None
    lag_seconds: list[float] = field(default_factory=list)
    wrote: bool = False
    """The store was written (the folder's stored state may have changed)."""

    @property
    def changed(self) -> bool:
        return bool(self.new or self.updated or self.deleted)


@dataclass(frozen=True)
class FolderJob:
    mailbox_id: int
    folder: str
    full_scan_interval: float
    backfill_days: int | None


class MailboxSync:
    """Syncs the folders of one mailbox through a logged-in client."""

    def __init__(
        self,
        store: Store,
        *,
        batch_size: int = 500,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        should_stop: Callable[[], bool] = lambda: False,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._batch_size = batch_size
        self._now = now
        self._should_stop = should_stop
        self._monotonic = monotonic

    def sync_folder(
        self,
        client: MailboxClient,
        job: FolderJob,
        state: FolderState | None,
        result: FolderResult | None = None,
        *,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> FolderResult:
        """Poll one folder; store errors and connection errors propagate to the caller.

        Pass ``result`` to keep what was committed before a failure (it is filled as each
        batch commits), ``should_stop`` to stop this folder's sync between batches (the
        engine's own ``should_stop`` otherwise), and ``progress`` to learn how many new
        messages are still to fetch (before each batch, and 0 when the folder is done).
        """
        started = self._monotonic()
        result = result if result is not None else FolderResult(job.folder)
        report = progress or _ignore
        try:
            self._sync(
                client,
                job,
                state,
                result,
                should_stop=should_stop or self._should_stop,
                progress=report,
            )
        finally:
            result.duration = self._monotonic() - started
        if result.outcome != "stopped":
            report(0)  # whatever was left to fetch has been fetched
        return result

    def _sync(
        self,
        client: MailboxClient,
        job: FolderJob,
        state: FolderState | None,
        result: FolderResult,
        *,
        should_stop: Callable[[], bool],
        progress: Callable[[int], None],
    ) -> None:
        store = self._store
        now = self._now()
        if state is None:
            result.wrote = True
            state = store.ensure_folder(job.mailbox_id, job.folder)
        if state.vanished_at is not None:
            # Checked again only when a full scan would be due, not on every poll.
            gone_for = (now - state.vanished_at).total_seconds()
            if gone_for < job.full_scan_interval:
                result.outcome = "skipped"
                return
        try:
            server = client.examine(job.folder)
        except FolderMissing:
            if state.vanished_at is None:
                result.wrote = True
                result.deleted = store.mark_folder_vanished(state.folder_id, now)
            result.outcome = "missing"
            return
        if state.vanished_at is not None:
            result.wrote = True
            state = store.ensure_folder(job.mailbox_id, job.folder)
        plan = plan_folder(
            state,
            server,
            now=now,
            full_scan_interval=job.full_scan_interval,
            condstore=client.condstore,
        )
        if plan.reset:
            result.wrote = True
            result.deleted += store.reset_folder(state.folder_id, server.uidvalidity, now)
            state = replace(
                state,
                uidvalidity=server.uidvalidity,
                last_uid=0,
                highest_modseq=None,
                last_full_scan_at=None,
            )
        incremental = state.uidvalidity is not None and state.last_uid > 0
        last_uid = state.last_uid
        modseq = state.highest_modseq
        last_scan = state.last_full_scan_at
        initial = state.uidvalidity is None or plan.reset
        if initial:
            # The first checkpoint records the server's modseq as of EXAMINE: changes made
            # during the initial fetch are found by the next CHANGEDSINCE.
            modseq = server.highest_modseq
            last_scan = now

        if plan.look_for_new:
            if initial and job.backfill_days is not None:
                since = (now - dt.timedelta(days=job.backfill_days)).date()
                candidates = client.uids_since(plan.fetch_after + 1, since)
            else:
                candidates = client.uids_from(plan.fetch_after + 1)
            wanted = new_uids(candidates, plan.fetch_after)
            remaining = len(wanted)
            for batch in batches(wanted, self._batch_size):
                progress(remaining)
                if should_stop():
                    result.outcome = "stopped"
                    return
                records = client.fetch_records(batch)
                remaining -= len(batch)
                last_uid = max(last_uid, *batch)
                result.wrote = True
                counts = store.apply(
                    FolderChanges(
                        folder_id=state.folder_id,
                        uidvalidity=server.uidvalidity,
                        new=tuple(records),
                        checkpoint=Checkpoint(server.uidvalidity, last_uid, modseq, last_scan),
                    ),
                    self._now(),
                )
                result.new += counts.new
                if incremental:
                    committed = self._now()
                    result.lag_seconds.extend(
                        max(0.0, (committed - r.received_at).total_seconds()) for r in records
                    )
        elif initial:
            result.wrote = True
            store.apply(
                FolderChanges(
                    folder_id=state.folder_id,
                    uidvalidity=server.uidvalidity,
                    checkpoint=Checkpoint(server.uidvalidity, last_uid, modseq, last_scan),
                ),
                now,
            )

        if plan.full_scan or plan.changed_since is not None:
            if should_stop():
                result.outcome = "stopped"
                return
            stored = store.stored_flags(state.folder_id, server.uidvalidity)
            if plan.full_scan:
                diff = diff_full_scan(stored, client.fetch_all_flags(), up_to_uid=last_uid)
                updates, expunged, last_scan = diff.flag_updates, diff.expunged, now
            else:
                changed = client.fetch_flags_changed_since(plan.changed_since or 0)
                updates, expunged = diff_changed(stored, changed, up_to_uid=last_uid), ()
            result.wrote = True
            counts = store.apply(
                FolderChanges(
                    folder_id=state.folder_id,
                    uidvalidity=server.uidvalidity,
                    flag_updates=updates,
                    expunged=expunged,
                    checkpoint=Checkpoint(
                        server.uidvalidity, last_uid, server.highest_modseq, last_scan
                    ),
                ),
                self._now(),
            )
            result.updated += counts.updated
            result.deleted += counts.deleted


def _ignore(_remaining: int) -> None:
    """No progress observer."""
