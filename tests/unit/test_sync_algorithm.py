"""The sync algorithm, case by case, as the SPEC states it."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.sync.algorithm import (
    FolderPlan,
    ServerFolder,
    batches,
    diff_changed,
    diff_full_scan,
    new_uids,
    plan_folder,
)
from daemon.sync.model import FolderState

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
FIFTEEN_MIN = 900.0


def _state(**kw: object) -> FolderState:
    return FolderState(folder_id=1, name="INBOX", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("state", "server", "condstore", "expected"),
    [
        pytest.param(
            _state(),
            ServerFolder(uidvalidity=7, uidnext=50),
            False,
            FolderPlan(
                reset=False, fetch_after=0, look_for_new=True, full_scan=False, changed_since=None
            ),
            id="first-sync-fetches-everything",
        ),
        pytest.param(
            _state(),
            ServerFolder(uidvalidity=7, uidnext=1),
            False,
            FolderPlan(
                reset=False, fetch_after=0, look_for_new=False, full_scan=False, changed_since=None
            ),
            id="first-sync-of-empty-folder",
        ),
        pytest.param(
            _state(uidvalidity=7, last_uid=40, last_full_scan_at=NOW),
            ServerFolder(uidvalidity=8, uidnext=3),
            False,
            FolderPlan(
                reset=True, fetch_after=0, look_for_new=True, full_scan=False, changed_since=None
            ),
            id="uidvalidity-change-resets",
        ),
        pytest.param(
            _state(uidvalidity=7, last_uid=49, last_full_scan_at=NOW),
            ServerFolder(uidvalidity=7, uidnext=50),
            False,
            FolderPlan(
                reset=False, fetch_after=49, look_for_new=False, full_scan=False, changed_since=None
            ),
            id="idle-folder-does-nothing",
        ),
        pytest.param(
            _state(uidvalidity=7, last_uid=40, last_full_scan_at=NOW),
            ServerFolder(uidvalidity=7, uidnext=None),
            False,
            FolderPlan(
                reset=False, fetch_after=40, look_for_new=True, full_scan=False, changed_since=None
            ),
            id="no-uidnext-means-look",
        ),
        pytest.param(
            _state(
                uidvalidity=7,
                last_uid=40,
                last_full_scan_at=NOW - dt.timedelta(seconds=FIFTEEN_MIN),
            ),
            ServerFolder(uidvalidity=7, uidnext=41),
            False,
            FolderPlan(
                reset=False, fetch_after=40, look_for_new=False, full_scan=True, changed_since=None
            ),
            id="full-scan-when-due",
        ),
        pytest.param(
            _state(uidvalidity=7, last_uid=40),
            ServerFolder(uidvalidity=7, uidnext=41),
            False,
            FolderPlan(
                reset=False, fetch_after=40, look_for_new=False, full_scan=True, changed_since=None
            ),
            id="never-scanned-scans",
        ),
        pytest.param(
            _state(uidvalidity=7, last_uid=40, highest_modseq=100, last_full_scan_at=NOW),
            ServerFolder(uidvalidity=7, uidnext=41, highest_modseq=105),
            True,
            FolderPlan(
                reset=False, fetch_after=40, look_for_new=False, full_scan=False, changed_since=100
            ),
            id="condstore-reads-changes-since",
        ),
        pytest.param(
            _state(uidvalidity=7, last_uid=40, highest_modseq=100, last_full_scan_at=NOW),
            ServerFolder(uidvalidity=7, uidnext=41, highest_modseq=100),
            True,
            FolderPlan(
                reset=False, fetch_after=40, look_for_new=False, full_scan=False, changed_since=None
            ),
            id="condstore-unchanged-modseq-skips",
        ),
        pytest.param(
            _state(uidvalidity=7, last_uid=40, highest_modseq=100, last_full_scan_at=NOW),
            ServerFolder(uidvalidity=7, uidnext=41, highest_modseq=105),
            False,
            FolderPlan(
                reset=False, fetch_after=40, look_for_new=False, full_scan=False, changed_since=None
            ),
            id="no-condstore-capability-no-changedsince",
        ),
    ],
)
def test_plan_folder(
    state: FolderState, server: ServerFolder, condstore: bool, expected: FolderPlan
) -> None:
    plan = plan_folder(state, server, now=NOW, full_scan_interval=FIFTEEN_MIN, condstore=condstore)
    assert plan == expected


def test_new_uids_drops_the_highest_uid_the_server_always_returns() -> None:
    assert new_uids([40], after=40) == []
    assert new_uids([43, 41, 41, 40, 12], after=40) == [41, 43]


def test_batches_cover_every_uid_once_in_order() -> None:
    assert [list(b) for b in batches([1, 2, 3, 4, 5], 2)] == [[1, 2], [3, 4], [5]]
    with pytest.raises(ValueError, match="positive"):
        list(batches([1], 0))


def test_full_scan_finds_flag_changes_and_expunges_below_checkpoint() -> None:
    stored = {1: ("\\Seen",), 2: (), 3: ("\\Flagged",), 4: ()}
    server = {1: ("\\Seen",), 2: ("\\Seen",), 4: (), 5: ("\\Seen",)}
    diff = diff_full_scan(stored, server, up_to_uid=4)
    assert diff.flag_updates == ((2, ("\\Seen",)),)
    assert diff.expunged == (3,)


def test_full_scan_ignores_uids_above_checkpoint() -> None:
    diff = diff_full_scan({1: ()}, {1: (), 9: ("\\Seen",)}, up_to_uid=1)
    assert diff.flag_updates == ()
    assert diff.expunged == ()


def test_changed_since_reports_only_real_changes_of_known_rows() -> None:
    stored = {1: ("\\Seen",), 2: ()}
    changed = {1: ("\\Seen",), 2: ("\\Answered",), 7: ("\\Seen",)}
    assert diff_changed(stored, changed, up_to_uid=5) == ((2, ("\\Answered",)),)


flags = st.sampled_from([(), ("\\Seen",), ("\\Flagged",), ("\\Seen", "\\Flagged")])


@given(
    stored=st.dictionaries(st.integers(1, 60), flags, max_size=40),
    server=st.dictionaries(st.integers(1, 80), flags, max_size=50),
    up_to=st.integers(0, 80),
)
def test_applying_a_full_scan_makes_the_store_match_the_server(
    stored: dict[int, tuple[str, ...]], server: dict[int, tuple[str, ...]], up_to: int
) -> None:
    stored = {uid: f for uid, f in stored.items() if uid <= up_to}
    diff = diff_full_scan(stored, server, up_to_uid=up_to)
    after = dict(stored)
    for uid in diff.expunged:
        del after[uid]
    after.update(diff.flag_updates)
    expected = {uid: f for uid, f in server.items() if uid <= up_to and uid in stored}
    assert after == expected
