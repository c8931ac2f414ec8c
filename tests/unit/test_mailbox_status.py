"""The mailbox status value and its rendering (``daemon.status``): pure, no database."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import socket
from typing import Any

import pytest

from daemon.errors import REASONS
from daemon.status import (
    ERROR_LIMIT_BYTES,
    FIELDS,
    STATUS_STATES,
    MailboxStatus,
    NeverPolled,
    format_age,
    format_table,
    merge,
    replica_id,
)
from support.status import healthy_status

UTC = dt.UTC
NOW = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
SPEC_FIELDS = [
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
    "idle",  # an extension: SPEC "Push"
]


def status(**changes: Any) -> MailboxStatus:
    return healthy_status(polled=NOW, succeeded=NOW - dt.timedelta(seconds=12), **changes)


def test_fields_are_the_spec_columns_in_spec_order() -> None:
    assert list(FIELDS) == SPEC_FIELDS
    assert [field.name for field in dataclasses.fields(MailboxStatus)] == SPEC_FIELDS
    assert STATUS_STATES == ("ok", "backoff", "auth_failed", "disabled", "removed")


def test_to_json_has_the_spec_keys_and_iso_utc_timestamps() -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    value = status(last_poll_at=dt.datetime(2024, 5, 1, 14, 0, 5, tzinfo=plus_two))

    document = value.to_json()

    assert list(document) == SPEC_FIELDS
    assert document["last_poll_at"] == "2024-05-01T12:00:05+00:00"
    assert document["last_success_at"] == "2024-05-01T11:59:48+00:00"
    assert json.loads(json.dumps(document)) == document


def test_address_is_lower_cased_and_timestamps_become_utc() -> None:
    local = dt.datetime(2024, 5, 1, 7, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    value = status(mailbox=" Support@Contoso.COM ", last_success_at=local)

    assert value.mailbox == "support@contoso.com"
    assert value.last_success_at == NOW
    assert value.last_success_at is not None
    assert value.last_success_at.tzinfo is UTC


def test_long_error_and_hint_are_capped_at_2_kib_on_a_character_boundary() -> None:
    emoji = "\U0001f600"  # four bytes in UTF-8
    value = status(last_error="e" * 2046 + emoji + "tail", hint=emoji * 1000)

    assert value.last_error == "e" * 2046
    assert value.hint == emoji * (ERROR_LIMIT_BYTES // 4)
    assert len(value.hint.encode()) == ERROR_LIMIT_BYTES


def test_text_the_database_cannot_store_is_cleaned() -> None:
    value = status(last_error="bad\x00 byte \udc80", owner="pod\x00-1")
    assert (value.last_error, value.owner) == ("bad byte \ufffd", "pod-1")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"state": "sleeping"}, "unknown mailbox state"),
        ({"last_error_reason": "gremlins"}, "unknown failure reason"),
        ({"consecutive_failures": -1}, ">= 0"),
        ({"initial_sync_remaining": -5}, ">= 0"),
        ({"last_poll_at": dt.datetime(2024, 5, 1)}, "timezone-aware"),  # noqa: DTZ001
        ({"mailbox": "  "}, "must not be empty"),
        ({"tenant": ""}, "must not be empty"),
    ],
)
def test_invalid_values_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        status(**changes)


def test_every_failure_reason_is_accepted() -> None:
    for reason in REASONS:
        assert status(last_error_reason=reason).last_error_reason == reason


def test_replica_id_is_the_variable_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILSYNCD_REPLICA_ID", " mailsyncd-7d9f-x2k4q ")
    assert replica_id() == "mailsyncd-7d9f-x2k4q"


@pytest.mark.parametrize("value", [None, "", "  "])
def test_replica_id_is_host_and_pid_otherwise(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("MAILSYNCD_REPLICA_ID", raising=False)
    else:
        monkeypatch.setenv("MAILSYNCD_REPLICA_ID", value)
    monkeypatch.setattr("os.getpid", lambda: 4242)

    assert replica_id() == f"{socket.gethostname()}-4242"
    assert replica_id() == replica_id()


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "0s ago"),
        (12.9, "12s ago"),
        (59, "59s ago"),
        (60, "1m ago"),
        (3599, "59m ago"),
        (3600, "1h ago"),
        (86399, "23h ago"),
        (86400 * 3 + 5, "3d ago"),
        (-4, "0s ago"),  # a replica's clock slightly ahead
    ],
)
def test_format_age(seconds: float, expected: str) -> None:
    assert format_age(NOW - dt.timedelta(seconds=seconds), NOW) == expected


def test_format_age_of_nothing_is_never() -> None:
    assert format_age(None, NOW) == "never"


def test_merge_adds_configured_mailboxes_without_a_row_and_sorts() -> None:
    stored = [status(mailbox="b@x.test"), status(mailbox="gone@x.test", state="removed")]
    configured = [("C@x.test", "fabrikam"), ("b@x.test", "contoso"), ("a@x.test", "contoso")]

    rows = merge(stored, configured)

    assert [row.mailbox for row in rows] == ["a@x.test", "b@x.test", "c@x.test", "gone@x.test"]
    assert rows[0] == NeverPolled("a@x.test", "contoso")
    assert rows[1] is stored[0]
    assert rows[2] == NeverPolled("c@x.test", "fabrikam")


def test_never_polled_json_has_the_same_keys_with_nulls() -> None:
    document = NeverPolled("a@x.test", "contoso").to_json()
    assert list(document) == SPEC_FIELDS
    assert document["mailbox"] == "a@x.test"
    assert document["tenant"] == "contoso"
    assert {document[key] for key in SPEC_FIELDS[2:]} == {None}


def test_table_is_aligned_with_failing_rows_followed_by_error_and_hint() -> None:
    rows = merge(
        [
            status(mailbox="ok@contoso.test"),
            status(
                mailbox="failing-mailbox@contoso.test",
                state="backoff",
                last_success_at=NOW - dt.timedelta(minutes=5),
                consecutive_failures=3,
                last_error_reason="connect",
                last_error="connection refused\n  by peer",
                hint="check imap.host",
                initial_sync_remaining=1500,
            ),
        ],
        [("never@contoso.test", "contoso")],
    )

    lines = format_table(rows, NOW).splitlines()

    assert lines[0].split() == [
        "MAILBOX",
        "TENANT",
        "STATE",
        "OWNER",
        "LAST",
        "SUCCESS",
        "FAILURES",
        "REASON",
        "INITIAL",
        "SYNC",
    ]
    failing, error, hint, never, ok = lines[1:]
    assert failing.split() == [
        "failing-mailbox@contoso.test",
        "contoso",
        "backoff",
        "pod-a",
        "5m",
        "ago",
        "3",
        "connect",
        "1500",
        "left",
    ]
    assert error == "    error: connection refused by peer"
    assert hint == "    hint: check imap.host"
    assert (
        never.split() == ["never@contoso.test", "contoso", "-", "-", "never", "polled"] + ["-"] * 3
    )
    assert ok.split()[2:] == ["ok", "pod-a", "12s", "ago", "0", "-", "done"]
    # Aligned: every column starts at the same offset on every row.
    for column in ("TENANT", "STATE", "OWNER", "LAST SUCCESS", "FAILURES"):
        offset = lines[0].index(column)
        assert all(line[offset - 2 : offset] == "  " for line in (failing, never, ok)), column
        assert all(line[offset] != " " for line in (failing, never, ok)), column


def test_a_healthy_row_shows_no_error_lines_even_with_an_old_error() -> None:
    rows = [status(state="disabled", last_error="old failure", hint="old hint")]
    assert len(format_table(rows, NOW).splitlines()) == 2


def test_a_very_long_error_is_shortened_in_the_table_only() -> None:
    value = status(state="backoff", consecutive_failures=1, last_error="x" * 1000)
    error_line = format_table([value], NOW).splitlines()[2]
    assert len(error_line) < 320
    assert error_line.endswith("\u2026")
    assert value.to_json()["last_error"] == "x" * 1000
