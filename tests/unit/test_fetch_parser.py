"""The fast FETCH parser gives exactly what imapclient's general parser gives."""

from __future__ import annotations

import datetime as dt
import imaplib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from imapclient.datetime_util import parse_to_datetime
from imapclient.response_parser import parse_fetch_response

from daemon.imap.fetch_parser import _fast_record, _internaldate, parse_fetch, parse_records
from daemon.imap.fetch_reader import FetchResponse, uid_fetch
from daemon.imap.parse import fast_date, parse_date, parse_message

ENVELOPE = (
    b'("Mon, 2 Mar 2026 10:00:00 +0000" "=?utf-8?q?Gr=C3=BC=C3=9Fe?=" '
    b'(("Ann \\"the\\" Smith" NIL "ann" "Example.ORG")) NIL NIL '
    b'((NIL NIL "Team" NIL)("B" NIL "b" "x.test")(NIL NIL NIL NIL)("C" NIL "c" "y.test")) '
    b'NIL NIL "<p@x>" "<id@x>")'
)
HEADER = b"Date: x\r\nReferences: <a@b>\r\n <c@d>\r\n\r\n"
SUBJECT = b'a (b) "c" d'


def _literal(prefix: bytes, value: bytes) -> tuple[bytes, bytes]:
    """A line ending in a literal, as imaplib hands it over."""
    return (prefix + b"{%d}" % len(value), value)


RESPONSES: dict[str, list[Any]] = {
    "plain": [
        _literal(
            b'1 (UID 7 FLAGS (\\Seen $Forwarded) INTERNALDATE "02-Mar-2026 10:00:05 +0100" '
            b"RFC822.SIZE 1234 ENVELOPE " + ENVELOPE + b" BODY[HEADER.FIELDS (DATE REFERENCES)] ",
            b"R: a\r\n",
        ),
        b")",
    ],
    "literal-subject-and-header": [
        _literal(
            b'2 (UID 8 FLAGS () INTERNALDATE "02-Mar-2026 10:00:05 +0000" RFC822.SIZE 99 '
            b"ENVELOPE (NIL ",
            SUBJECT,
        ),
        _literal(
            b" NIL NIL NIL NIL NIL NIL NIL NIL) BODY[HEADER.FIELDS (DATE REFERENCES)] ", HEADER
        ),
        b")",
    ],
    "empty-strings-and-nil-header": [
        (
            b'3 (UID 9 FLAGS (\\Answered) INTERNALDATE "bogus" RFC822.SIZE 1 ENVELOPE '
            b'("" "" NIL NIL NIL NIL NIL NIL "" "") BODY[HEADER.FIELDS (DATE REFERENCES)] NIL)'
        ),
    ],
    "flags-only-with-modseq": [b"4 (UID 10 FLAGS (\\Seen) MODSEQ (12345))"],
    "two-messages": [
        b'5 (UID 11 FLAGS () INTERNALDATE "02-Mar-2026 10:00:05 +0000" RFC822.SIZE 5 '
        b"ENVELOPE " + ENVELOPE + b")",
        b"6 (UID 12 FLAGS (\\Deleted))",
    ],
}


@pytest.mark.parametrize("name", sorted(RESPONSES))
def test_same_values_as_imapclient(name: str) -> None:
    data = RESPONSES[name]
    expected = parse_fetch_response(data, normalise_times=False, uid_is_key=False)
    got = parse_fetch(data)
    assert got.keys() == expected.keys()
    for seq, entry in got.items():
        # imapclient adds SEQ and turns MODSEQ's number into an int; neither is read.
        reference = {k: v for k, v in expected[seq].items() if k not in (b"SEQ", b"MODSEQ")}
        assert {k: v for k, v in entry.items() if k != b"MODSEQ"} == reference
        if reference.get(b"INTERNALDATE") is not None and b"ENVELOPE" in reference:
            assert parse_message(entry[b"UID"], entry) == parse_message(
                reference[b"UID"], reference
            )


@pytest.mark.parametrize(
    "data",
    [
        [b"1 (UID 7 FLAGS (\\Seen)"],  # truncated
        [b"(UID 7)"],  # no sequence number
        [b"1 (UID 7 FLAGS (\\Seen)) ]"],  # a stray character
        [(b"1 (UID 7 BODY[HEADER] {3}", b"abc")],  # the list never closes
        [b"1 (UID 7 ENVELOPE (NIL NIL))"],  # an ENVELOPE of 2 fields
        [b"1 (UID)"],  # a name without value
    ],
)
def test_what_it_does_not_understand_is_a_value_error(data: list[Any]) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_fetch(data)


# -- the fast path: records straight from the response bytes --------------------------------
class FakeConnection:
    """What ``fetch_reader`` uses of imaplib's connection, answering from canned bytes."""

    def __init__(self, answer: bytes, chunk: int = 7) -> None:
        self.answer, self.chunk, self.position = answer, chunk, 0
        self.sent: list[bytes] = []
        self.tagged_commands: dict[bytes, Any] = {}
        self.untagged_responses: dict[str, list[Any]] = {}
        self.file = self

    def _new_tag(self) -> bytes:
        self.tagged_commands[b"T1"] = None
        return b"T1"

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def peek(self, size: int) -> bytes:
        return self.answer[self.position : self.position + min(size, self.chunk)]

    def read(self, size: int) -> bytes:
        out = self.answer[self.position : self.position + size]
        self.position += len(out)
        return out

    def _append_untagged(self, typ: str, dat: Any) -> None:
        self.untagged_responses.setdefault(typ, []).append(dat)


def _wire(data: list[Any]) -> bytes:
    """The bytes on the wire of imaplib-style FETCH parts."""
    out = b""
    for part in data:
        line, literal = part if isinstance(part, tuple) else (part, None)
        if line[:1].isdigit():
            number, _, rest = line.partition(b" ")
            line = b"* " + number + b" FETCH " + rest
        out += line + b"\r\n" + (literal if literal is not None else b"")
    return out


def _read(answer: bytes, chunk: int = 7) -> FetchResponse:
    return uid_fetch(FakeConnection(answer, chunk), "1:9 (UID)")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(RESPONSES))
@pytest.mark.parametrize("chunk", [1, 5, 1 << 16])
def test_records_from_the_raw_response_equal_the_general_path(name: str, chunk: int) -> None:
    data = RESPONSES[name]
    response = _read(_wire(data) + b"T1 OK done\r\n", chunk)
    assert list(response.all_parts()) == data  # imaplib's own split of the same bytes
    entries = {e[b"UID"]: e for e in parse_fetch_response(data, False, False).values()}
    complete = {
        uid: entry
        for uid, entry in entries.items()
        if b"ENVELOPE" in entry and entry.get(b"INTERNALDATE") is not None
    }
    expected = [parse_message(uid, complete[uid]) for uid in sorted(complete)]
    assert parse_records(response, complete.keys()) == expected


def test_the_common_shape_takes_the_fast_path() -> None:
    response = _read(_wire(RESPONSES["plain"]) + b"T1 OK done\r\n")
    start, end = response.spans[0]
    assert _fast_record(response.data, start, end) is not None
    odd = _read(_wire(RESPONSES["literal-subject-and-header"]) + b"T1 OK done\r\n")
    assert _fast_record(odd.data, *odd.spans[0]) is None  # a literal in ENVELOPE: general


def test_a_literal_that_looks_like_the_end_of_the_command_does_not_end_it() -> None:
    tricky = b"x\r\nT1 OK done\r\n* 9 EXISTS\r\n"
    data = [_literal(RESPONSES["plain"][0][0], tricky), b")"]
    response = _read(_wire(data) + b"* 3 EXISTS\r\nT1 OK done\r\n")
    assert len(response.spans) == 1
    assert response.parts(0)[0][1] == tricky


def test_other_untagged_responses_are_filed_as_imaplib_files_them() -> None:
    after = b"* 13 EXISTS\r\n"
    connection = FakeConnection(
        _wire(RESPONSES["flags-only-with-modseq"])
        + b"* 12 EXISTS\r\n* 2 EXPUNGE\r\nT1 OK x\r\n"
        + after,
        chunk=1 << 16,
    )
    response = uid_fetch(connection, "1:9 (UID)")  # type: ignore[arg-type]
    assert connection.read(100) == after  # what came after the completion is left unread
    assert connection.sent == [b"T1 UID FETCH 1:9 (UID)\r\n"]
    assert connection.untagged_responses == {"EXISTS": [b"12"], "EXPUNGE": [b"2"]}
    assert connection.tagged_commands == {}
    assert len(response.spans) == 1


def test_a_refused_fetch_raises_imaplib_error_with_the_server_text() -> None:
    answer = b"T1 NO Request is throttled. Suggested Backoff Time: 5 milliseconds\r\n"
    with pytest.raises(imaplib.IMAP4.error, match="Suggested Backoff Time: 5 milli"):
        _read(answer)


def test_a_connection_that_ends_mid_response_is_an_abort() -> None:
    with pytest.raises(imaplib.IMAP4.abort):
        _read(b"* BYE going away\r\n" + _wire(RESPONSES["plain"])[:40])


def test_one_uid_in_two_responses_is_merged_as_the_general_path_merges_it() -> None:
    data = [*RESPONSES["plain"], b"9 (UID 7 FLAGS (\\Deleted))"]
    response = _read(_wire(data) + b"T1 OK done\r\n")
    (record,) = parse_records(response, {7})
    assert record.flags == ("\\Deleted",)


@pytest.mark.parametrize(
    "value",
    [
        b" Wed, 23 Sep 2026 08:11:32 -0700",
        b"Wed, 23 Sep 2026 08:11:32 +0000",
        b"23 sep 2026 08:11:32 -0000",
        b" Thu, 1 Jan 0001 00:30:00 +0100",  # before year 1 in UTC: NULL
        b" Fri, 31 Dec 9999 23:00:00 -0200",  # past year 9999 in UTC: NULL
        b" Mon, 31 Feb 2026 10:00:00 +0000",  # no such day
        b" Mon, 2 Mar 2026 10:00:60 +0000",  # a leap second
        b" Mon, 2 Mar 2026 10:00:00 +2460",  # a zone out of range
        b" Mon, 2 Mar 26 10:00:00 +0100",  # a two-digit year
        b" Mon, 2 Mar 2026 10:00 +0100",  # no seconds
        b" Mon, 2 Mar 2026 10:00:00 +0100 (CET)",
        b" Mon, 2 Mar 2026 10:00:00 PST",
        b"Mon,\r\n 2 Mar 2026 10:00:00 +0100",
        b" garbage",
        b"",
    ],
)
def test_fast_date_equals_parse_date(value: bytes) -> None:
    assert fast_date(value) == parse_date(value.decode("latin-1"))


MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
MOMENTS = st.tuples(
    st.integers(1, 9999),  # year
    st.integers(1, 12),
    st.integers(1, 31),  # day: some do not exist
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 60),  # second: 60 is a leap second
    st.sampled_from(["+", "-"]),
    st.integers(0, 30),  # zone hours: some are out of range
    st.integers(0, 59),
)


@given(MOMENTS)
def test_fast_date_equals_parse_date_on_generated_dates(moment: tuple[Any, ...]) -> None:
    year, month, day, hour, minute, second, sign, zh, zm = moment
    value = f" Tue, {day} {MONTHS[month - 1]} {year:04d} {hour:02d}:{minute:02d}:{second:02d} "
    value += f"{sign}{zh:02d}{zm:02d}"
    assert fast_date(value.encode()) == parse_date(value)


@given(MOMENTS)
def test_fast_internaldate_equals_imapclient_then_utc(moment: tuple[Any, ...]) -> None:
    year, month, day, hour, minute, second, sign, zh, zm = moment
    value = f"{day:2d}-{MONTHS[month - 1]}-{year:04d} {hour:02d}:{minute:02d}:{second:02d} "
    value += f"{sign}{zh:02d}{zm:02d}"
    fast = _internaldate(value.encode())
    try:
        reference = parse_to_datetime(value.encode(), normalise=False).astimezone(dt.UTC)
    except (ValueError, OverflowError):
        reference = None
    # None sends the message down the general path, which gives the reference's answer.
    assert fast is None or fast == reference
    if reference is not None and year >= 100:
        assert fast == reference


def test_literals_inside_envelope_take_the_fast_path_with_the_general_paths_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = [
        _literal(
            b'1 (UID 8 FLAGS () INTERNALDATE "02-Mar-2026 10:00:05 +0000" RFC822.SIZE 99 '
            b"ENVELOPE (NIL ",
            b"=?utf-8?q?a?=\r\n =?utf-8?q?b?=",
        ),
        _literal(b' (("N" NIL ', b"lo\r\ncal"),
        _literal(b" ", b"Host.Example"),
        _literal(
            b')) NIL NIL (("T" NIL "t" "x.test")) NIL NIL NIL "<m@x>") '
            b"BODY[HEADER.FIELDS (DATE REFERENCES)] ",
            b"\r\n\r",
        ),
        b")",
    ]
    reference = parse_fetch_response(data, normalise_times=False, uid_is_key=False)
    (entry,) = reference.values()
    expected = parse_message(8, entry)
    response = _read(_wire(data) + b"T1 OK done\r\n")

    def general(_parts: Any) -> dict[int, dict[bytes, Any]]:
        raise AssertionError("the general path was taken")

    monkeypatch.setattr("daemon.imap.fetch_parser.general_entries", general)
    assert parse_records(response, {8}) == [expected]
    assert expected.from_address == "lo\r\ncal@host.example"
