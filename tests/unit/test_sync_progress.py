"""``sync_progress``: every 10 s of a long fetch, per mailbox, on an injected clock."""

from __future__ import annotations

from typing import Any

from daemon.runtime.worker import PROGRESS_EVERY, _Progress


class Events:
    """A logger that keeps what it was told."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def _log(self, level: str, event: str, **fields: Any) -> None:
        self.lines.append((level, event, fields))

    def debug(self, event: str, **fields: Any) -> None:
        self._log("debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log("error", event, **fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._log("critical", event, **fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._log("exception", event, **fields)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_long_fetch_logs_sync_progress_every_10_s_with_rate_and_remaining() -> None:
    clock, log, totals = Clock(), Events(), []
    progress = _Progress(totals.append, log=log, mailbox="a@contoso.test", clock=clock)
    inbox = progress.folder("INBOX")
    inbox(5000)  # before the first batch
    for remaining in range(4500, 0, -500):  # one batch of 500 every 4 s
        clock.now += 4
        inbox(remaining)
    clock.now += 4
    inbox(0)

    events = [(level, fields) for level, event, fields in log.lines if event == "sync_progress"]
    # Batches at 4, 8, 12, ... 36 s: events at 12, 24 and 36 s (10 s or more apart).
    assert [fields["fetched"] for _, fields in events] == [1500, 3000, 4500]
    assert all(level == "info" for level, _ in events)
    first = events[0][1]
    assert first == {
        "mailbox": "a@contoso.test",
        "folder": "INBOX",
        "fetched": 1500,
        "remaining": 3500,
        "rate_per_s": 125.0,
    }
    assert totals[0] == 5000
    assert totals[-1] == 0


def test_a_fetch_shorter_than_10_s_logs_no_progress_and_nothing_left_logs_nothing() -> None:
    clock, log = Clock(), Events()
    progress = _Progress(lambda _total: None, log=log, mailbox="b@contoso.test", clock=clock)
    inbox, sent = progress.folder("INBOX"), progress.folder("Sent Items")
    inbox(1000)
    clock.now += PROGRESS_EVERY - 1
    inbox(500)
    clock.now += 5
    inbox(0)  # done: nothing left is not progress
    sent(0)
    clock.now += 60
    sent(0)
    assert [event for _, event, _ in log.lines] == []


def test_events_are_per_mailbox_not_per_folder() -> None:
    clock, log = Clock(), Events()
    progress = _Progress(lambda _total: None, log=log, mailbox="c@contoso.test", clock=clock)
    inbox, archive = progress.folder("INBOX"), progress.folder("Archive")
    inbox(300)
    archive(900)
    clock.now += PROGRESS_EVERY
    inbox(200)
    archive(800)  # same moment: the mailbox's event was just logged
    clock.now += PROGRESS_EVERY
    archive(700)
    folders = [fields["folder"] for _, event, fields in log.lines if event == "sync_progress"]
    assert folders == ["INBOX", "Archive"]
